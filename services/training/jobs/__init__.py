"""The service process's jobs: state machine, job folders, runner processes; never torch.

``manager.JobManager`` creates, cancels and watches jobs, ``store`` reads a job folder back,
``process`` starts and signals a runner, ``launch`` builds its command line. ``events`` is the
job-folder event log, the one protocol the runner (the training process) shares with the service.
"""

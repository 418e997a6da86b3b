"""What a ``TrainingJobSpec`` means: the ground floor both processes share, torch-free.

``normalize`` fills in the documented defaults and a job id, ``validation.validate`` checks the
whole spec before the service launches a job, and ``settings.settings`` turns a valid spec into
the frozen ``Settings`` record the training process reads. Imports nothing else of the wing.
"""

"""``llamafleet web``: a browser UI (Train, Jobs, Chat, Cluster) over the services.

The app holds no job state: every page reads the training service, so jobs outlive the browser.
"""

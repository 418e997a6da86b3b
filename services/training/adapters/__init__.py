"""A job's published adapter versions as the service serves them (``store``: ``FetchAdapter``
archives) and exports them (``export``: ``ExportModel``). Service process; never torch (a merge
runs in a child process, ``model.merge``)."""

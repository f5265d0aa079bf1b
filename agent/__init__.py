"""revwatch's runtime: watching, storing, analysing, publishing, and the command line.

- :mod:`agent.cli`: the ``revwatch`` command.
- :mod:`agent.pipeline`: the agent (:class:`agent.pipeline.Agent`).
- :mod:`agent.config`: the run configuration.
- :mod:`agent.watch`, :mod:`agent.store`: the acquisition folder and the OME-Zarr volume.
- :mod:`agent.analysis`, :mod:`agent.analysis_worker`: Dask metrics and the REV decision, live.
- :mod:`agent.events`, :mod:`agent.publish`, :mod:`agent.client`: the event stream, ZeroMQ, and
  the Python client for acquisition scripts.
- :mod:`agent.monitor`: the terminal dashboard.
"""

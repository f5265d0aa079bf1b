"""revwatch's pure processing: arrays in, arrays or frozen dataclasses out.

Modules, grouped by what they return (import them directly; this package imports nothing
heavy on its own):

- :mod:`processing.io`: reading and writing slice files as the instruments write them.
- :mod:`processing.synthetic`: synthetic microstructures and SEM acquisitions with known truth.
- :mod:`processing.correct`: brightness, curtaining and background corrections (filters).
- :mod:`processing.align`: drift measurement and correction.
- :mod:`processing.segment`: phase models and pixel classifiers.
- :mod:`processing.chain`: the per-slice chain (correct, align, segment) used by the agent.
- :mod:`processing.metrics`: Table 1 metrics (numbers).
- :mod:`processing.rev`: representative-elementary-volume criteria and the stop decision.
- :mod:`processing.phases`, :mod:`processing.errors`: phase naming and the error hierarchy.

This package never imports ``agent``, ZeroMQ, watchdog, rich or dask.distributed.
"""

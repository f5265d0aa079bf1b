"""The analysis thread: refresh metrics and the REV verdict as the volume grows, off the slice path.

The slice thread only calls :meth:`AnalysisWorker.notify` with the new depth; this thread wakes
up every ``analysis.every_slices`` new slices (and once more at the end of the run), runs the
Dask metrics (:class:`agent.analysis.VolumeAnalysis`) and the REV tracker
(:class:`processing.rev.RevTracker`) on the committed part of the volume, and emits ``metrics``
and ``rev`` documents, then the latched ``stop`` once the volume is representative. The
expensive metrics (local thickness, tortuosity, connectivity, on windows of slices) are
computed in the background: the verdict keeps up with a burst while they follow, and a
``metrics`` document is published whenever windows finish. On Ctrl-C / SIGTERM the windows
in flight are abandoned, so the agent exits in seconds at any depth. A failing
update is published as an ``error`` document and the next one is tried: slices keep flowing.
Every ``analysis.pictures_every_slices`` slices (and at the end) it asks the picture thread
(:class:`agent.pictures.PictureWorker`) to redraw the pictures beside the volume.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from agent.analysis import VolumeAnalysis
from agent.config import Config, ConfigError
from agent.events import EventStream
from agent.pictures import PictureWorker
from processing.phases import Phases
from processing.rev import RevTracker, default_tracked, table1_metrics

__all__ = ["AnalysisWorker", "CommittedView"]

log = logging.getLogger(__name__)


class CommittedView:
    """Read-only view of the first `depth` slices of a Zarr array (what the store has committed).

    An append resizes the array before it commits the slice, so readers must not trust the
    array's own shape; this view pins it.
    """

    def __init__(self, array, depth: int):
        self._array = array
        self.shape = (int(depth), *array.shape[1:])
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        first = key[0]
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            key = (slice(start, stop, step), *key[1:])
        elif isinstance(first, int) and not -self.shape[0] <= first < self.shape[0]:
            raise IndexError(f"slice {first} is beyond the committed depth {self.shape[0]}")
        elif isinstance(first, int) and first < 0:
            key = (first + self.shape[0], *key[1:])
        return self._array[key]

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype)


def _tracked(names, phases: Phases, transport_axis: int):
    """The REV metrics to follow: the configured names, or the default tracked set."""
    if names is None:
        return default_tracked(phases, transport_axis=transport_axis)
    available = {m.name: m for m in table1_metrics(phases, transport_axis=transport_axis, expensive=True)}
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ConfigError(f"rev.tracked: unknown metrics {unknown}; available: {sorted(available)}")
    return tuple(available[name] for name in names)


def planned_slices(config: Config, dz_um: float) -> int | None:
    """The REV horizon in slices: ``acquisition.planned_depth_um`` over the slice spacing, else
    ``acquisition.planned_slices``, else None (unknown)."""
    acq = config.acquisition
    if acq.planned_depth_um is not None:
        return max(1, math.ceil(acq.planned_depth_um / dz_um - 1e-9))
    return acq.planned_slices


class AnalysisWorker:
    """Runs the metrics and the REV decision in its own thread.

    Parameters
    ----------
    events : EventStream
        Where ``metrics``, ``rev``, ``stop`` and ``error`` documents go.
    phases : Phases
    config : Config
        Uses the ``analysis`` and ``rev`` sections.
    """

    def __init__(self, events: EventStream, *, phases: Phases, config: Config):
        self.events = events
        self.phases = phases
        self.config = config
        self._store = None
        self._analysis: VolumeAnalysis | None = None
        self._rev: RevTracker | None = None
        self._tracked = ()
        self._pictures: PictureWorker | None = None
        self._pictures_depth = 0
        self._cond = threading.Condition()
        self._wanted = 0
        self._wanted_time: float | None = None  # when the last notified depth was committed (slice cadence)
        self._done = 0
        self._final = False
        self._draining = False  # someone waits for every notified depth: the remainder is due
        self._busy = False
        self._closing = False
        self._windows_finished = False  # background expensive windows are ready to publish
        self._thread = threading.Thread(target=self._run, name="revwatch analysis", daemon=True)
        self._thread.start()

    def attach(self, store) -> None:
        """Analyse `store` from now on (called once the volume exists)."""
        cfg = self.config
        transport_axis = "zyx".index(cfg.analysis.transport_axis)
        with self._cond:
            self._store = store
            self._analysis = VolumeAnalysis(
                store.labels,
                spacing_um=store.spacing_um,
                phases=self.phases,
                transport_axis=transport_axis,
                network=cfg.analysis.network(self.phases),
                scheduler=cfg.analysis.scheduler,
                expensive_every_slices=cfg.analysis.expensive_every_slices,
                background=True,
                on_windows_done=self._windows_done,
            )
            self._tracked = _tracked(cfg.rev.tracked, self.phases, transport_axis)
            if cfg.analysis.pictures_every_slices and self._pictures is None:
                self._pictures = PictureWorker(store, phases=self.phases)
            self._rev = RevTracker(
                spacing_um=store.spacing_um,
                metrics=self._tracked,
                tolerance=cfg.rev.tolerance,
                confidence=cfg.rev.confidence,
                planned_depth_slices=planned_slices(cfg, store.spacing_um[0]),
                trend_false_alarm=cfg.rev.trend_false_alarm,
                min_depth_um=cfg.rev.min_depth_um,
                rng=0,
            )
            if store.depth:
                self._wanted = store.depth
                self._cond.notify_all()

    def notify(self, depth: int, *, final: bool = False) -> None:
        """The volume now holds `depth` committed slices; `final` forces a refresh of every metric
        (the REV decision is updated only when new slices came: a repeat would count as a hold)."""
        with self._cond:
            if int(depth) > self._wanted:
                self._wanted, self._wanted_time = int(depth), time.monotonic()
            self._final = self._final or final
            self._cond.notify_all()

    def _windows_done(self) -> None:
        with self._cond:
            self._windows_finished = True
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every notified depth has been analysed (the last few slices too, fewer than
        ``analysis.every_slices``); False on timeout."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(
                    lambda: not self._busy and self._done >= self._wanted and not self._final, timeout_s
                )
            finally:
                self._draining = False

    @property
    def pictures(self) -> dict[str, str]:
        """{name: path} of the pictures written beside the volume so far (empty when off)."""
        return {} if self._pictures is None else self._pictures.paths

    def close(self, *, finish: bool = True) -> None:
        """Stop the thread; without `finish` (an interrupted run) the background windows and the
        pictures not drawn yet are abandoned."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        if self._analysis is not None:
            self._analysis.close()
        if self._pictures is not None:
            self._pictures.close(finish=finish)

    def _due(self) -> bool:
        if self._analysis is None or self._wanted <= self._done:
            # finished background windows are published (and the next ones started) at once
            return (self._final or self._windows_finished) and self._analysis is not None and self._wanted > 0
        return (self._final or self._draining or self._wanted - self._done >= self.config.analysis.every_slices
                or self._done == 0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._due())
                if self._closing:
                    return
                depth, final, when = self._wanted, self._final, self._wanted_time
                self._final = self._windows_finished = False
                self._busy = True
            try:
                self._update(depth, final=final, time_s=when)
            except Exception as exc:  # noqa: BLE001 - a failed refresh must never stop acquisition
                log.exception("analysis at depth %d failed", depth)
                self.events.emit("error", {
                    "kind": "analysis",
                    "message": f"metrics/REV update at depth {depth} failed: {type(exc).__name__}: {exc}",
                    "critical": False,
                })
            finally:
                with self._cond:
                    self._done = max(self._done, depth)
                    self._busy = False
                    self._cond.notify_all()

    def _update(self, depth: int, *, final: bool, time_s: float | None) -> None:
        # The volume's z step follows the true slice positions (agent.pipeline): measure with today's.
        spacing = tuple(self._store.spacing_um)
        if spacing != tuple(self._analysis.spacing_um):
            self._analysis.spacing_um = spacing
            self._rev.spacing = spacing
        metrics = self._analysis.update(depth, full=final)
        self.events.emit("metrics", metrics)
        if depth > self._rev.depth:  # else only expensive windows came in: nothing new for the REV decision
            rev = self._rev.update(CommittedView(self._store.labels, depth),
                                   values=self._analysis.rev_values(metrics), time_s=time_s)
            self.events.emit("rev", rev)
        every = self.config.analysis.pictures_every_slices
        if self._pictures is not None and (final or depth // every > self._pictures_depth // every
                                           or not self._pictures_depth):
            self._pictures_depth = depth
            self._pictures.request(depth, rev_history={m.name: self._rev.history(m.name) for m in self._tracked},
                                   tolerance=self.config.rev.tolerance)
        stop = self._rev.stop
        if stop is not None and not self.events.stopped:
            log.info("representative at depth %d: %s", depth, stop.get("reason"))
            self.events.emit("stop", stop)

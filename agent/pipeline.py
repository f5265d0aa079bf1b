"""The agent: slices in, OME-Zarr volume and one event stream out.

Threads, each with one job:

- the watcher's (``agent.watch``) hands complete slice files over in index order, to a queue;
- the slice thread (the caller of :meth:`Agent.run`) reads, corrects, aligns, segments and
  appends each slice (``processing.chain``), and emits ``status``;
- the analysis thread (``agent.analysis``) refreshes the metrics and the REV verdict with Dask
  every few slices, and emits ``metrics``, ``rev`` and, once, the latched ``stop``;
- the publisher's threads (``agent.publish``) send every document over ZeroMQ.

The volume is the critical sink: a failed append stops the run with a clear error. A failing
publisher, monitor or metrics job is reported as an ``error`` document and the slices keep
flowing. Every skipped input (unreadable file, wrong shape, gap, duplicate) is recorded in the
volume's attributes and published: nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.calibrate import phase_check_documents, region_mask_from_config, training_labels_from_config
from agent.analysis_worker import AnalysisWorker
from agent.config import Config, ConfigError
from agent.events import EventStream, JsonLinesSink
from agent.publish import Publisher
from agent.store import StoreError, VolumeStore
from agent.watch import SliceWatcher
from processing.chain import SliceChain
from processing.errors import CalibrationError, RevwatchError, SliceReadError, SliceShapeError
from processing.io import SliceImage, read_fei_project_spacing_um, read_slice

__all__ = ["Agent", "RunSummary"]

log = logging.getLogger(__name__)

_RATE_WINDOW = 20


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for the command line and for scripts."""

    run_id: str
    volume: Path
    depth_slices: int
    slices_processed: int
    slices_skipped: int
    stop: dict | None

    def describe(self) -> str:
        representative = bool(self.stop and (self.stop.get("rev") or {}).get("representative"))
        verdict = (
            f"REPRESENTATIVE at {self.stop.get('depth_slices')} slices: {self.stop.get('reason')}"
            if representative
            else "not representative yet"
        )
        return (
            f"run {self.run_id}: {self.slices_processed} slices processed this run, {self.slices_skipped} skipped; "
            f"volume {self.volume} holds {self.depth_slices} slices; {verdict}"
        )


class Agent:
    """One run of the agent on one acquisition folder.

    Parameters
    ----------
    config : Config
        The validated configuration; ``acquisition.folder`` is required.
    events : EventStream, optional
        The stream to emit on (tests and the demo subscribe to it); default a new one.
    """

    def __init__(self, config: Config, *, events: EventStream | None = None):
        if config.acquisition.folder is None:
            raise ConfigError("acquisition.folder is not set: which folder does the microscope write into?")
        self.config = config
        self.folder = Path(config.acquisition.folder).absolute()
        self.volume_path = config.volume_path()
        self.events = events or EventStream()
        self.phases = config.phases.to_phases()
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._store: VolumeStore | None = None
        self._chain: SliceChain | None = None
        self._seen = 0
        self._processed = 0
        self._skipped = 0
        self._last = None
        self._done_times: deque = deque(maxlen=_RATE_WINDOW)
        self._hook_ran = False
        self._pending_skips: list[dict] = []  # skipped before the volume exists (calibration)
        self._phase_check_reported = False

    # -- inputs from the watcher (its thread): only queue them -----------------------------

    def _on_ready(self, path: Path, index: int) -> None:
        self._ready.put(("slice", path, index))

    def _on_rejected(self, path: Path, reason: str) -> None:
        self._ready.put(("rejected", path, reason))

    def _on_gap(self, index: int, reason: str) -> None:
        self._ready.put(("gap", index, reason))

    # -- the run -----------------------------------------------------------------------------

    def run(self, *, stop_event: threading.Event | None = None, idle_exit_s: float | None = None) -> RunSummary:
        """Process slices until stopped; returns what was done.

        Parameters
        ----------
        stop_event : threading.Event, optional
            Set it to end the run: slices already queued are processed, the metrics are refreshed
            one last time, and the volume is flushed. SIGTERM and Ctrl-C do the same.
        idle_exit_s : float, optional
            End the run after this long without a new slice.

        Raises
        ------
        StoreError
            The volume cannot be written (disk full, permissions): the run stops, the volume
            stays readable up to the last complete slice.
        RevwatchError
            The folder does not exist, the port is taken, the configuration does not fit.
        """
        if stop_event is not None:
            self._stop = stop_event
        if not self.folder.is_dir():
            raise RevwatchError(f"acquisition folder {self.folder} does not exist (or is not a folder)")
        cfg = self.config
        with contextlib.ExitStack() as stack:
            publisher = Publisher(
                self.events,
                cfg.publish.endpoint,
                snapshot_endpoint=cfg.publish.snapshot_endpoint,
                curve_keys=cfg.publish.keys_dir,
                insecure=cfg.publish.insecure,
                heartbeat_s=cfg.publish.heartbeat_interval_s,
            )
            stack.callback(publisher.close)
            self._open_store_if_resuming()
            stack.callback(self._close_store)
            sink = JsonLinesSink(self.volume_path.with_name(self.volume_path.name + ".events.jsonl"))
            self.events.subscribe(sink, name="json-lines log")
            stack.callback(sink.close)
            self._analysis = AnalysisWorker(
                self.events,
                phases=self.phases,
                config=cfg,
            )
            stack.callback(self._analysis.close)
            if self._store is not None:
                self._analysis.attach(self._store)
            self._install_signal_handlers(stack)
            watcher = SliceWatcher(
                self.folder,
                on_ready=self._on_ready,
                on_rejected=self._on_rejected,
                on_gap=self._on_gap,
                polling=cfg.acquisition.polling,
                poll_interval_s=cfg.acquisition.poll_interval_s,
                settle_s=cfg.acquisition.settle_s,
                incomplete_timeout_s=cfg.acquisition.incomplete_timeout_s,
                gap_timeout_s=cfg.acquisition.gap_timeout_s,
                done=self._store.done if self._store else None,
            )
            watcher.start()
            stack.callback(watcher.stop)
            log.info("run %s: watching %s, volume %s, publishing on %s",
                     self.events.run_id, self.folder, self.volume_path, publisher.endpoint)
            self._status(state="waiting")
            self._loop(watcher, idle_exit_s)
            self._finish()
        return RunSummary(
            run_id=self.events.run_id,
            volume=self.volume_path,
            depth_slices=self._store.depth if self._store else 0,
            slices_processed=self._processed,
            slices_skipped=self._skipped,
            stop=self.events.latest("stop"),
        )

    def _install_signal_handlers(self, stack: contextlib.ExitStack) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, lambda *_: self._stop.set())
            stack.callback(signal.signal, sig, previous)

    def _loop(self, watcher: SliceWatcher, idle_exit_s: float | None) -> None:
        last_activity = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self._ready.get(timeout=0.2)
            except queue.Empty:
                item = None
            self._seen = watcher.seen_count
            if item is not None:
                last_activity = time.monotonic()
                self._handle(item)
            elif idle_exit_s is not None and time.monotonic() - last_activity > idle_exit_s:
                log.info("no new slice for %.0f s: ending the run", idle_exit_s)
                break
            self._run_stop_hook()
            if self.events.stopped and self.config.rev.exit_when_representative:
                log.info("representative: ending the run (--exit-when-representative)")
                break
        # Drain what the watcher already handed over: it was complete and must not be lost.
        while True:
            try:
                self._handle(self._ready.get_nowait())
            except queue.Empty:
                break

    def _handle(self, item) -> None:
        kind = item[0]
        if kind == "slice":
            _, path, index = item
            # The watcher parsed this file to know it is complete but kept no pixels (a burst of
            # hundreds of 16 Mpx slices would not fit in memory): read it again, from the page cache.
            try:
                image = read_slice(path)
            except SliceReadError as exc:
                self._skip(reason=exc.reason, index=index, file=path)
                return
            self._process(image)
        elif kind == "rejected":
            _, path, reason = item
            self._skip(reason=reason, file=path)
        else:
            _, index, reason = item
            self._skip(reason=reason, index=index)

    # -- one slice -------------------------------------------------------------------------

    def _process(self, image: SliceImage) -> None:
        try:
            if self._chain is None:
                self._chain = SliceChain.from_config(self.config.processing, phases=self.phases,
                                                     region=region_mask_from_config(self.config),
                                                     training_labels=training_labels_from_config(self.config),
                                                     smooth_px=self.config.phases.smooth_px)
            done = self._chain.push(image)
        except SliceShapeError as exc:
            self._skip(reason=str(exc), index=image.index, file=image.source)
            return
        if self._chain.calibrating:
            self._status(state="calibrating", last=image)
        self._report_phase_check()
        for processed in done:
            self._append(processed)

    def _report_phase_check(self) -> None:
        """Once, after calibration: every mismatch of the phase model as an ``error`` document;
        with ``phases.on_mismatch = "refuse"`` the run stops before a slice is stored."""
        check = self._chain.phase_check if self._chain is not None else None
        if check is None or self._phase_check_reported:
            return
        self._phase_check_reported = True
        refuse = self.config.phases.on_mismatch == "refuse" and not check.ok
        for body in phase_check_documents(check):
            self.events.emit("error", {**body, "critical": refuse})
        if refuse:
            raise CalibrationError("the calibration slices do not show the named phases (phases.on_mismatch = "
                                   "'refuse'):\n  " + "\n  ".join(check.warnings))

    def _append(self, processed) -> None:
        if self._store is None:
            self._create_store(processed)
        provenance = {
            "source": processed.source,
            "arrival_time_unix_s": processed.arrival_time_unix_s,
            "shift_px": list(processed.drift.shift_px),
            "drift_confidence": processed.drift.confidence,
            "drift_reliable": processed.drift.reliable,
            "uncertain_share": processed.uncertain_share,
            "z_um": processed.z_um,
        }
        try:
            self._store.append(processed.index, processed.grey, processed.labels, provenance)
        except StoreError as exc:
            self.events.emit("error", {"kind": "store", "message": str(exc), "critical": True})
            raise
        self._processed += 1
        self._done_times.append(time.monotonic())
        self._last = processed
        if not processed.drift.reliable:
            self.events.emit("error", {
                "kind": "drift",
                "message": f"slice {processed.index}: drift estimate unreliable (confidence "
                           f"{processed.drift.confidence:.2f}); the previous shift was kept",
                "file": processed.source,
                "index": processed.index,
                "critical": False,
            })
        self._status(state="processing")
        self._analysis.notify(self._store.depth)

    def _create_store(self, first) -> None:
        spacing = self._spacing_um(first)
        self._store = VolumeStore.create(
            self.volume_path,
            canvas_shape=first.grey.shape,
            dtype=first.grey.dtype,
            spacing_um=spacing,
            phases=self.phases,
            run_attrs={"run_id": self.events.run_id, "folder": str(self.folder), **self._chain.state()},
        )
        for skipped in self._pending_skips:
            self._store.record_skipped(**{k: v for k, v in skipped.items() if v is not None})
        self._pending_skips.clear()
        self._analysis.attach(self._store)
        log.info("created volume %s: canvas %s, spacing %s um", self.volume_path, first.grey.shape, spacing)

    def _open_store_if_resuming(self) -> None:
        if not self.volume_path.exists():
            return
        self._store = VolumeStore.open(self.volume_path)
        if self._store.phases.names != self.phases.names:
            raise ConfigError(
                f"volume {self.volume_path} holds phases {list(self._store.phases.names)}, the configuration says "
                f"{list(self.phases.names)}: resume with the same phases, or write a new volume (volume.path)"
            )
        attrs = self._store.run_attrs
        if self._store.depth:
            last = self._store.slices[-1]
            self._chain = SliceChain.resume(
                attrs,
                config=self.config.processing,
                phases=self.phases,
                last_aligned=np.asarray(self._store.grey[self._store.depth - 1]),
                last_shift_px=tuple(last.get("shift_px", (0.0, 0.0))),
                region=region_mask_from_config(self.config),
            )
        log.info("resuming volume %s at depth %d", self.volume_path, self._store.depth)

    def _spacing_um(self, first) -> tuple[float, float, float]:
        acq = self.config.acquisition
        if acq.pixel_size_nm is not None:
            dy = dx = acq.pixel_size_nm / 1000.0
        elif first.pixel_size_um is not None:
            dy, dx = first.pixel_size_um
        else:
            raise ConfigError(
                f"slice {first.source} carries no pixel size in its metadata: set acquisition.pixel_size_nm"
            )
        if acq.slice_spacing_nm is not None:
            dz = acq.slice_spacing_nm / 1000.0
        else:
            dz = self._chain.slice_spacing_um or read_fei_project_spacing_um(self.folder)
            if dz is None:
                raise ConfigError(
                    f"no slice spacing found (no EMProject.emxml in {self.folder}, no z in the file names): "
                    "set acquisition.slice_spacing_nm"
                )
        return (float(dz), float(dy), float(dx))

    # -- skipped inputs and status -----------------------------------------------------------

    def _skip(self, *, reason: str, index: int | None = None, file=None) -> None:
        self._skipped += 1
        where = f"slice {index}" if index is not None else ""
        where += f" ({file})" if file is not None else ""
        log.warning("skipped %s: %s", where.strip(), reason)
        if self._store is not None:
            self._store.record_skipped(reason=reason, index=index, file=file, time_unix_s=time.time())
        else:
            self._pending_skips.append({"reason": reason, "index": index, "file": file, "time_unix_s": time.time()})
        body = {"kind": "input", "message": f"skipped {where.strip()}: {reason}", "critical": False}
        if index is not None:
            body["index"] = int(index)
        if file is not None:
            body["file"] = str(file)
        self.events.emit("error", body)
        self._status(state="processing" if self._processed else "waiting")

    def _status(self, *, state: str, last=None) -> None:
        times = self._done_times
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        done = self._last
        body = {
            "state": state,
            "folder": str(self.folder),
            "volume": str(self.volume_path),
            "slices_seen": max(self._seen, self._processed + self._skipped),
            "slices_processed": self._processed,
            "slices_skipped": self._skipped,
            "depth_slices": self._store.depth if self._store else 0,
            "last_index": done.index if done else (last.index if last else None),
            "drift_px": list(done.drift.shift_px) if done else None,
            "drift_confidence": done.drift.confidence if done else None,
            "uncertain_share": done.uncertain_share if done else None,
            "rate_slices_per_s": rate,
        }
        self.events.emit("status", body)

    # -- the end -------------------------------------------------------------------------------

    def _run_stop_hook(self) -> None:
        command = self.config.rev.on_stop_command
        stop = self.events.latest("stop")
        if stop is None or self._hook_ran or not command:
            return
        self._hook_ran = True
        log.info("representative: running the stop hook %r", command)
        try:
            subprocess.Popen(shlex.split(command, posix=True))
        except OSError as exc:
            self.events.emit("error", {"kind": "hook", "message": f"stop hook {command!r} failed: {exc}", "critical": False})

    def _finish(self) -> None:
        if self._chain is not None and self._chain.calibrating:
            # Fewer slices than the calibration needs arrived: calibrate on what there is.
            done = self._chain.flush()
            self._report_phase_check()
            for processed in done:
                self._append(processed)
        if self._store is not None:
            self._analysis.notify(self._store.depth, final=True)
            self._analysis.wait_idle()
        self._run_stop_hook()
        self._status(state="stopped")

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()

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
flowing. Every skipped input (unreadable file, wrong shape, gap, duplicate, another pixel size)
is recorded in the volume's attributes and published: nothing is dropped silently.

Geometry: the pixel size is the metadata's (or the configured one, which must agree within 1 %
unless ``acquisition.force_pixel_size``), and every slice's metadata is checked against the first
slice's: slices at another magnification are resampled onto the volume's pixel size (said once per
change; ``acquisition.on_pixel_size_change = "refuse"`` skips them). The z of every slice is its true position
(:mod:`processing.zaxis`), kept in its provenance; the volume's z step is the mean true step of
its slices, re-stated as slices arrive. A change of step is reported (``error`` kind ``z_step``).

Start: :meth:`Agent.preflight` checks everything that can be known before a slice arrives and
reports every problem in one message; the first slice's checks (pixel size, z) also come in one
message. A refused start leaves no file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
from agent.doctor import FAIL, pixel_size_mismatch, start_checks
from agent.events import EventStream, JsonLinesSink
from agent.publish import Publisher
from agent.store import StoreError, VolumeStore
from agent.watch import SliceWatcher
from processing.align import resample_to_pixel_size
from processing.chain import SliceChain
from processing.errors import CalibrationError, SliceReadError, SliceShapeError
from processing.io import SliceImage, read_fei_project_spacing_um, read_slice
from processing.zaxis import ZPositions, mean_step_um

__all__ = ["Agent", "RunSummary"]

log = logging.getLogger(__name__)

_RATE_WINDOW = 20
# A slice whose pixel size differs more than this from the first slice's is at another magnification.
_PIXEL_SIZE_TOLERANCE = 0.01
# The INFO log sums the run up every this many slices or seconds, whichever comes first.
_SUMMARY_EVERY_SLICES = 50
_SUMMARY_EVERY_S = 60.0
_Z_SPACING_METHOD = ("mean true step: dz = (z_last - z_first) / (n - 1) over the volume's slices, re-stated "
                     "as slices arrive; not resampled; each slice's true z is in revwatch.slices[i].z_um")


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
        self._flagged = 0  # slices renormalised or held back by the brightness/charging check
        self._held = 0
        self._last = None
        self._done_times: deque = deque(maxlen=_RATE_WINDOW)
        self._hook_ran = False
        self._interrupted = False
        self._pending_skips: list[dict] = []  # skipped before the volume exists (calibration)
        self._nominal_step_um, self._nominal_source = self._nominal_step()
        self._z = ZPositions(nominal_step_um=self._nominal_step_um)
        self._z_source: str | None = None
        self._z_first_um: float | None = None
        self._pixel_reference: tuple[float, float] | None = None  # the first slice's metadata
        self._frame_pixel_um: tuple[float, float] | None = None  # the pixel size the slices now come at
        self._resampled_from: dict[int, list[float]] = {}  # slice index -> its own pixel size (um)
        self._first_checked = False
        self._summary_at = (time.monotonic(), 0)
        self._analysis: AnalysisWorker | None = None
        self._phase_check_reported = False
        self._recalibrations_reported = 0
        self._wandering = False  # the last slice's estimated drift error exceeded 1 px
        self._wander: dict | None = None  # the run attribute drift_wander (see _report_wander)

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
        self.preflight()
        events_log = self.volume_path.with_name(self.volume_path.name + ".events.jsonl")
        new_events_log = not events_log.exists()
        try:
            self._run(events_log, idle_exit_s)
        except ConfigError:
            if self._store is None and new_events_log:
                events_log.unlink(missing_ok=True)  # a refused start leaves nothing behind
            raise
        return RunSummary(
            run_id=self.events.run_id,
            volume=self.volume_path,
            depth_slices=self._store.depth if self._store else 0,
            slices_processed=self._processed,
            slices_skipped=self._skipped,
            stop=self.events.latest("stop"),
        )

    def preflight(self) -> None:
        """Check, before any slice is needed, everything that can be known; report every problem at once.

        The folder, its detector folders, the pixel size and slice spacing of the slices already
        there (with the project's ``EMProject.emxml``) and the volume to resume.

        Raises
        ------
        ConfigError
            One message listing every problem and what to do about it.
        """
        failed = [c for c in start_checks(self.config) if c.status == FAIL]
        if failed:
            lines = [f"  - {c.name}: {c.detail}" + (f" -> {c.fix}" if c.fix else "") for c in failed]
            raise ConfigError(f"cannot start ({len(failed)} problem{'s' * (len(failed) > 1)}):\n" + "\n".join(lines))
        log.info("start checks passed: folder %s, volume %s", self.folder, self.volume_path)

    def _run(self, events_log: Path, idle_exit_s: float | None) -> None:
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
            sink = JsonLinesSink(events_log)
            self.events.subscribe(sink, name="json-lines log")
            stack.callback(sink.close)
            self._analysis = AnalysisWorker(
                self.events,
                phases=self.phases,
                config=cfg,
            )
            stack.callback(lambda: self._analysis.close(finish=not self._interrupted))
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
                detector=cfg.acquisition.detector,
                slice_folder=Path(self._store.slices[0]["source"]).parent if self._store and self._store.depth else None,
            )
            watcher.start()
            stack.callback(watcher.stop)
            log.info("run %s: watching %s, volume %s, publishing on %s",
                     self.events.run_id, self.folder, self.volume_path, publisher.endpoint)
            self._status(state="waiting")
            self._loop(watcher, idle_exit_s)
            self._finish()

    def _install_signal_handlers(self, stack: contextlib.ExitStack) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._interrupt)
            stack.callback(signal.signal, sig, previous)

    def _interrupt(self, *_) -> None:
        """Ctrl-C / SIGTERM: end the run now; the slices handed over are still stored, but the
        last refresh skips the whole-volume expensive metrics (seconds at any depth)."""
        self._interrupted = True
        self._stop.set()

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
            elif self._labels_waiting_too_long(last_activity):
                # no following slice came in time: decide the waiting labels with the context there is
                for processed in self._chain.decide_waiting():
                    self._append(processed)
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

    def _labels_waiting_too_long(self, last_activity: float) -> bool:
        """True when slices wait for their 3-D context longer than a few slice intervals."""
        if self._chain is None or not self._chain.label_delay_slices:
            return False
        wait_s = self.config.processing.context_wait_s
        if wait_s is None:
            times = np.asarray(self._done_times, dtype=float)
            interval = float(np.median(np.diff(times))) if times.size > 2 else 0.0
            wait_s = min(max(3.0 * interval, 2.0), 600.0)
        return time.monotonic() - last_activity > wait_s

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
            image = self._admit(image)
            if image is not None:
                self._process(image)
        elif kind == "rejected":
            _, path, reason = item
            self._skip(reason=reason, file=path)
        else:
            _, index, reason = item
            self._skip(reason=reason, index=index)

    # -- geometry: pixel size and true z ---------------------------------------------------

    def _nominal_step(self) -> tuple[float | None, str]:
        """The nominal slice spacing (um) and where it comes from: configured, else the project."""
        acq = self.config.acquisition
        project_um = read_fei_project_spacing_um(self.folder) if self.folder.is_dir() else None
        if acq.slice_spacing_nm is not None:
            configured_um = acq.slice_spacing_nm / 1000.0
            if project_um is not None and abs(project_um - configured_um) > 0.01 * project_um:
                log.warning("acquisition.slice_spacing_nm = %g nm differs from the project's ZCutSpacing %.4g nm: "
                            "the configured value is used", acq.slice_spacing_nm, project_um * 1000)
            return configured_um, "acquisition.slice_spacing_nm"
        if project_um is not None:
            return project_um, "EMProject.emxml ZCutSpacing"
        return None, ""

    def _check_first_slice(self, image: SliceImage) -> None:
        """Everything the first slice tells, checked at once: pixel size and z (one message)."""
        self._first_checked = True
        acq = self.config.acquisition
        if self._nominal_step_um is None:  # the project file may have been written since the start
            self._nominal_step_um, self._nominal_source = self._nominal_step()
            self._z.nominal_step_um = self._nominal_step_um
        problems = []
        if acq.pixel_size_nm is None and image.pixel_size_um is None and self._pixel_reference is None:
            problems.append(f"no pixel size in the metadata of {image.source} -> set acquisition.pixel_size_nm")
        if acq.pixel_size_nm is not None:
            mismatch = pixel_size_mismatch(acq.pixel_size_nm, image.pixel_size_um)
            if mismatch and acq.force_pixel_size:
                log.warning("%s (%s): the configured value is used (acquisition.force_pixel_size)", mismatch, image.source)
            elif mismatch:
                problems.append(f"{mismatch} ({image.source}) -> remove acquisition.pixel_size_nm to use the metadata, "
                                "or set acquisition.force_pixel_size = true")
        if self._z.z_of(image.index, image.z_um) is None:
            problems.append(f"no slice spacing: no z in the file name {Path(image.source).name}, no EMProject.emxml "
                            f"in or above {self.folder} -> set acquisition.slice_spacing_nm")
        if problems:
            raise ConfigError(f"cannot use the first slice ({len(problems)} problem{'s' * (len(problems) > 1)}):\n"
                              + "\n".join(f"  - {p}" for p in problems))
        source = "file names" if image.z_um is not None else self._nominal_source
        log.info("first slice %s: %d x %d px %s, pixel %s, z from the %s", Path(image.source).name,
                 *image.pixels.shape, image.pixels.dtype,
                 f"{acq.pixel_size_nm:g} nm (configured)" if acq.pixel_size_nm is not None
                 else f"{image.pixel_size_um[1] * 1000:.4g} nm (metadata)", source)

    def _admit(self, image: SliceImage) -> SliceImage | None:
        """Check a slice's geometry; the slice with its true z, or None when refused (recorded)."""
        if not self._first_checked:
            self._check_first_slice(image)
        size = image.pixel_size_um
        reference = self._pixel_reference
        if size is not None and reference is None:
            self._pixel_reference = reference = self._frame_pixel_um = tuple(size)
        elif size is not None and any(abs(a - b) > _PIXEL_SIZE_TOLERANCE * b for a, b in zip(size, reference)):
            differs = (f"pixel size {size[1] * 1000:.4g} nm ({size[0] * 1000:.4g} x {size[1] * 1000:.4g}) differs "
                       f"from the volume's {reference[1] * 1000:.4g} nm by more than 1 %: magnification changed?")
            if self.config.acquisition.on_pixel_size_change == "refuse":
                self._skip(kind="pixel_size", index=image.index, file=image.source, reason=differs)
                return None
            image = self._resample(image, tuple(size), reference, differs)
        elif size is not None and self._frame_pixel_um not in (None, reference):
            self._frame_changed(image, tuple(size), f"pixel size back to the volume's {reference[1] * 1000:.4g} nm",
                                action="none")
        try:
            position = self._z.place(image.index, image.z_um)
        except ValueError as exc:
            self._skip(kind="z", index=image.index, file=image.source, reason=str(exc))
            return None
        if self._z_source is None:
            self._z_source = "file names" if image.z_um is not None else self._nominal_source
        if position.change is not None:
            log.warning("%s", position.change)
            self.events.emit("error", {"kind": "z_step", "message": position.change, "file": image.source,
                                       "index": image.index, "critical": False})
        return dataclasses.replace(image, z_um=position.z_um)

    def _resample(self, image: SliceImage, size, reference, differs: str) -> SliceImage:
        """The slice scaled about the field's centre onto the volume's pixel size
        (``acquisition.on_pixel_size_change = "resample"``)."""
        if self._frame_pixel_um != size:
            self._frame_changed(image, size, f"{differs} -> resampled onto the volume's pixel size from here on "
                                f"(the canvas it does not cover is unassigned; acquisition.on_pixel_size_change)",
                                action="resampled")
        pixels, _ = resample_to_pixel_size(image.pixels, size, reference)
        self._resampled_from[image.index] = list(size)
        return dataclasses.replace(image, pixels=pixels, pixel_size_um=reference)

    def _frame_changed(self, image: SliceImage, size, message: str, *, action: str) -> None:
        """Slices come at another pixel size from `image` on: said once, and the registration
        finds the new frame's margins."""
        self._frame_pixel_um = size
        message = f"slice {image.index}: {message}"
        log.warning("%s", message)
        self.events.emit("error", {"kind": "pixel_size", "message": message, "file": image.source,
                                   "index": image.index, "action": action, "critical": False})
        if self._chain is not None:
            self._chain.frame_changed()

    def _restate_z_spacing(self) -> None:
        """The volume's z step follows the true positions of its slices."""
        depth = self._store.depth
        last = self._store.slices[-1].get("z_um") if depth else None
        if depth < 2 or self._z_first_um is None or last is None:
            return
        dz = mean_step_um(self._z_first_um, last, depth)
        if dz is not None and abs(dz - self._store.spacing_um[0]) > 1e-9 * dz:
            self._store.set_z_spacing(dz)

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
        self._record_dropped()
        if self._chain.calibrating:
            # the chain logs each calibration attempt; the status says what it waits for
            self._status(state=self._chain.calibration_state, last=image)
        elif done and self._store is None:
            self._log_calibration(len(done) + self._chain.label_delay_slices)
        self._report_phase_check()
        self._report_recalibrations()
        for processed in done:
            self._append(processed)

    def _record_dropped(self) -> None:
        """Slices the chain gave up before calibrating (no contrast) are reported as skipped."""
        dropped, self._chain.dropped = self._chain.dropped, []
        for image, reason in dropped:
            self._skip(reason=reason, index=image.index, file=image.source)

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

    def _report_recalibrations(self) -> None:
        """Each re-calibration of the phase model (a named phase came into view after calibration)
        as an ``error`` document of kind ``phase_model``; the stored run attributes follow it."""
        recalibrations = self._chain.recalibrations if self._chain is not None else []
        for event in recalibrations[self._recalibrations_reported:]:
            self.events.emit("error", {"kind": "phase_model", "source": "segment", "index": event["index"],
                                       "message": event["message"], "critical": False})
            if self._store is not None:
                state = self._chain.state()
                self._store.update_run_attrs({key: state[key] for key in ("phase_model", "correction", "names_guessed")})
        self._recalibrations_reported = len(recalibrations)

    def _append(self, processed) -> None:
        if self._store is None:
            self._create_store(processed)
        provenance = {
            "source": processed.source,
            "arrival_time_unix_s": processed.arrival_time_unix_s,
            "shift_px": list(processed.drift.shift_px),
            "drift_confidence": processed.drift.confidence,
            "drift_reliable": processed.drift.reliable,
            "drift_residual_px": processed.drift.residual_px,
            "drift_wander": processed.drift.wander,
            "drift_cap_lost": processed.drift.cap_lost,
            "uncertain_share": processed.uncertain_share,
            "quality": processed.quality,
            "flag": processed.flag,
            "flag_reason": processed.flag_reason,
            "curtain": processed.curtain,
            "z_um": processed.z_um,
        }
        if processed.index in self._resampled_from:
            provenance["resampled_from_pixel_size_um"] = self._resampled_from.pop(processed.index)
        try:
            self._store.append(processed.index, processed.grey, processed.labels, provenance)
        except StoreError as exc:
            self.events.emit("error", {"kind": "store", "message": str(exc), "critical": True})
            raise
        if self._z_first_um is None:
            self._z_first_um = processed.z_um
        self._restate_z_spacing()
        self._processed += 1
        self._done_times.append(time.monotonic())
        self._last = processed
        self._log_summary()
        self._report_wander(processed)
        if processed.flag is not None:
            self._flagged += 1
            self._held += processed.flag == "held"
            action = ("held back: labelled unassigned (0)" if processed.flag == "held"
                      else "renormalised onto the reference levels")
            self.events.emit("error", {
                "kind": "brightness",
                "message": f"slice {processed.index}: {processed.flag_reason}; {action}",
                "file": processed.source,
                "index": processed.index,
                "action": processed.flag,
                "critical": False,
            })
        elif not processed.drift.reliable:
            self.events.emit("error", {
                "kind": "drift",
                "message": f"slice {processed.index}: drift estimate unreliable (confidence "
                           f"{processed.drift.confidence:.2f}); the shift predicted from the recent motion was kept",
                "file": processed.source,
                "index": processed.index,
                "critical": False,
            })
        self._status(state="processing")
        self._analysis.notify(self._store.depth)

    def _report_wander(self, processed) -> None:
        """When the estimated error of the applied shift first exceeds 1 px (and again after it
        came back below): an ``error`` document of kind ``drift``, and the run attribute
        ``drift_wander`` (the first slice flagged, how many, the largest estimated error; written
        then and at the end, as the attributes are rewritten whole), so that a bent stack is stated
        in the volume, not only in the per-slice provenance."""
        drift = processed.drift
        onset = drift.wander and not self._wandering
        self._wandering = drift.wander
        if not drift.wander:
            return
        wander = self._wander = self._wander or {"first_slice": processed.index, "slices": 0, "max_residual_px": 0.0}
        wander["slices"] += 1
        wander["max_residual_px"] = max(wander["max_residual_px"], round(float(drift.residual_px), 3))
        if onset:
            self.events.emit("error", {
                "kind": "drift",
                "message": f"slice {processed.index}: the stack may have wandered from the first slice's frame: "
                           f"estimated error of the applied shift {drift.residual_px:.1f} px (above 1 px); "
                           "registration on the sample cannot tell the structure's change from stage drift "
                           "(state processing.cap_rows if the slices show a cap)",
                "file": processed.source,
                "index": processed.index,
                "critical": False,
            })
            self._store.update_run_attrs({"drift_wander": wander})

    def _create_store(self, first) -> None:
        spacing = self._spacing_um(first)
        self._store = VolumeStore.create(
            self.volume_path,
            canvas_shape=first.grey.shape,
            dtype=first.grey.dtype,
            spacing_um=spacing,
            phases=self.phases,
            run_attrs={
                "run_id": self.events.run_id,
                "folder": str(self.folder),
                "pixel_size_um_metadata": self._pixel_reference,
                "z_spacing": {"method": _Z_SPACING_METHOD, "z_source": self._z_source,
                              "nominal_step_um": self._nominal_step_um},
                **self._chain.state(),
            },
        )
        for skipped in self._pending_skips:
            self._store.record_skipped(**{k: v for k, v in skipped.items() if v is not None})
        self._pending_skips.clear()
        self._analysis.attach(self._store)

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
        if attrs.get("pixel_size_um_metadata"):
            self._pixel_reference = tuple(attrs["pixel_size_um_metadata"])
        self._wander = attrs.get("drift_wander")  # a resumed run adds to the wander already stated
        if self._store.depth:
            last = self._store.slices[-1]
            self._z_first_um = self._store.slices[0].get("z_um")
            if last.get("z_um") is not None:
                self._z.place(last["index"], last["z_um"])  # the next slice's step is measured from it
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
        else:
            dy, dx = self._pixel_reference or first.pixel_size_um  # checked at the first slice
        dz = self._z.mean_step_um
        if dz is None:
            raise ConfigError(f"slice {first.source}: one slice with a z of its own says nothing of the z step: "
                              "set acquisition.slice_spacing_nm")
        return (float(dz), float(dy), float(dx))

    def _log_calibration(self, n_slices: int) -> None:
        state = self._chain.state()
        roi = state.get("roi")
        thresholds = (state.get("phase_model") or {}).get("thresholds") or []
        log.info("calibrated on %d slices: alignment region %s; phase thresholds %s (grey levels)", n_slices,
                 "whole slice" if roi is None else f"rows {roi[0]}-{roi[1]}, columns {roi[2]}-{roi[3]}",
                 [round(float(t), 1) for t in thresholds])

    # -- skipped inputs and status -----------------------------------------------------------

    def _skip(self, *, reason: str, index: int | None = None, file=None, kind: str = "input") -> None:
        self._skipped += 1
        where = f"slice {index}" if index is not None else ""
        where += f" ({file})" if file is not None else ""
        log.warning("skipped %s: %s", where.strip(), reason)
        if self._store is not None:
            self._store.record_skipped(reason=reason, index=index, file=file, time_unix_s=time.time())
        else:
            self._pending_skips.append({"reason": reason, "index": index, "file": file, "time_unix_s": time.time()})
        body = {"kind": kind, "message": f"skipped {where.strip()}: {reason}", "critical": False}
        if index is not None:
            body["index"] = int(index)
        if file is not None:
            body["file"] = str(file)
        self.events.emit("error", body)
        self._status(state="processing" if self._processed else "waiting")

    def _log_summary(self, *, force: bool = False) -> None:
        """One INFO line every few slices or seconds: what the run has done."""
        now = time.monotonic()
        since, count = self._summary_at
        if not force and self._processed - count < _SUMMARY_EVERY_SLICES and now - since < _SUMMARY_EVERY_S:
            return
        self._summary_at = (now, self._processed)
        rate = (self._processed - count) / (now - since) if now > since else 0.0
        done = self._last
        log.info("%d slices processed, %d skipped, volume %d slices (%.3g um deep, dz %.4g nm), %.2f slices/s; "
                 "last slice %s, drift (y, x) %s px, confidence %.2f",
                 self._processed, self._skipped, self._store.depth if self._store else 0,
                 self._store.depth * self._store.spacing_um[0] if self._store else 0.0,
                 self._store.spacing_um[0] * 1000 if self._store else float("nan"), rate,
                 done.index if done else None,
                 tuple(round(v, 2) for v in done.drift.shift_px) if done else None,
                 done.drift.confidence if done else float("nan"))

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
            "drift_residual_px": done.drift.residual_px if done else None,
            "drift_wander": done.drift.wander if done else None,
            "drift_cap_lost": done.drift.cap_lost if done else None,
            "uncertain_share": done.uncertain_share if done else None,
            "label_delay_slices": self._chain.label_delay_slices if self._chain else 0,
            "phase_recalibrations": len(self._chain.recalibrations) if self._chain else 0,
            "quality": done.quality if done else None,
            "slices_flagged": self._flagged,
            "slices_held": self._held,
            "rate_slices_per_s": rate,
            "pictures": self._analysis.pictures if self._analysis is not None else {},
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
            # The stop document (the `stop` topic's body, JSON) on the command's standard input.
            hook = subprocess.Popen(shlex.split(command, posix=True), stdin=subprocess.PIPE)
            with contextlib.suppress(BrokenPipeError):
                hook.stdin.write(json.dumps(stop).encode())
            hook.stdin.close()
        except OSError as exc:
            self.events.emit("error", {"kind": "hook", "message": f"stop hook {command!r} failed: {exc}", "critical": False})

    def _finish(self) -> None:
        if self._chain is not None:
            # Calibrate on what there is if fewer slices than it needs arrived, and decide the
            # slices still waiting for their 3-D context.
            done = self._chain.flush()
            self._report_phase_check()
            for processed in done:
                self._append(processed)
            self._record_dropped()
        if self._store is not None:
            if self._wander is not None:
                self._store.update_run_attrs({"drift_wander": self._wander})
            self._analysis.notify(self._store.depth, final=not self._interrupted)
            self._analysis.wait_idle()
        self._run_stop_hook()
        if self._processed:
            self._log_summary(force=True)
        self._status(state="stopped")

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()

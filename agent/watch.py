"""Watching the acquisition folder: which slice files are complete, and in which order to use them.

Two pieces:

- :class:`IndexOrderer`, a reorder buffer: complete slices go in in any order and come out in
  slice-index order (the index in the file name, never the arrival order). A missing index is
  waited for up to ``gap_timeout_s`` (counted from the moment the next available slice became
  ready), then skipped and reported; a second file with an index already taken is reported as
  a duplicate; a slice arriving after its index was skipped is reported as late.
- :class:`SliceWatcher`: a watchdog ``Observer`` (or ``PollingObserver`` for network shares
  where events do not arrive) on the folder, recursively, plus an initial scan (backlog and
  resume). A slice file counts once its size and modification time have stayed the same for
  ``settle_s`` *and* :func:`processing.io.read_slice` parses it; a file still growing is
  re-checked by a timer (no busy loop), and a file that stops changing but never parses is
  rejected after ``incomplete_timeout_s`` with the reason. Files that are not slices
  (:func:`processing.io.is_slice_file`: other extensions, hidden and temporary files) are
  ignored; a TIFF without an index in its name is reported once.

One detector per volume: an acquisition folder may hold several detectors' slices (Auto Slice &
View ``Images/SEM Image``, ``Images/ETD Image``; Atlas ``<dest>/<detector>/``), each numbered
from 1. With ``detector`` set, only slices in a folder of that name (or relative path) are used,
the others ignored; in any case the slices of a run come from one folder, the first one a slice
came from (``slice_folder``): a slice file elsewhere is rejected once, with the reason.

Nothing is dropped silently: every rejected file goes to ``on_rejected(path, reason)``, every
skipped index to ``on_gap(index, reason)``, and both are logged as warnings.
Callbacks run on the watcher's own thread, one at a time, ``on_ready`` in index order; keep them
short (put the slice on a queue).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from processing.errors import SliceReadError
from processing.io import is_slice_file, read_slice, slice_index_from_name

__all__ = ["IndexOrderer", "SliceWatcher", "detector_matches"]

logger = logging.getLogger(__name__)

# Longest pause between two parse attempts of a file that stopped growing but does not parse.
_MAX_RETRY_S = 5.0
# Acquisitions number their slices from 0 or 1: a run seen to start there starts at once,
# otherwise the orderer waits gap_timeout_s for lower indices before starting.
_NATURAL_FIRST_INDEX = 1
# Event types that say a file's content or name changed (opening and reading it do not).
_CHANGE_EVENTS = frozenset({"created", "modified", "closed", "moved"})


def detector_matches(relative_folder, detector) -> bool:
    """True when `relative_folder` (a slice folder relative to the acquisition folder) is `detector`'s.

    `detector` names the folder (``"SEM Image"``) or its relative path (``"Images/SEM Image"``);
    case-insensitive, either slash.

    Examples
    --------
    >>> detector_matches("Images/SEM Image", "sem image"), detector_matches("Images/ETD Image", "SEM Image")
    (True, False)
    """
    parts = [p.lower() for p in str(relative_folder).replace("\\", "/").split("/") if p not in ("", ".")]
    wanted = [p.lower() for p in str(detector).replace("\\", "/").split("/") if p]
    return bool(parts) and bool(wanted) and parts[-len(wanted):] == wanted


def _positive(name, value):
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0 s, got {value!r}")
    return value


class IndexOrderer:
    """Release complete slices in index order; skip and report gaps; report duplicates.

    Thread-safe; callbacks are called with the orderer's lock held (so releases never
    interleave) and must not block.

    Parameters
    ----------
    on_release : callable(path, index)
        A slice to process, in increasing index order, each index at most once.
    on_rejected : callable(path, reason)
        A file that will not be released: duplicate index, late arrival, or rejected by the
        caller through :meth:`reject`.
    on_gap : callable(index, reason), optional
        An index skipped because no complete slice for it arrived within `gap_timeout_s`.
    gap_timeout_s : float, optional
        How long the next available slice waits for a missing lower index, in seconds.
    start_index : int, optional
        First index expected. Default: the last done index + 1 when `done` is given; else the
        lowest index announced or offered, at once when it is 0 or 1, otherwise once the
        lowest complete slice has waited `gap_timeout_s` for lower ones (a burst arriving out of
        order must not start the run at its first complete file).
    done : mapping of int to str, or iterable of int, optional
        Indices already processed (resume), with their source file when known: offering the
        same file again is ignored quietly, another file with that index is a duplicate.
    clock : callable, optional
        Monotonic time in seconds (tests inject a fake one).
    """

    def __init__(self, *, on_release, on_rejected, on_gap=None, gap_timeout_s=300.0, start_index=None, done=None, clock=time.monotonic):
        self._on_release = on_release
        self._on_rejected = on_rejected
        self._on_gap = on_gap
        self._gap_timeout_s = _positive("gap_timeout_s", gap_timeout_s)
        self._clock = clock
        self._lock = threading.RLock()
        if isinstance(done, Mapping):
            self._released = {int(i): (None if s is None else os.path.abspath(s)) for i, s in done.items()}
        else:
            self._released = {int(i): None for i in (done or ())}
        if start_index is None and self._released:
            start_index = max(self._released) + 1
        self._next = None if start_index is None else int(start_index)
        self._ready = {}  # index -> (path, ready time)
        self._announced = {}  # index -> number of files with that index not yet complete
        self._rejected = set()  # indices whose only file was rejected: nothing to wait for
        self._skipped = set()

    @property
    def next_index(self) -> int | None:
        """The index to be released next (None until the start is known)."""
        with self._lock:
            return self._expected()

    @property
    def waiting_count(self) -> int:
        """Complete slices held back, waiting for a lower index."""
        with self._lock:
            return len(self._ready)

    def is_released(self, path, index) -> bool:
        """True when this very file was already released for `index` (now or in `done`)."""
        with self._lock:
            return self._released.get(index, False) == os.path.abspath(path)

    def announce(self, index):
        """A file with `index` exists but is not complete yet (lets the orderer wait for it)."""
        with self._lock:
            self._announced[index] = self._announced.get(index, 0) + 1

    def retract(self, index):
        """An announced file went away (deleted or renamed) before it was complete."""
        with self._lock:
            self._unannounce(index)
            self._drain()

    def reject(self, path, index, reason):
        """An announced file will never be complete: report it and stop waiting for `index`."""
        with self._lock:
            self._unannounce(index)
            if index not in self._released and index not in self._ready and (self._next is None or index >= self._next):
                self._rejected.add(index)
            self._report(path, reason)
            self._drain()

    def offer(self, path, index):
        """A complete slice file: release it now, hold it for a lower index, or report it."""
        path = os.path.abspath(path)
        with self._lock:
            self._unannounce(index)
            if index in self._released:
                first = self._released[index]
                if first == path:
                    logger.debug("slice %d (%s) is already processed", index, path)
                elif first is None:
                    self._report(path, f"slice index {index} was already processed or skipped in a previous run")
                else:
                    self._report(path, f"duplicate slice index {index}: already taken from {first}")
            elif index in self._skipped:
                self._report(path, f"slice index {index} arrived late: it was already skipped as missing")
            elif index in self._ready:
                self._report(path, f"duplicate slice index {index}: {self._ready[index][0]} has it too")
            elif self._next is not None and index < self._next:
                self._report(path, f"slice index {index} arrived late: the run is already at index {self._next}")
            else:
                self._rejected.discard(index)
                self._ready[index] = (path, self._clock())
                self._drain()

    def tick(self) -> float | None:
        """Skip missing indices whose wait is over; return the next deadline (clock time) or None."""
        with self._lock:
            if not self._ready:
                return None
            lowest = min(self._ready)
            deadline = self._ready[lowest][1] + self._gap_timeout_s
            if self._clock() < deadline:
                return deadline
            expected = self._expected()
            if self._next is None:
                logger.info("no slice below index %d arrived within %g s: starting there", lowest, self._gap_timeout_s)
            for index in range(expected, lowest):
                if index in self._rejected:
                    continue  # already reported with its file and reason
                self._skipped.add(index)
                state = "was still incomplete" if index in self._announced else "never arrived"
                reason = (
                    f"slice index {index} {state}: skipped after waiting {self._gap_timeout_s:g} s "
                    f"with slice {lowest} ready"
                )
                logger.warning("%s", reason)
                if self._on_gap is not None:
                    self._call(self._on_gap, index, reason)
            self._next = lowest
            self._drain()
            return self.tick()

    # -- internals -------------------------------------------------------------------------

    def _unannounce(self, index):
        count = self._announced.get(index, 0) - 1
        if count > 0:
            self._announced[index] = count
        else:
            self._announced.pop(index, None)

    def _expected(self):
        if self._next is not None:
            return self._next
        known = self._announced.keys() | self._ready.keys() | self._rejected
        return min(known) if known else None

    def _drain(self):
        expected = self._expected()
        if self._next is None and (expected is None or expected > _NATURAL_FIRST_INDEX):
            return  # lower indices may still come: tick() starts at the lowest after gap_timeout_s
        while expected is not None and (expected in self._ready or expected in self._rejected):
            if expected in self._ready:
                path, _ = self._ready.pop(expected)
                self._released[expected] = path
                self._call(self._on_release, Path(path), expected)
            self._rejected.discard(expected)
            self._next = expected = expected + 1

    def _report(self, path, reason):
        logger.warning("rejected %s: %s", path, reason)
        self._call(self._on_rejected, Path(path), reason)

    @staticmethod
    def _call(callback, *args):
        try:
            callback(*args)
        except Exception:  # a failing consumer must not stop the watcher; the log says what was lost
            logger.exception("callback %r failed for %r", callback, args)


@dataclass
class _Tracked:
    """A slice file seen but not yet complete."""

    index: int
    signature: tuple | None = None  # (size, mtime_ns) at the last check
    stable_since: float = 0.0
    retry_s: float = 0.0
    due: float = 0.0


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox):
        self._inbox = inbox

    def on_any_event(self, event):
        if event.event_type not in _CHANGE_EVENTS:
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        self._inbox(os.fsdecode(path), event.is_directory)


class SliceWatcher:
    """Watch `folder` recursively and hand over complete slice files in index order.

    Parameters
    ----------
    folder : str or os.PathLike
        The acquisition folder (must exist).
    on_ready : callable(path: Path, index: int)
        A complete slice, in index order, each index once.
    on_rejected : callable(path: Path, reason: str)
        A file that will not be used (incomplete after the timeout, duplicate, late, no index).
    on_gap : callable(index: int, reason: str), optional
        An index skipped after `gap_timeout_s` (the slice never arrived).
    polling : bool, optional
        Poll the folder every `poll_interval_s` instead of waiting for file-system events
        (SMB/NFS shares, where events are not delivered).
    poll_interval_s : float, optional
    settle_s : float, optional
        A file's size and modification time must stay the same this long before it is parsed.
    incomplete_timeout_s : float, optional
        A file that stopped changing but still does not parse after this long is rejected.
    gap_timeout_s : float, optional
        See :class:`IndexOrderer`.
    start_index, done : optional
        See :class:`IndexOrderer` (resume: pass the indices and sources already in the volume).
    detector : str, optional
        Use only slices in a folder of this name or relative path (see :func:`detector_matches`).
    slice_folder : str or os.PathLike, optional
        The one folder this run's slices come from (resume); default: the first slice's folder.

    Examples
    --------
    >>> with SliceWatcher(folder, on_ready=queue_put, on_rejected=report):  # doctest: +SKIP
    ...     run_until_stopped()
    """

    def __init__(
        self,
        folder,
        *,
        on_ready: Callable[[Path, int], None],
        on_rejected: Callable[[Path, str], None],
        on_gap: Callable[[int, str], None] | None = None,
        polling: bool = False,
        poll_interval_s: float = 1.0,
        settle_s: float = 0.5,
        incomplete_timeout_s: float = 600.0,
        gap_timeout_s: float = 300.0,
        start_index: int | None = None,
        done: Mapping[int, str] | Iterable[int] | None = None,
        detector: str | None = None,
        slice_folder=None,
    ):
        self.folder = Path(folder).absolute()
        if not self.folder.is_dir():
            raise ValueError(f"folder {str(self.folder)!r} is not an existing directory")
        self._polling = bool(polling)
        self._poll_interval_s = _positive("poll_interval_s", poll_interval_s)
        self._settle_s = float(settle_s)
        if not self._settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0 s, got {settle_s!r}")
        self._incomplete_timeout_s = _positive("incomplete_timeout_s", incomplete_timeout_s)
        self._on_rejected = on_rejected
        self.orderer = IndexOrderer(
            on_release=on_ready,
            on_rejected=on_rejected,
            on_gap=on_gap,
            gap_timeout_s=gap_timeout_s,
            start_index=start_index,
            done=done,
        )
        self._inbox = deque()  # (path, is_directory) from the observer and the scan
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tracked = {}  # path -> _Tracked (worker thread only)
        self._finished = {}  # path -> (signature, released) once offered or rejected
        self._unindexed = set()
        self._detector = detector
        self._slice_folder = None if slice_folder is None else os.path.abspath(slice_folder)
        self._elsewhere = set()
        self._changed_after_release = set()
        self._heap = []  # (due, seq, path)
        self._seq = itertools.count()
        self._seen = 0
        self._observer = None
        self._thread = None

    @property
    def seen_count(self) -> int:
        """Distinct slice files seen so far, complete or not (on resume, not those already in the volume)."""
        return self._seen

    @property
    def incomplete_count(self) -> int:
        """Slice files seen and not yet complete."""
        return len(self._tracked)

    def start(self) -> SliceWatcher:
        """Start watching (observer first, then the scan of files already there)."""
        if self._thread is not None:
            raise RuntimeError("SliceWatcher already started")
        observer = PollingObserver(timeout=self._poll_interval_s) if self._polling else Observer()
        observer.schedule(_Handler(self._post), str(self.folder), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name="revwatch-watch", daemon=True)
        self._thread.start()
        self._post(str(self.folder), True)
        logger.info("watching %s (%s)", self.folder, "polling" if self._polling else "events")
        return self

    def stop(self, timeout=10.0):
        """Stop the observer and the worker; slices not yet released stay on disk (resume)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # -- worker thread ---------------------------------------------------------------------

    def _post(self, path, is_directory):
        self._inbox.append((path, is_directory))
        self._wake.set()

    def _run(self):
        while not self._stop.is_set():
            self._wake.clear()
            while self._inbox:
                path, is_directory = self._inbox.popleft()
                if is_directory:
                    self._scan(path)
                else:
                    self._touch(path)
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now and not self._inbox:
                due, _, path = heapq.heappop(self._heap)
                tracked = self._tracked.get(path)
                if tracked is not None and tracked.due == due:
                    self._check_guarded(path, tracked)
                now = time.monotonic()
            deadlines = [d for d in (self.orderer.tick(), self._heap[0][0] if self._heap else None) if d is not None]
            if not self._inbox:
                self._wake.wait(max(0.0, min(deadlines) - time.monotonic()) if deadlines else None)

    def _scan(self, folder):
        """Touch every file below `folder` (start, and directories moved in whole)."""
        for dirpath, _, names in os.walk(folder):
            for name in sorted(names):
                self._touch(os.path.join(dirpath, name))

    def _touch(self, path):
        path = os.path.abspath(path)
        if path in self._tracked or not is_slice_file(path):
            return
        if path in self._finished:
            signature = self._signature(path)
            old_signature, released = self._finished[path]
            if signature is None or signature == old_signature:
                return
            if released:
                self._finished[path] = (signature, True)
                # A rewrite arrives as many events (one per piece written): report it once.
                if path not in self._changed_after_release:
                    self._changed_after_release.add(path)
                    reason = "the file changed after it was processed; the change is ignored"
                    logger.warning("rejected %s: %s", path, reason)
                    IndexOrderer._call(self._on_rejected, Path(path), reason)
                return
            del self._finished[path]  # rejected before, written again since: look at it again
        index = slice_index_from_name(os.path.basename(path))
        if index is None:
            if path not in self._unindexed:
                self._unindexed.add(path)
                logger.warning("rejected %s: no slice index in the file name", path)
                IndexOrderer._call(self._on_rejected, Path(path), "no slice index in the file name")
            return
        if not self._in_slice_folder(path):
            return
        if self.orderer.is_released(path, index):
            return  # resume: already in the volume, no need to read it again
        self._seen += 1
        self._tracked[path] = tracked = _Tracked(index=index)
        self.orderer.announce(index)
        self._schedule(path, tracked, time.monotonic())

    def _in_slice_folder(self, path):
        """One detector per volume: True when `path` is in this run's slice folder."""
        folder = os.path.dirname(path)
        if self._detector is not None and not detector_matches(os.path.relpath(folder, self.folder), self._detector):
            return False  # another detector's slice: not part of this volume
        if self._slice_folder is None:
            self._slice_folder = folder
            logger.info("slices come from %s", folder)
        if folder == self._slice_folder:
            return True
        if path not in self._elsewhere:
            self._elsewhere.add(path)
            reason = (f"slice file in {folder}, but this run's slices come from {self._slice_folder}: several "
                      "detectors? set acquisition.detector to the one this volume is for")
            logger.warning("rejected %s: %s", path, reason)
            IndexOrderer._call(self._on_rejected, Path(path), reason)
        return False

    def _schedule(self, path, tracked, due):
        tracked.due = due
        heapq.heappush(self._heap, (due, next(self._seq), path))

    @staticmethod
    def _signature(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _check_guarded(self, path, tracked):
        try:
            self._check(path, tracked)
        except Exception as exc:  # keep watching whatever one file does; report it, never drop it
            logger.exception("unexpected error while checking %s", path)
            self._finish(path, tracked, released=False)
            self.orderer.reject(path, tracked.index, f"unexpected error while checking the file: {exc!r}")

    def _check(self, path, tracked):
        now = time.monotonic()
        signature = self._signature(path)
        if signature is None:
            logger.debug("%s went away before it was complete", path)
            del self._tracked[path]
            self.orderer.retract(tracked.index)
            return
        if signature != tracked.signature:
            tracked.signature, tracked.stable_since, tracked.retry_s = signature, now, 0.0
            self._schedule(path, tracked, now + self._settle_s)
            return
        if now - tracked.stable_since < self._settle_s:
            self._schedule(path, tracked, tracked.stable_since + self._settle_s)
            return
        try:
            read_slice(path, index=tracked.index)
        except SliceReadError as exc:
            give_up = tracked.stable_since + self._incomplete_timeout_s
            if now >= give_up:
                self._finish(path, tracked, released=False)
                self.orderer.reject(
                    path,
                    tracked.index,
                    f"not a complete slice after {self._incomplete_timeout_s:g} s without change: {exc.reason}",
                )
                return
            tracked.retry_s = min(max(2 * tracked.retry_s, self._settle_s, 0.05), _MAX_RETRY_S)
            self._schedule(path, tracked, min(now + tracked.retry_s, give_up))
            return
        self._finish(path, tracked, released=True)
        self.orderer.offer(path, tracked.index)

    def _finish(self, path, tracked, *, released):
        del self._tracked[path]
        self._finished[path] = (tracked.signature, released)

"""Fault injection: what real acquisitions do to the agent, and proof that nothing is lost or doubled.

Every case runs the real agent (in a thread, or ``revwatch run`` as a subprocess) on a real folder
watched by watchdog, writes a real OME-Zarr volume and publishes on real loopback sockets. A case
returns an :class:`Outcome`: the indices that must be in the volume, the ones that are, and
whether each bad input was reported with its file (or index) and reason, both as an ``error``
document and in the volume's ``skipped`` attributes. ``tests/benchmarks/fault_table.py`` runs the
same cases and prints them as a table.

Slice content is a generated acquisition (60 slices of 96 x 96 px, reused cyclically beyond 60).
The processing chain is causal (calibration on the first slices, alignment on the previous one),
so a clean run of the same files is the oracle: every slice stored in a faulty run before the
first bad input must be bit-identical to the clean run's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq

from agent.config import Config
from agent.pipeline import Agent
from agent.store import VolumeStore, provenance_log_path
from processing.errors import RevwatchError
from processing.io import slice_file_name, write_slice
from processing.synthetic import generate_microstructure, render_acquisition
from agent.publish import free_loopback_endpoint
from test_system import agent_config

PIXEL_SIZE_UM = 0.02
SLICE_SPACING_UM = 0.05
BASE_SLICES = 60
REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def _base_slices() -> np.ndarray:
    labels = generate_microstructure((BASE_SLICES, 176, 176), spacing_um=(SLICE_SPACING_UM, PIXEL_SIZE_UM, PIXEL_SIZE_UM),
                                     particle_radius_um=0.4, rng=0)
    slices = render_acquisition(labels, field_shape=(96, 96), rng=1).slices
    slices.setflags(write=False)
    return slices


def pixels(index: int) -> np.ndarray:
    """The raw uint8 slice of `index` (1-based; cycles through the generated acquisition)."""
    return _base_slices()[(index - 1) % BASE_SLICES]


def write(folder: Path, index: int, data: np.ndarray | None = None) -> Path:
    return write_slice(folder, index, pixels(index) if data is None else data, pixel_size_um=PIXEL_SIZE_UM)


def slice_bytes(index: int, tmp: Path) -> bytes:
    """The bytes of slice `index` as the microscope writes it (written once to `tmp`)."""
    return write(tmp, index).read_bytes()


def fault_config(folder, volume, endpoint, **sections) -> Config:
    """The system tests' configuration with quick timeouts and the pixel size and spacing given."""
    data = {
        "acquisition": {"settle_s": 0.1, "gap_timeout_s": 5.0, "incomplete_timeout_s": 1.5,
                        "pixel_size_nm": PIXEL_SIZE_UM * 1000, "slice_spacing_nm": SLICE_SPACING_UM * 1000},
        "analysis": {"every_slices": 8, "expensive_every_slices": 64},
        # each slice decided on its own: a fault's volume must equal the clean run's bit for bit,
        # which labels in 3-D context cannot when a neighbour is missing or arrives late
        "processing": {"context_slices": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return agent_config(folder, volume, endpoint, **data)


def cli_overrides(config: Config) -> list[str]:
    """``--set`` options reproducing the acquisition/processing/analysis sections of `config`."""
    out = []
    for section in ("acquisition", "processing", "analysis"):
        for key, value in getattr(config, section).model_dump(exclude_none=True).items():
            if key != "folder":
                out += ["--set", f"{section}.{key}={json.dumps(value)}"]
    return out


@dataclass
class Outcome:
    """What one fault case did to the volume."""

    case: str
    expected: list[int]  # indices that must be in the volume, in order
    stored: list[int] = field(default_factory=list)  # indices in the volume, in z order
    bad: list[str] = field(default_factory=list)  # file names (or "index N") of bad inputs that must be reported
    errors: list[dict] = field(default_factory=list)  # `error` documents of kind "input"
    skipped: list[dict] = field(default_factory=list)  # the volume's skipped records
    outcome: str = "ok"
    note: str = ""

    def fail(self, problem: str):
        self.outcome = problem if self.outcome == "ok" else f"{self.outcome}; {problem}"

    @property
    def lost(self) -> int:
        return len(set(self.expected) - set(self.stored))

    @property
    def doubled(self) -> int:
        return len(self.stored) - len(set(self.stored))

    def reported(self, bad: str) -> bool:
        """`bad` ("name.tif" or "index N") is in an error document and in the volume, with a reason."""
        def names(record):
            if bad.startswith("index "):
                return record.get("index") == int(bad.split()[1])
            return Path(str(record.get("file", ""))).name == bad

        in_docs = any(names(d) and d.get("message") for d in self.errors)
        in_volume = any(names(r) and r.get("reason") for r in self.skipped)
        return in_docs and in_volume

    @property
    def all_reported(self) -> bool:
        return all(self.reported(b) for b in self.bad)

    def check(self):
        """The assertions every case shares: nothing lost, nothing doubled, every bad input reported."""
        assert self.stored == sorted(set(self.stored)), f"{self.case}: volume out of order or doubled: {self.stored}"
        assert self.lost == 0 and self.doubled == 0, (self.case, self.expected, self.stored)
        missing = [b for b in self.bad if not self.reported(b)]
        assert not missing, f"{self.case}: not reported: {missing}; errors {self.errors}; skipped {self.skipped}"


class Run:
    """The agent in a thread on `workdir/incoming`, every document collected."""

    def __init__(self, workdir: Path, **sections):
        self.folder = workdir / "incoming"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.volume = workdir / "run.ome.zarr"
        self.endpoint = free_loopback_endpoint()
        self.config = fault_config(self.folder, self.volume, self.endpoint, **sections)
        self.docs: list[tuple[str, dict]] = []
        self.agent = Agent(self.config)
        self.agent.events.subscribe(lambda name, doc: self.docs.append((name, doc)), name="fault test")
        self._stop = threading.Event()
        self.result: dict = {}
        self._thread = threading.Thread(target=self._target, daemon=True)

    def _target(self):
        try:
            self.result["summary"] = self.agent.run(stop_event=self._stop)
        except BaseException as exc:  # surfaced by finish()
            self.result["error"] = exc

    def start(self) -> Run:
        self._thread.start()
        self.wait(lambda: any(n == "status" for n, _ in self.docs), 30, "the agent did not start")
        return self

    def write(self, index: int, data: np.ndarray | None = None) -> Path:
        return write(self.folder, index, data)

    def status(self) -> dict:
        return next((d for n, d in reversed(self.docs) if n == "status"), {})

    def wait(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "error" in self.result:
                raise AssertionError(f"the agent stopped with an error while waiting: {what}") from self.result["error"]
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} within {timeout_s} s; last status {self.status()}")

    def wait_handled(self, processed: int, skipped: int = 0, timeout_s: float = 90):
        """Wait until `processed` slices are in the volume and `skipped` inputs were reported."""
        def done():
            s = self.status()
            return s.get("slices_processed", 0) >= processed and s.get("slices_skipped", 0) >= skipped
        self.wait(done, timeout_s, f"{processed} slices processed and {skipped} skipped")

    def finish(self, case: str, expected, bad=(), timeout_s: float = 60) -> Outcome:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"{case}: the run did not end within {timeout_s} s"
        if "error" in self.result:
            raise self.result["error"]
        return read_outcome(case, self.volume, expected, bad,
                            errors=[d for n, d in self.docs if n == "error" and d.get("kind") == "input"])

    def abort(self):
        self._stop.set()
        self._thread.join(60)


def read_outcome(case, volume, expected, bad=(), *, errors=()) -> Outcome:
    store = VolumeStore.open(volume, read_only=True)
    return Outcome(case, list(expected), [s["index"] for s in store.slices], list(bad), list(errors), store.skipped)


@contextlib.contextmanager
def running(workdir: Path, **sections):
    run = Run(workdir, **sections).start()
    try:
        yield run
    finally:
        run.abort()


# -- the clean run: the oracle -----------------------------------------------------------------

def clean_volume(workdir: Path, n: int) -> Path:
    """A fault-free run of slices 1..n, written one by one (the oracle for the other cases)."""
    with running(workdir) as run:
        for index in range(1, n + 1):
            run.write(index)
        run.wait_handled(n)
        run.finish("clean", range(1, n + 1)).check()
    return run.volume


def same_as_clean(volume: Path, clean: Path, indices) -> bool:
    """The slices `indices` of `volume` are bit-identical (grey and labels) to the clean run's."""
    a, b = VolumeStore.open(volume, read_only=True), VolumeStore.open(clean, read_only=True)
    za = {s["index"]: s["z"] for s in a.slices}
    zb = {s["index"]: s["z"] for s in b.slices}
    return all(
        np.array_equal(a.grey[za[i]], b.grey[zb[i]]) and np.array_equal(a.labels[za[i]], b.labels[zb[i]])
        for i in indices
    )


# -- the cases ---------------------------------------------------------------------------------

def write_in_pieces(target: Path, data: bytes, pieces: int, pause_s: float):
    step = -(-len(data) // pieces)
    with open(target, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start:start + step])
            fh.flush()
            time.sleep(pause_s)


def case_written_in_pieces(workdir: Path, n: int = 8, slow: int = 5, pieces: int = 5, pause_s: float = 0.3) -> Outcome:
    """Slice `slow` is written in `pieces` pieces with pauses longer than settle_s between them."""
    data = slice_bytes(slow, workdir / "scratch")
    with running(workdir) as run:
        for index in range(1, n + 1):
            if index != slow:
                run.write(index)
                continue
            write_in_pieces(run.folder / slice_file_name(slow), data, pieces, pause_s)
        run.wait_handled(n)
        return run.finish("slice written in pieces", range(1, n + 1))


def case_unreadable(workdir: Path, kind: str, n: int = 8, bad: int = 5) -> Outcome:
    """Slice `bad` is a zero-byte file, or a truncated TIFF, that never completes."""
    with running(workdir) as run:
        for index in range(1, n + 1):
            if index == bad:
                target = run.folder / slice_file_name(bad)
                data = slice_bytes(bad, workdir / "scratch")
                target.write_bytes(b"" if kind == "zero-byte" else data[: len(data) * 2 // 3])
            else:
                run.write(index)
        run.wait_handled(n - 1, 1)
        return run.finish(f"{kind} file", [i for i in range(1, n + 1) if i != bad], [slice_file_name(bad)])


JUNK = ("acquisition.tmp", "Thumbs.db", "~$notes.tif", "SEM Image - SliceImage - 004.tif.part", "readme.txt",
        ".SEM Image - SliceImage - 003.tif")


def case_junk(workdir: Path, n: int = 8) -> Outcome:
    """Temporary and junk files among the slices, and a TIFF with no slice index in its name."""
    with running(workdir) as run:
        for index in range(1, n + 1):
            run.write(index)
            if index == 3:
                for name in JUNK:
                    (run.folder / name).write_bytes(os.urandom(1000))
                # written beside the watched folder and moved in whole: the watcher never sees its
                # indexed temporary name (a slice in another folder, refused as another detector's)
                (run.folder / "overview").mkdir()
                write_slice(workdir / "staging", 1, pixels(1), pixel_size_um=PIXEL_SIZE_UM).rename(
                    run.folder / "overview" / "overview.tif")
        run.wait_handled(n, 1)
        outcome = run.finish("junk and temporary files", range(1, n + 1), ["overview.tif"])
    # Junk is not slice input: ignored, never reported; only the unindexed TIFF is.
    outcome.note = f"{len(JUNK)} junk files ignored"
    junk_reported = [r for r in outcome.skipped if Path(r.get("file", "")).name in JUNK]
    if junk_reported:
        outcome.fail(f"junk reported as skipped: {junk_reported}")
    return outcome


def case_odd_slice(workdir: Path, kind: str, n: int = 8, bad: int = 6) -> Outcome:
    """Slice `bad` has another size (kind "size") or dtype (kind "dtype") than the others, mid-run."""
    with running(workdir) as run:
        for index in range(1, n + 1):
            data = pixels(index)
            if index == bad:
                data = data[:80, :90].copy() if kind == "size" else data.astype(np.uint16) * 257
            run.write(index, data)
        run.wait_handled(n - 1, 1)
        return run.finish(f"slice of another {kind}", [i for i in range(1, n + 1) if i != bad], [slice_file_name(bad)])


def case_same_index_twice(workdir: Path, n: int = 8, twice: int = 5) -> Outcome:
    """Index `twice` arrives twice: a second file with another name and other content after the first
    was processed, and the first file rewritten with other content."""
    with running(workdir) as run:
        for index in range(1, n + 1):
            run.write(index)
        run.wait_handled(n)
        # Another name, the same folder (a file in another folder is another detector's: tests/test_watch.py).
        other = write_slice(run.folder, twice, pixels(twice + 20), layout="tescan", pixel_size_um=PIXEL_SIZE_UM)
        run.wait_handled(n, 1)
        # The same path rewritten with new content, in pieces as an instrument writes it.
        write_in_pieces(run.folder / slice_file_name(twice), slice_bytes(twice + 21, workdir / "scratch"), 4, 0.05)
        run.wait_handled(n, 2)
        time.sleep(0.5)  # let every event of the rewrite arrive before counting the reports
        outcome = run.finish("same index twice", range(1, n + 1), [other.name])
    first = [e for e in outcome.errors if e.get("file") == str(other)]
    rewritten = [e for e in outcome.errors if e.get("file") == str(run.folder / slice_file_name(twice))]
    if not (first and "duplicate" in first[0]["message"] and rewritten and "changed" in rewritten[0]["message"]):
        outcome.fail(f"unexpected reports: {outcome.errors}")
    if len(rewritten) != 1:
        outcome.fail(f"one rewrite of a processed file reported {len(rewritten)} times")
    return outcome


def case_gap(workdir: Path, n: int = 8, missing: int = 6) -> Outcome:
    """Slice `missing` does not arrive in time: skipped after gap_timeout_s, the run goes on; when it
    finally arrives it is reported as late."""
    with running(workdir, acquisition={"gap_timeout_s": 1.0}) as run:
        for index in range(1, n + 1):
            if index != missing:
                run.write(index)
        run.wait_handled(n - 1, 1)
        late = run.write(missing)
        run.wait_handled(n - 1, 2)
        return run.finish("gap in the indices, then the slice late", [i for i in range(1, n + 1) if i != missing],
                          [f"index {missing}", late.name])


def case_burst(workdir: Path, n: int = 60, seed: int = 0) -> Outcome:
    """`n` slices copied into the folder at once, in random order (written first elsewhere)."""
    staging = workdir / "staging"
    files = [write(staging, i) for i in range(1, n + 1)]
    random.Random(seed).shuffle(files)
    with running(workdir) as run:
        for path in files:
            shutil.copyfile(path, run.folder / path.name)
        run.wait_handled(n, timeout_s=60 + n)
        return run.finish(f"burst of {n}, out of order", range(1, n + 1))


class _NoEvents:
    """Stands in for watchdog's event Observer: a folder where events are never delivered."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("the event Observer was used although polling was configured")


def case_polling(workdir: Path, n: int = 8) -> Outcome:
    """acquisition.polling=true with the event Observer unusable: every slice still arrives."""
    import agent.watch

    original = agent.watch.Observer
    agent.watch.Observer = _NoEvents
    try:
        with running(workdir, acquisition={"polling": True, "poll_interval_s": 0.2}) as run:
            for index in range(1, n + 1):
                run.write(index)
                time.sleep(0.05)
            run.wait_handled(n)
            return run.finish("polling, no file-system events", range(1, n + 1))
    finally:
        agent.watch.Observer = original


def case_metrics_raise(workdir: Path, n: int = 16) -> Outcome:
    """The first metrics job raises: an `error` of kind "analysis", then the slices keep flowing."""
    import agent.analysis

    original = agent.analysis.counts_metrics
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("injected fault in the metrics")
        return original(*args, **kwargs)

    agent.analysis.counts_metrics = failing_once
    try:
        with running(workdir) as run:
            for index in range(1, n + 1):
                run.write(index)
            run.wait_handled(n)
            run.wait(lambda: any(name == "metrics" for name, _ in run.docs), 60, "no metrics after the failure")
            outcome = run.finish("metrics job raises", range(1, n + 1))
    finally:
        agent.analysis.counts_metrics = original
    analysis_errors = [d for name, d in run.docs if name == "error" and d.get("kind") == "analysis"]
    if not (analysis_errors and "injected fault" in analysis_errors[0]["message"]):
        outcome.fail(f"no analysis error document: {[d for n_, d in run.docs if n_ == 'error']}")
    outcome.note = f"{len(analysis_errors)} analysis error(s), then {sum(n_ == 'metrics' for n_, _ in run.docs)} metrics"
    return outcome


def case_dead_subscriber(workdir: Path, n: int = 24) -> Outcome:
    """A SUB socket that connects, subscribes to everything and never reads (tiny buffers)."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 1024)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        run = Run(workdir, publish={"heartbeat_interval_s": 0.05})
        sub.connect(run.endpoint)
        run.start()
        try:
            for index in range(1, n + 1):
                run.write(index)
            run.wait_handled(n)
            outcome = run.finish("dead subscriber", range(1, n + 1))
        finally:
            run.abort()
        outcome.note = f"{len(run.docs)} documents published to a subscriber that never read"
        return outcome
    finally:
        sub.close(linger=0)
        ctx.term()


def case_port_in_use(workdir: Path) -> Outcome:
    """Another process holds the publish port: a clear error at start naming it, nothing written."""
    folder, volume, endpoint = workdir / "incoming", workdir / "run.ome.zarr", free_loopback_endpoint()
    folder.mkdir(parents=True)
    write(folder, 1)
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.PUB)
    squatter.bind(endpoint)
    outcome = Outcome("publish port in use", [], bad=[])
    try:
        Agent(fault_config(folder, volume, endpoint)).run(idle_exit_s=1)
        outcome.fail("started although the port is taken")
    except RevwatchError as exc:
        outcome.note = str(exc)
        if endpoint not in str(exc):
            outcome.fail(f"error does not name {endpoint}: {exc}")
    finally:
        squatter.close(linger=0)
        ctx.term()
    written = [p.name for p in workdir.iterdir() if p.name.startswith(volume.name)]
    if written:
        outcome.fail(f"written although the run did not start: {written}")
    return outcome


# -- cases with `revwatch run` in a subprocess ---------------------------------------------------

def revwatch_run(config: Config, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agent.cli", "run", str(config.acquisition.folder), "--volume", str(config.volume.path),
           "--endpoint", config.publish.endpoint, *cli_overrides(config), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def committed(volume: Path) -> int:
    """Slices committed so far (lines of the provenance log), read without opening the volume."""
    try:
        return sum(1 for line in provenance_log_path(volume).read_bytes().splitlines() if b'"kind": "slice"' in line)
    except FileNotFoundError:
        return 0


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def case_sigkill(workdir: Path, n: int = 40, kill_at: int = 15) -> Outcome:
    """`revwatch run` killed with SIGKILL while slices are appended, then started again."""
    folder, volume = workdir / "incoming", workdir / "run.ome.zarr"
    folder.mkdir(parents=True)
    config = fault_config(folder, volume, free_loopback_endpoint())
    first = revwatch_run(config)
    writing = threading.Event()

    def feed():
        for index in range(1, n + 1):
            write(folder, index)
            time.sleep(0.02)
        writing.set()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    deadline = time.monotonic() + 120
    while committed(volume) < kill_at and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    _, err = first.communicate(timeout=30)
    at_kill = committed(volume)
    writer.join(60)
    second = revwatch_run(config, "--idle-exit-s", "3")
    out, err2 = second.communicate(timeout=180)
    outcome = read_outcome("agent killed (SIGKILL) and restarted", volume, range(1, n + 1))
    outcome.note = f"killed at {at_kill} committed slices (rc {first.returncode}); restart rc {second.returncode}"
    if first.returncode != -signal.SIGKILL or second.returncode != 0:
        outcome.fail(f"return codes {first.returncode}, {second.returncode}: {last_line(err2) or last_line(err)}")
    store = VolumeStore.open(volume, read_only=True)
    if np.asarray(store.grey[:]).shape[0] != n or np.asarray(store.labels[:]).shape[0] != n:
        outcome.fail(f"volume arrays do not hold {n} readable slices: {store.grey.shape}")
    return outcome


@contextlib.contextmanager
def small_disk(workdir: Path, size: str = "400k"):
    """A tmpfs of `size` mounted at `workdir/disk` (root only); yields None when it cannot be mounted."""
    disk = workdir / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _limit_file_size(limit: int):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def case_disk_full(workdir: Path, n: int = 60, clean: Path | None = None, how: str = "tmpfs") -> Outcome:
    """The volume's disk fills up (a small tmpfs; or RLIMIT_FSIZE, "File too large", when not root)."""
    folder = workdir / "incoming"
    folder.mkdir(parents=True)
    for index in range(1, n + 1):
        write(folder, index)
    with small_disk(workdir) as disk:
        if how == "tmpfs" and disk is None:
            how = "rlimit"
        volume = (disk if how == "tmpfs" else workdir) / "run.ome.zarr"
        config = fault_config(folder, volume, free_loopback_endpoint())
        popen = {"preexec_fn": _limit_file_size(96 * 1024)} if how == "rlimit" else {}
        proc = revwatch_run(config, "--idle-exit-s", "5", **popen)
        _, err = proc.communicate(timeout=240)
        outcome = Outcome(f"disk full ({how})", [], note=last_line(err))
        if proc.returncode == 0:
            outcome.fail(f"exit code 0 although the disk is full: {err[-800:]}")
        elif str(volume) not in err:
            outcome.fail(f"the error does not name the volume: {err[-800:]}")
        store = VolumeStore.open(volume, read_only=True)
        depth = store.depth
        outcome.expected = list(range(1, depth + 1))
        outcome.stored = [s["index"] for s in store.slices]
        if depth == 0 or depth == n:
            outcome.fail(f"the disk did not fill as intended (depth {depth} of {n})")
        if np.asarray(store.grey[:depth]).shape[0] != depth:
            outcome.fail("the committed slices are not readable")
        if clean is not None and depth and not same_as_clean(volume, clean, outcome.stored):
            outcome.fail("the committed slices differ from the clean run")
        outcome.note = f"stopped at {depth}/{n} slices, rc {proc.returncode}: " + outcome.note
    return outcome


# -- the tests -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The oracle: a clean run of slices 1..60."""
    return clean_volume(tmp_path_factory.mktemp("clean"), 60)


def test_slice_written_in_pieces_is_stored_whole(tmp_path, clean):
    outcome = case_written_in_pieces(tmp_path)
    outcome.check()
    assert same_as_clean(outcome_volume(tmp_path), clean, range(1, 9))


@pytest.mark.parametrize("kind", ["zero-byte", "truncated"])
def test_file_that_never_completes_is_reported_and_skipped(tmp_path, clean, kind):
    outcome = case_unreadable(tmp_path, kind)
    outcome.check()
    [record] = outcome.skipped
    assert "not a complete slice" in record["reason"]
    assert same_as_clean(outcome_volume(tmp_path), clean, range(1, 5))


def test_junk_files_are_ignored_and_unindexed_tiff_reported(tmp_path):
    outcome = case_junk(tmp_path)
    outcome.check()
    assert outcome.outcome == "ok", outcome.outcome
    assert [Path(r["file"]).name for r in outcome.skipped] == ["overview.tif"]
    assert "no slice index" in outcome.skipped[0]["reason"]


@pytest.mark.parametrize(("kind", "bad"), [("size", 6), ("dtype", 6), ("size", 2)])
def test_slice_of_another_shape_is_skipped(tmp_path, clean, kind, bad):
    """Mid-run (slice 6), and during the calibration of the first 4 slices (slice 2)."""
    outcome = case_odd_slice(tmp_path, kind, bad=bad)
    outcome.check()
    [record] = outcome.skipped
    assert record["index"] == bad and "(96, 96)" in record["reason"]
    if bad > 4:  # after the calibration: the slices before it are those of the clean run
        assert same_as_clean(outcome_volume(tmp_path), clean, range(1, bad))


def test_same_index_twice_keeps_the_first(tmp_path, clean):
    outcome = case_same_index_twice(tmp_path)
    outcome.check()
    assert outcome.outcome == "ok", outcome.outcome  # the rewrite is reported once, not once per write
    assert same_as_clean(outcome_volume(tmp_path), clean, range(1, 9))


def test_gap_is_skipped_after_the_timeout(tmp_path, clean):
    outcome = case_gap(tmp_path)
    outcome.check()
    gap, late = outcome.skipped
    assert gap["index"] == 6 and "never arrived" in gap["reason"] and "file" not in gap
    assert late["file"].endswith("SliceImage - 006.tif") and "arrived late" in late["reason"]
    assert same_as_clean(outcome_volume(tmp_path), clean, range(1, 6))


@pytest.mark.slow
def test_burst_out_of_order_equals_the_clean_run(tmp_path, clean):
    outcome = case_burst(tmp_path, n=60)
    outcome.check()
    assert not outcome.skipped and not outcome.errors
    assert same_as_clean(outcome_volume(tmp_path), clean, range(1, 61))


@pytest.mark.slow
def test_burst_of_500_out_of_order(tmp_path):
    outcome = case_burst(tmp_path, n=500)
    outcome.check()
    assert not outcome.skipped and not outcome.errors


def test_polling_needs_no_file_system_events(tmp_path):
    outcome = case_polling(tmp_path)
    outcome.check()


def test_failing_metrics_job_is_published_and_slices_keep_flowing(tmp_path, caplog):
    outcome = case_metrics_raise(tmp_path)
    outcome.check()
    assert outcome.outcome == "ok", outcome.outcome
    assert any("analysis at depth" in r.getMessage() and r.exc_info for r in caplog.records)


def test_dead_subscriber_does_not_stall_the_agent(tmp_path):
    outcome = case_dead_subscriber(tmp_path)
    outcome.check()


def test_publish_port_in_use_is_a_clear_error_at_start(tmp_path):
    outcome = case_port_in_use(tmp_path)
    assert outcome.outcome == "ok", outcome.outcome


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_holds_every_slice_once(tmp_path):
    outcome = case_sigkill(tmp_path)
    outcome.check()
    assert outcome.outcome == "ok", outcome.outcome


@pytest.mark.slow
@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_disk_full_stops_with_a_clear_error_and_a_readable_volume(tmp_path, clean, how):
    outcome = case_disk_full(tmp_path, n=24, clean=clean, how=how)
    outcome.check()
    assert outcome.outcome == "ok", outcome.outcome


def outcome_volume(workdir: Path) -> Path:
    return workdir / "run.ome.zarr"

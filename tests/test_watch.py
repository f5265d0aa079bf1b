"""agent.watch: readiness (size stable + parses), index order, gaps, duplicates, junk; real files.

The watcher tests use real files and real watchdog observers (inotify and polling); the
orderer tests drive :class:`IndexOrderer` with a fake clock so gap timeouts need no sleeping.
"""

import io
import os
import random
import threading
import time

import numpy as np
import pytest
import tifffile

from agent.watch import IndexOrderer, SliceWatcher

WAIT_S = 30.0  # upper bound to avoid hanging; tests never assert on durations


def fei_name(index):
    return f"SEM Image - SliceImage - {index:03d}.tif"


def tiff_bytes(index, shape=(32, 40)):
    """A valid one-page TIFF whose pixels encode `index`."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full(shape, index % 256, dtype=np.uint8), photometric="minisblack")
    return buf.getvalue()


def write_tiff(folder, index, name=None):
    path = folder / (name or fei_name(index))
    path.write_bytes(tiff_bytes(index))
    return path


class Recorder:
    """Collects the watcher's callbacks and lets a test wait for a condition."""

    def __init__(self):
        self.ready, self.rejected, self.gaps = [], [], []
        self._cond = threading.Condition()

    def on_ready(self, path, index):
        with self._cond:
            self.ready.append((path, index, path.stat().st_size))
            self._cond.notify_all()

    def on_rejected(self, path, reason):
        with self._cond:
            self.rejected.append((path, reason))
            self._cond.notify_all()

    def on_gap(self, index, reason):
        with self._cond:
            self.gaps.append((index, reason))
            self._cond.notify_all()

    def wait_for(self, predicate):
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self), WAIT_S), (self.ready, self.rejected, self.gaps)

    @property
    def indices(self):
        return [i for _, i, _ in self.ready]


def watcher(folder, rec, **kw):
    kw.setdefault("settle_s", 0.1)
    kw.setdefault("poll_interval_s", 0.1)
    return SliceWatcher(folder, on_ready=rec.on_ready, on_rejected=rec.on_rejected, on_gap=rec.on_gap, **kw)


@pytest.mark.parametrize("polling", [False, True], ids=["events", "polling"])
def test_slice_written_in_two_halves_is_used_only_when_whole(tmp_path, polling):
    rec = Recorder()
    data = tiff_bytes(1, shape=(64, 64))
    path = tmp_path / fei_name(1)
    with watcher(tmp_path, rec, polling=polling, settle_s=0.1, incomplete_timeout_s=60):
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            # Several settle intervals with a stable size: it must still not count (it does not parse).
            time.sleep(1.0)
            assert rec.ready == [] and rec.rejected == []
            fh.write(data[len(data) // 2 :])
        rec.wait_for(lambda r: r.ready)
    assert rec.ready == [(path, 1, len(data))]
    assert rec.rejected == []


def test_junk_and_temporary_files_are_ignored_and_unindexed_tiff_reported(tmp_path):
    rec = Recorder()
    for name in ("notes.txt", "Thumbs.db", ".hidden_002.tif", "~tmp_003.tif", "slice_004.tif.part", "x_005.tmp"):
        (tmp_path / name).write_bytes(tiff_bytes(7))
    with watcher(tmp_path, rec):
        (tmp_path / "overview.tif").write_bytes(tiff_bytes(9))
        write_tiff(tmp_path, 1)
        # Written under a temporary name, then renamed: used under its final name only.
        temporary = write_tiff(tmp_path, 2, name=fei_name(2) + ".tmp")
        time.sleep(0.3)
        temporary.rename(tmp_path / fei_name(2))
        rec.wait_for(lambda r: len(r.ready) == 2 and r.rejected)
        time.sleep(0.3)  # give ignored files every chance to show up
    assert [(p.name, i) for p, i, _ in rec.ready] == [(fei_name(1), 1), (fei_name(2), 2)]
    assert [(p.name, reason) for p, reason in rec.rejected] == [("overview.tif", "no slice index in the file name")]


def test_backlog_and_out_of_order_burst_released_in_index_order(tmp_path):
    rec = Recorder()
    (tmp_path / "SEM Image").mkdir()
    for index in (3, 1, 2):  # backlog present before start
        write_tiff(tmp_path / "SEM Image", index)
    order = list(range(4, 204))
    random.Random(1).shuffle(order)
    with watcher(tmp_path, rec, settle_s=0.2, gap_timeout_s=60):
        for index in order:
            write_tiff(tmp_path / "SEM Image", index)
        rec.wait_for(lambda r: len(r.ready) == 203)
    assert rec.indices == list(range(1, 204))
    assert rec.rejected == [] and rec.gaps == []


def test_slices_of_one_folder_only(tmp_path):
    """One detector per volume: slices in another folder than the first slice's are rejected once;
    with a detector named, the other detectors' slices are ignored."""
    rec = Recorder()
    with watcher(tmp_path, rec):
        (tmp_path / "SEM Image").mkdir()
        (tmp_path / "ETD Image").mkdir()
        first = write_tiff(tmp_path / "SEM Image", 1)
        rec.wait_for(lambda r: r.ready)
        other = write_tiff(tmp_path / "ETD Image", 2)
        write_tiff(tmp_path / "SEM Image", 2)
        rec.wait_for(lambda r: len(r.ready) == 2 and r.rejected)
    assert [p for p, _, _ in rec.ready] == [first, tmp_path / "SEM Image" / fei_name(2)]
    assert rec.rejected == [(other, rec.rejected[0][1])] and "several detectors" in rec.rejected[0][1]

    chosen = Recorder()
    with SliceWatcher(tmp_path, on_ready=chosen.on_ready, on_rejected=chosen.on_rejected, settle_s=0.05,
                      gap_timeout_s=0.2, detector="etd image"):
        chosen.wait_for(lambda r: r.ready)
        time.sleep(0.3)
    assert [p for p, _, _ in chosen.ready] == [other] and chosen.rejected == []


def test_duplicate_index_reported_not_released(tmp_path):
    rec = Recorder()
    with watcher(tmp_path, rec):
        first = write_tiff(tmp_path, 1)
        rec.wait_for(lambda r: r.ready)
        second = write_tiff(tmp_path, 1, name="slice_0001.tif")  # another name, the same index
        write_tiff(tmp_path, 2)
        rec.wait_for(lambda r: len(r.ready) == 2 and r.rejected)
    assert [(p, i) for p, i, _ in rec.ready] == [(first, 1), (tmp_path / fei_name(2), 2)]
    assert len(rec.rejected) == 1
    path, reason = rec.rejected[0]
    assert path == second and "duplicate slice index 1" in reason and str(first) in reason


def test_gap_skipped_after_timeout_and_reported(tmp_path):
    rec = Recorder()
    with watcher(tmp_path, rec, gap_timeout_s=0.5):
        for index in (1, 3, 4):
            write_tiff(tmp_path, index)
        rec.wait_for(lambda r: len(r.ready) == 3)
        write_tiff(tmp_path, 2)  # too late
        rec.wait_for(lambda r: r.rejected)
    assert rec.indices == [1, 3, 4]
    assert [i for i, _ in rec.gaps] == [2]
    assert "never arrived" in rec.gaps[0][1]
    assert rec.rejected[0][0].name == fei_name(2) and "late" in rec.rejected[0][1]


def test_truncated_forever_rejected_with_reason_and_does_not_block(tmp_path):
    rec = Recorder()
    data = tiff_bytes(2)
    with watcher(tmp_path, rec, incomplete_timeout_s=0.6, gap_timeout_s=120):
        write_tiff(tmp_path, 1)
        (tmp_path / fei_name(2)).write_bytes(data[: len(data) - 100])
        (tmp_path / fei_name(4)).write_bytes(b"")  # zero bytes forever
        write_tiff(tmp_path, 3)
        write_tiff(tmp_path, 5)
        rec.wait_for(lambda r: len(r.ready) == 3 and len(r.rejected) == 2)
    assert rec.indices == [1, 3, 5]
    reasons = {p.name: reason for p, reason in rec.rejected}
    assert "truncated" in reasons[fei_name(2)]
    assert "empty" in reasons[fei_name(4)]
    assert rec.gaps == []  # reported as rejected files, not as missing slices


def test_resume_ignores_done_files_quietly(tmp_path):
    rec = Recorder()
    done = {i: str(write_tiff(tmp_path, i)) for i in (1, 2, 3)}
    with watcher(tmp_path, rec, done=done):
        write_tiff(tmp_path, 4)
        rec.wait_for(lambda r: r.ready)
        time.sleep(0.3)
    assert rec.indices == [4]
    assert rec.rejected == [] and rec.gaps == []


def test_missing_folder_refused(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        SliceWatcher(tmp_path / "nowhere", on_ready=print, on_rejected=print)


# -- IndexOrderer with a fake clock --------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def orderer(rec, clock, **kw):
    return IndexOrderer(on_release=rec.on_ready, on_rejected=rec.on_rejected, on_gap=rec.on_gap, clock=clock, **kw)


class Recorded(Recorder):
    def on_ready(self, path, index):
        self.ready.append((path, index, None))


def test_orderer_burst_of_500_in_any_order():
    rec, clock = Recorded(), Clock()
    o = orderer(rec, clock, gap_timeout_s=10)
    indices = list(range(1, 501))
    random.Random(7).shuffle(indices)
    for index in indices:
        o.announce(index)
    for index in indices:
        o.offer(f"/acq/s_{index:04d}.tif", index)
    assert rec.indices == list(range(1, 501))
    assert o.waiting_count == 0 and rec.rejected == [] and rec.gaps == []


def test_orderer_gap_waits_exactly_the_timeout_then_skips():
    rec, clock = Recorded(), Clock()
    o = orderer(rec, clock, gap_timeout_s=10)
    o.offer("/a/s_1.tif", 1)
    o.offer("/a/s_4.tif", 4)
    o.offer("/a/s_5.tif", 5)
    assert rec.indices == [1]
    clock.now += 9.9
    assert o.tick() == pytest.approx(1010.0)
    assert rec.indices == [1] and rec.gaps == []
    clock.now += 0.1
    assert o.tick() is None
    assert rec.indices == [1, 4, 5]
    assert [i for i, _ in rec.gaps] == [2, 3]
    o.offer("/a/s_3.tif", 3)
    o.offer("/a/s_4b.tif", 4)
    assert [reason.split(":")[0] for _, reason in rec.rejected] == [
        "slice index 3 arrived late",
        "duplicate slice index 4",
    ]


def test_orderer_rejected_file_does_not_block_and_is_not_a_gap():
    rec, clock = Recorded(), Clock()
    o = orderer(rec, clock, gap_timeout_s=100)
    o.announce(2)
    o.offer("/a/s_1.tif", 1)
    o.offer("/a/s_3.tif", 3)
    assert rec.indices == [1]
    o.reject("/a/s_2.tif", 2, "truncated")
    assert rec.indices == [1, 3]
    assert rec.gaps == [] and [reason for _, reason in rec.rejected] == ["truncated"]


def test_orderer_first_slice_rejected_does_not_delay_the_start():
    rec, clock = Recorded(), Clock()
    o = orderer(rec, clock, gap_timeout_s=100)
    o.announce(1)
    o.offer("/a/s_2.tif", 2)
    o.reject("/a/s_1.tif", 1, "truncated")
    assert rec.indices == [2] and rec.gaps == []
    o.offer("/a/s_1b.tif", 1)
    assert "arrived late" in rec.rejected[-1][1]


def test_orderer_unknown_start_above_one_waits_for_lower_indices():
    rec, clock = Recorded(), Clock()
    o = orderer(rec, clock, gap_timeout_s=5)
    o.offer("/a/s_9.tif", 9)
    o.offer("/a/s_8.tif", 8)
    assert rec.indices == []
    clock.now += 2
    o.offer("/a/s_7.tif", 7)  # a lower one did come
    clock.now += 3
    assert o.tick() == pytest.approx(1007.0)  # the wait counts from the lowest complete slice
    assert rec.indices == []
    clock.now += 2
    assert o.tick() is None
    assert rec.indices == [7, 8, 9]
    assert rec.gaps == []  # nothing below the first slice is missing


def test_orderer_pending_duplicate_and_resume():
    rec, clock = Recorded(), Clock()
    o = orderer(rec, clock, done={1: "/a/s_1.tif", 2: "/a/s_2.tif"})
    assert o.next_index == 3
    o.offer("/a/s_2.tif", 2)  # the same file again on resume: quiet
    o.offer("/b/s_2.tif", 2)  # another file: duplicate
    o.offer("/a/s_5.tif", 5)
    o.offer("/b/s_5.tif", 5)  # duplicate of a slice still held back
    assert rec.indices == []
    assert [os.path.basename(os.path.dirname(str(p))) for p, _ in rec.rejected] == ["b", "b"]
    assert all("duplicate slice index" in reason for _, reason in rec.rejected)


def test_orderer_validates_timeout():
    with pytest.raises(ValueError, match="gap_timeout_s"):
        IndexOrderer(on_release=print, on_rejected=print, gap_timeout_s=0)

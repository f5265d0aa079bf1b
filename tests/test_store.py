"""agent.store: append + resume exactly once, OME-Zarr readable by ome-zarr-py, kill-safe, write errors.

Everything on real Zarr directories; the crash and disk-limit cases run in a subprocess that
really dies (SIGKILL) or really hits a file-size limit (RLIMIT_FSIZE).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from agent.store import StoreError, VolumeStore, provenance_log_path
from processing.errors import RevwatchError, SliceShapeError
from processing.phases import Phases

CANVAS = (24, 20)
SPACING = (0.03, 0.01, 0.012)


def slice_data(index, dtype=np.uint16):
    """Grey and labels of slice `index`, reproducible in any process."""
    rng = np.random.default_rng(index)
    grey = rng.integers(0, np.iinfo(dtype).max, CANVAS, dtype=dtype, endpoint=True)
    labels = rng.integers(0, 4, CANVAS, dtype=np.uint8)
    return grey, labels


def provenance(index):
    return {
        "source": f"/acq/SEM Image - SliceImage - {index:03d}.tif",
        "arrival_time_unix_s": 1.7e9 + index,
        "shift_px": np.array([0.25 * index, -0.5]),
        "z_um": np.float64(SPACING[0] * index),
        "confidence": 0.9,
    }


def new_store(path, **kw):
    return VolumeStore.create(
        path,
        canvas_shape=CANVAS,
        dtype=np.uint16,
        spacing_um=SPACING,
        phases=Phases(("pore", "electrolyte", "active")),
        run_attrs={"run_id": "run-1"},
        **kw,
    )


def fill(store, indices):
    for index in indices:
        store.append(index, *slice_data(index), provenance(index))


def assert_volume_holds(path, indices):
    """The volume at `path` holds exactly `indices`, in that z order, with their data."""
    store = VolumeStore.open(path, read_only=True)
    depth = store.depth
    assert depth == len(indices)
    assert [r["index"] for r in store.slices] == list(indices)
    assert [r["z"] for r in store.slices] == list(range(depth))
    grey, labels = store.grey[:depth], store.labels[:depth]
    for z, index in enumerate(indices):
        want_grey, want_labels = slice_data(index)
        np.testing.assert_array_equal(grey[z], want_grey)
        np.testing.assert_array_equal(labels[z], want_labels)
    return store


def test_append_reopen_identical_exactly_once(tmp_path):
    path = tmp_path / "run.ome.zarr"
    indices = [1, 2, 4, 5, 6, 7, 9]
    with new_store(path, compact_every=3) as store:
        fill(store, indices[:4])
        store.record_skipped(index=3, reason="slice index 3 never arrived")
        fill(store, indices[4:])
        store.update_run_attrs({"phase_model": {"thresholds": [80.5, 160.0]}})
        with pytest.raises(ValueError, match="already in the volume"):
            store.append(4, *slice_data(4), provenance(4))
        assert store.depth == 7 and store.indices == set(indices)

    reopened = assert_volume_holds(path, indices)
    assert reopened.grey.shape == reopened.labels.shape == (7, *CANVAS)
    assert reopened.slices[2] == {
        "source": "/acq/SEM Image - SliceImage - 004.tif",
        "arrival_time_unix_s": 1.7e9 + 4,
        "shift_px": [1.0, -0.5],
        "z_um": SPACING[0] * 4,
        "confidence": 0.9,
        "index": 4,
        "z": 2,
    }
    assert reopened.skipped == [{"reason": "slice index 3 never arrived", "index": 3}]
    assert reopened.done == {3: None, **{i: provenance(i)["source"] for i in indices}}
    assert reopened.spacing_um == SPACING
    run = reopened.run_attrs
    assert run["run_id"] == "run-1" and run["phase_model"] == {"thresholds": [80.5, 160.0]}
    assert run["phases"] == ["pore", "electrolyte", "active"]
    # The attributes themselves carry the full provenance after close (not only the log).
    attrs = zarr.open_group(path, mode="r", zarr_format=2).attrs["revwatch"]
    assert attrs["slices"] == reopened.slices and attrs["skipped"] == reopened.skipped

    # Resume and keep appending.
    with VolumeStore.open(path) as store:
        fill(store, [10])
    assert_volume_holds(path, indices + [10])


def test_opens_with_ome_zarr_reader_with_scale_and_labels(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Labels, Multiscales, Reader

    path = tmp_path / "run.ome.zarr"
    with new_store(path) as store:
        fill(store, [1, 2, 3])
    nodes = list(Reader(parse_url(str(path), fmt=FormatV04()))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert image.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": list(SPACING)}]]
    assert [(a["name"], a["type"], a["unit"]) for a in image.metadata["axes"]] == [
        (axis, "space", "micrometer") for axis in "zyx"
    ]
    np.testing.assert_array_equal(np.asarray(image.data[0][1]), slice_data(2)[0])
    assert any(isinstance(spec, Labels) for node in nodes for spec in node.specs)
    label = next(node for node in nodes if any(isinstance(spec, Label) for spec in node.specs))
    assert "labels/phases" in str(label.zarr)
    assert label.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": list(SPACING)}]]
    assert label.metadata["properties"] == {1: {"name": "pore"}, 2: {"name": "electrolyte"}, 3: {"name": "active"}}
    np.testing.assert_array_equal(np.asarray(label.data[0][2]), slice_data(3)[1])


def test_opens_with_zarr_and_ome_zarr_without_warnings(tmp_path, caplog, recwarn):
    """Nothing but the hierarchy inside the volume: zarr warns about any other file (it did about the log)."""
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = tmp_path / "run.ome.zarr"
    with new_store(path) as store:
        fill(store, [1, 2])
    assert provenance_log_path(path).is_file() and provenance_log_path(path).parent == path.parent
    caplog.set_level("WARNING")
    root = zarr.open(path, mode="r")
    assert sorted(name for name, _ in root.members(max_depth=None)) == ["0", "labels", "labels/phases", "labels/phases/0"]
    nodes = list(Reader(parse_url(str(path), fmt=FormatV04()))())
    assert len(nodes) >= 2 and np.asarray(nodes[0].data[0]).shape == (2, *CANVAS)
    assert [str(w.message) for w in recwarn] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []


def test_validates_against_ngff_04_models(tmp_path):
    models = pytest.importorskip("ome_zarr_models.v04", reason="ome-zarr-models (NGFF schema models) not installed")
    path = tmp_path / "run.ome.zarr"
    with new_store(path) as store:
        fill(store, [1])
    root = zarr.open_group(path, mode="r", zarr_format=2)
    image = models.Image.from_zarr(root)
    assert [a.name for a in image.attributes.multiscales[0].axes] == ["z", "y", "x"]
    label = models.ImageLabel.from_zarr(root["labels"]["phases"])
    assert [p.name for p in label.attributes.image_label.properties] == ["pore", "electrolyte", "active"]
    assert models.Labels.from_zarr(root["labels"]).attributes.labels == ["phases"]


def test_wrong_slice_refused_and_nothing_written(tmp_path):
    with new_store(tmp_path / "v.ome.zarr") as store:
        grey, labels = slice_data(1)
        with pytest.raises(SliceShapeError, match="uint8"):
            store.append(1, grey.astype(np.uint8), labels)
        with pytest.raises(SliceShapeError, match=r"\(24, 21\)"):
            store.append(1, np.zeros((24, 21), np.uint16), labels)
        assert store.depth == 0 and store.grey.shape[0] == 0


def test_create_refuses_existing_volume(tmp_path):
    path = tmp_path / "v.ome.zarr"
    path.mkdir()  # an empty folder is fine
    new_store(path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.ome.zarr", "v.ome.zarr.provenance.jsonl"]  # no staging left
    with pytest.raises(StoreError, match="already exists"):
        new_store(path)
    with pytest.raises(StoreError, match="not a Zarr"):
        VolumeStore.open(tmp_path)


# Runs in a subprocess: appends slices 1..3, then dies by SIGKILL while appending slice 4.
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_store import fill, new_store, provenance, slice_data
    from agent.store import VolumeStore

    mode = {mode!r}

    class Killed(VolumeStore):
        def _commit(self, kind, record):
            if record["index"] == 4:
                if mode == "torn":  # die half-way through the commit line
                    with open(self._log_path, "ab") as fh:
                        fh.write(b'{{"kind": "slice", "source": "/acq/')
                os.kill(os.getpid(), signal.SIGKILL)
            super()._commit(kind, record)

    store = Killed.create({path!r}, canvas_shape=(24, 20), dtype="uint16", spacing_um=(0.03, 0.01, 0.012))
    fill(store, [1, 2, 3, 4])
    """
)


@pytest.mark.parametrize("mode", ["before_commit", "torn"])
def test_killed_mid_append_resumes_with_every_slice_once(tmp_path, mode):
    path = tmp_path / "v.ome.zarr"
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), mode=mode, path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    # The pixels of slice 4 were written and the arrays grown before the kill.
    assert zarr.open_array(path / "0", mode="r", zarr_format=2).shape[0] == 4
    assert_volume_holds(path, [1, 2, 3])  # a reader sees the committed slices only
    leftover = path / "0" / "0" / f"0.0.{'ab' * 16}.partial"  # what a write killed mid-way leaves
    leftover.write_bytes(b"partial chunk")
    with VolumeStore.open(path) as store:
        assert not leftover.exists()
        assert store.depth == 3 and store.grey.shape[0] == 3
        fill(store, [4, 5])
    assert_volume_holds(path, [1, 2, 3, 4, 5])
    lines = provenance_log_path(path).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [1, 2, 3, 4, 5]


# Runs in a subprocess: the file-size limit makes the next chunk write fail as a full disk would.
DISK_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    sys.path.insert(0, {tests!r})
    from test_store import fill, new_store
    from agent.store import StoreError

    store = new_store({path!r})
    fill(store, [1, 2, 3])
    largest = max(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk({path!r}) for f in fs)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 64, resource.RLIM_INFINITY))
    try:
        fill(store, [4, 5, 6, 7, 8, 9, 10])
    except StoreError as exc:
        print(json.dumps({{"error": str(exc), "depth": store.depth}}))
    """
)


def test_write_error_raises_store_error_and_volume_stays_readable(tmp_path):
    path = tmp_path / "v.ome.zarr"
    script = DISK_SCRIPT.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["depth"] == 3
    assert str(path) in outcome["error"] and "File too large" in outcome["error"]
    assert issubclass(StoreError, RevwatchError)
    store = assert_volume_holds(path, [1, 2, 3])
    assert store.grey.shape == store.labels.shape == (3, *CANVAS)  # the failed append was rolled back
    with VolumeStore.open(path) as store:
        fill(store, [4])
    assert_volume_holds(path, [1, 2, 3, 4])


def test_chunks_are_whole_slices_of_bounded_size(tmp_path):
    small = new_store(tmp_path / "small.ome.zarr")
    assert small.grey.chunks[1:] == CANVAS and small.labels.chunks == small.grey.chunks
    assert small.grey.chunks[0] == 32  # tiny slices: several per chunk, at most 32
    big = VolumeStore.create(tmp_path / "big.ome.zarr", canvas_shape=(2048, 2048), dtype=np.uint16, spacing_um=SPACING)
    assert big.grey.chunks == (1, 2048, 2048)  # 8 MiB slices: one per chunk
    mid = VolumeStore.create(tmp_path / "mid.ome.zarr", canvas_shape=(256, 1024), dtype=np.uint8, spacing_um=SPACING)
    assert mid.grey.chunks == (4, 256, 1024)  # 1 MiB per chunk


def test_create_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="spacing_um"):
        VolumeStore.create(tmp_path / "a", canvas_shape=CANVAS, dtype=np.uint8, spacing_um=(0, 1, 1))
    with pytest.raises(ValueError, match="dtype"):
        VolumeStore.create(tmp_path / "b", canvas_shape=CANVAS, dtype=np.float32, spacing_um=SPACING)
    with pytest.raises(ValueError, match="canvas_shape"):
        VolumeStore.create(tmp_path / "c", canvas_shape=(5,), dtype=np.uint8, spacing_um=SPACING)


def test_resume_from_attributes_when_log_is_missing(tmp_path):
    """A copy made by a tool that keeps only Zarr keys still resumes from the attributes."""
    path = tmp_path / "v.ome.zarr"
    with new_store(path) as store:
        fill(store, [1, 2])
        store.record_skipped(file="/acq/junk.tif", reason="not a complete slice")
    provenance_log_path(path).unlink()
    with VolumeStore.open(path) as store:
        assert store.skipped == [{"reason": "not a complete slice", "file": "/acq/junk.tif"}]
        fill(store, [3])
    assert provenance_log_path(path).is_file()
    assert_volume_holds(path, [1, 2, 3])

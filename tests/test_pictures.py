"""Pictures beside the volume: written atomically, refreshed during a run, opened and checked."""

from __future__ import annotations

import colorsys
import hashlib
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from agent.config import Config
from agent.events import validate_document
from agent.monitor import MonitorState, render
from agent.pictures import PHASE_COLOURS, PictureWorker, VolumePictures, overlay, pictures_folder
from agent.pipeline import Agent
from agent.publish import free_loopback_endpoint
from agent.replay import replay
from agent.store import VolumeStore
from processing.phases import Phases
from processing.synthetic import write_acquisition

SPACING_UM = (0.05, 0.02, 0.02)
CAP_PX = 28
N_SLICES = 24


def _pixels(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), dtype=float) / 255


def _colour_shares(rgb):
    """Share of all pixels whose hue is that of each phase colour (saturated pixels only)."""
    flat = rgb.reshape(-1, 3)
    mx, mn = flat.max(axis=1), flat.min(axis=1)
    saturated = (mx - mn) > 0.12
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in flat[saturated][::7]])
    shares = []
    for colour in PHASE_COLOURS[:3]:
        hue = colorsys.rgb_to_hsv(*colour)[0]
        near = np.abs((hsv[:, 0] - hue + 0.5) % 1 - 0.5) < 0.03 if hsv.size else np.zeros(0, bool)
        shares.append(7 * np.count_nonzero(near) / len(flat))
    return shares


def check_picture(path, *, colours):
    """Size, not blank, and (for label pictures) each phase colour over > 3 % of the picture."""
    rgb = _pixels(path)
    assert rgb.shape[0] >= 250 and rgb.shape[1] >= 500, rgb.shape
    assert rgb.std() > 0.05, "blank picture"
    if colours:
        shares = _colour_shares(rgb)
        assert min(shares) > 0.03, dict(zip(("pore", "electrolyte", "active"), shares))


def test_overlay_colours_each_phase_and_leaves_unassigned_grey():
    grey = np.full((4, 4), 100, np.uint8)
    grey[0, 0] = 200
    labels = np.array([[0, 1, 2, 3]] * 4, np.uint8)
    rgb = overlay(grey, labels, alpha=0.5)
    assert np.allclose(rgb[1, 0], rgb[1, 0, 0])  # unassigned: grey
    for label in (1, 2, 3):
        hue = colorsys.rgb_to_hsv(*rgb[1, label])[0]
        assert hue == pytest.approx(colorsys.rgb_to_hsv(*PHASE_COLOURS[label - 1])[0], abs=1e-3)
    assert np.allclose(overlay(None, labels)[1, 3], PHASE_COLOURS[2])


def test_volume_pictures_are_written_atomically_and_grow(tmp_path, small_acquisition):
    acq = small_acquisition
    labels = acq.labels[:, :128, :128]  # truth canvas cut to the slices' field (content need not match)
    provenance = [{"shift_px": list(map(float, d)), "drift_reliable": i != 5} for i, d in enumerate(acq.drift_px)]
    history = {"volume_fraction.pore": np.array([[4, 0.2, 0.3], [8, 0.21, 0.2], [16, 0.2, 0.1]])}
    pictures = VolumePictures(tmp_path / "p", phases=Phases(), spacing_um=SPACING_UM, canvas_shape=(128, 128))
    first = pictures.update(acq.slices, labels, 8, provenance=provenance, rev_history=history)
    assert set(first) == {"slice", "orthogonal", "drift", "rev"}
    ortho_8 = _pixels(first["orthogonal"])
    second = pictures.update(acq.slices, labels, 16, provenance=provenance, rev_history=history)
    assert not (ortho_8.shape == _pixels(second["orthogonal"]).shape
                and np.allclose(ortho_8, _pixels(second["orthogonal"])))
    check_picture(second["slice"], colours=True)
    check_picture(second["orthogonal"], colours=True)
    check_picture(second["drift"], colours=False)
    check_picture(second["rev"], colours=False)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["drift.png", "orthogonal.png", "rev.png", "slice.png"]


class Reads:
    """Array-like that returns a new array on every read, as Zarr does."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype

    def __getitem__(self, key):
        return np.array(self.data[key])


def test_the_orthogonal_sections_keep_only_their_rows(tmp_path):
    # 64 slices of 256 x 256: 12.6 MB of grey and labels read, 0.1 MB of middle rows and columns kept
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 60000, (64, 256, 256), dtype=np.uint16)
    labels = rng.integers(1, 4, (64, 256, 256), dtype=np.uint8)
    pictures = VolumePictures(tmp_path / "p", phases=Phases(), spacing_um=SPACING_UM, canvas_shape=(256, 256))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pictures._catch_up(Reads(grey), Reads(labels), 64)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1e6, f"{kept / 1e6:.1f} MB kept after reading 64 slices"
    assert pictures._section("xz_grey").shape == (64, 256)
    np.testing.assert_array_equal(pictures._section("yz_labels"), labels[:, :, 128])


def test_a_cancelled_update_stops_after_the_current_picture(tmp_path, small_acquisition):
    acq = small_acquisition
    labels = acq.labels[:, :128, :128]
    history = {"volume_fraction.pore": np.array([[4, 0.2, 0.3], [8, 0.21, 0.2]])}
    pictures = VolumePictures(tmp_path / "p", phases=Phases(), spacing_um=SPACING_UM, canvas_shape=(128, 128))
    asked = []
    written = pictures.update(acq.slices, labels, 8, rev_history=history,
                              cancelled=lambda: asked.append(1) or len(asked) > 1)
    assert set(written) == {"slice"}
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["slice.png"]  # no half-written file


def test_a_failing_picture_never_raises_in_the_run(tmp_path, monkeypatch):
    store = VolumeStore.create(tmp_path / "v.ome.zarr", canvas_shape=(32, 32), dtype=np.uint8, spacing_um=SPACING_UM,
                               phases=Phases(), run_attrs={})
    store.append(1, np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint8), {"shift_px": [0.0, 0.0]})

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(VolumePictures, "update", broken)
    worker = PictureWorker(store, phases=Phases())
    worker.request(1)
    assert worker.wait_idle(30)
    assert worker.failures == 1 and worker.paths == {}
    monkeypatch.undo()
    worker.request(1)  # the thread survived and the next refresh works
    assert worker.wait_idle(60)
    worker.close()
    assert set(worker.paths) == {"slice", "orthogonal", "drift"}
    store.close()


def _wait_until(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A real agent on a replayed acquisition, pictures every 4 slices.

    The replay pauses after slice 12 until the pictures exist, and after slice 20 until
    `slice.png` has changed: what a viewer sees while slices still arrive, whatever the load of
    the machine (the last 4 slices are sent only after that).
    """
    from processing.synthetic import generate_microstructure, render_acquisition

    root = tmp_path_factory.mktemp("live")
    gen = np.random.default_rng(5)
    labels = generate_microstructure((N_SLICES, 176, 176), spacing_um=SPACING_UM, rng=gen)
    acq = render_acquisition(labels, rng=gen, field_shape=(128, 128), jump_probability=0.05, jump_px=6.0,
                             cap_px=CAP_PX)
    source, incoming, volume = root / "source", root / "incoming", root / "run.ome.zarr"
    write_acquisition(acq, source, layout="fei", pixel_size_um=SPACING_UM[1], slice_spacing_um=SPACING_UM[0])
    incoming.mkdir()
    config = Config.model_validate({
        "acquisition": {"folder": str(incoming), "settle_s": 0.05, "gap_timeout_s": 5.0},
        "volume": {"path": str(volume)},
        "processing": {"calibration_slices": 4, "cap_rows": CAP_PX},
        "analysis": {"every_slices": 4, "expensive_every_slices": 8, "pictures_every_slices": 4},
        "publish": {"endpoint": free_loopback_endpoint(), "heartbeat_interval_s": 0.5},
    })
    agent = Agent(config)
    statuses = []
    agent.events.subscribe(lambda name, doc: statuses.append(doc) if name == "status" else None, name="test")
    picture = pictures_folder(volume) / "slice.png"
    seen = {}

    def look(count):
        data = picture.read_bytes() if picture.exists() else b""
        processed = statuses[-1]["slices_processed"] if statuses else 0
        seen[count] = (processed, picture.stat().st_mtime_ns if data else None,
                       hashlib.sha1(data).hexdigest() if data else None)

    def on_slice(count, path):
        if count == 12:
            _wait_until(picture.exists, 120)
            look(12)
        elif count == 20:
            _wait_until(lambda: picture.exists() and hashlib.sha1(picture.read_bytes()).hexdigest() != seen[12][2], 120)
            look(20)

    stop, result = threading.Event(), {}
    runner = threading.Thread(target=lambda: result.update(summary=agent.run(stop_event=stop)), daemon=True)
    runner.start()
    try:
        assert replay(source, incoming, interval_s=0.1, on_slice=on_slice) == N_SLICES
        _wait_until(lambda: any(s["slices_processed"] == N_SLICES for s in statuses), 180)
    finally:
        stop.set()
        runner.join(180)
    assert "summary" in result, "the run did not finish"
    return {"volume": volume, "folder": picture.parent, "statuses": statuses, "seen": seen,
            "summary": result["summary"]}


def test_pictures_are_refreshed_during_the_run(live_run):
    assert live_run["summary"].slices_processed == N_SLICES
    (n12, mtime12, digest12), (n20, mtime20, digest20) = live_run["seen"][12], live_run["seen"][20]
    assert digest12 is not None and digest20 is not None, live_run["seen"]
    assert digest20 != digest12 and mtime20 != mtime12  # redrawn ...
    assert n20 < N_SLICES  # ... while the acquisition was still going


def test_status_lists_the_pictures_and_the_monitor_shows_them(live_run):
    last = live_run["statuses"][-1]
    validate_document(last)
    folder = live_run["folder"]
    assert last["pictures"] == {name: str(folder / f"{name}.png") for name in ("slice", "orthogonal", "drift", "rev")}
    for path in last["pictures"].values():
        assert Path(path).is_file()
    assert not [p for p in folder.iterdir() if p.suffix != ".png"]  # no temporary file left
    state = MonitorState()
    state.update("status", last)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render(state, width=200, height=40))
    text = console.export_text()
    assert "pictures" in text and "slice.png" in text and "rev.png" in text


def test_pictures_of_the_run_show_slice_labels_and_drift(live_run):
    folder = live_run["folder"]
    check_picture(folder / "slice.png", colours=True)
    check_picture(folder / "orthogonal.png", colours=True)
    check_picture(folder / "drift.png", colours=False)
    check_picture(folder / "rev.png", colours=False)


def test_metrics_writes_the_same_pictures_for_a_finished_volume(live_run, tmp_path, capsys):
    out = tmp_path / "pics"
    assert main(["metrics", str(live_run["volume"]), "--pictures", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["drift.png", "orthogonal.png", "rev.png", "slice.png"]
    check_picture(out / "slice.png", colours=True)
    check_picture(out / "rev.png", colours=False)
    assert "pictures:" in capsys.readouterr().err


def test_metrics_writes_label_pictures_beside_a_tiff(tmp_path, small_labels):
    import tifffile

    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, small_labels, photometric="minisblack")
    argv = ["metrics", str(path), "--no-rev", "--spacing-um", *map(str, SPACING_UM),
            "--phase", "1=pore", "--phase", "2=electrolyte", "--phase", "3=active"]
    assert main(argv) == 0
    folder = tmp_path / "labels.tif.pictures"
    # no drift for a label TIFF, no REV curves with --no-rev
    assert sorted(p.name for p in folder.iterdir()) == ["orthogonal.png", "slice.png"]
    check_picture(folder / "slice.png", colours=True)
    assert main(argv + ["--no-pictures"]) == 0


def test_compare_reads_revwatch_volumes(live_run, capsys):
    """`revwatch compare` on OME-Zarr volumes (the run's, twice): equal values, nothing marked."""
    import json

    volume = str(live_run["volume"])
    assert main(["compare", volume, volume, "--names", "a", "b", "--min-edge-um", "0.2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["shape"] for s in doc["samples"]] == [[N_SLICES, 128, 128]] * 2
    for row in doc["rows"]:
        (d,) = row["differences"]
        assert d["significant"] is not True
        assert d["difference"] in (None, 0.0)
    assert main(["compare", volume, volume, "--spacing-um", "1", "1", "1"]) == 2  # a volume carries its own

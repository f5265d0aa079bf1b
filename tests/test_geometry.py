"""The volume's geometry on real-looking acquisitions: true z, checked pixel size, one detector per
volume, and the start checks that report every missing setting at once (issue 11)."""

import logging
import re
import threading

import numpy as np
import pytest
import zarr

from agent.config import Config, ConfigError
from agent.pipeline import Agent
from agent.publish import free_loopback_endpoint
from agent.store import VolumeStore
from processing.io import write_fei_project, write_slice
from processing.zaxis import ZPositions, mean_step_um

PIXEL_UM = 0.02


def config_for(folder, volume, **sections) -> Config:
    data = {
        "acquisition": {"folder": str(folder), "settle_s": 0.02, "gap_timeout_s": 0.3},
        "volume": {"path": str(volume)},
        "processing": {"calibration_slices": 4, "roi": "whole"},
        # the texture's thin middle grey is no separable class on 64 px slices: with three names the
        # calibration would wait for it (up to 6 windows); these tests are about geometry
        "phases": {"names": ["pore", "active"]},
        "analysis": {"every_slices": 200, "expensive_every_slices": 400},
        "publish": {"endpoint": free_loopback_endpoint(), "heartbeat_interval_s": 0.5},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


def run_to_end(config, *, idle_exit_s=3.0):
    """Run the agent on what the folder holds; return (agent, summary, every emitted document)."""
    agent = Agent(config)
    docs = []
    agent.events.subscribe(lambda name, doc: docs.append(doc), name="test")
    summary = agent.run(idle_exit_s=idle_exit_s)
    return agent, summary, docs


def texture(index, shape=(64, 64)):
    """A grey slice of round grains that changes slowly with `index` (three grey levels, noise)."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    grey = np.full(shape, 60.0)
    for k in range(6):
        cy, cx = (17 * k + index // 3) % shape[0], (29 * k + 7) % shape[1]
        grey[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 200.0
    grey[(yy + index) % 23 < 4] = 120.0
    return np.clip(grey + rng.normal(0, 6, shape), 0, 255).astype(np.uint8)


def files_beside(tmp_path, folder):
    return sorted(p.name for p in tmp_path.iterdir() if p != folder)


# -- true z: the pure part --------------------------------------------------------------------


def test_positions_report_a_change_of_step_once_and_not_missing_indices():
    z = ZPositions()
    notes = [z.place(i, 0.02 * i).change for i in range(1, 11)]
    # Indices 12, 14, ...: missing slices at the same step per index (the watcher reports the gaps).
    notes += [z.place(i, 0.02 * i).change for i in range(12, 31, 2)]
    assert notes == [None] * 20
    # Consecutive indices, step doubled: one report, once the new step is measured.
    notes = {i: z.place(i, 0.6 + 0.04 * (i - 30)).change for i in range(31, 60)}
    reported = {i: n for i, n in notes.items() if n is not None}
    (index, note), = reported.items()
    assert 31 < index <= 31 + 2 * 5 and "from 20 nm to 40 nm per slice between slices" in note
    assert z.place(60, 0.1).change.endswith("not increasing")
    with pytest.raises(ValueError, match="no z"):
        ZPositions().place(1)
    nominal = ZPositions(nominal_step_um=0.05)
    assert nominal.place(3).z_um == pytest.approx(0.15) and nominal.place(5).z_um == pytest.approx(0.25)
    assert mean_step_um(0.0, 4.78, 170) == pytest.approx(4.78 / 169) and mean_step_um(1.0, 1.0, 1) is None


@pytest.mark.parametrize("seed", range(5))
def test_measured_z_scatter_is_no_change_but_a_lost_slice_or_a_new_step_is(seed):
    """Atlas z scattering around the nominal position (every single step off by up to 100 %): no
    report; a lost slice while the index goes on (5 % scatter): one report, naming the slice; a
    change of step (20 % scatter): one report."""
    rng = np.random.default_rng(seed)
    nominal = 0.05 * np.arange(1, 301)

    def reports(z_true, scatter_um):
        measured = z_true + np.clip(rng.normal(0, scatter_um, z_true.size), -0.024, 0.024)
        z = ZPositions()
        notes = {i: z.place(i, float(v)).change for i, v in enumerate(measured, start=1)}
        return {i: n for i, n in notes.items() if n is not None}

    assert reports(nominal, 0.01) == {}
    lost = nominal + 0.05 * (np.arange(1, 301) > 150)
    (index, note), = reports(lost, 0.0025).items()
    assert 151 <= index <= 151 + 2 * 5 and note.startswith("z jumped") and "at slice 151" in note
    jump, before = map(float, re.search(r"a step of ([\d.]+) nm .* the step is ([\d.]+) nm", note).groups())
    assert jump == pytest.approx(100, abs=15) and before == pytest.approx(50, abs=2)
    slower = nominal + 0.03 * np.maximum(np.arange(1, 301) - 150, 0)
    (index, note), = reports(slower, 0.01).items()
    assert 151 <= index <= 151 + 2 * 5, note
    old, new = map(float, re.search(r"z step changed from ([\d.]+) nm to ([\d.]+) nm", note).groups())
    assert old == pytest.approx(50, abs=2.5) and new == pytest.approx(80, rel=0.15)  # one window: 6 % scatter


# -- true z: the agent ------------------------------------------------------------------------


def atlas_folder(root, z_of_index):
    folder = root / "acq" / "SESI"
    for index, z_um in z_of_index.items():
        write_slice(folder, index, texture(index), layout="zeiss", pixel_size_um=PIXEL_UM, z_um=z_um)
    return root / "acq"


def assert_true_depth(volume, z_of_index, docs):
    store = VolumeStore.open(volume, read_only=True)
    stored = [r["index"] for r in store.slices]
    assert stored == sorted(z_of_index)
    np.testing.assert_allclose([r["z_um"] for r in store.slices], [z_of_index[i] for i in stored], atol=1e-4)
    true_span = max(z_of_index.values()) - min(z_of_index.values())
    dz = store.spacing_um[0]
    assert store.depth * dz == pytest.approx(true_span, rel=0.01)  # the depth in um follows the true z
    root = zarr.open_group(volume, mode="r", zarr_format=2)
    for group in (root, root["labels"]["phases"]):
        scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale[0] == pytest.approx(dz)
    statement = root.attrs["revwatch"]["z_spacing"]
    assert "mean true step" in statement["method"] and statement["z_source"] == "file names"
    metrics = [d for d in docs if d["topic"] == "metrics"]
    assert metrics and metrics[-1]["spacing_um"][0] == pytest.approx(dz)
    return store


@pytest.mark.slow
def test_every_other_slice_missing_after_100_gives_the_true_depth(tmp_path):
    """Atlas names; after slice 100 every other slice is missing: 2.99 um deep, not 2.0 (issue 11)."""
    z_of_index = {i: 0.02 * i for i in range(1, 101)}
    z_of_index.update({i: 0.02 * i for i in range(102, 151, 2)})
    folder = atlas_folder(tmp_path, z_of_index)
    volume = tmp_path / "v.ome.zarr"
    _, summary, docs = run_to_end(config_for(folder, volume))
    assert summary.depth_slices == len(z_of_index) == 125
    store = assert_true_depth(volume, z_of_index, docs)
    assert store.depth * store.spacing_um[0] == pytest.approx(2.98, rel=0.01)
    # The missing slices are reported (by the watcher, as gaps); the z step per index did not change.
    assert {r["index"] for r in store.skipped} == set(range(101, 150, 2))
    assert not [d for d in docs if d["topic"] == "error" and d["kind"] == "z_step"]


@pytest.mark.slow  # the step change itself: test_positions_report_a_change_of_step_once_...
def test_step_change_is_reported_and_170_slices_span_4_78_um(tmp_path, caplog):
    """170 slices spanning 4.78 um with a change of step half-way: depth 4.78 um (+1 %), one z_step report."""
    first_step = 0.02
    second_step = (4.78 - 84 * first_step) / 85
    z = np.concatenate([first_step * np.arange(85), 84 * first_step + second_step * np.arange(1, 86)])
    z_of_index = {i + 1: float(round(v, 4)) for i, v in enumerate(z)}
    folder = atlas_folder(tmp_path, z_of_index)
    volume = tmp_path / "v.ome.zarr"
    caplog.set_level(logging.INFO, logger="agent")
    caplog.set_level(logging.INFO, logger="processing.chain")
    _, summary, docs = run_to_end(config_for(folder, volume))
    assert summary.depth_slices == 170
    store = assert_true_depth(volume, z_of_index, docs)
    assert store.depth * store.spacing_um[0] == pytest.approx(4.78, rel=0.01)
    reports = [d for d in docs if d["topic"] == "error" and d["kind"] == "z_step"]
    assert len(reports) == 1 and 86 < reports[0]["index"] <= 86 + 2 * 5 and not reports[0]["critical"]
    assert re.search(r"z step changed from 20 nm to 36\.[45]\d? nm per slice at slice 86",
                     reports[0]["message"]), reports[0]["message"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("z step changed" in w for w in warnings)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "agent.pipeline"]
    assert any(m.startswith("calibrated on 4 slices") for m in infos)
    attempts = [r.getMessage() for r in caplog.records if r.name == "processing.chain"]
    assert sum(m.startswith("calibration attempt on slice") for m in attempts) == 4  # one line per step
    summaries = [m for m in infos if "slices processed" in m]
    assert len(summaries) >= 4 and summaries[-1].startswith("170 slices processed, 0 skipped")


def test_fei_z_is_index_times_zcutspacing(tmp_path):
    folder = tmp_path / "project"
    write_fei_project(folder, slice_spacing_um=0.03)
    for index in (1, 2, 3, 4, 5, 7, 8):  # slice 6 never written: a hole of one step
        write_slice(folder / "Images" / "SEM Image", index, texture(index), pixel_size_um=PIXEL_UM)
    volume = tmp_path / "v.ome.zarr"
    run_to_end(config_for(folder, volume))
    store = VolumeStore.open(volume, read_only=True)
    np.testing.assert_allclose([r["z_um"] for r in store.slices], [0.03 * i for i in (1, 2, 3, 4, 5, 7, 8)])
    assert store.spacing_um[0] == pytest.approx((0.24 - 0.03) / 6)
    assert store.run_attrs["z_spacing"]["z_source"] == "EMProject.emxml ZCutSpacing"


# -- pixel size -------------------------------------------------------------------------------


def test_a_slice_at_another_magnification_is_refused_and_recorded_when_so_configured(tmp_path):
    folder = tmp_path / "project"
    write_fei_project(folder, slice_spacing_um=0.03)
    for index in range(1, 9):
        size = PIXEL_UM * (1.5 if index == 6 else 1.0)
        write_slice(folder / "Images" / "SEM Image", index, texture(index), pixel_size_um=size)
    volume = tmp_path / "v.ome.zarr"
    _, summary, docs = run_to_end(config_for(folder, volume, acquisition={"on_pixel_size_change": "refuse"}))
    store = VolumeStore.open(volume, read_only=True)
    assert [r["index"] for r in store.slices] == [1, 2, 3, 4, 5, 7, 8] and summary.slices_skipped == 1
    (skipped,) = store.skipped
    assert skipped["index"] == 6 and "pixel size 30 nm" in skipped["reason"] and "20 nm" in skipped["reason"]
    (error,) = [d for d in docs if d["topic"] == "error" and d["kind"] == "pixel_size"]
    assert error["index"] == 6 and "magnification changed" in error["message"]
    assert store.spacing_um[1:] == (PIXEL_UM, PIXEL_UM)


def test_slices_at_another_magnification_are_resampled_onto_the_volume_and_said_once(tmp_path):
    """By default the slices from a magnification change on are scaled about the field's centre onto
    the volume's pixel size: none is lost, the change and the return are each one error document,
    and each resampled slice's provenance keeps its own pixel size."""
    folder = tmp_path / "project"
    write_fei_project(folder, slice_spacing_um=0.03)
    for index in range(1, 11):
        size = PIXEL_UM * (0.8 if index in (6, 7, 8) else 1.0)
        write_slice(folder / "Images" / "SEM Image", index, texture(index), pixel_size_um=size)
    volume = tmp_path / "v.ome.zarr"
    _, summary, docs = run_to_end(config_for(folder, volume))
    store = VolumeStore.open(volume, read_only=True)
    assert [r["index"] for r in store.slices] == list(range(1, 11)) and summary.slices_skipped == 0
    errors = [d for d in docs if d["topic"] == "error" and d["kind"] == "pixel_size"]
    assert [(d["index"], d["action"]) for d in errors] == [(6, "resampled"), (9, "none")]
    assert "16 nm" in errors[0]["message"] and "resampled" in errors[0]["message"]
    resampled = {r["index"]: r.get("resampled_from_pixel_size_um") for r in store.slices}
    assert resampled == {i: ([PIXEL_UM * 0.8] * 2 if i in (6, 7, 8) else None) for i in range(1, 11)}
    assert store.spacing_um[1:] == (PIXEL_UM, PIXEL_UM)


def test_configured_pixel_size_off_the_metadata(tmp_path):
    """Refused at start naming both values; with force_pixel_size the configured value is used."""
    folder = tmp_path / "project"
    write_fei_project(folder, slice_spacing_um=0.03)
    for index in range(1, 6):
        write_slice(folder / "Images" / "SEM Image", index, texture(index), pixel_size_um=PIXEL_UM)
    volume = tmp_path / "v.ome.zarr"
    with pytest.raises(ConfigError, match="pixel_size_nm = 25 nm but the slice metadata says 20 nm"):
        Agent(config_for(folder, volume, acquisition={"pixel_size_nm": 25.0})).run(idle_exit_s=1)
    assert files_beside(tmp_path, folder) == []
    run_to_end(config_for(folder, volume, acquisition={"pixel_size_nm": 25.0, "force_pixel_size": True}))
    assert VolumeStore.open(volume, read_only=True).spacing_um[1:] == (0.025, 0.025)


# -- one detector per volume ----------------------------------------------------------------


def two_detector_project(root):
    project = root / "project"
    write_fei_project(project, slice_spacing_um=0.03)
    for index in range(1, 7):
        write_slice(project / "Images" / "SEM Image", index, texture(index), pixel_size_um=PIXEL_UM)
        etd = write_slice(project / "Images" / "ETD Image", index, texture(index + 50), pixel_size_um=PIXEL_UM)
        etd.rename(etd.with_name(etd.name.replace("SEM Image", "ETD Image")))
    return project


def test_project_root_with_two_detectors_is_refused_with_the_list(tmp_path):
    project = two_detector_project(tmp_path)
    with pytest.raises(ConfigError) as refused:
        Agent(config_for(project, tmp_path / "v.ome.zarr")).run(idle_exit_s=1)
    message = str(refused.value)
    assert "several detectors" in message and "'Images/SEM Image' (6 slices)" in message
    assert "'Images/ETD Image' (6 slices)" in message and "acquisition.detector" in message
    assert files_beside(tmp_path, project) == []


def test_configured_detector_makes_the_volume(tmp_path):
    project = two_detector_project(tmp_path)
    volume = tmp_path / "v.ome.zarr"
    _, summary, docs = run_to_end(config_for(project, volume, acquisition={"detector": "SEM Image"}))
    store = VolumeStore.open(volume, read_only=True)
    assert [r["index"] for r in store.slices] == list(range(1, 7)) and summary.slices_skipped == 0
    assert all("/Images/SEM Image/" in r["source"] for r in store.slices)
    # nothing refused (the small test slices show two grey classes: the phase-model warning may come)
    assert not [d for d in docs if d["topic"] == "error" and d["kind"] != "phase_model"]


def test_slices_of_a_second_detector_arriving_later_are_refused(tmp_path):
    """Started on an empty project: the first slice's folder is the run's, another folder's slices are refused."""
    project = tmp_path / "project"
    write_fei_project(project, slice_spacing_um=0.03)
    volume = tmp_path / "v.ome.zarr"
    agent = Agent(config_for(project, volume))
    docs = []
    agent.events.subscribe(lambda name, doc: docs.append(doc), name="test")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    try:
        for index in range(1, 7):
            write_slice(project / "Images" / "SEM Image", index, texture(index), pixel_size_um=PIXEL_UM)
        _wait(lambda: any(d["topic"] == "status" and d["slices_processed"] == 6 for d in docs))
        write_slice(project / "Images" / "ETD Image", 7, texture(7), pixel_size_um=PIXEL_UM)
        _wait(lambda: any(d["topic"] == "error" and "several detectors" in d["message"] for d in docs))
    finally:
        stop.set()
        thread.join(30)
    store = VolumeStore.open(volume, read_only=True)
    assert store.depth == 6 and "ETD Image" in store.skipped[0]["file"]


def _wait(predicate, timeout_s=60.0):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


# -- first run without friction ---------------------------------------------------------------


def test_every_missing_setting_in_one_message_at_start_and_no_stray_files(tmp_path):
    import tifffile

    folder = tmp_path / "slices"
    folder.mkdir()
    for index in range(1, 4):  # no pixel size in the metadata, no z in the names, no project
        tifffile.imwrite(folder / f"slice_{index:04d}.tif", texture(index))
    with pytest.raises(ConfigError) as refused:
        Agent(config_for(folder, tmp_path / "v.ome.zarr")).run(idle_exit_s=1)
    message = str(refused.value)
    assert message.startswith("cannot start (2 problems)")
    assert "no pixel size in the metadata" in message and "set acquisition.pixel_size_nm" in message
    assert "no EMProject.emxml" in message and "set acquisition.slice_spacing_nm" in message
    assert files_beside(tmp_path, folder) == []


def test_first_slice_checks_come_in_one_message_and_leave_nothing(tmp_path):
    import tifffile

    folder = tmp_path / "slices"
    folder.mkdir()
    agent = Agent(config_for(folder, tmp_path / "v.ome.zarr"))
    result = {}

    def target():
        try:
            agent.run(idle_exit_s=20)
        except ConfigError as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    _wait(lambda: agent.events.latest("status") is not None)
    tifffile.imwrite(folder / "slice_0001.tif", texture(1))
    thread.join(30)
    message = str(result["error"])
    assert message.startswith("cannot use the first slice (2 problems)")
    assert "set acquisition.pixel_size_nm" in message and "set acquisition.slice_spacing_nm" in message
    assert files_beside(tmp_path, folder) == []


# -- drift wander reported ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("evolving", [True, False])
def test_a_wander_of_the_stack_is_reported_in_an_error_and_the_volume(tmp_path, evolving):
    """Whole-slice registration on an evolving sample bends (issue 11): the estimated error of the
    applied shift crossing 1 px is published once as an ``error`` of kind ``drift`` and stated in
    the volume's attributes; a static sample under the same stage drift raises neither."""
    from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift

    rng = np.random.default_rng(22)
    n, size = 60, 256
    d = simulate_drift(n, drift_px_per_slice=1.0, jump_probability=0.0, rng=rng)
    margin = int(np.ceil(np.abs(d).max())) + 12
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=0.5, rng=rng)
    if not evolving:
        labels = np.repeat(labels[:1], n, axis=0)
    rendered = render_acquisition(labels, drift_px=d, field_shape=(size, size), rng=rng)
    folder = tmp_path / "acq" / "SESI"
    for i, pixels in enumerate(rendered.slices):
        write_slice(folder, i + 1, pixels, layout="zeiss", pixel_size_um=PIXEL_UM, z_um=0.02 * (i + 1))
    volume = tmp_path / "v.ome.zarr"
    _, summary, docs = run_to_end(config_for(tmp_path / "acq", volume, processing={"calibration_slices": 8}))
    assert summary.depth_slices == n
    store = VolumeStore.open(volume, read_only=True)
    shifts = np.array([r["shift_px"] for r in store.slices])
    error = np.hypot(*(shifts - d).T)
    reports = [doc for doc in docs if doc["topic"] == "error" and doc["kind"] == "drift" and "wandered" in doc["message"]]
    flagged = [r["index"] for r in store.slices if r["drift_wander"]]
    if not evolving:
        assert error.max() < 1.0  # precondition: the static sample is registered
        assert not reports and not flagged and "drift_wander" not in store.run_attrs
        return
    wandered = np.flatnonzero(error > 1.0) + 1
    assert len(wandered) >= 10  # precondition: the evolving sample bends whole-slice registration
    # reported in time: within two slices of the first slice truly 2 px off (measured: one slice
    # late, 2.13 px true against 0.87 px estimated at slice 4; the estimate learns the sample's
    # apparent motion over its first slices)
    assert reports and reports[0]["index"] <= np.flatnonzero(error > 2.0)[0] + 1 + 2
    # one report per onset of a wander, the summary in the volume's attributes
    onsets = [i for i in flagged if i - 1 not in flagged]
    assert [doc["index"] for doc in reports] == onsets
    attrs = store.run_attrs["drift_wander"]
    assert attrs["first_slice"] == flagged[0] and attrs["slices"] == len(flagged)
    assert len(set(flagged) & set(wandered)) >= 0.5 * len(wandered)

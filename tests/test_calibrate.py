"""`revwatch calibrate`, the training-label files, the doctor's phase check and the phase_model
error documents."""

import json

import numpy as np
import pytest
from PIL import Image

from agent.calibrate import phase_check_documents, training_labels_from_config
from agent.cli import main
from agent.config import load_config
from agent.doctor import WARN, OK, check_phase_model, find_slices
from processing.synthetic import generate_microstructure, render_acquisition, write_acquisition


@pytest.fixture(scope="module")
def two_phase_project(tmp_path_factory):
    """6 slices of a two-phase sample (dark particles in a bright matrix), FEI layout."""
    labels = generate_microstructure((6, 176, 176), particle_radius_um=0.5, rng=21)
    acq = render_acquisition(np.where(labels == 3, 1, 2), levels=(60, 190), drift_px=np.zeros((6, 2)),
                             field_shape=(160, 160), rng=22)
    root = tmp_path_factory.mktemp("two_phase")
    write_acquisition(acq, root, layout="fei")
    return root, acq


def _png(path):
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("L")), im.size


def test_calibrate_command_says_two_classes_and_draws_them(two_phase_project, tmp_path, capsys):
    root, _ = two_phase_project
    # the default three names: a mismatch, exit 1, and no invented phase
    assert main(["calibrate", str(root), "--slices", "4", "--out", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "2 separable grey class(es)" in text and "'electrolyte' stay(s) empty" in text
    hist, size = _png(tmp_path / "calibration_histogram.png")
    assert size == (800, 450) and hist.std() > 10
    overlay, size = _png(tmp_path / "calibration_overlay.png")
    assert size[0] > 500 and overlay.std() > 10
    # named as the data show them: exit 0
    assert main(["calibrate", str(root), "--slices", "4", "--out", str(tmp_path),
                 "--set", 'phases.names=["particle", "matrix"]']) == 0
    assert "the named phases match" in capsys.readouterr().out


def test_doctor_warns_on_the_phase_model(two_phase_project):
    root, _ = two_phase_project
    groups = find_slices(root)
    check = check_phase_model(load_config(None, [f'acquisition.folder="{root.as_posix()}"']), groups)
    assert check.status == WARN and "2 separable" in check.detail and "phases.names" in check.fix
    named = load_config(None, [f'acquisition.folder="{root.as_posix()}"', 'phases.names=["particle", "matrix"]'])
    assert check_phase_model(named, groups).status == OK
    assert check_phase_model(named, {}).status == WARN  # no slices yet


def test_training_rectangles_file_trains_the_classifier(two_phase_project, tmp_path, capsys):
    root, acq = two_phase_project
    truth = acq.labels[0]
    rects = {"particle": [], "matrix": []}
    for name, k in (("particle", 1), ("matrix", 2)):
        ys, xs = np.nonzero(truth == k)
        for y, x in zip(ys[::400], xs[::400]):
            if 2 <= y < truth.shape[0] - 3 and 2 <= x < truth.shape[1] - 3 and np.all(truth[y - 2:y + 3, x - 2:x + 3] == k):
                rects[name].append([int(y) - 2, int(y) + 3, int(x) - 2, int(x) + 3])
    path = tmp_path / "rects.json"
    path.write_text(json.dumps(rects))
    config = load_config(None, ['phases.names=["particle", "matrix"]', f'phases.training_labels="{path.as_posix()}"'])
    assert training_labels_from_config(config) == rects
    assert main(["calibrate", str(root), "--slices", "2", "--out", str(tmp_path),
                 "--set", 'phases.names=["particle", "matrix"]',
                 "--set", f'phases.training_labels="{path.as_posix()}"']) == 0
    assert "particle" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('pore = [[0, 1]]\n')
    with pytest.raises(Exception, match="training_labels"):
        training_labels_from_config(load_config(None, [f'phases.training_labels="{bad.as_posix()}"']))


def test_phase_model_documents_are_valid_error_documents():
    from processing.phases import ClassEstimate, PhaseCheck

    estimate = ClassEstimate(classes=(), n_classes=0, bic=(), k_bic=1, separation=(), thresholds=(),
                             centres=np.zeros(2), counts=np.zeros(2))
    check = PhaseCheck(estimate=estimate, warnings=("two classes, three names",), n_fit=2, label_values=(1, 3))
    docs = phase_check_documents(check)
    assert docs == [{"kind": "phase_model", "source": "segment", "message": "two classes, three names",
                     "critical": False}]
    schema = json.loads(open("agent/schemas/error.json").read())
    assert set(docs[0]) <= set(schema["properties"]) and set(schema["required"]) <= set(docs[0])


@pytest.mark.parametrize("on_mismatch", ["warn", "refuse"])
def test_agent_reports_the_phase_model_mismatch_at_calibration(two_phase_project, tmp_path, on_mismatch):
    from agent.pipeline import Agent
    from agent.publish import free_loopback_endpoint
    from processing.errors import CalibrationError

    root, _ = two_phase_project
    config = load_config(None, [f'acquisition.folder="{root.as_posix()}"',
                                f'volume.path="{(tmp_path / "v.ome.zarr").as_posix()}"',
                                f'publish.endpoint="{free_loopback_endpoint()}"', "processing.calibration_slices=4",
                                f'phases.on_mismatch="{on_mismatch}"', "acquisition.settle_s=0.05"])
    agent = Agent(config)
    seen = []
    agent.events.subscribe(lambda name, doc: seen.append((name, doc)), name="test")
    if on_mismatch == "refuse":
        with pytest.raises(CalibrationError, match="do not show the named phases"):
            agent.run(idle_exit_s=3.0)
        assert not (tmp_path / "v.ome.zarr").exists()  # nothing stored
    else:
        summary = agent.run(idle_exit_s=3.0)
        assert summary.slices_processed == 6
    errors = [d for n, d in seen if n == "error" and d["kind"] == "phase_model"]
    assert any("no phase is invented" in d["message"] for d in errors)
    assert all(d["critical"] == (on_mismatch == "refuse") for d in errors)


def test_four_phases_end_to_end_through_the_agent(tmp_path):
    """Carbon-binder as its own phase: named, calibrated, stored and measured."""
    from agent.pipeline import Agent
    from agent.publish import free_loopback_endpoint
    from agent.store import VolumeStore
    from tests.test_phases import FOUR, _LEVELS, _labels

    acq = render_acquisition(_labels(4, 10, 160, 12), levels=_LEVELS[4], drift_px=np.zeros((10, 2)),
                             field_shape=(144, 144), rng=13)
    write_acquisition(acq, tmp_path / "acq", layout="fei")
    volume = tmp_path / "v.ome.zarr"
    config = load_config(None, [f'acquisition.folder="{(tmp_path / "acq").as_posix()}"',
                                f'volume.path="{volume.as_posix()}"', f'publish.endpoint="{free_loopback_endpoint()}"',
                                "processing.calibration_slices=4", "acquisition.settle_s=0.05",
                                "analysis.every_slices=2", f"phases.names={list(FOUR)!r}".replace("'", '"')])
    agent = Agent(config)
    seen = []
    agent.events.subscribe(lambda name, doc: seen.append((name, doc)), name="test")
    assert agent.run(idle_exit_s=3.0).slices_processed == 10
    assert not [d for n, d in seen if n == "error" and d["kind"] == "phase_model"]
    metrics = [d for n, d in seen if n == "metrics"][-1]
    labels = np.asarray(VolumeStore.open(volume, read_only=True).labels[:])
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    for k, name in enumerate(FOUR, start=1):
        # phase fractions are shares of the assigned voxels
        assert metrics["volume_fraction"][name] == pytest.approx(np.mean(labels[labels > 0] == k), abs=1e-9)
        truth = np.mean(acq.labels == k)
        assert abs(metrics["volume_fraction"][name] - truth) < 0.03

"""`revwatch compare`: Table 1 of several volumes with REV uncertainties, differences marked.

Truth by construction: the synthetic generator makes the volume fractions exact to a voxel, so
samples whose active fraction differs by 0.10 must be marked different on it, samples with
smaller particles must be marked different on the local thickness and the specific surface,
and samples with identical parameters (different seeds) must not be marked on any metric.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import tifffile
from rich.console import Console

from agent.cli import main
from agent.compare import compare_report
from processing.compare import MetricUncertainty, difference, flatten_metrics, sample_table
from processing.synthetic import generate_microstructure

SPACING_UM = (0.05, 0.05, 0.05)
SHAPE = (64, 64, 64)
PHASE_MAP = ["1=pore", "2=electrolyte", "3=active"]
# name: (active fraction, particle radius um, seed); pore 0.2 everywhere. Particles of 6 voxels
# across in a 64-voxel cube: about 10 per edge, cubes from 0.5 um (10 voxels).
SAMPLES = {"ref": (0.45, 0.15, 1), "same": (0.45, 0.15, 2), "denser": (0.55, 0.15, 3), "finer": (0.45, 0.1, 4)}
MIN_EDGE_UM = 0.5


def _labels(active, radius, seed, shape=SHAPE):
    return generate_microstructure(shape, spacing_um=SPACING_UM, particle_radius_um=radius, rng=seed,
                                   fractions={"pore": 0.2, "electrolyte": 0.8 - active, "active": active})


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The four samples written as label TIFFs and compared once: (JSON doc, CSV text, figures dir)."""
    root = tmp_path_factory.mktemp("compare")
    paths = []
    for name, params in SAMPLES.items():
        path = root / f"{name}.tif"
        tifffile.imwrite(path, _labels(*params), photometric="minisblack")
        paths.append(path)
    out = io.StringIO()
    compare_report(paths, names=list(SAMPLES), spacing_um=SPACING_UM, phase_map=PHASE_MAP, json_output=True,
                   min_edge_um=MIN_EDGE_UM,
                   csv_path=root / "table.csv", figures=root / "figures", console=Console(file=out),
                   err_console=Console(file=io.StringIO()))
    return json.loads(out.getvalue()), (root / "table.csv").read_text(encoding="utf-8"), root / "figures"


def _row(doc, metric):
    return next(r for r in doc["rows"] if r["metric"] == metric)


def _pair(doc, metric, a, b):
    return next(d for d in _row(doc, metric)["differences"] if (d["a"], d["b"]) == (a, b))


def test_identical_parameters_are_not_marked(compared):
    doc, _, _ = compared
    differing = 0
    for row in doc["rows"]:
        d = next(d for d in row["differences"] if (d["a"], d["b"]) == ("ref", "same"))
        assert d["significant"] is not True, (row["metric"], d)
        differing += d["difference"] not in (None, 0.0)
    # not vacuous: the seeds do change most metrics (only the fractions are exact by construction)
    assert differing >= 10


def test_active_fraction_difference_is_marked(compared):
    doc, _, _ = compared
    d = _pair(doc, "volume_fraction.active", "ref", "denser")
    assert d["difference"] == pytest.approx(0.10, abs=1e-3)
    assert d["significant"] is True
    assert 0 < d["combined_uncertainty"] < 0.05
    assert _pair(doc, "volume_fraction.electrolyte", "ref", "denser")["significant"] is True
    assert _pair(doc, "volume_fraction.pore", "ref", "denser")["significant"] is False  # 0.2 in both


def test_particle_radius_difference_is_marked(compared):
    doc, _, _ = compared
    thickness = _pair(doc, "local_thickness_um.active.mean", "ref", "finer")
    assert thickness["significant"] is True and thickness["difference"] < 0
    surface = _pair(doc, "surface_area_per_phase_volume_um-1.active", "ref", "finer")
    assert surface["significant"] is True and surface["difference"] > 0
    # same fractions by construction: not marked
    assert _pair(doc, "volume_fraction.active", "ref", "finer")["significant"] is False


def test_rows_follow_the_sections_of_table_1(compared):
    doc, _, _ = compared
    sections = list(dict.fromkeys(r["section"] for r in doc["rows"]))
    assert sections == ["Volume fraction", "Ionic network", "Electronic network", "Pore network", "Specific surface"]
    labels = {r["metric"]: r["label"] for r in doc["rows"]}
    assert labels["tortuosity_geometric.electrolyte.y+"] == "τ y+ tortuosity electrolyte"
    assert labels["coverage_share.active"] == "% coverage active by electrolyte"


def test_every_value_has_its_uncertainty_and_the_method_is_stated(compared):
    doc, _, _ = compared
    assert doc["uncertainty"]["k"] == 2.0 and "Kanit" in doc["uncertainty"]["method"]
    for sample in doc["samples"]:
        values = sample["values"]
        for metric in ("volume_fraction.active", "tortuosity_geometric.electrolyte.y+",
                       "local_thickness_um.electrolyte.mean", "connected_share.active",
                       "surface_area_per_cell_volume_um-1.active", "coverage_share.active"):
            entry = values[metric]
            assert entry["uncertainty"] is not None and entry["uncertainty"] > 0, (sample["name"], metric, entry)
            assert entry["relative_error"] == pytest.approx(2 * entry["uncertainty"] / abs(entry["value"]))
        # the value is the whole-volume Table 1 value
        assert values["volume_fraction.active"]["value"] == sample["metrics"]["volume_fraction"]["active"]


def test_csv_parses_and_holds_the_json_values(compared):
    doc, text, _ = compared
    rows = {r["metric"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {r["metric"] for r in doc["rows"]}
    for sample in doc["samples"]:
        for metric, entry in sample["values"].items():
            cell = rows[metric][f"{sample['name']} value"]
            assert (cell == "") == (entry["value"] is None)
            if entry["value"] is not None:
                assert float(cell) == entry["value"]
    assert rows["volume_fraction.active"]["denser vs ref significant"] == "true"
    assert rows["volume_fraction.active"]["same vs ref significant"] == "false"


def test_figures_are_written(compared):
    from PIL import Image

    _, _, figures = compared
    for name in ("rev_curves.png", "local_thickness.png"):
        with Image.open(figures / name) as im:
            assert im.size[0] > 400 and im.size[1] > 300
            pixels = np.asarray(im.convert("RGB"), dtype=float)
        assert pixels.std() > 10  # not blank


def test_uncertainty_definition():
    a = MetricUncertainty(1.0, 0.03, None, None, (), (), ())
    b = MetricUncertainty(1.1, 0.04, None, None, (), (), ())
    d = difference(a, b, k=2)
    assert d.combined_uncertainty == pytest.approx(0.05)
    assert difference(a, b, k=1.9).significant is True  # 0.1 > 1.9 * 0.05
    assert difference(a, b, k=2.1).significant is False
    assert difference(a, MetricUncertainty(1.1, None, None, None, (), (), ()), k=2).significant is None
    with pytest.raises(ValueError, match="k must be"):
        difference(a, b, k=0)


def test_flatten_metrics_keeps_values_only():
    doc = {"depth_slices": 3, "spacing_um": [1, 1, 1], "volume_fraction": {"pore": 0.2, "unassigned": 0.0},
           "tortuosity_geometric": {"electrolyte": {"y+": 1.3, "y-": None}}, "inner_porosity_share": 0.01,
           "details": {"x": 1}}
    assert flatten_metrics(doc) == {"volume_fraction.pore": 0.2, "volume_fraction.unassigned": 0.0,
                                    "tortuosity_geometric.electrolyte.y+": 1.3,
                                    "tortuosity_geometric.electrolyte.y-": None, "inner_porosity_share": 0.01}


def test_sample_table_refuses_bad_input():
    with pytest.raises(ValueError, match="n_samples"):
        sample_table(np.ones((8, 8, 8), np.uint8), spacing_um=SPACING_UM, n_samples=1)


def test_cli_table_names_columns_and_marks(tmp_path, capsys):
    paths = []
    for name, (active, seed) in {"a": (0.45, 1), "b": (0.55, 2)}.items():
        paths.append(tmp_path / f"{name}.tif")
        tifffile.imwrite(paths[-1], _labels(active, 0.15, seed, shape=(48, 48, 48)), photometric="minisblack")
    argv = ["compare", *map(str, paths), "--names", "10min", "15h", "--min-edge-um", "0.5",
            "--spacing-um", *map(str, SPACING_UM)]
    argv += [f"--phase={p}" for p in PHASE_MAP]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "10min (ref.)" in out and "15h" in out and "k = 2" in out and "Kanit" in out
    assert "▲" in out  # the active fraction at least
    assert main(argv[:-len(PHASE_MAP)] + ["--names", "x"]) == 2  # names do not match the volumes
    assert "2 volumes" in capsys.readouterr().err


def test_a_cube_filled_by_one_phase_does_not_sink_the_table():
    labels = _labels(0.45, 0.15, 7, shape=(48, 48, 48))
    labels[:24, :24, :24] = 3  # cubes there hold the active phase only
    table = sample_table(labels, spacing_um=SPACING_UM, min_edge_um=0.5, rng=0)
    assert table.uncertainty["volume_fraction.active"].uncertainty > 0
    assert table.metrics["volume_fraction"]["active"] == pytest.approx(np.mean(labels == 3))


def test_uncertainty_of_an_uncorrelated_fraction_is_the_binomial_one():
    # independent voxels: the whole-volume fraction has sigma = sqrt(p (1 - p) / N) exactly
    rng = np.random.default_rng(3)
    labels = np.where(rng.random((40, 40, 40)) < 0.3, 3, 2).astype(np.uint8)
    table = sample_table(labels, spacing_um=(1, 1, 1), min_edge_um=4, n_samples=32, rng=1)
    u = table.uncertainty["volume_fraction.active"].uncertainty
    assert u == pytest.approx(np.sqrt(0.3 * 0.7 / labels.size), rel=0.25)

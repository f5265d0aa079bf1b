"""`revwatch metrics VOLUME`: Table 1 and REV report of a revwatch volume or a label TIFF."""

import io
import json
import time

import numpy as np
import pytest
import tifffile
from rich.console import Console

from agent.analysis import rev_values
from agent.cli import main
from agent.events import validate_document
from agent.report import MetricsInputError, load_volume, metrics_report, parse_phase_map, rev_report
from agent.store import VolumeStore
from processing.metrics import table1
from processing.phases import Phases
from processing.rev import table1_metrics
from processing.synthetic import generate_microstructure
from shared_data import require_shared_data

SPACING = (0.05, 0.04, 0.04)
# Scrambled on purpose: the TIFF's values have nothing to do with revwatch's labels.
SOURCE_OF = {1: 7, 2: 0, 3: 3}  # revwatch label (pore, electrolyte, active) -> TIFF value
UNMAPPED = 200
PHASE_ITEMS = ["7=pore", "0=electrolyte", "3=active"]
NMC_RELATIVE = "nmc_cathode_xct_labels/nmc-1-cal_generatedCBD_bridge.tif"
COMMON = {"protocol": "revwatch/1", "run_id": "test", "seq": 1, "time_unix_s": 0.0}


@pytest.fixture(scope="module")
def truth():
    """(24, 40, 40) labels 1..3 in revwatch's convention, a corner left unassigned (0)."""
    labels = generate_microstructure((24, 40, 40), spacing_um=SPACING, particle_radius_um=0.25, rng=3)
    labels[:4, :6, :9] = 0
    return labels


@pytest.fixture(scope="module")
def label_tiff(truth, tmp_path_factory):
    """`truth` as a uint16 multi-page TIFF with scrambled values; unassigned voxels carry 200 (unmapped)."""
    source = np.full(truth.shape, UNMAPPED, dtype=np.uint16)
    for label, value in SOURCE_OF.items():
        source[truth == label] = value
    path = tmp_path_factory.mktemp("tiff") / "labels.tif"
    tifffile.imwrite(path, source)
    return path


def run_cli(capsys, *argv):
    rc = main(["metrics", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def tiff_args(path):
    return [path, "--spacing-um", *SPACING, *[a for item in PHASE_ITEMS for a in ("--phase", item)]]


def test_tiff_json_fractions_exact_and_mapping_honoured(truth, label_tiff, capsys):
    rc, out, _ = run_cli(capsys, *tiff_args(label_tiff), "--json", "--no-rev")
    assert rc == 0
    doc = json.loads(out)  # stdout holds the document and nothing else
    counts = np.bincount(truth.ravel(), minlength=4)
    for name, label in Phases().labels.items():  # phases: shares of the assigned voxels
        assert doc["volume_fraction"][name] == counts[label] / (truth.size - counts[0])
    assert doc["volume_fraction"]["unassigned"] == counts[0] / truth.size == 4 * 6 * 9 / truth.size
    assert doc["depth_slices"] == truth.shape[0] and doc["spacing_um"] == list(SPACING)
    # Every other metric, by phase name, equals Table 1 of the unscrambled volume.
    expected = rev_values(table1(truth, spacing_um=SPACING, phases=Phases()))
    got = rev_values(doc)
    assert set(expected) <= set(got)
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    validate_document({**doc, **COMMON, "topic": "metrics"}, topic="metrics")


def test_tiff_json_rev_report_follows_the_volume(truth, label_tiff, capsys):
    rc, out, err = run_cli(capsys, *tiff_args(label_tiff), "--json", "--tolerance", "0.1")
    assert rc == 0
    doc = json.loads(out)
    report = doc["rev_report"]
    validate_document({**report, **COMMON, "topic": "rev"}, topic="rev")
    assert list(report["metrics"]) == [m.name for m in table1_metrics(load_volume(
        label_tiff, spacing_um=SPACING, phase_map=PHASE_ITEMS).phases, expensive=False)]
    assert report["tolerance"] == 0.1 and report["depth_slices"] == truth.shape[0]
    for name in Phases().names:
        entry = report["metrics"][f"volume_fraction.{name}"]
        assert entry["value"] == doc["volume_fraction"][name]
        # Running value on the first k slices: the fraction counted on them, independently.
        for k, value in zip(entry["running"]["depth_slices"], entry["running"]["values"]):
            assert value == pytest.approx(np.count_nonzero(truth[:k] == Phases().label(name))
                                          / np.count_nonzero(truth[:k]), abs=1e-12)
        assert entry["running"]["depth_slices"][-1] == truth.shape[0]
        curve = entry["curve"]
        assert len(curve["edges_um"]) == len(curve["relative_std"]) == len(curve["n_samples"])
        assert curve["edges_um"] == sorted(curve["edges_um"])
    assert report["metrics"]["surface_area_per_cell_volume_um-1.active"]["value"] == pytest.approx(
        doc["surface_area_per_cell_volume_um-1"]["active"], rel=1e-12)


def make_store(path, labels, spacing_um, *, phases=None):
    store = VolumeStore.create(path, canvas_shape=labels.shape[1:], dtype=np.uint8, spacing_um=spacing_um,
                               phases=phases)
    for z, plane in enumerate(labels):
        store.append(z + 1, (plane * 60).astype(np.uint8), plane)
    return store


def test_revwatch_volume_prints_table1_of_committed_slices(truth, tmp_path):
    path = tmp_path / "run.ome.zarr"
    store = make_store(path, truth, SPACING)
    # A writer killed mid-append leaves the array one slice longer than the committed depth.
    store.labels.resize((truth.shape[0] + 1, *truth.shape[1:]))
    store.labels[truth.shape[0]] = 3
    console = Console(record=True, width=130)
    assert metrics_report(path, rev=False, console=console, err_console=Console(file=io.StringIO())) == 0
    text = console.export_text()
    counts = np.bincount(truth.ravel(), minlength=4)
    for section in ("Volume fraction (%)", "Ionic network", "Electronic network"):
        assert section in text
    for name, label in Phases().labels.items():
        line = next(line for line in text.splitlines() if f"│ {name} " in line)
        assert line.rstrip(" │").endswith(f"{100 * counts[label] / (truth.size - counts[0]):.1f}")
    doc = table1(truth, spacing_um=SPACING, phases=Phases())
    assert f"{doc['surface_area_per_cell_volume_um-1']['active']:.2f}" in text
    assert f"{100 * doc['connected_share']['active']:.1f}" in text
    assert f"{doc['tortuosity_geometric']['electrolyte']['y+']:.2f}" in text
    ratio = counts[3] / (counts[2] + counts[3])
    assert f"active:electrolyte ratio" in text and f"{100 * ratio:.0f}:{100 * (1 - ratio):.0f}" in text
    assert "targeted" not in text and "4.6" not in text  # no composition configured: no targeted ratio
    composition = {"weight_fractions": {"active": 0.7, "electrolyte": 0.3},
                   "densities_g_cm3": {"active": 4.6, "electrolyte": 1.88}}
    console = Console(record=True, width=160)
    metrics_report(path, rev=False, composition=composition, console=console, err_console=Console(file=io.StringIO()))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "targeted volume ratio active:electrolyte" in line)
    assert "(0.7:0.3 by weight, 4.6 / 1.88 g/cm3)" in line and line.rstrip(" │").endswith("49:51")


def test_revwatch_volume_rev_table_and_plot(truth, tmp_path):
    path = tmp_path / "run.ome.zarr"
    make_store(path, truth, SPACING)
    png = tmp_path / "rev.png"
    console = Console(record=True, width=160)
    assert metrics_report(path, plot=png, console=console, err_console=Console(file=io.StringIO())) == 0
    text = console.export_text()
    assert "REV report (tolerance 5%" in text
    for row in ("fraction pore", "fraction electrolyte", "fraction active", "A_active/V_cell", "coverage active"):
        assert row in text
    assert "NOT REPRESENTATIVE" in text  # 24 slices of 1.2 um cannot be: thinner than wide
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from matplotlib.image import imread

    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_transport_axis_z(label_tiff, capsys):
    rc, out, _ = run_cli(capsys, *tiff_args(label_tiff), "--json", "--no-rev", "--transport-axis", "z")
    assert rc == 0
    assert set(json.loads(out)["tortuosity_geometric"]["electrolyte"]) == {"z+", "z-"}


def test_rev_report_flags_a_gradient_and_never_calls_it_representative():
    spacing = (0.1, 0.1, 0.1)
    labels = generate_microstructure((96, 32, 32), spacing_um=spacing, particle_radius_um=0.25, gradient=0.8, rng=1)
    report = rev_report(labels, spacing_um=spacing, phases=Phases(), tolerance=0.05)
    active = report["metrics"]["volume_fraction.active"]
    assert active["not_stationary"] and active["trend_relative_drift"] > 0.3
    assert not report["representative"] and report["stop_depth_slices"] is None
    assert any("not stationary" in r for r in report["reasons"])


def test_parse_phase_map_order_roles_and_merged_labels():
    phases, lut = parse_phase_map(["2=cbd:electrolyte", "0=pore", "1=active"])
    assert phases.names == ("pore", "active", "cbd")
    assert phases.roles == {"pore": "pore", "active": "active", "electrolyte": "cbd"}
    assert lut == {0: 1, 1: 2, 2: 3}
    phases, lut = parse_phase_map(["3=pore", "1=active", "0=pore"])
    assert phases.names == ("pore", "active") and lut == {0: 1, 3: 1, 1: 2}


@pytest.mark.parametrize("items, message", [
    (["0pore", "1=active"], "expected LABEL=NAME"),
    (["x=pore", "1=active"], "not an integer"),
    (["-1=pore", "1=active"], "negative"),
    (["0=pore", "0=active"], "already mapped"),
    (["0=", "1=active"], "phase name ''"),
    (["0=unassigned", "1=active"], "'unassigned'"),
    (["0=pore:foo", "1=active"], "role 'foo'"),
    (["0=a:active", "1=b:active"], "already played"),
    (["0=pore"], "2 to 4 phase names"),
    (["0=a", "1=b", "2=c", "3=d", "4=e"], "2 to 4 phase names"),
    ([], "needs its label-to-phase mapping"),
])
def test_bad_phase_items_are_refused_by_name(items, message):
    with pytest.raises(MetricsInputError, match="--phase") as info:
        parse_phase_map(items)
    assert message in str(info.value)


def test_input_errors_exit_2_with_a_clear_message(label_tiff, tmp_path, capsys):
    cases = []
    rc, _, err = run_cli(capsys, label_tiff, "--phase", "0=pore", "--phase", "1=active")
    cases.append((rc, err, "--spacing-um DZ DY DX"))
    rc, _, err = run_cli(capsys, *tiff_args(label_tiff), "--phase", "9=pore:x")
    cases.append((rc, err, "role 'x'"))
    rc, _, err = run_cli(capsys, tmp_path / "nowhere.tif", "--spacing-um", 1, 1, 1, "--phase", "0=pore")
    cases.append((rc, err, "no such file or folder"))
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((8, 8), np.uint8))
    rc, _, err = run_cli(capsys, *tiff_args(flat))
    cases.append((rc, err, "single 2-D image"))
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, np.zeros((3, 8, 8), np.float32), photometric="minisblack")
    rc, _, err = run_cli(capsys, *tiff_args(grey))
    cases.append((rc, err, "float32 values; labels must be integers"))
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    rc, _, err = run_cli(capsys, *tiff_args(rgb))
    cases.append((rc, err, "colour (RGB) image"))
    text = tmp_path / "notes.tif"
    text.write_text("not a tiff")
    rc, _, err = run_cli(capsys, *tiff_args(text))
    cases.append((rc, err, "cannot read it as a TIFF"))
    rc, _, err = run_cli(capsys, *tiff_args(label_tiff), "--spacing-um", 0, 1, 1)
    cases.append((rc, err, "three positive numbers"))
    rc, _, err = run_cli(capsys, *tiff_args(label_tiff), "--no-rev", "--plot", tmp_path / "x.png")
    cases.append((rc, err, "--no-rev turns off"))
    rc, _, err = run_cli(capsys, *tiff_args(label_tiff), "--tolerance", "5")
    cases.append((rc, err, "--tolerance 5.0"))
    rc, _, err = run_cli(capsys, tmp_path, "--phase", "0=pore")
    cases.append((rc, err, "not a Zarr v2 group"))
    for rc, err, message in cases:
        assert rc == 2 and err.startswith("revwatch metrics: error:") and message in err, err


def test_revwatch_volume_refuses_tiff_options(truth, tmp_path, capsys):
    path = tmp_path / "run.ome.zarr"
    make_store(path, truth[:3], SPACING)
    rc, _, err = run_cli(capsys, path, "--spacing-um", 1, 1, 1)
    assert rc == 2 and "carries its own spacing and phases" in err


@pytest.mark.slow
def test_real_nmc_volume(capsys, tmp_path):
    """The NREL nmc-1-cal volume (251 x 301 x 301), 0.398 um voxels assumed (not stated upstream)."""
    nmc = require_shared_data(NMC_RELATIVE)
    png = tmp_path / "nmc_rev.png"
    t0 = time.perf_counter()
    rc = main(["metrics", str(nmc), "--no-pictures", "--spacing-um", "0.398", "0.398", "0.398", "--phase", "0=pore",
               "--phase", "1=active", "--phase", "2=electrolyte", "--plot", str(png)])
    seconds = time.perf_counter() - t0
    out, _ = capsys.readouterr()
    with capsys.disabled():
        print(out, f"\nrevwatch metrics on {nmc.name}: {seconds:.1f} s")
    assert rc == 0 and png.stat().st_size > 0
    source = tifffile.imread(nmc)
    for value, name in ((0, "pore"), (1, "active"), (2, "electrolyte")):
        line = next(line for line in out.splitlines() if f"│ {name} " in line)
        assert line.rstrip(" │").endswith(f"{100 * np.count_nonzero(source == value) / source.size:.1f}")


def test_network_phases_and_composition_from_the_command_line(truth, label_tiff, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[composition]\nweight_fractions = {active = 0.7, electrolyte = 0.3}\n"
                   "densities_g_cm3 = {active = 4.6, electrolyte = 1.88}\n"
                   "[analysis]\nthickness_phases = [\"pore\"]\n")
    rc, out, _ = run_cli(capsys, *tiff_args(label_tiff), "--json", "--no-rev", "--config", cfg,
                         "--tortuosity-phase", "pore", "--connected-phase", "electrolyte",
                         "--tortuosity-factor-phase", "electrolyte", "--coverage-by", "pore")
    assert rc == 0
    doc = json.loads(out)
    assert set(doc["tortuosity_geometric"]) == {"pore"} and set(doc["local_thickness_um"]) == {"pore"}
    assert set(doc["connected_share"]) == {"electrolyte"} and set(doc["coverage_share"]) == {"electrolyte", "active"}
    assert set(doc["tortuosity_factor"]) == {"electrolyte"}
    assert doc["targeted_volume_ratio"]["active"] == pytest.approx((0.7 / 4.6) / (0.7 / 4.6 + 0.3 / 1.88))
    validate_document({**doc, **COMMON, "topic": "metrics"}, topic="metrics")
    rc, out, err = run_cli(capsys, *tiff_args(label_tiff), "--json", "--no-rev", "--tortuosity-phase", "cbd")
    assert rc == 2 and out == "" and "tortuosity_phases: unknown phase names ['cbd']" in err

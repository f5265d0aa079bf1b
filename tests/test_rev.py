"""Tests of processing.rev against answers known by construction.

White-noise volumes (independent voxels) have an exact variance law,
``sigma^2(V) = p (1 - p) / N_voxels``, so alpha = 1; per-slice series are
encoded as (Z, 1, 1) volumes read by a mean metric, so that any sequence of
slice values (trend, noise, steps) can be fed to the tracker.
"""

import json
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from processing.errors import SliceShapeError
from processing.metrics import slab_counts
from processing.rev import (
    RevMetric,
    RevTracker,
    default_metrics,
    default_tracked,
    detect_trend,
    fit_kanit,
    horizon_bound,
    kanit_from_curve,
    long_run_variance,
    look_level,
    mean_chords_um,
    phase_fraction,
    subvolume_curve,
)

SLICE_MEAN = RevMetric("slice_mean", lambda block, spacing: float(np.mean(block)), additive=True)


def series_volume(values):
    """(Z, 1, 1) volume whose slice z holds values[z]."""
    return np.asarray(values, dtype=float)[:, None, None]


def white_noise(shape, p, seed):
    """Labels 1 with probability p, else 2, independently per voxel."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < p, 1, 2).astype(np.uint8)


def feed(tracker, volume, step=1):
    docs = []
    for depth in range(step, volume.shape[0] + 1, step):
        docs.append(tracker.update(volume[:depth]))
    return docs


# --------------------------------------------------------------------------- Kanit fit


def test_fit_kanit_exact_power_law():
    v = np.geomspace(1.0, 1000.0, 6)
    fit = fit_kanit(v, 3.0 * v ** -0.7, mean=2.0)
    assert_allclose([fit.K, fit.alpha, fit.alpha_used], [3.0, 0.7, 0.7], rtol=1e-9)
    # eps = 2 sigma / mean; inverting gives back the volume.
    need = fit.volume_needed_um3(0.05)
    assert_allclose(fit.relative_error(need), 0.05, rtol=1e-9)


def test_fit_kanit_clips_alpha_for_predictions():
    v = np.geomspace(1.0, 100.0, 5)
    fit = fit_kanit(v, v ** -1.6, mean=1.0, alpha_bounds=(0.2, 1.0))
    assert fit.alpha == pytest.approx(1.6)
    assert fit.alpha_used == 1.0
    # Pivoted on the largest volume: the prediction there matches the data,
    # and beyond it decays as 1/V, not V^-1.6.
    assert_allclose(fit.variance(100.0), 100.0 ** -1.6, rtol=1e-9)
    assert_allclose(fit.variance(1000.0), 100.0 ** -1.6 / 10, rtol=1e-9)


def test_kanit_recovers_alpha_one_on_white_noise():
    spacing = (0.1, 0.05, 0.05)
    labels = white_noise((60, 120, 120), 0.3, seed=1)
    curve = subvolume_curve(labels, phase_fraction(1), spacing_um=spacing,
                            edges_um=[0.3, 0.5, 0.8, 1.2, 2.0], n_samples=40, rng=2)
    fit = kanit_from_curve(curve)
    assert fit.alpha == pytest.approx(1.0, abs=0.15)
    # K = p (1 - p) * voxel volume for independent voxels.
    assert fit.K == pytest.approx(0.3 * 0.7 * np.prod(spacing), rel=0.35)


def test_fit_kanit_refuses_single_volume():
    with pytest.raises(ValueError, match="distinct volumes"):
        fit_kanit([1.0, 1.0], [0.1, 0.2], mean=1.0)


# --------------------------------------------------------------------------- subvolume criterion


def test_subvolume_cubes_are_cubes_in_micrometres():
    spacing = (0.1, 0.05, 0.025)
    labels = white_noise((40, 80, 160), 0.5, seed=3)
    curve = subvolume_curve(labels, phase_fraction(1), spacing_um=spacing, edges_um=[1.0, 2.0], n_samples=8, rng=0)
    assert curve.voxels.tolist() == [[10, 20, 40], [20, 40, 80]]
    assert_allclose(curve.volumes_um3, [1.0, 8.0])
    # Non-overlapping cubes only: 4 x 4 x 4 = 64 fit at 1 um, 2 x 2 x 2 = 8 at 2 um.
    assert curve.n_samples.tolist() == [8, 8]


def test_subvolume_relative_std_matches_binomial_and_rev_edge():
    p, spacing = 0.5, (0.05, 0.05, 0.05)
    labels = white_noise((64, 64, 64), p, seed=4)
    edges = np.array([0.2, 0.3, 0.5, 0.8, 1.6])
    curve = subvolume_curve(labels, phase_fraction(1), spacing_um=spacing, edges_um=edges, n_samples=60, rng=5)
    n_vox = np.prod(curve.voxels, axis=1)
    expected = np.sqrt((1 - p) / (p * n_vox))
    ok = curve.n_samples >= 8
    assert_allclose(curve.relative_std[ok], expected[ok], rtol=0.35)
    # sqrt(1 / N) <= 5 % needs N >= 400 voxels: edge 8 voxels (0.4 um). The
    # first edge above it is 0.5 um (a 0.3 um cube has 216 voxels, 6.8 %).
    assert curve.rev_edge_um == 0.5


def test_subvolume_constant_volume_is_representative_at_once():
    labels = np.full((20, 20, 20), 2, dtype=np.uint8)
    curve = subvolume_curve(labels, phase_fraction(2), spacing_um=0.1, n_samples=4, rng=0)
    assert_allclose(curve.relative_std[np.isfinite(curve.relative_std)], 0.0)
    assert curve.rev_edge_um == curve.edges_um[0]


def test_subvolume_validates_arguments():
    labels = np.ones((8, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="spacing_um"):
        subvolume_curve(labels, phase_fraction(1), spacing_um=(0.1, -1, 0.1))
    with pytest.raises(ValueError, match="tolerance"):
        subvolume_curve(labels, phase_fraction(1), spacing_um=0.1, tolerance=5)
    with pytest.raises(ValueError, match="labels"):
        subvolume_curve(labels[0], phase_fraction(1), spacing_um=0.1)


# --------------------------------------------------------------------------- trend


def test_detect_trend_flags_a_gradient_and_says_why():
    rng = np.random.default_rng(0)
    depth = np.arange(200)
    values = 0.45 * (1 + 0.2 * (depth / 199 - 0.5)) + rng.normal(0, 0.01, 200)
    trend = detect_trend(values, block_um=0.05, name="volume_fraction.active")
    assert trend.not_stationary
    # True slope: 0.45 * 0.2 / (199 * 0.05 um) = 0.0090 per um.
    assert trend.slope_per_um == pytest.approx(0.0090, rel=0.2)
    assert "volume_fraction.active drifts +" in trend.reason


def test_detect_trend_false_alarms_are_rare_on_correlated_noise():
    flagged = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        e = rng.normal(0, 0.02, 300)
        ar = np.empty(300)
        ar[0] = e[0]
        for i in range(1, 300):  # AR(1), correlation 0.8 between slices
            ar[i] = 0.8 * ar[i - 1] + e[i]
        flagged += detect_trend(0.3 + ar, block_um=0.05).not_stationary
    assert flagged <= 2


def test_detect_trend_undecided_on_short_series():
    trend = detect_trend([0.1, 0.2, 0.3], block_um=0.05)
    assert not trend.decided and not trend.not_stationary and "too few" in trend.reason


# --------------------------------------------------------------------------- horizon bound and looks


def test_look_levels_spend_the_budget_over_any_number_of_looks():
    levels = [look_level(k, 0.05) for k in range(1, 100_000)]
    assert sum(levels) < 0.05
    assert sum(levels) == pytest.approx(0.05, rel=1e-4)
    assert levels[0] == pytest.approx(0.05 * 6 / math.pi ** 2)


def test_long_run_variance_of_ar1_matches_theory():
    # AR(1) with phi: long-run variance sigma_e^2 / (1 - phi)^2 per unit.
    phi, n = 0.6, 20_000
    e = np.random.default_rng(0).normal(0, 1, n)
    y = np.empty(n)
    y[0] = e[0]
    for i in range(1, n):
        y[i] = phi * y[i - 1] + e[i]
    s2, dof = long_run_variance(y - y.mean(), 100)
    assert s2 == pytest.approx(1 / (1 - phi) ** 2, rel=0.15)
    assert dof == pytest.approx(1.5 * (n / 100 - 1))


def test_horizon_bound_exact_on_a_line_and_zero_at_the_horizon():
    n, horizon = 100, 400
    values = 1.0 + 0.001 * np.arange(n)
    hb = horizon_bound(values, horizon_units=horizon, batch=5)
    # Running mean of a line to N minus to n: slope (N - n) / 2.
    assert hb.drift == pytest.approx(0.001 * (horizon - n) / 2)
    assert hb.mean == pytest.approx(values.mean())
    at_horizon = horizon_bound(values, horizon_units=n, batch=5)
    assert at_horizon.drift == 0 and at_horizon.stderr == 0
    constant = horizon_bound(np.full(50, 0.3), horizon_units=400, batch=5)
    assert constant.bound == 0 and constant.relative_bound == 0 and constant.predicted_units(0.05) == 0


def test_horizon_bound_matches_the_known_variance_on_white_noise():
    # Independent units of sd 0.5: var(slope) = 0.25 / Sxx, var(rest) = 0.25 (1/n - 1/N).
    n, horizon = 400, 1600
    se = []
    for seed in range(20):
        y = 1.0 + np.random.default_rng(seed).normal(0, 0.5, n)
        se.append(horizon_bound(y, horizon_units=horizon, batch=4).stderr)
    sxx = n * (n * n - 1) / 12
    expected = math.sqrt(0.25 * (((horizon - n) / 2) ** 2 / sxx + 1 / n - 1 / horizon))
    assert np.median(se) == pytest.approx(expected, rel=0.1)


def test_weighted_units_give_the_ratio_of_sums():
    v = np.array([0.2, 0.4, 0.3, 0.5, 0.1, 0.3, 0.2, 0.4])
    w = np.array([10, 30, 20, 40, 10, 20, 20, 30], float)
    hb = horizon_bound(v, weights=w, horizon_units=20, batch=2)
    assert hb.mean == pytest.approx((v * w).sum() / w.sum())


# --------------------------------------------------------------------------- what is tracked


def test_fractions_are_over_assigned_voxels():
    labels = white_noise((40, 32, 32), 0.3, seed=1)
    truth = [(labels == k).mean() for k in (1, 2)]
    # A drift border that grows with depth: unassigned columns, more and more of them.
    for z in range(40):
        labels[z, :, : z // 2] = 0
    assigned = labels != 0
    assert phase_fraction(1)(labels) == pytest.approx((labels == 1).sum() / assigned.sum())
    tracker = RevTracker(spacing_um=0.05, planned_depth_slices=40, rng=0)
    doc = tracker.update(labels)
    got = [doc["metrics"][f"volume_fraction.{n}"]["value"] for n in ("pore", "electrolyte")]
    assert_allclose(got, [(labels == k).sum() / assigned.sum() for k in (1, 2)], rtol=1e-12)
    assert_allclose(got, truth, atol=0.02)
    # ... and the growing border is not a trend.
    assert doc["not_stationary"] == []


def test_mean_chords_of_stripes():
    # Stripes along x of widths 3 (label 1) and 5 (label 2), 8 of each per line: 15 crossings,
    # and the two chords cut by the borders count whole, so 2 * 24 / 15 and 2 * 40 / 15 voxels
    # (the true 3 and 5 times 16/15).
    row = np.array(([1] * 3 + [2] * 5) * 8, np.uint8)
    labels = np.broadcast_to(row, (6, 10, row.size)).copy()
    chords = mean_chords_um(slab_counts(labels, n_values=3), (0.1, 0.1, 0.2))
    assert_allclose(chords[1:, 2], [3 * 0.2 * 16 / 15, 5 * 0.2 * 16 / 15], rtol=1e-12)
    assert np.isinf(chords[1:, :2]).all() and np.isnan(chords[0]).all()


def test_default_tracked_set_is_table1():
    names = [m.name for m in default_tracked()]
    assert names == ["volume_fraction.pore", "volume_fraction.electrolyte", "volume_fraction.active",
                     "surface_area_per_cell_volume_um-1.active", "coverage_share.active",
                     "tortuosity_geometric.electrolyte.y+"]


def test_blocks_scale_with_the_feature_size():
    synthetic = pytest.importorskip("processing.synthetic")
    spacing = (0.05, 0.05, 0.05)
    units = []
    for radius in (0.1, 0.3):
        labels = synthetic.generate_microstructure((24, 64, 64), spacing_um=spacing, particle_radius_um=radius, rng=0)
        tracker = RevTracker(spacing_um=spacing, metrics=default_tracked(), planned_depth_slices=500,
                             subvolume_samples=0, rng=0)
        doc = tracker.update(labels)
        units.append(doc["metrics"]["tortuosity_geometric.electrolyte.y+"]["unit_slices"])
        # The block is two feature sizes thick, the feature size is the largest mean in-plane chord.
        assert units[-1] == math.ceil(2 * tracker.feature_size_um / spacing[0] - 1e-9)
    assert units[1] >= 2.5 * units[0]


def test_blocks_do_not_depend_on_the_update_schedule():
    # The agent's first update may hold one slice, a replay's four: the same slices must give the
    # same blocks, hence the same block values and verdict.
    synthetic = pytest.importorskip("processing.synthetic")
    spacing = (0.05, 0.05, 0.05)
    labels = synthetic.generate_microstructure((96, 64, 64), spacing_um=spacing, particle_radius_um=0.2, rng=3)
    name = "tortuosity_geometric.electrolyte.y+"
    docs = []
    for depths in ([1, 2, 3, *range(7, 97, 5)], list(range(4, 97, 4)), [96]):
        tracker = RevTracker(spacing_um=spacing, metrics=default_tracked(), planned_depth_slices=500, rng=0)
        for depth in depths:
            doc = tracker.update(labels[:depth])
        docs.append((tracker.feature_size_um, doc["metrics"][name]["unit_slices"], doc["metrics"][name]["value"]))
    assert docs[0][0] is not None
    assert docs[0] == docs[1] == docs[2]


# --------------------------------------------------------------------------- streaming tracker


@pytest.mark.slow  # 10-17 s: keeps the default run under 10 minutes
def test_tracker_stops_near_the_reference_rule_on_white_noise():
    # Independent slices of sd 0.5 around 1: the reference rule z se(d) <= 5 % with the true
    # variance; the tracker estimates the variance and the slope, so it stops somewhat later.
    horizon, z = 1200, 1.96
    d_ref = next(d for d in range(4, horizon) if z * math.sqrt(0.25 * (((horizon - d) / 2) ** 2 / (d * (d * d - 1) / 12)
                                                                      + 1 / d - 1 / horizon)) <= 0.05)
    stops = []
    for seed in range(6):
        values = 1.0 + np.random.default_rng(seed).normal(0, 0.5, horizon)
        tracker = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], planned_depth_slices=horizon, rng=0)
        for depth in range(4, horizon + 1, 4):
            tracker.update(series_volume(values[:depth]))
            if tracker.stop is not None:
                break
        stops.append(tracker.stop["depth_slices"])
        assert abs(values[:stops[-1]].mean() - values.mean()) <= 0.05 * values.mean()
    assert d_ref <= np.median(stops) <= 1.4 * d_ref
    assert d_ref < 0.6 * horizon  # the horizon saves slices: no floor tied to anything else


def test_no_floor_tied_to_the_field_width():
    # 256 px wide, fine grain: the stop comes long before 256 slices (the old "as deep as wide").
    labels = white_noise((200, 64, 256), 0.3, seed=3)
    tracker = RevTracker(spacing_um=0.05, planned_depth_slices=400, rng=0)
    feed(tracker, labels, step=4)
    assert tracker.stop is not None and tracker.stop["depth_slices"] < 100
    doc = tracker.stop["rev"]
    # White noise: correlation length about one slice (chords cut by the borders make it a bit more).
    assert doc["min_depth_slices"] <= 18 and "correlation length" in doc["min_depth_reason"]
    assert doc["horizon_slices"] == 400 and doc["horizon_source"] == "planned depth"


def test_unknown_horizon_is_twice_the_depth():
    tracker = RevTracker(spacing_um=0.05, rng=0)
    doc = tracker.update(white_noise((40, 16, 16), 0.3, seed=0))
    assert doc["horizon_slices"] == 80 and doc["horizon_source"].startswith("unknown")
    past = RevTracker(spacing_um=0.05, planned_depth_slices=20, rng=0).update(white_noise((40, 16, 16), 0.3, seed=0))
    assert past["horizon_slices"] == 40


def test_tracker_graded_volume_never_stops():
    rng = np.random.default_rng(3)
    z = np.arange(300)
    p = 0.3 * (1 + 0.6 * (z / 299 - 0.5))  # 0.21 at the top, 0.39 at the bottom
    labels = np.where(rng.random((300, 64, 64)) < p[:, None, None], 1, 2).astype(np.uint8)
    metric = default_metrics()[0]
    tracker = RevTracker(spacing_um=(0.05, 0.04, 0.04), metrics=[metric], planned_depth_slices=300, rng=0)
    feed(tracker, labels, step=4)
    doc = tracker.document()
    assert tracker.stop is None and not doc["representative"]
    assert doc["not_stationary"] == ["volume_fraction.pore"]
    assert "drifts +" in doc["reasons"][0]


def ar1_series(n, phi, sd, seed):
    e = np.random.default_rng(seed).normal(0, sd, n)
    y = np.empty(n)
    y[0] = e[0] / math.sqrt(1 - phi ** 2)
    for i in range(1, n):
        y[i] = phi * y[i - 1] + e[i]
    return y


@pytest.mark.slow
def test_trend_false_alarms_over_whole_runs_are_controlled():
    # Stationary series correlated along z (AR(1), correlation length ~5 slices): the trend test
    # runs at every update, yet runs ever flagged stay within the run-wide budget (5 %).
    runs, flagged = 60, 0
    for seed in range(runs):
        values = 1.0 + ar1_series(600, 0.8, 0.1, seed)
        volume = series_volume(values)
        # The correlation length of a float series is unknown to the tracker (1 slice):
        # give it through a metric-free floor of batches via batch_lengths.
        tracker = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], planned_depth_slices=600, batch_lengths=10,
                             rng=0)
        for depth in range(4, 601, 4):
            if tracker.update(volume[:depth])["not_stationary"]:
                flagged += 1
                break
    assert flagged / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)


def test_predicted_slices_match_the_stop():
    horizon = 1200
    errors, inside = {0.25: [], 0.5: []}, []
    for seed in range(6):
        values = 1.0 + np.random.default_rng(seed).normal(0, 0.5, horizon)
        tracker = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], planned_depth_slices=horizon, rng=0)
        predicted = {}
        for depth in range(4, horizon + 1, 4):
            doc = tracker.update(series_volume(values[:depth]))
            predicted[depth] = doc["slices_needed"], doc["slices_needed_range"]
            if tracker.stop is not None:
                break
        stop = tracker.stop["depth_slices"]
        for share, errs in errors.items():
            at = 4 * round(stop * share / 4)
            needed, (low, high) = predicted[at]
            errs.append(abs(needed - (stop - at)) / (stop - at))
            inside.append(low <= stop - at <= high)
    assert all(np.median(e) <= 0.25 for e in errors.values())
    assert np.mean(inside) >= 0.75


def test_seconds_needed_from_the_slice_cadence():
    values = 1.0 + np.random.default_rng(0).normal(0, 0.5, 200)
    tracker = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], planned_depth_slices=1200, rng=0)
    for depth in range(4, 201, 4):
        doc = tracker.update(series_volume(values[:depth]), time_s=100.0 + 2.0 * depth)  # 0.5 slice/s
    assert doc["slices_per_s"] == pytest.approx(0.5)
    assert doc["slices_needed"] > 0
    assert doc["seconds_needed"] == pytest.approx(2.0 * doc["slices_needed"])
    entry = doc["metrics"]["slice_mean"]
    assert entry["seconds_needed"] == pytest.approx(2.0 * entry["slices_needed"])


class CountingVolume:
    """A label array that counts the bytes its readers take."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.bytes = data, data.shape, data.dtype, 0

    def __getitem__(self, key):
        out = self.data[key]
        self.bytes += out.nbytes
        return out


def test_reads_follow_the_new_data():
    synthetic = pytest.importorskip("processing.synthetic")
    spacing = (0.05, 0.05, 0.05)
    labels = synthetic.generate_microstructure((400, 48, 48), spacing_um=spacing, particle_radius_um=0.1, rng=1)
    tracker = RevTracker(spacing_um=spacing, metrics=default_tracked(), planned_depth_slices=2000, rng=0)
    per_update = {}
    for depth in range(4, 401, 4):
        view = CountingVolume(labels[:depth])
        tracker.update(view)
        per_update[depth] = view.bytes
    slice_bytes = 48 * 48
    cubes = tracker.subvolume_samples * tracker.max_cube_voxels
    for depth in (40, 400):
        # 4 new slices and the one before, plus at most the cubes of the subvolume curve.
        assert 5 * slice_bytes <= per_update[depth] <= 5 * slice_bytes + cubes
    assert np.mean([per_update[d] for d in range(340, 401, 4)]) <= 1.5 * np.mean([per_update[d] for d in range(40, 101, 4)])


def test_hysteresis_prevents_flicker_and_stop_is_latched():
    rng = np.random.default_rng(6)
    values = 1.0 + rng.normal(0, 0.2, 400)
    volume = series_volume(values)

    def flips(tracker):
        states = [tracker.update(volume[:d])["representative"] for d in range(1, 401)]
        return sum(a != b for a, b in zip(states, states[1:])), states

    # Horizon unknown (twice the depth) and a tolerance at the edge of what 400 slices give:
    # the raw verdict hesitates.
    raw = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], hold_updates=1, rng=0)
    held = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], hold_updates=8, rng=0)
    raw_flips, raw_states = flips(raw)
    held_flips, states = flips(held)
    assert raw_flips >= 6  # the precondition: without hysteresis it flickers
    assert held_flips <= raw_flips // 3
    first = states.index(True)
    assert first >= raw_states.index(True) + 4
    assert held.stop["depth_slices"] == first + 1
    latched = dict(held.stop)
    held.update(volume)
    assert held.stop == latched


def test_tracker_documents_default_metrics_and_validates():
    tracker = RevTracker(spacing_um=(0.05, 0.04, 0.04), rng=0)
    doc = tracker.update(white_noise((4, 16, 16), 0.5, seed=0))
    assert set(doc["metrics"]) == {m.name for m in default_metrics()}
    entry = doc["metrics"]["volume_fraction.pore"]
    assert set(entry) >= {"value", "relative_error", "converged", "rev_edge_um", "slices_needed", "seconds_needed",
                          "drift_to_horizon", "unit_slices", "batch_slices", "min_depth_slices"}
    assert set(doc) >= {"horizon_slices", "horizon_source", "min_depth_slices", "min_depth_reason", "feature_size_um",
                        "correlation_length_z_um", "slices_per_s", "seconds_needed"}
    assert not doc["representative"] and doc["reasons"]
    json.dumps(doc, allow_nan=False)
    from agent.events import EventStream, validate_document

    stream = EventStream()
    validate_document(stream.emit("rev", doc))
    later = tracker.update(white_noise((120, 16, 16), 0.5, seed=0), time_s=10.0)
    validate_document(stream.emit("rev", later))
    with pytest.raises(SliceShapeError):
        tracker.update(np.ones((5, 16, 17), dtype=np.uint8))
    with pytest.raises(ValueError, match="only grow"):
        tracker.update(np.ones((2, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="tolerance"):
        RevTracker(spacing_um=0.05, tolerance=0)
    with pytest.raises(ValueError, match="unknown metric 'porosity'"):
        RevTracker(spacing_um=0.05, tolerances={"porosity": 0.1})
    with pytest.raises(ValueError, match="planned_depth_slices"):
        RevTracker(spacing_um=0.05, planned_depth_slices=0)


def test_tracker_on_synthetic_microstructure():
    synthetic = pytest.importorskip("processing.synthetic")
    spacing = (0.05, 0.04, 0.04)
    labels = synthetic.generate_microstructure((240, 48, 48), spacing_um=spacing, particle_radius_um=0.1, rng=2)
    tracker = RevTracker(spacing_um=spacing, planned_depth_slices=240, rng=0)
    feed(tracker, labels, step=4)
    assert tracker.stop is not None
    full = [(labels == k).mean() for k in (1, 2, 3)]
    d = tracker.stop["depth_slices"]
    prefix = [(labels[:d] == k).mean() for k in (1, 2, 3)]
    assert_allclose(prefix, full, rtol=0.05)
    graded = synthetic.generate_microstructure((240, 48, 48), spacing_um=spacing, particle_radius_um=0.1,
                                               gradient=0.6, rng=2)
    tracker = RevTracker(spacing_um=spacing, planned_depth_slices=240, rng=0)
    feed(tracker, graded, step=4)
    assert tracker.stop is None


def test_rev_report_is_json_ready_and_consistent():
    from processing.rev import rev_report

    labels = white_noise((120, 32, 32), 0.3, seed=9)
    report = rev_report(labels, spacing_um=(0.05, 0.04, 0.04), steps=30, n_samples=8, rng=0)
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(doc["curves"]) == set(doc["depth_curves"]) == set(doc["metrics"])
    pore = doc["depth_curves"]["volume_fraction.pore"]
    assert pore["depth_slices"][-1] == 120
    assert pore["value"][-1] == pytest.approx((labels == 1).mean())
    assert doc["horizon_slices"] == 120
    assert report.stop_depth_slices is not None and report.stop_depth_slices <= 120


def test_absent_phase_is_constant_and_does_not_block():
    labels = white_noise((60, 16, 16), 0.3, seed=2)  # labels 1 and 2 only: no active
    tracker = RevTracker(spacing_um=(0.05, 0.04, 0.04), planned_depth_slices=100, rng=0)
    feed(tracker, labels)
    active = tracker.document()["metrics"]["volume_fraction.active"]
    assert active["value"] == 0 and active["relative_error"] == 0 and active["converged"]


# --------------------------------------------------------------------------- through the real agent

AGENT_SPACING_UM = (0.05, 0.02, 0.02)
AGENT_SLICES = 40
FRACTIONS = '["volume_fraction.pore","volume_fraction.electrolyte","volume_fraction.active"]'


@pytest.fixture
def fine_acquisition(make_acquisition, tmp_path):
    """40 slices of 112 x 112 px of fine particles (radius 3 px), written as Auto Slice & View does."""
    from processing.synthetic import write_acquisition

    acq = make_acquisition((AGENT_SLICES, 176, 176), rng=3, field_shape=(112, 112),
                           microstructure={"particle_radius_um": 0.06})
    folder = tmp_path / "acq"
    write_acquisition(acq, folder, layout="fei", pixel_size_um=AGENT_SPACING_UM[1], slice_spacing_um=AGENT_SPACING_UM[0])
    return folder


def _events(volume):
    path = volume.with_name(volume.name + ".events.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_exit_when_representative_exits_0_with_stop_and_a_complete_volume(fine_acquisition, tmp_path):
    import subprocess
    import sys

    from agent.publish import free_loopback_endpoint
    from agent.store import VolumeStore

    volume = tmp_path / "run.ome.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", str(fine_acquisition), "--volume", str(volume),
         "--exit-when-representative", "--planned-slices", str(AGENT_SLICES), "--idle-exit-s", "120",
         "--endpoint", free_loopback_endpoint(), "--set", "processing.calibration_slices=4",
         "--set", "acquisition.settle_s=0.05", "--set", f"rev.tracked={FRACTIONS}"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = _events(volume)
    stops = [e for e in events if e["topic"] == "stop"]
    assert len(stops) == 1 and stops[0]["rev"]["representative"]
    assert stops[0]["rev"]["horizon_slices"] == AGENT_SLICES and stops[0]["rev"]["horizon_source"] == "planned depth"
    assert events[-1]["topic"] == "status" and events[-1]["state"] == "stopped"
    # It ended because it was representative, not because the folder went quiet.
    assert "representative" in proc.stdout + proc.stderr
    # The volume is complete: every slice handed over is stored, once, in order, and readable.
    store = VolumeStore.open(volume, read_only=True)
    assert stops[0]["depth_slices"] <= store.depth <= AGENT_SLICES
    assert [s["index"] for s in store.slices] == list(range(1, store.depth + 1))
    labels = np.asarray(store.labels[:])
    assert labels.shape[0] == store.depth and (labels > 0).mean() > 0.9


@pytest.mark.slow
def test_stop_hook_runs_once_with_the_stop_document(fine_acquisition, tmp_path):
    import sys
    import threading
    import time

    from agent.config import Config
    from agent.pipeline import Agent
    from agent.publish import free_loopback_endpoint

    out, volume = tmp_path / "hook.jsonl", tmp_path / "run.ome.zarr"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + chr(10))"
    config = Config.model_validate({
        "acquisition": {"folder": str(fine_acquisition), "settle_s": 0.05, "planned_slices": AGENT_SLICES},
        "volume": {"path": str(volume)},
        "processing": {"calibration_slices": 4},
        "analysis": {"every_slices": 4},
        "publish": {"endpoint": free_loopback_endpoint()},
        "rev": {"tracked": json.loads(FRACTIONS), "on_stop_command": f"{sys.executable} -c \"{script}\""},
    })
    agent, stop = Agent(config), threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=agent.run(stop_event=stop)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (agent.events.stopped and out.exists()):
        time.sleep(0.2)
    time.sleep(2.0)  # further updates and the end of the run must not run it again
    stop.set()
    thread.join(120)
    assert not thread.is_alive() and "summary" in result
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    received = json.loads(lines[0])
    latched = agent.events.latest("stop")
    assert received == json.loads(json.dumps(latched))
    assert received["topic"] == "stop" and received["rev"]["representative"]
    assert received["depth_slices"] == latched["depth_slices"]


def test_monitor_shows_the_predicted_time_to_representative():
    from agent.monitor import MonitorState, verdict

    state = MonitorState(run_id="r", now_unix_s=0.0, last_heard_unix_s=0.0)
    state.rev = {"representative": False, "slices_needed": 300, "seconds_needed": 1800.0, "horizon_slices": 1500,
                 "horizon_source": "planned depth", "not_stationary": [], "metrics": {}}
    title, _, detail = verdict(state)
    assert title == "ACQUIRING"
    assert "about 300 more slices" in detail and "~30m00s" in detail and "horizon 1,500 slices" in detail
    state.rev["seconds_needed"] = None
    assert "~" not in verdict(state)[2]
    state.rev["slices_needed_range"] = [240, 420]
    assert "(range 240-420)" in verdict(state)[2]


def test_a_metric_never_defined_does_not_hold_the_verdict_back():
    # e.g. the tortuosity of a phase that percolates through no block: NaN on every block.
    never = RevMetric("tortuosity_geometric.electrolyte.y+", lambda b, s: math.nan, min_extent_um=0.2)
    tracker = RevTracker(spacing_um=0.05, metrics=[default_metrics()[0], never], planned_depth_slices=60, rng=0)
    feed(tracker, white_noise((60, 32, 32), 0.3, seed=4), step=4)
    entry = tracker.document()["metrics"][never.name]
    assert entry["undefined"] and entry["converged"] and entry["value"] is None
    assert tracker.stop is not None


def test_worker_analyses_the_last_few_slices_when_waited_for(tmp_path):
    # A run that ends (Ctrl-C / SIGTERM: no final refresh) with fewer new slices than
    # analysis.every_slices must not leave wait_idle waiting forever.
    from agent.analysis_worker import AnalysisWorker
    from agent.config import load_config
    from agent.events import EventStream
    from agent.store import VolumeStore
    from processing.phases import Phases

    labels = white_noise((10, 32, 32), 0.3, seed=1)
    store = VolumeStore.create(tmp_path / "v.ome.zarr", canvas_shape=(32, 32), dtype=np.uint8, spacing_um=(0.05, 0.02, 0.02),
                               phases=Phases(), run_attrs={})
    events = EventStream()
    worker = AnalysisWorker(events, phases=Phases(), config=load_config(None, ["analysis.pictures_every_slices=0"]))
    for index, labelled in enumerate(labels, start=1):
        store.append(index, labelled, labelled, {"shift_px": [0.0, 0.0]})
        if index == 1:
            worker.attach(store)
        worker.notify(store.depth)
        if index == 8:
            assert worker.wait_idle(60)
            assert events.latest("rev")["depth_slices"] == 8
    assert worker.wait_idle(60)  # 2 new slices, fewer than every_slices (4)
    assert events.latest("rev")["depth_slices"] == 10
    worker.close()
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_with_the_volume_complete(fine_acquisition, tmp_path, signame):
    import signal
    import subprocess
    import sys
    import time

    from agent.publish import free_loopback_endpoint
    from agent.store import VolumeStore

    volume = tmp_path / "run.ome.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", str(fine_acquisition), "--volume", str(volume),
         "--planned-slices", str(10 * AGENT_SLICES), "--idle-exit-s", "600", "--endpoint", free_loopback_endpoint(),
         "--set", "processing.calibration_slices=4", "--set", "acquisition.settle_s=0.05"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        path = volume.with_name(volume.name + ".events.jsonl")
        while time.monotonic() < deadline and proc.poll() is None:
            depths = [json.loads(line).get("depth_slices") for line in path.read_text().splitlines()
                      if '"topic":"status"' in line] if path.exists() else []
            if depths and depths[-1] == AGENT_SLICES:
                break
            time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"{signame}: exit {proc.returncode} {time.monotonic() - started:.1f} s after the signal, depth {AGENT_SLICES}")
    assert proc.returncode == 0
    events = _events(volume)
    assert events[-1]["topic"] == "status" and events[-1]["state"] == "stopped"
    assert max(e["depth_slices"] for e in events if e["topic"] == "rev") == AGENT_SLICES  # the verdict caught up
    store = VolumeStore.open(volume, read_only=True)
    assert [s["index"] for s in store.slices] == list(range(1, AGENT_SLICES + 1))
    assert np.asarray(store.labels[:]).shape[0] == AGENT_SLICES

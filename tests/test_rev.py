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
from processing.rev import (
    RevMetric,
    RevTracker,
    default_metrics,
    detect_trend,
    fit_kanit,
    kanit_from_curve,
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


# --------------------------------------------------------------------------- streaming tracker


def test_tracker_stationary_white_noise_stops_within_tolerance():
    labels = white_noise((160, 24, 24), 0.3, seed=7)
    metric = RevMetric("volume_fraction.pore", phase_fraction(1), additive=True)
    tracker = RevTracker(spacing_um=(0.05, 0.04, 0.04), metrics=[metric], rng=0)
    docs = feed(tracker, labels)
    assert tracker.stop is not None
    stop_depth = tracker.stop["depth_slices"]
    # A voxel-independent phase: one slice has 576 voxels, relative std 6.6 %;
    # 2 sigma / sqrt(d) <= 5 % needs d >= 7 slices: the tracker waits for its
    # blocks, then stops long before the end.
    assert 16 <= stop_depth <= 80
    full = (labels == 1).mean()
    assert abs((labels[:stop_depth] == 1).mean() - full) <= 0.05 * full
    assert json.loads(json.dumps(docs[-1], allow_nan=False))["metrics"]["volume_fraction.pore"]["converged"]


def test_tracker_graded_volume_never_stops():
    rng = np.random.default_rng(3)
    z = np.arange(300)
    p = 0.3 * (1 + 0.6 * (z / 299 - 0.5))  # 0.21 at the top, 0.39 at the bottom
    labels = np.where(rng.random((300, 64, 64)) < p[:, None, None], 1, 2).astype(np.uint8)
    metric = RevMetric("volume_fraction.pore", phase_fraction(1), additive=True)
    tracker = RevTracker(spacing_um=(0.05, 0.04, 0.04), metrics=[metric], rng=0)
    feed(tracker, labels)
    doc = tracker.document()
    assert tracker.stop is None and not doc["representative"]
    assert doc["not_stationary"] == ["volume_fraction.pore"]
    assert "drifts +" in doc["reasons"][0]


def test_tracker_slices_needed_decreases_as_depth_grows():
    # One slice: 50 % relative std; 2 sigma / sqrt(d) <= 5 % needs ~400 slices.
    # A single run's prediction rests on 8-16 blocks and is noisy, so the
    # geometric mean over seeds is compared.
    needed = []
    for seed in range(8):
        values = 1.0 + np.random.default_rng(seed).normal(0, 0.5, 240)
        tracker = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], rng=0)
        row = {}
        for depth in range(1, 241):
            row[depth] = tracker.update(series_volume(values[:depth]))["metrics"]["slice_mean"]["slices_needed"]
        needed.append([row[d] for d in (60, 120, 240)])
    geo = np.exp(np.log(np.array(needed, dtype=float) + 1).mean(axis=0))
    assert geo[0] > geo[1] > geo[2]
    assert 100 <= 60 + geo[0] <= 4000


def test_hysteresis_prevents_flicker_and_stop_is_latched():
    rng = np.random.default_rng(5)
    values = 1.0 + rng.normal(0, 0.2, 400)
    volume = series_volume(values)

    def flips(tracker):
        states = [tracker.update(volume[:d])["representative"] for d in range(1, 401)]
        return sum(a != b for a, b in zip(states, states[1:])), states

    # Tolerance at the edge of what 400 slices give: the raw verdict hesitates.
    raw = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], tolerance=0.06, hold_updates=1, hold_fraction=0.0, rng=0)
    held = RevTracker(spacing_um=0.05, metrics=[SLICE_MEAN], tolerance=0.06, hold_updates=5, hold_fraction=0.1, rng=0)
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
    assert set(entry) >= {"value", "relative_error", "converged", "rev_edge_um", "slices_needed"}
    assert not doc["representative"] and doc["reasons"]
    json.dumps(doc, allow_nan=False)
    with pytest.raises(SliceShapeError):
        tracker.update(np.ones((5, 16, 17), dtype=np.uint8))
    with pytest.raises(ValueError, match="only grow"):
        tracker.update(np.ones((2, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="tolerance"):
        RevTracker(spacing_um=0.05, tolerance=0)
    with pytest.raises(ValueError, match="unknown metric 'porosity'"):
        RevTracker(spacing_um=0.05, tolerances={"porosity": 0.1})


def test_tracker_on_synthetic_microstructure():
    synthetic = pytest.importorskip("processing.synthetic")
    spacing = (0.05, 0.04, 0.04)
    labels = synthetic.generate_microstructure((240, 48, 48), spacing_um=spacing, particle_radius_um=0.1, rng=2)
    tracker = RevTracker(spacing_um=spacing, rng=0)
    feed(tracker, labels, step=4)
    assert tracker.stop is not None
    full = [(labels == k).mean() for k in (1, 2, 3)]
    d = tracker.stop["depth_slices"]
    prefix = [(labels[:d] == k).mean() for k in (1, 2, 3)]
    assert_allclose(prefix, full, rtol=0.05)
    graded = synthetic.generate_microstructure((240, 48, 48), spacing_um=spacing, particle_radius_um=0.1,
                                               gradient=0.6, rng=2)
    tracker = RevTracker(spacing_um=spacing, rng=0)
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
    assert report.stop_depth_slices is not None and report.stop_depth_slices <= 120


def test_absent_phase_is_constant_and_does_not_block():
    labels = white_noise((60, 16, 16), 0.3, seed=2)  # labels 1 and 2 only: no active
    tracker = RevTracker(spacing_um=(0.05, 0.04, 0.04), rng=0)
    feed(tracker, labels)
    active = tracker.document()["metrics"]["volume_fraction.active"]
    assert active["value"] == 0 and active["relative_error"] == 0 and active["converged"]

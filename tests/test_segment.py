"""Phase segmentation against the generator's truth labels."""

import json

import numpy as np
import pytest

from processing.correct import fit_correction
from processing.errors import CalibrationError
from processing.segment import (PhaseModel, _balanced_thresholds, _bayes_thresholds, fit_phase_model,
                                fit_pixel_classifier)
from processing.synthetic import generate_microstructure, render_acquisition


def _corrected(n, size, *, seed, radius_um=0.6, noise=16.0, **options):
    """Corrected slices (brightness + curtaining) of a drift-free acquisition, and the truth."""
    labels = generate_microstructure((n, size + 24, size + 24), particle_radius_um=radius_um, rng=seed)
    acq = render_acquisition(labels, drift_px=np.zeros((n, 2)), field_shape=(size, size), noise_sigma=noise,
                             rng=seed, **options)
    corrected = fit_correction(acq.slices[:3]).apply_stack(acq.slices)
    return np.array([c.pixels for c in corrected]), acq.labels


def _score(labels, truth):
    accuracy = float((labels == truth).mean())
    fraction_pp = [abs(float((labels == k).mean() - (truth == k).mean())) * 100 for k in (1, 2, 3)]
    return accuracy, max(fraction_pp)


@pytest.mark.parametrize("radius_um, noise, seed", [(0.6, 16.0, 0), (0.8, 20.0, 1), (0.45, 12.0, 2)])
def test_labels_match_truth(radius_um, noise, seed):
    slices, truth = _corrected(16, 256, seed=seed, radius_um=radius_um, noise=noise, brightness_drift=0.03)
    model = fit_phase_model(slices[:3])
    labels = np.array([model.segment(s).labels for s in slices])
    accuracy, worst_pp = _score(labels, truth)
    assert accuracy >= 0.97
    assert worst_pp <= 1.0


def test_smoothing_and_rim_fix_each_improve_accuracy():
    slices, truth = _corrected(10, 256, seed=3)

    def accuracy(**options):
        model = fit_phase_model(slices[:3], **options)
        return _score(np.array([model.segment(s).labels for s in slices]), truth)[0]

    full = accuracy()
    assert full > accuracy(smooth_px=0.0) + 0.01
    assert full > accuracy(rim_fix=False) + 0.005


def test_the_widest_pre_filter_allowed_segments_a_very_noisy_slice():
    """``phases.smooth_px`` goes up to 4 px: its binomial sums overflowed float32 (every grey inf,
    calibration crashed on an empty histogram). On large particles under noise 60 % of the level
    step the wide pre-filter labels most pixels right, and the grey it works on is a Gaussian's."""
    from scipy import ndimage

    from processing.segment import _smooth

    slices, truth = _corrected(3, 256, seed=4, radius_um=1.5, noise=48.0)
    model = fit_phase_model(slices[:3], smooth_px=4.0)
    accuracy, _ = _score(np.array([model.segment(s).labels for s in slices]), truth)
    assert accuracy >= 0.9
    grey = slices[0].astype(np.float32)
    np.testing.assert_allclose(_smooth(grey, 4.0)[16:-16, 16:-16],
                               ndimage.gaussian_filter(grey, 4.0)[16:-16, 16:-16], atol=0.5)


def test_rims_between_pores_and_particles_go_without_eating_the_middle_phase():
    """Small particles (radius 10 px, blur 1 px): many middle-phase pixels touch both a pore and
    a particle without lying between them. Only those with a pore on one side and a particle on
    the opposite side are rims: the fractions stay within 2 points (a 5x5 window that sees both
    took 2.9 points from the electrolyte; no rim fix at all adds 3.7 to it)."""
    slices, truth = _corrected(10, 256, seed=3, radius_um=0.2)
    model = fit_phase_model(slices[:3])
    accuracy, worst_pp = _score(np.array([model.segment(s).labels for s in slices]), truth)
    plain = fit_phase_model(slices[:3], rim_fix=False)
    assert worst_pp <= 2.0
    assert accuracy > _score(np.array([plain.segment(s).labels for s in slices]), truth)[0] + 0.01


def test_otsu_and_gmm_thresholds_are_close_on_well_separated_phases():
    slices, _ = _corrected(4, 192, seed=4)
    gmm = fit_phase_model(slices, method="gmm")
    otsu = fit_phase_model(slices, method="otsu")
    assert np.allclose(gmm.thresholds, otsu.thresholds, atol=8.0)
    assert np.all(np.diff(gmm.thresholds) > 0)


@pytest.mark.parametrize("minority, separation", [(0.2, 3.0), (0.1, 2.5), (0.35, 2.0)])
def test_thresholds_keep_the_fraction_of_a_smaller_noisy_phase(minority, separation):
    # two phases of known shares and unit noise: a threshold that balances the pixels each phase
    # loses to the other counts the smaller one right; the fewest-errors (Bayes) cut undercounts it
    rng = np.random.default_rng(7)
    n = 2_000_000
    small = rng.random(n) < minority
    grey = np.where(small, separation, 0.0) + rng.standard_normal(n)
    mu, sigma, weight = np.array([0.0, separation]), np.ones(2), np.array([1 - minority, minority])
    balanced = _balanced_thresholds(mu, sigma, weight)[0]
    bayes = _bayes_thresholds(mu, sigma, weight)[0]
    assert abs(np.mean(grey > balanced) - np.mean(small)) < 0.002
    assert np.mean(small) - np.mean(grey > bayes) > 0.005


def test_model_round_trips_through_json_and_segments_identically():
    slices, _ = _corrected(4, 128, seed=5)
    model = fit_phase_model(slices[:2])
    again = PhaseModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    a, b = model.segment(slices[3]), again.segment(slices[3])
    assert np.array_equal(a.labels, b.labels)
    assert a.uncertain_share == b.uncertain_share
    with pytest.raises(CalibrationError):
        PhaseModel.from_dict({"levels": [1, 2]})


def test_invalid_pixels_are_unassigned_and_uncertainty_grows_with_noise():
    quiet, _ = _corrected(3, 128, seed=6, noise=6.0)
    noisy, _ = _corrected(3, 128, seed=6, noise=30.0)
    valid = np.ones(quiet[0].shape, bool)
    valid[:, :20] = False
    seg = fit_phase_model(quiet[:2]).segment(quiet[2], valid=valid)
    assert seg.labels.dtype == np.uint8
    assert np.all(seg.labels[:, :20] == 0) and np.all(seg.labels[:, 20:] > 0)
    noisy_share = fit_phase_model(noisy[:2]).segment(noisy[2]).uncertain_share
    assert 0.0 <= seg.uncertain_share < noisy_share <= 1.0


def test_calibration_errors():
    with pytest.raises(CalibrationError):
        fit_phase_model([np.full((32, 32), 9.0)])
    with pytest.raises(ValueError, match="n_phases"):
        fit_phase_model([np.zeros((8, 8))], n_phases=7)


def test_pixel_classifier_separates_phases_that_grey_levels_cannot():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(7)
    size = 128
    # two phases with the same mean grey level: one smooth, one finely textured
    truth = np.ones((2, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(2):
        for cy, cx, r in rng.uniform((0, 0, 10), (size, size, 22), size=(8, 3)):
            truth[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    texture = rng.normal(0, 40, size=truth.shape)
    images = np.where(truth == 2, 120 + texture, 120 + rng.normal(0, 4, size=truth.shape)).astype(np.float32)
    strokes = np.zeros((size, size), np.uint8)
    pick = rng.uniform(size=strokes.shape) < 0.02
    strokes[pick] = truth[0][pick]
    clf = fit_pixel_classifier(images[0], strokes, n_estimators=30, rng=0)
    seg = clf.segment(images[1])
    assert float((seg.labels == truth[1]).mean()) >= 0.9
    grey = fit_phase_model(images[:1], n_phases=2, rim_fix=False).segment(images[1]).labels
    assert float((grey == truth[1]).mean()) < 0.8
    valid = np.zeros((size, size), bool)
    valid[:64] = True
    assert np.all(clf.segment(images[1], valid=valid).labels[64:] == 0)
    with pytest.raises(CalibrationError):
        fit_pixel_classifier(images[0], (strokes > 0).astype(np.uint8))


@pytest.mark.slow
def test_300_slices_full_chain_labels_and_fractions():
    """read-free chain of the agent (correct -> align -> shift -> segment) over 300 slices."""
    from processing.align import DriftTracker, apply_shift
    from processing.synthetic import simulate_drift

    n, size = 300, 384
    rng = np.random.default_rng(9)
    drift = simulate_drift(n, jump_probability=0.01, rng=rng)
    margin = int(np.ceil(np.abs(drift).max())) + 12
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), rng=rng)
    acq = render_acquisition(labels, drift_px=drift, field_shape=(size, size), rng=rng)
    tracker = DriftTracker()
    corrected = [c.pixels for c in fit_correction(acq.slices[:3]).apply_stack(acq.slices)]
    phases = fit_phase_model(corrected[:3])
    ours, true_shift = [], []
    for k, c in enumerate(corrected):
        for shift, out in ((tracker.update(c).shift_px, ours), (acq.drift_px[k], true_shift)):
            aligned, valid = apply_shift(c, shift)
            out.append(phases.segment(aligned, valid=valid).labels)
    ours, true_shift = np.array(ours), np.array(true_shift)
    valid = true_shift > 0
    # segmentation itself (placed with the true drift): accuracy and fractions
    accuracy, worst_pp = _score(true_shift[valid], acq.labels[valid])
    assert accuracy >= 0.97
    assert worst_pp <= 1.0
    # with the tracker's own drift the fractions still hold (misplacement does not bias them)
    mask = ours > 0
    assert max(abs(float((ours[mask] == k).mean() - (acq.labels[mask] == k).mean())) for k in (1, 2, 3)) <= 0.01



def test_integer_run_time_path_matches_a_float_reference():
    """The run-time path (slice rounded to 256 steps, uint16 binomial smoothing, integer
    thresholds, uncertainty on a 2x2 subsample) against plain float32 Gaussian smoothing and the
    model's thresholds: labels agree on all but a few pixels sitting on a threshold."""
    from scipy import ndimage

    slices, _ = _corrected(4, 256, seed=7)
    model = fit_phase_model(slices[:3], rim_fix=False)
    for s in slices:
        smooth = ndimage.gaussian_filter(s.astype(np.float64), model.smooth_px, mode="nearest")
        reference = 1 + sum((smooth > t).astype(np.uint8) for t in model.thresholds)
        uncertain = np.zeros(s.shape, dtype=bool)
        for lo, hi in model.uncertain_bounds:
            uncertain |= (smooth >= lo) & (smooth <= hi)
        seg = model.segment(s)
        assert float((seg.labels == reference).mean()) >= 0.995
        assert abs(seg.uncertain_share - float(uncertain.mean())) < 0.01


def test_row_blocks_leave_no_seams():
    """Segmentation runs in row blocks with a halo: the transposed slice (blocks cut across the
    other axis) gives exactly the transposed labels, rims and smoothing included."""
    slices, _ = _corrected(3, 320, seed=8)
    model = fit_phase_model(slices[:2], smooth_px=1.5)
    for s in slices:
        assert np.array_equal(model.segment(s.T).labels, model.segment(s).labels.T)


def test_label_values_map_the_fitted_classes_and_round_trip():
    slices, _ = _corrected(3, 128, seed=7)
    model = fit_phase_model(slices[:2], n_phases=2)
    mapped = PhaseModel.from_dict(json.loads(json.dumps({**model.to_dict(), "label_values": [1, 3]})))
    assert mapped.label_values == (1, 3)
    plain, relabelled = model.segment(slices[2]).labels, mapped.segment(slices[2]).labels
    assert np.array_equal(relabelled, np.where(plain == 2, 3, plain))
    assert PhaseModel.from_dict(mapped.to_dict()) == mapped

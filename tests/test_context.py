"""Labels decided in 3-D context: boundaries on the edges (no partial-volume bias), the delay."""

import numpy as np
import pytest
from scipy import ndimage

from processing.context import DepthContext, segment_in_context
from processing.errors import SliceShapeError
from processing.segment import fit_phase_model
from processing.synthetic import generate_microstructure, render_acquisition

LEVELS = (45.0, 115.0, 195.0)


def clean_render(labels, *, noise, blur, rng, levels=LEVELS):
    """Slices without drift, curtains or brightness changes: only the segmentation is judged."""
    return render_acquisition(labels, levels=levels, noise_sigma=noise, blur_px=blur, curtaining=0.0,
                              brightness_drift=0.0, drift_px=np.zeros((labels.shape[0], 2)),
                              field_shape=(labels.shape[1] - 16, labels.shape[2] - 16), rng=rng)


def decide_all(slices, model, k):
    context = DepthContext(model, context_slices=k, boundaries="edges")
    out = []
    for z, s in enumerate(slices.astype(np.float32)):
        out += context.push(s, payload=z)
    out += context.flush()
    assert [z for z, _ in out] == list(range(len(slices)))
    return np.stack([seg.labels for _, seg in out])


def shares(labels, n):
    return np.array([(labels == k).mean() for k in range(1, n + 1)])


@pytest.fixture(scope="module")
def fine():
    """Fine structure (particles of ~12 px radius), where the blurred pore/active edges are many."""
    labels = generate_microstructure((10, 272, 272), particle_radius_um=0.25, rng=11)
    return clean_render(labels, noise=16.0, blur=1.2, rng=12)


def test_fractions_are_not_biased_by_blurred_edges(fine):
    model = fit_phase_model(fine.slices[:4].astype(np.float32), n_phases=3)
    labels = decide_all(fine.slices, model, k=1)
    truth = fine.labels
    bias_points = 100 * (shares(labels, 3) - shares(truth, 3))
    assert np.abs(bias_points).max() < 0.7, bias_points
    assert np.mean(labels == truth) > 0.95


def test_blurred_edge_between_extremes_gets_no_middle_phase_and_stays_in_place():
    # pore | active with a 1.5 px blur: thresholding leaves a rim of the middle phase
    truth = np.ones((64, 128), dtype=np.uint8)
    truth[:, 64:] = 3
    grey = ndimage.gaussian_filter(np.where(truth == 1, LEVELS[0], LEVELS[2]).astype(np.float32), 1.5)
    calibration = np.concatenate([np.full((64, 40), LEVELS[0]), np.full((64, 40), LEVELS[1]),
                                  np.full((64, 40), LEVELS[2])], axis=1)
    calibration = calibration + np.random.default_rng(0).normal(0, 6, calibration.shape)
    model = fit_phase_model(calibration.astype(np.float32), n_phases=3)
    labels = segment_in_context(grey, model).labels
    assert not (labels == 2).any()
    np.testing.assert_array_equal(labels, truth)


def test_a_real_film_of_the_middle_phase_is_kept_at_its_width():
    truth = np.ones((64, 160), dtype=np.uint8)
    truth[:, 70:] = 2
    truth[:, 82:] = 3  # a 12 px film of the middle phase between pore and active
    grey = ndimage.gaussian_filter(np.asarray(LEVELS, dtype=np.float32)[truth - 1], 1.5)
    grey += np.random.default_rng(1).normal(0, 8, grey.shape).astype(np.float32)
    model = fit_phase_model(np.asarray(LEVELS, dtype=np.float32)[truth - 1] + np.random.default_rng(2).normal(
        0, 8, truth.shape).astype(np.float32), n_phases=3)
    labels = segment_in_context(grey, model).labels
    film_width = (labels == 2).sum(axis=1)
    assert np.median(film_width) == pytest.approx(12, abs=1)
    assert np.mean(labels == truth) > 0.98


def test_context_along_z_lowers_the_error_on_noisy_slices():
    labels = generate_microstructure((10, 208, 208), particle_radius_um=0.6, rng=21)
    acq = clean_render(labels, noise=28.0, blur=2.0, rng=22)
    model = fit_phase_model(acq.slices[:4].astype(np.float32), n_phases=3)
    errors = {k: np.mean(decide_all(acq.slices, model, k) != acq.labels) for k in (0, 1)}
    assert errors[1] < 0.9 * errors[0], errors


@pytest.mark.parametrize("levels", [(60.0, 190.0), (30.0, 90.0, 150.0, 215.0)])
def test_two_and_four_phases(levels):
    n = len(levels)
    structure = generate_microstructure((6, 216, 216), particle_radius_um=0.4, rng=7)
    if n == 2:
        truth = np.where(structure == 3, 2, 1).astype(np.uint8)
    else:
        # every other particle of the brightest phase becomes a fourth phase: edges between every pair
        particles, count = ndimage.label(structure == 3)
        truth = np.where((structure == 3) & (particles % 2 == 0), 4, structure).astype(np.uint8)
    rng = np.random.default_rng(5)
    grey = ndimage.gaussian_filter(np.asarray(levels)[truth - 1], (0, 1.0, 1.0))
    grey = (grey + rng.normal(0, 10, grey.shape)).astype(np.float32)
    model = fit_phase_model(grey[:2], n_phases=n)
    labels = decide_all(grey, model, k=1)
    assert np.mean(labels == truth) > 0.97
    assert np.abs(shares(labels, n) - shares(truth, n)).max() < 0.01


def test_the_delay_is_bounded_and_stated():
    model = fit_phase_model(np.random.default_rng(0).normal(100, 30, (64, 64)).astype(np.float32), n_phases=2)
    context = DepthContext(model, context_slices=2)
    slices = np.random.default_rng(1).normal(100, 30, (5, 32, 32)).astype(np.float32)
    assert context.push(slices[0], payload=0) == [] and context.delay_slices == 1
    assert context.push(slices[1], payload=1) == [] and context.delay_slices == 2
    decided = context.push(slices[2], payload=2)
    assert [p for p, _ in decided] == [0] and context.delay_slices == 2
    assert [p for p, _ in context.flush()] == [1, 2] and context.delay_slices == 0
    # slices decided early still serve as context for the next ones
    assert context.push(slices[3], payload=3) == [] and len(context._window) == 4


def test_valid_region_and_bad_input():
    model = fit_phase_model(np.random.default_rng(0).normal(100, 30, (64, 64)).astype(np.float32), n_phases=2)
    grey = np.random.default_rng(1).normal(100, 30, (32, 32)).astype(np.float32)
    valid = np.zeros((32, 32), dtype=bool)
    valid[8:24, 8:24] = True
    seg = segment_in_context(grey, model, valid=valid)
    assert not seg.labels[~valid].any() and seg.labels[valid].all()
    assert 0 <= seg.uncertain_share <= 1
    with pytest.raises(SliceShapeError, match=r"neighbours\[0\]"):
        segment_in_context(grey, model, neighbours=[grey[:16]])
    with pytest.raises(ValueError, match="edge_gradient_share"):
        segment_in_context(grey, model, edge_gradient_share=0)
    with pytest.raises(ValueError, match="context_slices"):
        DepthContext(model, context_slices=-1)


def decide_thresholds(slices, model, k):
    """Labels by the chain's default decision (thresholds on the slice denoised along z)."""
    context = DepthContext(model, context_slices=k)
    out = []
    for s in slices.astype(np.float32):
        out += context.push(s)
    out += context.flush()
    return np.stack([seg.labels for _, seg in out]), np.array([seg.uncertain_share for _, seg in out]), context


@pytest.fixture(scope="module")
def shine_labels():
    return generate_microstructure((16, 216, 216), particle_radius_um=0.2, rng=21)


def render_two_phases(labels, *, pore_back, rng):
    """Pores (label 1) and one bright solid (labels 2 and 3 at one level), no drift or curtains."""
    acq = render_acquisition(labels, levels=(45.0, 150.0, 150.0), noise_sigma=14.0, blur_px=1.0, curtaining=0.0,
                             brightness_drift=0.0, drift_px=np.zeros((labels.shape[0], 2)), pore_back=pore_back,
                             field_shape=(labels.shape[1] - 16, labels.shape[2] - 16), rng=rng)
    # the last slice has nothing behind it in the rendering (no shine there): left out of the scores
    return acq.slices, np.minimum(acq.labels, 2)[:-1]


def test_shine_through_in_pores_is_measured_and_undone(shine_labels, monkeypatch):
    # pores show 40 % of the material behind them: thresholds take pores over particles for the
    # solid (pore fraction biased low); the next slice shows what is behind each pixel
    slices, truth = render_two_phases(shine_labels, pore_back=0.4, rng=22)
    model = fit_phase_model(slices[:4].astype(np.float32), n_phases=2)
    labels, uncertain, context = decide_thresholds(slices, model, k=1)
    with monkeypatch.context() as m:
        m.setattr("processing.context._MIN_SHINE", np.inf)  # the same decision without the shine rule
        plain, plain_uncertain, _ = decide_thresholds(slices, model, k=1)
    bias_plain = 100 * (shares(plain[:-1], 2) - shares(truth, 2))
    bias = 100 * (shares(labels[:-1], 2) - shares(truth, 2))
    assert bias_plain[0] < -1.0, bias_plain  # the effect is there
    assert abs(bias[0]) < 0.8 * abs(bias_plain[0]), (bias, bias_plain)
    assert np.mean(labels[:-1] == truth) > np.mean(plain[:-1] == truth) + 0.002
    assert 0.2 < context.shine.share < 0.8
    # where a pore's expected shine and the solid's level are close, the slice says it is less sure
    assert uncertain.mean() > plain_uncertain.mean()


def test_no_shine_is_assumed_where_there_is_none(shine_labels, monkeypatch):
    slices, _ = render_two_phases(shine_labels, pore_back=0.0, rng=23)
    model = fit_phase_model(slices[:4].astype(np.float32), n_phases=2)
    labels, uncertain, context = decide_thresholds(slices, model, k=1)
    assert context.shine.n_high >= 500 and context.shine.share == 0.0
    with monkeypatch.context() as m:
        m.setattr("processing.context._MIN_SHINE", np.inf)
        plain, plain_uncertain, _ = decide_thresholds(slices, model, k=1)
    np.testing.assert_array_equal(labels, plain)
    np.testing.assert_array_equal(uncertain, plain_uncertain)


def test_the_decision_pre_filter_is_narrowed_by_the_average_along_z():
    # noisy slices, where a 3 px pre-filter separates the classes on one slice; the average over
    # three slices gives the same noise with a sqrt(3) times narrower one, and sharper edges
    labels = generate_microstructure((12, 272, 272), particle_radius_um=0.3, rng=31)
    acq = clean_render(labels, noise=30.0, blur=1.2, rng=32)
    model = fit_phase_model(acq.slices[:4].astype(np.float32), n_phases=3, smooth_px=3.0)

    def decide(slices, narrow=True):
        context = DepthContext(model, context_slices=1)
        if not narrow:
            context._decision_model = model  # the wide pre-filter of the calibration
        out = []
        for s in slices.astype(np.float32):
            out += context.push(s)
        out += context.flush()
        return np.stack([seg.labels for _, seg in out]), context

    narrowed, context = decide(acq.slices)
    wide, _ = decide(acq.slices, narrow=False)
    assert context._decision_model.smooth_px == pytest.approx(3.0 / np.sqrt(3), rel=0.15)
    truth = acq.labels
    assert np.mean(narrowed == truth) > np.mean(wide == truth) + 0.01
    bias = np.abs(shares(narrowed, 3) - shares(truth, 3)).max()
    assert bias < np.abs(shares(wide, 3) - shares(truth, 3)).max()
    # a repeated slice (no new noise to average) keeps the calibration's pre-filter
    _, repeated = decide(np.repeat(acq.slices[:1], 4, axis=0))
    assert repeated._decision_model.smooth_px == pytest.approx(3.0)

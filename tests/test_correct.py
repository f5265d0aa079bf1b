"""Corrections measured against the generator's truth (gain/offset, clean rendering, labels)."""

import json

import numpy as np
import pytest

from processing.correct import (
    CorrectionModel,
    fit_correction,
    flatten_background,
    remove_curtaining,
    stripe_amplitude,
)
from processing.errors import CalibrationError
from processing.segment import fit_phase_model
from processing.synthetic import generate_microstructure, render_acquisition


def _render(n, size, *, seed, radius_um=0.5, **options):
    """Raw slices and a noise-free, artefact-free rendering of the same labels (no drift)."""
    labels = generate_microstructure((n, size + 24, size + 24), particle_radius_um=radius_um, rng=seed)
    zero = np.zeros((n, 2))
    raw = render_acquisition(labels, drift_px=zero, field_shape=(size, size), rng=seed, **options)
    clean = render_acquisition(labels, drift_px=zero, field_shape=(size, size), rng=seed, noise_sigma=0,
                               curtaining=0, brightness_drift=0)
    return raw, clean


@pytest.mark.parametrize("radius_um, noise, seed", [(0.5, 16.0, 0), (0.3, 24.0, 1), (0.8, 8.0, 2)])
def test_brightness_drift_is_undone(radius_um, noise, seed):
    raw, _ = _render(24, 256, seed=seed, radius_um=radius_um, noise_sigma=noise, brightness_drift=0.04)
    assert np.ptp(raw.gain) > 0.05  # the drift is there
    model = fit_correction(raw.slices[:3])
    corrected = model.apply_stack(raw.slices)
    # applied map composed with the true one must be the same for every slice
    total_gain = np.array([c.gain for c in corrected]) * raw.gain
    total_offset = np.array([c.gain * o + c.offset for c, o in zip(corrected, raw.offset)])
    assert np.ptp(total_gain) < 0.04
    assert np.ptp(total_offset) < 6.0


@pytest.mark.parametrize("curtaining, noise, seed", [(0.1, 16.0, 3), (0.15, 8.0, 4)])
def test_curtaining_is_removed_without_removing_structure(curtaining, noise, seed):
    raw, clean = _render(4, 384, seed=seed, curtaining=curtaining, brightness_drift=0.0, noise_sigma=noise)
    model = fit_correction(raw.slices[:3], brightness=False)
    levels = np.array(model.levels)
    for k in range(4):
        before = raw.slices[k].astype(np.float32) - clean.slices[k]
        after = model.apply(raw.slices[k]).pixels - clean.slices[k]
        # stripe amplitude: std of the high-passed column mean of the error against the clean image
        amp_before, amp_after = stripe_amplitude(before), stripe_amplitude(after)
        assert amp_after < 0.3 * amp_before
        # the structure is kept: the error does not grow anywhere on average
        assert np.abs(after).mean() <= np.abs(before).mean()
    assert stripe_amplitude(model.apply(raw.slices[0]).pixels, levels=levels) < 0.5 * stripe_amplitude(
        raw.slices[0], levels=levels)


def test_curtaining_options_are_checked_and_one_band_works():
    img = np.random.default_rng(0).normal(100, 5, size=(64, 64)).astype(np.float32) + np.arange(64) % 3 * 10
    flat = remove_curtaining(img, band_px=None)
    assert stripe_amplitude(flat) < 0.2 * stripe_amplitude(img)
    with pytest.raises(ValueError, match="band_px"):
        remove_curtaining(img, band_px=2)


def test_background_flattening_removes_charging_shading():
    raw, clean = _render(1, 256, seed=4, curtaining=0.0, brightness_drift=0.0, noise_sigma=8.0)
    y, x = np.mgrid[0:256, 0:256] / 256.0
    shading = 40.0 * (x - 0.3) ** 2 + 25.0 * y * x - 10.0
    shaded = raw.slices[0] + shading
    model = fit_correction(raw.slices[:1], brightness=False, curtaining=None, background="polynomial")
    flat = flatten_background(shaded, levels=model.levels)
    err_before = shaded - clean.slices[0]
    err_after = flat - clean.slices[0]
    # the smooth component of the error (what a segmentation threshold sees) shrinks
    smooth = lambda e: float(np.std(e.reshape(16, 16, 16, 16).mean(axis=(1, 3))))  # noqa: E731
    assert smooth(err_after) < 0.25 * smooth(err_before)
    with pytest.raises(ValueError, match="order"):
        flatten_background(shaded, order=7)


def test_corrections_raise_label_accuracy():
    raw, _ = _render(20, 256, seed=5, radius_um=0.6, curtaining=0.2, brightness_drift=0.05)
    truth = raw.labels

    def accuracy(**options):
        model = fit_correction(raw.slices[:3], **options)
        corrected = [c.pixels for c in model.apply_stack(raw.slices)]
        phases = fit_phase_model(corrected[:3])
        labels = np.array([phases.segment(c).labels for c in corrected])
        return float((labels == truth).mean())

    plain = accuracy(brightness=False, curtaining=None)
    corrected = accuracy()
    assert corrected > plain + 0.01
    assert corrected >= 0.97


def test_model_round_trips_through_json_and_validates():
    model = CorrectionModel((40.0, 110.0, 190.0), band_px=64, background="polynomial")
    again = CorrectionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    with pytest.raises(ValueError, match="curtaining"):
        CorrectionModel((1.0, 2.0), curtaining="wavelet")
    with pytest.raises(ValueError, match="levels"):
        CorrectionModel((2.0, 1.0))


def test_flat_slices_cannot_calibrate():
    with pytest.raises(CalibrationError):
        fit_correction([np.full((32, 32), 7, np.uint8)])


def _curtaining_reference(image, levels, band_px, passes):
    """Whole-image two-pass curtaining removal written the plain way (gather of the nearest
    level, per-band column means, np.interp along y per column) to check the blocked one."""
    image = image.astype(np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    clip = np.min(np.diff(levels)) / 2
    h, w = image.shape
    n = h // band_px
    edges = np.linspace(0, h, n + 1).astype(int)
    centres = 0.5 * (edges[:-1] + edges[1:] - 1)
    for _ in range(passes):
        nearest = levels[np.argmin(np.abs(image[..., None] - levels), axis=-1)]
        res = np.clip(image - nearest, -clip, clip)
        profiles = np.array([res[edges[b]:edges[b + 1]].mean(axis=0) for b in range(n)])
        profiles -= np.median(profiles, axis=1, keepdims=True)
        stripes = np.array([np.interp(np.arange(h), centres, profiles[:, x]) for x in range(w)]).T
        image = image - stripes
    return image


def test_blocked_curtaining_matches_a_whole_image_reference():
    raw, _ = _render(1, 200, seed=6, curtaining=30.0)
    levels = fit_correction(raw.slices[:1]).levels
    image = raw.slices[0].astype(np.float32)
    fast = remove_curtaining(image, levels=levels, band_px=48, passes=2)
    reference = _curtaining_reference(image, levels, 48, 2)
    # float32 against float64: a pixel on a threshold may fall on the other side, nothing more
    assert np.quantile(np.abs(fast - reference), 0.999) < 0.01
    assert np.abs(fast - reference).max() < 2.0

"""The valid region: flat margins found, overrides, and the chain leaving non-sample out of labels
and calibration."""

import numpy as np
import pytest

from agent.config import ProcessingConfig
from processing.chain import SliceChain
from processing.errors import SliceShapeError
from processing.io import SliceImage
from processing.mask import RegionMask, flat_margins
from processing.phases import Phases
from processing.synthetic import generate_microstructure, render_acquisition


def _push(chain, slices):
    out = []
    for k, pixels in enumerate(slices):
        out.extend(chain.push(SliceImage(pixels, k + 1, f"s{k + 1}.tif", (0.02, 0.02), None)))
    return out + chain.flush()


@pytest.fixture(scope="module")
def plain():
    labels = generate_microstructure((12, 216, 216), particle_radius_um=0.5, rng=11)
    return render_acquisition(labels, drift_px=np.zeros((12, 2)), field_shape=(192, 192), rng=12)


def test_black_margins_and_a_circular_field_are_found_and_nothing_else(plain):
    s = plain.slices[0].copy()
    assert not flat_margins(s).any()  # noisy sample: nothing is flat
    s[:, :17] = 0  # black margin
    yy, xx = np.mgrid[:192, :192]
    outside = np.hypot(yy - 96, xx - 96) > 90
    s[outside] = 99  # the digital fill outside a circular field (not an extreme value)
    truth = outside | (xx < 17)
    found = flat_margins(s)
    from scipy import ndimage

    def boundary(region):
        return ndimage.binary_dilation(region, iterations=3) & ~ndimage.binary_erosion(region, iterations=3)

    edge = boundary(outside) | boundary(truth & ~outside)
    assert np.all(found[~edge] == truth[~edge])  # wrong only on a boundary
    assert np.mean(found == truth) > 0.995
    saturated = plain.slices[0].copy()
    saturated[:30, :30] = 255  # a saturated phase touching the border is sample
    assert not flat_margins(saturated).any()


def test_overrides_rows_rectangles_polygons_and_image():
    pixels = np.random.default_rng(0).normal(100, 10, (64, 80))
    include = np.ones((64, 80), bool)
    include[:, 70:] = False
    mask = RegionMask(exclude_rows=[(0, 5)], exclude_rectangles=[(10, 20, 30, 40)],
                      exclude_polygons=[[(40, 0), (63, 0), (63, 23)]], include=include)
    valid = mask.valid(pixels)
    assert not valid[:5].any() and not valid[10:20, 30:40].any() and not valid[:, 70:].any()
    assert not valid[60, 5] and valid[45, 20]  # inside / outside the triangle
    assert valid.sum() == pytest.approx(64 * 70 - 5 * 70 - 100 - 24 * 25 / 2 + 5, abs=30)
    with pytest.raises(SliceShapeError):
        mask.valid(pixels[:32])
    with pytest.raises(ValueError, match="exclude_rows"):
        RegionMask(exclude_rows=[(5, 2)])
    assert RegionMask(auto=False).is_trivial and not RegionMask().is_trivial


def test_black_margin_is_unassigned_and_not_counted_as_pore(plain):
    slices = plain.slices.copy()
    slices[:, :, :24] = 0  # a black margin on the left of every slice
    chain = SliceChain(phases=Phases(), calibration_slices=4, roi=None)
    done = _push(chain, slices)
    labels = np.array([p.labels for p in done])
    assert not labels[:, :, :24].any()
    assert chain.phase_check.ok, chain.phase_check.warnings
    inside = labels > 0
    truth = plain.labels[:, :, :][inside]
    assert abs(np.mean(labels[inside] == 1) - np.mean(truth == 1)) < 0.01


def test_auto_region_cap_is_neither_segmented_nor_calibrated():
    labels = generate_microstructure((14, 320, 320), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.4, rng=2)
    drift = np.cumsum(np.random.default_rng(3).normal(0, 0.8, (14, 2)), axis=0)
    drift[:, 0] = -np.abs(drift[:, 0])
    drift[0] = 0
    acq = render_acquisition(labels, field_shape=(256, 256), cap_px=40, drift_px=drift, rng=4)
    chain = SliceChain(phases=Phases(), calibration_slices=10, roi="auto", cap_rows=0)
    done = _push(chain, acq.slices)
    y0, y1 = chain.state()["nonsample_rows"]
    assert y0 == 0 and 38 <= y1 <= 42  # the whole cap (40 rows), not only the band registered on
    out = np.array([p.labels for p in done])
    assert not out[:, y0:y1].any()
    # the cap (its own grey level) did not enter the calibration: three classes, as named
    assert chain.phase_check.estimate.n_classes == 3 and chain.phase_check.ok


def test_a_z_invariant_band_below_the_top_is_sample():
    # a large particle that barely changes over the calibration slices looks z-invariant, but a
    # cap is on top of the section: a band away from the top edge stays sample
    labels = generate_microstructure((12, 320, 320), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.4, rng=2)
    labels[:, 120:170] = labels[0, 120:170]
    acq = render_acquisition(labels, field_shape=(256, 256), drift_px=np.zeros((12, 2)), rng=4)
    chain = SliceChain(phases=Phases(), calibration_slices=10, roi="auto")
    done = _push(chain, acq.slices)
    assert chain.roi is None and chain.state()["nonsample_rows"] is None  # whole slice, all sample
    out = np.array([p.labels for p in done])
    assert np.mean(out[:, 60:200] > 0) > 0.99


def test_resumed_chain_keeps_the_rows_it_found_not_sample():

    labels = generate_microstructure((12, 320, 320), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.4, rng=2)
    acq = render_acquisition(labels, field_shape=(256, 256), cap_px=40, drift_px=np.zeros((12, 2)), rng=4)
    chain = SliceChain(phases=Phases(), calibration_slices=10, roi="auto")
    done = _push(chain, acq.slices[:11])
    state = chain.state()
    assert state["nonsample_rows"] and state["phase_model"]["label_values"] == []
    config = ProcessingConfig(calibration_slices=10, roi="auto")
    resumed = SliceChain.resume(state, config=config, phases=Phases(), last_aligned=done[-1].grey,
                                last_shift_px=done[-1].drift.shift_px)
    y0, y1 = state["nonsample_rows"]
    (after,) = resumed.push(SliceImage(acq.slices[11], 12, "s12.tif", (0.02, 0.02), None)) + resumed.flush()
    assert not after.labels[y0:y1].any() and np.mean(after.labels[y1 + 5:] > 0) > 0.9

"""processing.scenarios: the randomised generator's truth, checked by construction on small cases."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from processing.io import read_slice, z_um_from_name
from processing.scenarios import random_scenario, read_truth, render_scenario, write_scenario
from processing.synthetic import generate_microstructure, render_acquisition

# A small, clean base: 40 slices of 96 px, no artefact unless a test asks for one.
CLEAN = dict(
    n_slices=40, shape=(96, 96), particle_radius_px=8.0, particle_shape="sphere", fractured=False,
    pore_model="field", noise_share=0.05, blur_px=0.7, brightness_ramp=0.0, brightness_walk=0.0,
    drop_slices=(), charging_slices=(), curtaining=0.0, curtain_angle_deg=0.0, pore_back=0.0, cap_px=0,
    fiducial=False, margins_px=(0, 0, 0, 0), circle_share=None, drift_px_per_slice=0.5, jump_probability=0.0,
    z_step_change=None, dropped_slices=(), magnification_change=None, dtype="uint8", layout="fei",
    phase_names=("pore", "electrolyte", "active"), fractions=(0.2, 0.35, 0.45), levels=(40.0, 110.0, 190.0),
)


def scenario(seed=0, **changes):
    return random_scenario(seed, **{**CLEAN, **changes})


def test_same_seed_same_scenario_and_ranges_respected():
    a, b = random_scenario(11), random_scenario(11)
    assert a == b and a != random_scenario(12)
    for seed in range(40):
        s = random_scenario(seed)
        assert 2 <= len(s.phase_names) <= 4 and abs(sum(s.fractions) - 1) < 1e-9
        assert 5 <= s.particle_radius_px <= 150 and 0.7 <= s.blur_px <= 2 and 0.05 <= s.noise_share <= 0.25
        assert 0.2 <= s.drift_px_per_slice <= 2 and abs(s.brightness_ramp) <= 0.3 and abs(s.curtain_angle_deg) <= 15
        assert all(k >= 15 for k in s.drop_slices + s.charging_slices)
        assert not set(s.drop_slices) & set(s.charging_slices)
        if s.z_step_change or s.dropped_slices:
            assert s.layout == "zeiss"  # z is only known from Atlas names
    with pytest.raises(ValueError, match="unknown Scenario fields"):
        random_scenario(0, colour="red")


def test_rendered_truth_fractions_and_grey_order():
    r = render_scenario(scenario(1, pore_back=0.0))
    t = r.truth
    assert r.slices.shape == (40, 96, 96) and t.labels.shape == (40, 96, 96)
    assert abs(t.fractions["active"] - 0.45) < 0.03 and abs(t.fractions["pore"] - 0.2) < 0.03
    # Label i+1 is phase_names[i], dark to bright: the mean grey of each label rises (drift undone).
    k = 5
    aligned = ndimage.shift(r.slices[k].astype(float), t.drift_px[k], order=1)
    inner = np.zeros_like(t.labels[k], dtype=bool)
    inner[8:-8, 8:-8] = True
    means = [aligned[(t.labels[k] == lab) & inner].mean() for lab in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    assert np.allclose(means, (40, 110, 190), atol=25)


def test_four_phases_and_swapped_grey_order():
    r = render_scenario(scenario(2, phase_names=("pore", "carbon-binder", "active", "electrolyte"),
                                 fractions=(0.15, 0.1, 0.45, 0.3), levels=(30.0, 80.0, 140.0, 200.0)))
    t = r.truth
    assert set(np.unique(t.labels)) <= {0, 1, 2, 3, 4}
    assert abs(t.fractions["carbon-binder"] - 0.1) < 0.03 and abs(t.fractions["active"] - 0.45) < 0.03
    # Carbon-binder hugs the particles: its mean distance to the active phase is below electrolyte's.
    dist = ndimage.distance_transform_edt(t.labels != 3)
    assert dist[t.labels == 2].mean() < dist[t.labels == 4].mean()


def test_two_phases_without_a_middle_phase():
    r = render_scenario(scenario(3, phase_names=("pore", "active"), fractions=(0.55, 0.45), levels=(40.0, 180.0)))
    assert set(np.unique(r.truth.labels)) == {0, 1, 2}  # 0: canvas not imaged after the drift
    assert np.all(r.truth.labels[:, 10:-10, 10:-10] > 0)


@pytest.mark.parametrize("shape_name", ["ellipsoid", "faceted"])
def test_particle_shapes_keep_the_fraction(shape_name):
    labels = generate_microstructure((20, 80, 80), spacing_um=0.02, particle_radius_um=0.2, particle_shape=shape_name,
                                     aspect=2.5, fractions={"pore": 0.1, "electrolyte": 0.5, "active": 0.4}, rng=4)
    assert abs((labels == 3).mean() - 0.4) < 0.01


@pytest.mark.parametrize("model", ["voids", "interface"])
def test_pore_models_keep_the_fraction_and_differ(model):
    common = dict(spacing_um=0.02, particle_radius_um=0.2, fractions={"pore": 0.15, "electrolyte": 0.45, "active": 0.4}, rng=5)
    labels = generate_microstructure((20, 80, 80), pore_model=model, **common)
    assert abs((labels == 1).mean() - 0.15) < 0.01
    near = ndimage.distance_transform_edt(labels != 3)
    field = generate_microstructure((20, 80, 80), pore_model="field", **common)
    near_field = ndimage.distance_transform_edt(field != 3)
    if model == "interface":  # pores hug the particles
        assert near[labels == 1].mean() < 0.7 * near_field[field == 1].mean()
    else:  # spherical voids of the pore size (0.1 um = 5 px; default half the particle radius)
        assert 4.0 <= ndimage.distance_transform_edt(labels == 1).max() <= 7.5


def test_cap_and_margins_are_not_sample():
    r = render_scenario(scenario(4, cap_px=24, fiducial=True, margins_px=(0, 10, 12, 0)))
    t = r.truth
    assert t.cap_px >= 24 and t.fiducial and np.all(t.labels[:, :t.cap_px] == 0)
    # Margins are black in every raw slice; on the canvas they sit where the drift moves them
    # (canvas pixel Y, X shows raw pixel Y - dy, X - dx).
    assert np.all(r.slices[:, -10:] == 0) and np.all(r.slices[:, :, :12] == 0)
    for k in range(0, 40, 13):
        dy, dx = np.rint(t.drift_px[k]).astype(int)
        assert np.all(t.labels[k, :, :12 + dx] == 0) and np.all(t.labels[k, 96 - 10 + dy:] == 0)
        assert np.all(t.labels[k, t.cap_px + 5:96 - 10 + dy - 5, 12 + dx + 5:-5] > 0)


def test_circular_field_is_not_sample():
    r = render_scenario(scenario(4, circle_share=1.0))
    t = r.truth
    yy, xx = np.mgrid[:96, :96]
    outside = np.hypot(yy - 47.5, xx - 47.5) > 48
    assert np.all(r.slices[:, outside] == 0)
    for k in range(0, 40, 13):
        # The circle moves with the drift on the canvas: well outside it is 0, well inside it sample.
        dy, dx = t.drift_px[k]
        r_canvas = np.hypot(yy - 47.5 - dy, xx - 47.5 - dx)
        assert np.all(t.labels[k][r_canvas > 49.5] == 0) and np.all(t.labels[k][r_canvas < 46] > 0)


def test_drops_are_darker_and_charging_brighter():
    s = scenario(5, n_slices=40, drop_slices=(20, 21), drop_factor=0.4, charging_slices=(30,))
    r = render_scenario(s)
    mean = r.slices.reshape(40, -1).mean(axis=1)
    normal = np.median(mean)
    assert np.all(mean[[20, 21]] < 0.6 * normal)
    assert mean[30] > 1.1 * normal
    assert np.all(np.abs(mean[[10, 25, 35]] / normal - 1) < 0.1)
    assert np.allclose(r.truth.gain[[20, 21]], 0.4, atol=0.05)


def test_slow_brightness_ramp():
    r = render_scenario(scenario(6, n_slices=60, brightness_ramp=-0.3, ramp_bow=False))
    mean = r.slices.reshape(60, -1).astype(float).mean(axis=1)
    assert 0.6 < mean[-5:].mean() / mean[:5].mean() < 0.8


@pytest.mark.parametrize("angle", [0.0, 12.0])
def test_curtains_run_at_their_angle(angle):
    # Uniform labels, strong curtains, no noise: the stripes are the only texture.
    labels = np.full((2, 200, 200), 2, dtype=np.uint8)
    acq = render_acquisition(labels, curtaining=1.0, curtain_angle_deg=angle, noise_sigma=0, blur_px=0,
                             brightness_drift=0, drift_px=np.zeros((2, 2)), field_shape=(160, 160), rng=7)
    grey = acq.slices[0].astype(float)
    grey -= grey.mean(axis=1, keepdims=True)
    # Correlate row 40 with row 120 over sideways shifts: the best shift is tan(angle) * 80.
    shifts = np.arange(-30, 31)
    a, b = grey[40, 40:120], grey[120]
    best = shifts[np.argmax([np.dot(a, b[40 + s:120 + s]) for s in shifts])]
    assert abs(best - np.tan(np.radians(angle)) * 80) <= 2


def test_write_scenario_truth_matches_what_was_written(tmp_path):
    s = scenario(8, n_slices=30, layout="zeiss", z_step_change=(10, 2.0), dropped_slices=(20,),
                 magnification_change=(25, 0.9))
    r = render_scenario(s)
    paths = write_scenario(r, tmp_path / "case")
    truth, back = read_truth(paths["truth"])
    assert back == s
    files = sorted(paths["acquisition"].rglob("*.tif"))
    assert len(files) == 30
    z_names = np.array([z_um_from_name(f.name) for f in files])
    assert np.allclose(z_names, truth.z_um, atol=1e-4)
    steps = np.diff(truth.z_um) / s.slice_spacing_um
    assert np.allclose(steps[:9], 1) and np.allclose(steps[10:19], 2) and np.isclose(steps[19], 3)
    assert np.isclose(truth.depth_um, truth.z_um[-1])
    first, last = read_slice(files[0]), read_slice(files[-1])
    assert np.allclose(first.pixel_size_um, s.pixel_size_um, rtol=1e-3)
    assert np.allclose(last.pixel_size_um, 0.9 * s.pixel_size_um, rtol=1e-3)
    assert np.array_equal(first.pixels, r.slices[0])
    assert np.array_equal(truth.labels, r.truth.labels) and np.allclose(truth.drift_px, r.truth.drift_px)
    text = paths["config"].read_text()
    assert 'names = ["pore", "electrolyte", "active"]' in text and "pixel" not in text


def test_tescan_config_states_the_spacing(tmp_path):
    paths = write_scenario(render_scenario(scenario(9, n_slices=20, layout="tescan")), tmp_path / "t")
    assert "slice_spacing_nm" in paths["config"].read_text()
    assert len(list(paths["acquisition"].glob("*-tif.hdr"))) == 20


def test_drift_truth_maps_neighbouring_slices_onto_each_other():
    # Big particles change little from one slice to the next: undoing the true drift of two
    # neighbours must match them far better than leaving them as they are.
    r = render_scenario(scenario(10, n_slices=20, drift_px_per_slice=2.0, particle_radius_px=40.0))
    d = r.truth.drift_px
    k = int(np.argmax(np.abs(np.diff(d, axis=0)).max(axis=1)))
    a, b = (ndimage.shift(r.slices[j].astype(float), d[j], order=1) for j in (k, k + 1))
    inner = (slice(20, -20), slice(20, -20))
    err_true = np.abs(a[inner] - b[inner]).mean()
    err_none = np.abs(r.slices[k][inner].astype(float) - r.slices[k + 1][inner]).mean()
    assert np.abs(d[k + 1] - d[k]).max() > 1 and err_true < 0.7 * err_none


def test_replace_keeps_scenario_frozen():
    s = scenario(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_slices = 5

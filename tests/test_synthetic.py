"""processing.synthetic: fractions, particle sizes, gradient, rendering and drift truth."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import ndimage
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from processing.io import read_fei_project_spacing_um, read_slice
from processing.synthetic import (
    generate_microstructure,
    render_acquisition,
    simulate_drift,
    write_acquisition,
)

SPACING = (0.05, 0.02, 0.02)


@pytest.mark.parametrize(
    "radius_um, polydispersity, seed",
    [(0.15, 0.0, 1), (0.4, 0.3, 2), (1.0, 0.5, 3)],
)
def test_fractions_match_targets(radius_um, polydispersity, seed):
    target = {"pore": 0.15, "electrolyte": 0.30, "active": 0.55}
    labels = generate_microstructure(
        (24, 96, 96), spacing_um=SPACING, fractions=target,
        particle_radius_um=radius_um, polydispersity=polydispersity, rng=seed,
    )
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {1, 2, 3}
    for label, name in enumerate(("pore", "electrolyte", "active"), start=1):
        assert abs((labels == label).mean() - target[name]) < 0.01, name


def test_seed_reproducible_and_seeds_differ():
    a = generate_microstructure((8, 48, 48), rng=7)
    assert np.array_equal(a, generate_microstructure((8, 48, 48), rng=7))
    assert not np.array_equal(a, generate_microstructure((8, 48, 48), rng=8))


@pytest.mark.parametrize("radius_um", [0.1, 0.25])
def test_particle_size_as_asked(radius_um):
    # Monodisperse balls in isotropic voxels. Inside one ball of radius R the
    # distance to its surface exceeds t on a share (1 - t/R)^3 of the voxels,
    # so the 95th percentile of the distance map is 0.63 R and its maximum R
    # (overlaps and the volume's faces move both a little).
    spacing = 0.02
    labels = generate_microstructure(
        (64, 64, 64), spacing_um=spacing, particle_radius_um=radius_um, polydispersity=0.0,
        fractions={"pore": 0.1, "electrolyte": 0.6, "active": 0.3}, rng=4,
    )
    active = labels == 3
    dist_um = ndimage.distance_transform_edt(active) * spacing
    assert 0.85 * radius_um < dist_um.max() < 1.3 * radius_um
    assert 0.5 * radius_um < np.percentile(dist_um[active], 95) < 0.8 * radius_um


def test_anisotropic_spacing_makes_round_particles():
    # One big particle: its extent in voxels follows 1 / spacing per axis.
    labels = generate_microstructure(
        (40, 100, 100), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.5,
        polydispersity=0.0, fractions={"pore": 0.0, "electrolyte": 0.9, "active": 0.1}, rng=0,
    )
    lab, n = ndimage.label(labels == 3)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    biggest = ndimage.find_objects(lab)[int(np.argmax(sizes))]
    extent_um = [(s.stop - s.start) * d for s, d in zip(biggest, (0.05, 0.02, 0.02))]
    # z is cut by the volume more easily: compare y and x, and z not larger.
    assert abs(extent_um[1] - extent_um[2]) < 0.25 * max(extent_um[1:])
    assert extent_um[0] <= max(extent_um[1:]) * 1.3


def test_gradient_makes_active_fraction_trend_with_z():
    labels = generate_microstructure((60, 96, 96), particle_radius_um=0.15, gradient=1.0, rng=5)
    per_slice = (labels == 3).mean(axis=(1, 2))
    slope = np.polyfit(np.arange(60), per_slice, 1)[0] * 59
    assert_allclose(slope, 0.45, atol=0.1)  # 0.225 -> 0.675
    assert abs((labels == 3).mean() - 0.45) < 0.02
    flat = generate_microstructure((60, 96, 96), particle_radius_um=0.15, gradient=0.0, rng=5)
    flat_slope = np.polyfit(np.arange(60), (flat == 3).mean(axis=(1, 2)), 1)[0] * 59
    assert abs(flat_slope) < 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (4, 4)}, "shape"),
        ({"fractions": {"pore": 0.5, "active": 0.5}}, "fractions"),
        ({"fractions": {"pore": 0.5, "electrolyte": 0.5, "active": 0.5}}, "fractions"),
        ({"particle_radius_um": 0}, "particle_radius_um"),
        ({"particle_radius_um": 0.01}, "one voxel"),
        ({"shape": (2000, 2000, 2000), "particle_radius_um": 0.03}, "particles"),
        ({"spacing_um": (0.05, -1, 0.02)}, "spacing_um"),
        ({"gradient": 3.0}, "gradient"),
    ],
)
def test_generate_refuses_bad_parameters(kwargs, match):
    args = {"shape": (4, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_microstructure(args.pop("shape"), **args)


def _column_labels(n_slices, size=140, seed=5):
    """Labels identical in every slice, so that slices differ only by the drift."""
    one = generate_microstructure((1, size, size), particle_radius_um=0.3, rng=seed)
    return np.repeat(one, n_slices, axis=0)


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 1), (np.uint16, 257)])
def test_phase_means_near_levels_before_noise(dtype, scale):
    labels = generate_microstructure((4, 120, 120), particle_radius_um=0.4, rng=1)
    acq = render_acquisition(
        labels, noise_sigma=0, curtaining=0, brightness_drift=0, blur_px=1.0,
        drift_px_per_slice=0.5, jump_probability=0, dtype=dtype, rng=2,
    )
    assert acq.slices.dtype == dtype
    assert acq.labels.shape == acq.slices.shape
    # Away from phase boundaries (blur), each phase sits at its level.
    aligned = np.stack([ndimage.shift(s.astype(float), d, order=1) for s, d in zip(acq.slices, acq.drift_px)])
    for label, level in zip((1, 2, 3), (45, 115, 195)):
        inner = ndimage.binary_erosion(acq.labels == label, structure=np.ones((1, 3, 3)), iterations=3)
        inner[:, :6], inner[:, -6:], inner[:, :, :6], inner[:, :, -6:] = False, False, False, False
        assert_allclose(aligned[inner].mean(), level * scale, rtol=0.01)
    assert acq.levels == tuple(float(v * scale) for v in (45, 115, 195))


def test_noise_brightness_and_curtaining_are_there():
    labels = _column_labels(30)
    acq = render_acquisition(labels, noise_sigma=16, curtaining=0.3, brightness_drift=0.02,
                             drift_px_per_slice=0, jump_probability=0, blur_px=0, rng=3)
    electrolyte = acq.labels[0] == 2
    k = 10
    residual = acq.slices[k].astype(float) - (acq.gain[k] * 115 + acq.offset[k])
    # Noise plus stripes: more than the noise alone, and the column means vary.
    assert residual[electrolyte].std() > 16
    column_means = np.nanmean(np.where(electrolyte, residual, np.nan), axis=0)
    assert np.nanstd(column_means) > 4
    assert np.ptp(acq.gain) > 0.01 and acq.gain[0] == 1.0


def test_pore_back_brightens_pores_with_material_behind():
    labels = np.full((3, 60, 60), 2, np.uint8)
    labels[0, :, :30] = 1          # pore in the first slice, left half
    labels[1:, :, :] = 3           # bright active material behind it
    quiet = dict(noise_sigma=0, curtaining=0, brightness_drift=0, blur_px=0, drift_px=np.zeros((3, 2)),
                 field_shape=(40, 40), rng=0)
    plain = render_acquisition(labels, **quiet).slices[0].astype(float)
    shine = render_acquisition(labels, pore_back=0.5, **quiet).slices[0].astype(float)
    pore = render_acquisition(labels, **quiet).labels[0] == 1
    assert_allclose(plain[pore], 45)
    assert_allclose(shine[pore], 0.5 * 45 + 0.5 * 195, atol=1)
    assert np.array_equal(shine[~pore], plain[~pore])


def test_charging_is_smooth_and_shot_noise_grows_with_level():
    labels = np.full((2, 80, 80), 2, np.uint8)
    labels[:, :, 40:] = 3
    quiet = dict(noise_sigma=0, curtaining=0, brightness_drift=0, blur_px=0, drift_px=np.zeros((2, 2)),
                 field_shape=(64, 64), rng=1)
    charged = render_acquisition(labels, charging=0.2, **quiet).slices[0].astype(float)
    left = charged[:, :20]  # all electrolyte: only the background varies
    assert left.std() > 3
    assert np.abs(np.diff(left, axis=1)).mean() < 1.5  # smooth, not noise
    shot = render_acquisition(labels, counts_at_max=100, **quiet).slices[0].astype(float)
    dark, bright = shot[:, 4:28], shot[:, 36:60]
    # Poisson: variance proportional to the level (level * 195 / counts).
    assert_allclose(bright.var(), 195 * 195 / 100, rtol=0.25)
    assert_allclose(dark.var(), 115 * 195 / 100, rtol=0.25)


def test_drift_truth_matches_phase_correlation():
    labels = _column_labels(10, size=200)
    acq = render_acquisition(labels, noise_sigma=0, curtaining=0, brightness_drift=0,
                             drift_px_per_slice=1.5, jump_probability=0.3, jump_px=8, rng=11)
    assert acq.drift_px.shape == (10, 2)
    assert np.all(acq.drift_px[0] == 0)
    assert np.abs(acq.drift_px).max() > 3  # the walk moved
    win = window("hann", acq.slices.shape[1:])

    def prep(a):
        a = a.astype(float)
        return (a - a.mean()) * win

    for k in range(1, 10):
        shift, _, _ = phase_cross_correlation(prep(acq.slices[0]), prep(acq.slices[k]), upsample_factor=100)
        assert_allclose(shift, acq.drift_px[k], atol=0.1)


def test_shifting_by_drift_maps_slice_onto_canvas():
    labels = _column_labels(6)
    acq = render_acquisition(labels, noise_sigma=0, curtaining=0, brightness_drift=0, blur_px=1.0,
                             drift_px_per_slice=2.0, jump_probability=0, rng=12)
    margin = int(np.ceil(np.abs(acq.drift_px).max())) + 4
    inner = (slice(margin, -margin), slice(margin, -margin))
    for k in range(1, 6):
        aligned = ndimage.shift(acq.slices[k].astype(float), acq.drift_px[k], order=3)
        assert np.abs(aligned[inner] - acq.slices[0][inner]).mean() < 2.0


def test_simulate_drift_steps_and_jumps():
    walk = simulate_drift(4001, drift_px_per_slice=1.2, jump_probability=0, rng=0)
    assert_allclose(np.diff(walk, axis=0).std(axis=0), 1.2, rtol=0.05)
    jumps = simulate_drift(200, drift_px_per_slice=0, jump_probability=1.0, jump_px=15, rng=0)
    assert_allclose(np.hypot(*np.diff(jumps, axis=0).T), 15)


def test_field_of_view_needs_margin():
    labels = _column_labels(3, size=64)
    with pytest.raises(ValueError, match="margin"):
        render_acquisition(labels, field_shape=(60, 60), drift_px=np.array([[0, 0], [5, 0], [10, 0]]))
    acq = render_acquisition(labels, field_shape=(24, 30), drift_px=np.array([[0, 0], [5, 0], [10, 0]]), rng=0)
    assert acq.slices.shape == (3, 24, 30)
    with pytest.raises(ValueError, match="field of view"):
        render_acquisition(labels, drift_px=np.array([[0, 0], [5, 0], [30, 0]]))


def test_render_refuses_labels_outside_levels():
    with pytest.raises(ValueError, match="labels"):
        render_acquisition(np.zeros((2, 40, 40), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        render_acquisition(np.ones((2, 40, 40), np.uint8), dtype=np.float32)


@pytest.mark.parametrize("layout", ["fei", "zeiss"])
def test_write_acquisition_round_trip(tmp_path, layout):
    labels = generate_microstructure((5, 72, 72), particle_radius_um=0.3, rng=1)
    acq = render_acquisition(labels, drift_px_per_slice=1.0, rng=2)
    paths = write_acquisition(acq, tmp_path, layout=layout, pixel_size_um=0.02, slice_spacing_um=0.05)
    assert len(paths) == 5
    if layout == "fei":
        assert paths[0] == tmp_path / "Images" / "SEM Image" / "SEM Image - SliceImage - 001.tif"
        assert_allclose(read_fei_project_spacing_um(tmp_path), 0.05)
    else:
        assert paths[2] == tmp_path / "SESI" / "slice_00003_z=0.1000um.tif"
    for k, path in enumerate(paths):
        s = read_slice(path)
        assert s.index == k + 1
        assert np.array_equal(s.pixels, acq.slices[k])
        assert_allclose(s.pixel_size_um, (0.02, 0.02))
        if layout == "zeiss":
            assert_allclose(s.z_um, 0.05 * k)


def test_zeiss_z_jitter_in_names(tmp_path):
    acq = render_acquisition(_column_labels(6, size=60), drift_px_per_slice=0, jump_probability=0, rng=0)
    paths = write_acquisition(acq, tmp_path, layout="zeiss", slice_spacing_um=0.05, z_jitter_um=0.01, rng=1)
    z = np.array([read_slice(p).z_um for p in paths])
    assert z[0] == 0 and np.all(np.diff(z) > 0)
    assert np.abs(z - 0.05 * np.arange(6)).max() > 1e-3  # non-uniform, as Atlas measures it
    with pytest.raises(ValueError, match="z_jitter_um"):
        write_acquisition(acq, tmp_path, layout="zeiss", slice_spacing_um=0.05, z_jitter_um=0.03)


@pytest.mark.slow
def test_large_acquisition_with_default_artefacts():
    # The size issue 3 measures on: 300 slices, default drift with jumps.
    labels = generate_microstructure((300, 512, 512), particle_radius_um=0.8, polydispersity=0.4, rng=0)
    for label, target in zip((1, 2, 3), (0.2, 0.35, 0.45)):
        assert abs((labels == label).mean() - target) < 0.005
    acq = render_acquisition(labels, rng=0)
    h, w = acq.slices.shape[1:]
    assert acq.slices.shape[0] == 300 and min(h, w) >= 16
    assert np.all(np.abs(acq.drift_px) <= (np.array([512, 512]) - [h, w]) / 2)
    for label, target in zip((1, 2, 3), (0.2, 0.35, 0.45)):
        assert abs((acq.labels == label).mean() - target) < 0.03


def test_shared_fixtures_are_consistent(small_acquisition, small_fei_project, make_acquisition):
    files = sorted((small_fei_project / "Images" / "SEM Image").glob("*.tif"))
    assert len(files) == len(small_acquisition.slices) == 16
    assert np.array_equal(read_slice(files[-1]).pixels, small_acquisition.slices[-1])
    assert small_acquisition.slices.shape == small_acquisition.labels.shape == (16, 128, 128)
    acq = make_acquisition((4, 100, 100), dtype=np.uint16, drift_px_per_slice=0.5, jump_probability=0)
    assert acq.slices.dtype == np.uint16 and acq.slices.shape[0] == 4

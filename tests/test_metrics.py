"""processing.metrics against analytic shapes and independent implementations."""

import json
import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage
from skimage import measure

from processing.metrics import (
    active_electrolyte_ratio,
    central_block,
    connected_share,
    count_volume,
    counts_metrics,
    geometric_tortuosity,
    inner_porosity_share,
    interconnected_share,
    local_thickness,
    local_thickness_summary,
    slab_counts,
    table1,
    targeted_volume_ratio,
    tortuosity_factor,
    volume_fractions,
)
from processing.phases import Phases

PORE, ELECTROLYTE, ACTIVE = 1, 2, 3


def ball(shape, centre_um, radius_um, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_um)) < radius_um**2


def composite(shape, rng, *, radius=5.0):
    """Random 3-phase composite: spheres of active in an electrolyte/pore matrix."""
    labels = np.full(shape, ELECTROLYTE, np.uint8)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    labels[field > np.quantile(field, 0.6)] = PORE
    n = int(0.45 * np.prod(shape) / (4 / 3 * np.pi * radius**3))
    zz, yy, xx = np.indices(shape)
    for c in rng.uniform(0, 1, (n, 3)) * shape:
        labels[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < radius**2] = ACTIVE
    return labels


def sphere_area(spacing, radius_um=6.0):
    shape = tuple(int(2 * radius_um / s) + 8 for s in spacing)
    centre = [(n / 2 + 0.31) * s for n, s in zip(shape, spacing)]
    labels = np.where(ball(shape, centre, radius_um, spacing), ACTIVE, ELECTROLYTE).astype(np.uint8)
    counts = slab_counts(labels, n_values=4)
    return counts.interface_areas_um2(spacing, edge_correction=False)[ACTIVE, ELECTROLYTE], labels


# -- surfaces -----------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(0.25, 0.25, 0.25), (0.5, 0.2, 0.25), (0.1, 0.3, 0.3)])
def test_sphere_area_within_2_percent_at_any_spacing(spacing):
    area, _ = sphere_area(spacing)
    assert_allclose(area, 4 * np.pi * 6.0**2, rtol=0.02)


def test_areas_agree_with_marching_cubes():
    # Marching cubes of a binary mask follows the staircase (+8 % on a sphere); on the
    # mask smoothed by one voxel it is within ~1 % on spheres: the reference here.
    labels = composite((48, 48, 48), np.random.default_rng(0))
    areas = slab_counts(labels, n_values=4).interface_areas_um2((1, 1, 1), edge_correction=False)
    for label in (ACTIVE,):
        smooth = ndimage.gaussian_filter((labels == label).astype(np.float32), 1.0)
        verts, faces, _, _ = measure.marching_cubes(np.pad(smooth, 1, mode="edge"), 0.5)
        assert_allclose(areas[label].sum(), measure.mesh_surface_area(verts, faces), rtol=0.03)


def test_axis_aligned_plane_is_not_overestimated():
    # Voxel-face counting with the isotropic 2/3 factor would give 2/3 here.
    labels = np.full((20, 20, 20), ELECTROLYTE, np.uint8)
    labels[:, :10] = ACTIVE
    area = slab_counts(labels, n_values=4).interface_areas_um2((1, 1, 1))[ACTIVE, ELECTROLYTE]
    assert_allclose(area, 400, rtol=0.1)


def test_packed_spheres_area_per_volume():
    spacing, period, radius = (0.2, 0.2, 0.2), 6.0, 2.5
    n = int(round(period / spacing[0]))
    cell = ball((n, n, n), (period / 2,) * 3, radius, spacing)
    # Border at a generic place of the lattice: the density estimator assumes the box
    # cuts the structure at random (a border running through the gaps only would bias it).
    labels = np.roll(np.where(np.tile(cell, (2, 2, 2)), ACTIVE, ELECTROLYTE).astype(np.uint8), (5, 8, 11), (0, 1, 2))
    doc = counts_metrics(count_volume(labels), spacing_um=spacing)
    expected = 4 * np.pi * radius**2 / period**3
    assert_allclose(doc["surface_area_per_cell_volume_um-1"]["active"], expected, rtol=0.02)
    assert_allclose(doc["surface_area_per_phase_volume_um-1"]["active"],
                    expected / (labels == ACTIVE).mean(), rtol=0.02)


def test_coverage_of_a_slab_half_in_electrolyte_half_in_pore():
    labels = np.full((16, 30, 16), ELECTROLYTE, np.uint8)
    labels[:, 10:20] = ACTIVE
    labels[:, 20:] = PORE
    doc = counts_metrics(count_volume(labels), spacing_um=(0.3, 0.1, 0.2))
    assert_allclose(doc["coverage_share"]["active"], 0.5, atol=1e-12)
    assert set(doc["coverage_share"]) == {"pore", "active"}


def test_interfaces_with_unassigned_do_not_count():
    labels = np.full((10, 10, 10), ACTIVE, np.uint8)
    labels[:, :, 5:] = 0
    doc = counts_metrics(count_volume(labels), spacing_um=(1, 1, 1))
    assert doc["surface_area_per_cell_volume_um-1"]["active"] == 0
    assert doc["coverage_share"]["active"] is None
    assert doc["volume_fraction"]["unassigned"] == 0.5


def test_slab_counts_add_up_exactly():
    labels = composite((37, 30, 28), np.random.default_rng(1))
    full = slab_counts(labels, n_values=4)
    parts = None
    for z0, z1 in [(0, 5), (5, 6), (6, 20), (20, 37)]:
        part = slab_counts(labels[z0:z1], previous_slice=labels[z0 - 1] if z0 else None, n_values=4)
        parts = part if parts is None else parts + part
    assert_array_equal(parts.voxels, full.voxels)
    assert_array_equal(parts.crossings, full.crossings)
    assert_array_equal(parts.pairs, full.pairs)
    assert parts.n_slices == 37
    assert_array_equal(count_volume(labels, threads=2).crossings, full.crossings)


# -- volume fractions ---------------------------------------------------------------------

def test_volume_fractions_exact():
    labels = composite((20, 24, 22), np.random.default_rng(2))
    labels[0, :3] = 0
    n = np.bincount(labels.ravel(), minlength=4)
    counts = n / (labels.size - n[0])  # phases: shares of the assigned voxels
    fr = volume_fractions(labels)
    assert fr == {"pore": counts[1], "electrolyte": counts[2], "active": counts[3], "unassigned": n[0] / labels.size}
    assert_allclose(fr["pore"] + fr["electrolyte"] + fr["active"], 1.0)
    assert counts_metrics(count_volume(labels), spacing_um=(1, 2, 3))["volume_fraction"] == fr
    assert_allclose(active_electrolyte_ratio(fr), counts[3] / (counts[2] + counts[3]))


def test_targeted_volume_ratio_of_the_paper():
    ratio = targeted_volume_ratio({"active": 0.7, "electrolyte": 0.3}, {"active": 4.6, "electrolyte": 1.88})
    assert_allclose(ratio["active"], (70 / 4.6) / (70 / 4.6 + 30 / 1.88))
    assert_allclose(ratio["active"] + ratio["electrolyte"], 1)
    three = targeted_volume_ratio({"nmc": 90, "cbd": 5, "lps": 5}, {"nmc": 4.6, "cbd": 1.5, "lps": 1.88})
    assert_allclose(three["cbd"], (5 / 1.5) / (90 / 4.6 + 5 / 1.5 + 5 / 1.88))
    with pytest.raises(ValueError, match="densities_g_cm3"):
        targeted_volume_ratio({"active": 1, "electrolyte": 1}, {"active": 0, "electrolyte": 1})
    with pytest.raises(ValueError, match="densities_g_cm3"):
        targeted_volume_ratio({"active": 1, "electrolyte": 1}, {"active": 4.6})


# -- local thickness ----------------------------------------------------------------------

@pytest.mark.parametrize("width", [5, 9, 15])
def test_slab_local_thickness_equals_its_width(width):
    mask = np.zeros((12, 40, 14), bool)
    mask[:, 10:10 + width] = True
    lt = local_thickness(mask, spacing_um=(0.5, 0.5, 0.5))
    assert_allclose(lt[mask], width * 0.5, rtol=1e-6)
    assert np.all(lt[~mask] == 0)


def test_local_thickness_matches_brute_force_definition():
    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.standard_normal((28, 30, 26)), 2.5) > 0
    spacing = (0.3, 0.2, 0.25)
    lt = local_thickness(mask, spacing_um=spacing, voxel_correction=False)
    # Definition: diameter of the largest ball (centre on a voxel, radius = distance to
    # the nearest non-phase voxel centre) containing the voxel.
    dist = ndimage.distance_transform_edt(mask, sampling=spacing)
    brute = np.zeros(mask.shape)
    grid = np.indices(mask.shape).reshape(3, -1).T * spacing
    for c in np.argwhere(mask):
        inside = np.sum((grid - c * spacing) ** 2, axis=1) < dist[tuple(c)] ** 2
        flat = brute.reshape(-1)
        flat[inside] = np.maximum(flat[inside], 2 * dist[tuple(c)])
    close = np.isclose(lt[mask], brute[mask], rtol=1e-5)
    assert close.mean() > 0.97
    assert_allclose(lt[mask].mean(), brute[mask].mean(), rtol=0.005)


def test_local_thickness_agrees_with_porespy():
    ps = pytest.importorskip("porespy")
    rng = np.random.default_rng(4)
    field = ndimage.gaussian_filter(rng.standard_normal((64, 64, 64)), 4)
    mask = field > np.quantile(field, 0.6)
    ours = local_thickness(mask, spacing_um=(1, 1, 1))
    theirs = 2 * ps.filters.local_thickness(mask)  # porespy reports the radius
    assert_allclose(ours[mask].mean(), theirs[mask].mean(), rtol=0.03)
    assert np.corrcoef(ours[mask], theirs[mask])[0, 1] > 0.95


def test_local_thickness_same_object_at_two_spacings():
    stats = []
    for spacing in [(0.1, 0.1, 0.1), (0.15, 0.08, 0.1)]:
        shape = tuple(int(6.0 / s) for s in spacing)
        mask = ball(shape, (3.0, 2.5, 2.5), 2.0, spacing) | ball(shape, (3.0, 2.5, 4.8), 1.0, spacing)
        stats.append(local_thickness_summary(mask, spacing_um=spacing, max_samples=10**7))
    # Both balls measure their diameter up to the sampling of the coarser grid.
    assert_allclose(stats[0]["mean"], stats[1]["mean"], rtol=0.04)
    assert_allclose(stats[0]["std"], stats[1]["std"], rtol=0.15)


def test_sampled_summary_close_to_full_map():
    mask = ndimage.gaussian_filter(np.random.default_rng(5).standard_normal((48, 64, 64)), 3) > 0
    full = local_thickness(mask, spacing_um=(1, 1, 1))[mask]
    summary = local_thickness_summary(mask, spacing_um=(1, 1, 1), max_samples=20_000)
    assert summary["step"] > 1
    assert_allclose(summary["mean"], full.mean(), rtol=0.02)
    assert_allclose(sum(summary["histogram"]["share"]), 1.0)


# -- tortuosity ---------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(1, 1, 1), (0.3, 0.7, 0.2)])
def test_straight_channel_tortuosity_is_one(spacing):
    mask = np.zeros((9, 25, 11), bool)
    mask[3:6, :, 4:8] = True
    mask[0, 3:10, 0:3] = True  # a dead end touching y = 0 only
    tau = geometric_tortuosity(mask, spacing_um=spacing, axis=1)
    assert_allclose([tau.forward, tau.backward], 1.0, atol=1e-6)  # float32 distances
    assert tau.excluded_share_forward == 0.0
    assert tau.excluded_share_backward == 0.0


def inclined_channel(spacing, angle_deg=30.0, height_um=40.0, width_um=4.0):
    """Band at `angle_deg` from y in the y-x plane; returns mask and exact mean path."""
    dz, dy, dx = spacing
    ny, nx = int(round(height_um / dy)), int(round((height_um * 0.7 + 3 * width_um) / dx))
    yy, xx = np.meshgrid((np.arange(ny) + 0.5) * dy, (np.arange(nx) + 0.5) * dx, indexing="ij")
    t = np.tan(np.deg2rad(angle_deg))
    band_w = width_um / np.cos(np.deg2rad(angle_deg))
    x_left = width_um + yy * t
    inside = (xx >= x_left) & (xx < x_left + band_w)
    mask = np.zeros((int(round(2.0 / dz)), ny, nx), bool)
    mask[:] = inside
    # From x0 = a + u on the face y = 0 the shortest straight path inside the band reaches
    # y = H at the band's lower edge x = a + H t (H t > band width here).
    height = ny * dy
    u = np.linspace(0, band_w, 20001)
    exact = np.mean(np.hypot(height * t - u, height)) / height
    return mask, exact


@pytest.mark.parametrize("spacing", [(0.5, 0.25, 0.25), (0.5, 0.4, 0.2)])
def test_inclined_channel_tortuosity_matches_path_length(spacing):
    mask, exact = inclined_channel(spacing)
    tau = geometric_tortuosity(mask, spacing_um=spacing, axis=1)
    assert_allclose(tau.forward, exact, rtol=0.015)
    assert_allclose(tau.backward, exact, rtol=0.015)


def test_zigzag_channel_tortuosity():
    # Two straight legs joined at a corner: shortest paths hug the inner corner.
    mask = np.zeros((3, 60, 60), bool)
    mask[:, 0:31, 5:9] = True
    mask[:, 27:31, 5:45] = True
    mask[:, 27:60, 41:45] = True
    tau = geometric_tortuosity(mask, spacing_um=(1, 1, 1), axis=1)
    # inner-corner path: start face -> (x=8.5, y=26.5) -> (x=41, y=30.5) -> far face, per column
    xs = np.arange(5, 9)
    first = 26.5 - (-0.5)
    middle = np.hypot(41 - 0.5 - xs.clip(max=8.5), 4.0)
    expected = np.mean(first + middle + (59.5 - 30.5)) / 60
    assert tau.forward == pytest.approx(expected, rel=0.04)
    assert tau.forward > 1.4


def test_non_percolating_phase():
    mask = np.zeros((5, 20, 5), bool)
    mask[:, :10] = True
    tau = geometric_tortuosity(mask, spacing_um=(1, 1, 1))
    assert tau.forward is None and tau.backward is None
    assert tau.excluded_share_forward == 1.0
    assert tau.excluded_share_backward is None


# -- connectivity -------------------------------------------------------------------------

def test_two_disconnected_parts_connected_share():
    mask = np.zeros((10, 30, 10), bool)
    mask[:, 0:8] = True              # touches the current collector (y = 0): 800 voxels
    mask[2:6, 15:20, 2:7] = True     # floating particle: 100 voxels
    mask[0, 7, 0] = False
    assert connected_share(mask, axis=1, face=0) == pytest.approx(799 / 899)
    assert connected_share(mask, axis=1, face=-1) == 0.0
    assert interconnected_share(mask) == pytest.approx(799 / 899)


def test_connectivity_against_scipy_label():
    mask = ndimage.gaussian_filter(np.random.default_rng(6).standard_normal((30, 40, 35)), 1.5) > 0.3
    lab, n = ndimage.label(mask)  # 6-connectivity, as ours
    sizes = np.bincount(lab.ravel())
    touching = np.unique(lab[:, 0])
    touching = touching[touching > 0]
    assert connected_share(mask) == pytest.approx(sizes[touching].sum() / mask.sum())
    assert interconnected_share(mask) == pytest.approx(sizes[1:].max() / mask.sum())


def test_inner_porosity():
    labels = np.full((20, 20, 20), ELECTROLYTE, np.uint8)
    labels[2:18, 2:18, 2:18] = ACTIVE
    labels[5:8, 5:8, 5:8] = PORE        # enclosed by active: 27
    labels[10:12, 10:12, 10:12] = PORE  # enclosed: 8
    labels[15:18, 5:7, 5:7] = PORE      # opens onto the electrolyte: 12
    labels[0, 0, :4] = PORE             # touches the border: 4
    assert inner_porosity_share(labels, pore_label=PORE, active_label=ACTIVE) == pytest.approx(35 / 51)
    labels[labels == PORE] = ACTIVE
    assert inner_porosity_share(labels, pore_label=PORE, active_label=ACTIVE) is None


# -- table1 -------------------------------------------------------------------------------

def test_table1_document_fields_and_json():
    labels = composite((24, 40, 32), np.random.default_rng(7))
    doc = table1(labels, spacing_um=(0.05, 0.02, 0.02))
    assert set(doc) == {
        "depth_slices", "spacing_um", "volume_fraction", "tortuosity_geometric", "local_thickness_um",
        "connected_share", "interconnected_share", "surface_area_per_cell_volume_um-1",
        "surface_area_per_phase_volume_um-1", "coverage_share", "inner_porosity_share", "face_valid_share",
        "sampling_error",
    }
    assert doc["face_valid_share"] == 1.0
    # one chunk, every voxel measured: nothing sampled
    assert doc["sampling_error"]["tortuosity_geometric"]["electrolyte"] == {"y+": 0.0, "y-": 0.0}
    assert doc["depth_slices"] == 24 and doc["spacing_um"] == [0.05, 0.02, 0.02]
    assert set(doc["tortuosity_geometric"]["electrolyte"]) == {"y+", "y-"}
    assert set(doc["local_thickness_um"]["electrolyte"]) == {"mean", "std"}
    assert json.loads(json.dumps(doc)) == doc
    assert 0 <= doc["connected_share"]["active"] <= 1
    details = table1(labels, spacing_um=(0.05, 0.02, 0.02), details=True, transport_axis=2)
    assert set(details["tortuosity_geometric"]["electrolyte"]) == {"x+", "x-"}
    assert "targeted_volume_ratio" not in details  # no composition given: no study-specific constant
    composed = table1(labels, spacing_um=(0.05, 0.02, 0.02), composition={
        "weight_fractions": {"active": 0.7, "electrolyte": 0.3}, "densities_g_cm3": {"active": 4.6, "electrolyte": 1.88}})
    assert composed["targeted_volume_ratio"]["active"] == pytest.approx(0.488, abs=1e-3)


def test_table1_expensive_metrics_on_a_bounded_block():
    labels = composite((20, 30, 40), np.random.default_rng(9))
    assert central_block(labels.shape, 6000, keep_axis=1) == (slice(5, 15), slice(None), slice(10, 30))
    doc = table1(labels, spacing_um=(1, 1, 1), expensive_max_voxels=6000)
    ref = table1(np.ascontiguousarray(labels[5:15, :, 10:30]), spacing_um=(1, 1, 1))
    assert doc["tortuosity_geometric"] == ref["tortuosity_geometric"]
    assert doc["local_thickness_um"] == ref["local_thickness_um"]
    assert doc["volume_fraction"] == volume_fractions(labels)


def test_table1_with_custom_phase_names():
    phases = Phases(names=("void", "lps", "nmc"), roles={"pore": "void", "electrolyte": "lps", "active": "nmc"})
    labels = composite((16, 24, 20), np.random.default_rng(8))
    doc = table1(labels, spacing_um=(1, 1, 1), phases=phases)
    assert set(doc["volume_fraction"]) == {"void", "lps", "nmc", "unassigned"}
    assert set(doc["connected_share"]) == {"nmc"}


def test_validation_names_parameter_and_value():
    with pytest.raises(ValueError, match="spacing_um"):
        table1(np.ones((2, 2, 2), np.uint8), spacing_um=(1, 0, 1))
    with pytest.raises(TypeError, match="uint8"):
        table1(np.ones((2, 2, 2), np.int32), spacing_um=(1, 1, 1))
    with pytest.raises(ValueError, match="transport_axis"):
        table1(np.ones((2, 2, 2), np.uint8), spacing_um=(1, 1, 1), transport_axis=3)
    with pytest.raises(ValueError, match="value 7"):
        slab_counts(np.full((2, 2, 2), 7, np.uint8), n_values=4)
    with pytest.raises(ValueError, match="step"):
        local_thickness(np.ones((2, 2, 2), bool), spacing_um=(1, 1, 1), step=0)


# -- valid region: unassigned borders change nothing ---------------------------------------

def _flat(doc):
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        elif isinstance(value, float):
            out[prefix] = value

    for field in ("volume_fraction", "surface_area_per_cell_volume_um-1", "surface_area_per_phase_volume_um-1",
                  "coverage_share", "tortuosity_geometric", "local_thickness_um", "connected_share",
                  "interconnected_share", "inner_porosity_share", "tortuosity_factor"):
        walk(field, doc[field])
    out.pop("volume_fraction.unassigned")
    return out


def _embed(labels, pads):
    """`labels` inside a canvas of unassigned voxels, pads ((z0, z1), (y0, y1), (x0, x1))."""
    return np.pad(labels, pads)


@pytest.fixture(scope="module")
def bordered():
    labels = composite((28, 56, 40), np.random.default_rng(11), radius=4.0)
    kwargs = dict(spacing_um=(0.3, 0.2, 0.2), tortuosity_factor_phases=("electrolyte",), threads=2)
    return labels, kwargs, table1(labels, **kwargs)


@pytest.mark.parametrize("pads", [((10, 12), (40, 10), (17, 31)), ((0, 0), (25, 0), (0, 0)), ((0, 0), (0, 33), (0, 0))])
def test_unassigned_rows_on_the_faces_change_no_metric(bordered, pads):
    labels, kwargs, ref = bordered
    doc = table1(_embed(labels, pads), **kwargs)
    want, got = _flat(ref), _flat(doc)
    assert set(got) == set(want) and len(want) > 20
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=0.01), key
    assert ref["connected_share"]["active"] > 0.5 and ref["tortuosity_geometric"]["electrolyte"]["y+"] > 1
    assert doc["volume_fraction"]["unassigned"] == pytest.approx(1 - labels.size / doc_size(pads, labels))
    assert doc["face_valid_share"] == pytest.approx(labels.shape[0] * labels.shape[2]
                                                    / (labels.shape[0] + sum(pads[0])) / (labels.shape[2] + sum(pads[2])))


def doc_size(pads, labels):
    return np.prod([n + a + b for n, (a, b) in zip(labels.shape, pads)])


def test_drift_border_varying_with_z_changes_no_metric(bordered):
    labels, kwargs, ref = bordered
    nz, ny, nx = labels.shape
    canvas = np.zeros((nz, ny + 80, nx + 80), np.uint8)
    canvas[:, 40:40 + ny, 40:40 + nx] = labels
    # the band of unassigned voxels the drift correction leaves: 10 to 40 rows, changing with z
    width = (25 + 15 * np.sin(np.arange(nz) / 3)).astype(int)
    for z, w in enumerate(width):
        canvas[z, :40 - w + 10] = 0
        canvas[z, :, nx + 40 + w - 10:] = 0
    doc = table1(canvas, **kwargs)
    want, got = _flat(ref), _flat(doc)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=0.01), key


def test_cap_rows_used_to_break_the_network_metrics(bordered):
    # the defect of issue 13: 10 unassigned rows on the current-collector face
    labels, kwargs, ref = bordered
    capped = labels.copy()
    capped[:, :10] = 0
    doc = table1(capped, spacing_um=kwargs["spacing_um"])
    assert doc["connected_share"]["active"] > 0.5
    assert doc["tortuosity_geometric"]["electrolyte"]["y+"] is not None
    assert doc["face_valid_share"] == 1.0


# -- chunks ---------------------------------------------------------------------------------

def test_chunks_give_the_whole_volume_numbers():
    labels = composite((48, 40, 36), np.random.default_rng(12), radius=4.0)
    labels[:, :6] = 0
    whole = table1(labels, spacing_um=(1, 1, 1), details=True)
    chunked = table1(labels, spacing_um=(1, 1, 1), chunk_voxels=40 * 36 * 10, halo_slices=8, details=True, threads=2)
    assert chunked["details"]["chunks"] == 6 and whole["details"]["chunks"] == 1  # 5 by the budget, made even
    for field in ("volume_fraction", "surface_area_per_cell_volume_um-1", "coverage_share", "connected_share",
                  "interconnected_share", "inner_porosity_share", "face_valid_share"):
        assert chunked[field] == pytest.approx(whole[field], rel=1e-12), field  # additive / union-find: exact
    for name, taus in whole["tortuosity_geometric"].items():
        for key, tau in taus.items():
            assert chunked["tortuosity_geometric"][name][key] == pytest.approx(tau, rel=0.01)
    for name, stats in whole["local_thickness_um"].items():
        assert chunked["local_thickness_um"][name]["mean"] == pytest.approx(stats["mean"], rel=0.01)


def test_connectivity_joined_across_chunks_exactly():
    # a U-shaped particle: its two arms meet only in the last chunk
    mask = np.zeros((30, 20, 10), bool)
    mask[:, 0:3, 2:5] = True     # arm touching the current collector (y = 0)
    mask[:, 10:13, 2:5] = True   # arm away from it
    mask[27:30, 0:13, 2:5] = True  # bottom of the U, in the last chunk
    mask[0:20, 16:19, 2:5] = True  # floating bar: 180 voxels
    labels = np.where(mask, ACTIVE, ELECTROLYTE).astype(np.uint8)
    want = connected_share(mask, axis=1)
    doc = table1(labels, spacing_um=(1, 1, 1), chunk_voxels=200 * 7, connected_phases=("active",),
                 thickness_phases=(), tortuosity_phases=())
    assert doc["connected_share"]["active"] == pytest.approx(want) == pytest.approx(1 - 180 / mask.sum())
    assert doc["interconnected_share"]["pore"] is None


def test_sampled_tortuosity_publishes_its_sampling_error():
    labels = composite((64, 40, 30), np.random.default_rng(13), radius=4.0)
    doc = table1(labels, spacing_um=(1, 1, 1), chunk_voxels=40 * 30 * 8, halo_slices=6,
                 tortuosity_max_voxels=40 * 30 * 8 * 3, details=True, threads=2)
    assert doc["details"]["tortuosity_chunks"] == 3 and doc["details"]["chunks"] == 8
    err = doc["sampling_error"]["tortuosity_geometric"]["electrolyte"]["y+"]
    full = table1(labels, spacing_um=(1, 1, 1), chunk_voxels=40 * 30 * 8, halo_slices=6, threads=2)
    assert 0 < err < 0.1 * doc["tortuosity_geometric"]["electrolyte"]["y+"]
    # the whole-volume value lies within a few standard errors of the sampled one
    assert abs(full["tortuosity_geometric"]["electrolyte"]["y+"] - doc["tortuosity_geometric"]["electrolyte"]["y+"]) \
        < 4 * err
    assert full["sampling_error"]["tortuosity_geometric"]["electrolyte"]["y+"] == 0.0


def test_network_phases_are_configurable():
    labels = composite((20, 30, 24), np.random.default_rng(14))
    doc = table1(labels, spacing_um=(1, 1, 1), tortuosity_phases=("pore",), thickness_phases=("pore",),
                 connected_phases=("electrolyte",), interconnected_phases=("active",), coverage_by="pore")
    assert set(doc["tortuosity_geometric"]) == {"pore"} and set(doc["local_thickness_um"]) == {"pore"}
    assert set(doc["connected_share"]) == {"electrolyte"} and set(doc["interconnected_share"]) == {"active"}
    assert set(doc["coverage_share"]) == {"electrolyte", "active"}
    with pytest.raises(ValueError, match="tortuosity_phases.*'cbd'"):
        table1(labels, spacing_um=(1, 1, 1), tortuosity_phases=("cbd",))


# -- tortuosity factor --------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(1, 1, 1), (0.5, 0.2, 0.3)])
def test_tortuosity_factor_of_straight_channels_is_one(spacing):
    mask = np.zeros((12, 30, 14), bool)
    mask[2:5, :, 3:6] = True
    mask[7:10, :, 8:12] = True
    mask[0, 3:8, 0] = True  # dead end: no flux, but in the volume fraction
    result = tortuosity_factor(mask, spacing_um=spacing, axis=1)
    eps = mask.mean()
    assert result.converged
    assert result.tau == pytest.approx(1.0 * eps / (eps - 5 / mask.size), rel=1e-6)


@pytest.mark.parametrize("step", [0, 5, 17])
def test_tortuosity_factor_of_a_staircase_channel_in_series(step):
    # a one-voxel channel is a chain of resistors in series: Ny + step bonds (the two half
    # bonds to the faces included), so tau = eps / D_eff = ((Ny + step) / Ny)^2
    ny = 40
    mask = np.zeros((3, ny, 24), bool)
    mask[1, :21, 2] = True
    mask[1, 20, 2:3 + step] = True
    mask[1, 20:, 2 + step] = True
    result = tortuosity_factor(mask, axis=1, tol=1e-12)
    assert mask.sum() == ny + step
    assert result.tau == pytest.approx(((ny + step) / ny) ** 2, rel=1e-6)
    assert result.effective_diffusivity == pytest.approx(ny / (ny + step) / (3 * 24), rel=1e-6)


def test_tortuosity_factor_against_taufactor():
    tf = pytest.importorskip("taufactor")
    labels = composite((24, 40, 24), np.random.default_rng(15), radius=4.0)
    mask = labels == ELECTROLYTE
    ours = tortuosity_factor(mask, axis=1, tol=1e-8)
    solver = tf.Solver(np.moveaxis(mask, 1, 0).astype(np.uint8), device="cpu")
    theirs = float(solver.solve(verbose=False, conv_crit=1e-4, iter_limit=100_000)[0])
    assert ours.tau == pytest.approx(theirs, rel=0.02)
    assert ours.flux_mismatch < 1e-4


def test_fast_marching_agrees_with_scikit_fmm():
    skfmm = pytest.importorskip("skfmm")
    from processing.metrics._marching import march

    spacing = (0.5, 0.3, 0.4)
    mask = ndimage.gaussian_filter(np.random.default_rng(16).standard_normal((30, 50, 40)), 2) > -0.3
    mask[:, 0] = True  # a full plane: the seed face of both
    phi = np.where(mask, 1.0, 0.0)
    phi[:, 0] = -1.0
    ref = skfmm.distance(np.ma.MaskedArray(phi, ~mask), dx=list(spacing), order=2)
    seeds = np.ravel_multi_index(np.nonzero(np.zeros_like(mask[:, :1]) == 0), mask.shape)
    ours = march(mask, seeds, np.full(seeds.size, 0.5 * spacing[1]), spacing)
    # skfmm's zero level lies half-way between the seed plane and the next one, ours half a
    # voxel before the seed plane: one voxel apart
    reached = ~np.ma.getmaskarray(ref) & mask
    reached[:, 0] = False
    assert np.isfinite(ours[reached]).all()
    diff = (ours[reached] - spacing[1]) - np.ma.getdata(ref)[reached]
    assert np.abs(diff).mean() < 0.002 * np.ma.getdata(ref)[reached].mean()
    assert np.abs(diff).max() < 0.5 * min(spacing)


def test_thin_chunks_with_a_coarse_thickness_sample():
    labels = composite((20, 24, 20), np.random.default_rng(17), radius=3.0)
    doc = table1(labels, spacing_um=(1, 1, 1), chunk_voxels=24 * 20 * 2, halo_slices=3, thickness_max_samples=300)
    whole = table1(labels, spacing_um=(1, 1, 1))
    assert doc["local_thickness_um"]["active"]["mean"] == pytest.approx(whole["local_thickness_um"]["active"]["mean"],
                                                                       rel=0.1)
    assert doc["sampling_error"]["local_thickness_um"]["active"]["mean"] > 0


def test_phase_filling_a_chunk_has_unbounded_thickness_left_out():
    # 60 slices of electrolyte only: chunks of 10 slices + 4 of halo hold no wall of it
    labels = np.full((80, 20, 20), 2, np.uint8)
    labels[60:, :, :10] = 3
    labels[60:, :, 10:] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = table1(labels, spacing_um=(1, 1, 1), chunk_voxels=20 * 20 * 10, halo_slices=4, details=True)
    unbounded = doc["details"]["local_thickness_unbounded_share"]
    assert unbounded["active"] == 0
    assert 0.5 < unbounded["electrolyte"] < 1
    assert math.isfinite(doc["local_thickness_um"]["electrolyte"]["mean"])
    # the active slab, 10 voxels wide, is measured as in one chunk
    assert doc["local_thickness_um"]["active"]["mean"] == pytest.approx(
        table1(labels, spacing_um=(1, 1, 1))["local_thickness_um"]["active"]["mean"], rel=1e-6)

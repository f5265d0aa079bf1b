"""Additive per-slab counts: voxels per phase and interface crossings per pair of phases.

Surface areas use the discrete Cauchy-Crofton formula with the 13 lattice directions
(Lehmann & Legland 2012; Ohser & Muecklich 2000): along every direction ``d`` the number
of label changes between neighbouring voxels counts how often test lines cross each
interface, and

    S_V = 2 * sum_d c_d * n_d / L_d

where ``L_d`` is the total test-line length and ``c_d`` the share of the unit sphere
closest to ``d`` (Voronoi weights, computed for the anisotropic spacing). This estimator
is unbiased for isotropic structures and, unlike voxel-face counting (which
overestimates an isotropic surface by 3/2 and an axis-aligned one not at all), stays
within a few percent for any orientation. Counting crossings per *pair of labels* makes
it interface-resolved: A(active|electrolyte) comes directly from the active-electrolyte
crossings.

Every count is a sum over voxel pairs, so counts of consecutive slabs add up exactly when
each slab after the first is counted together with the last slice of the slab before it
(pairs that straddle the boundary belong to the later slab).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

from ._common import check_labels, check_spacing

__all__ = ["DIRECTIONS", "SlabCounts", "slab_counts", "crofton_weights"]

# The 13 lattice directions (dz, dy, dx), one of each +/- pair, dz >= 0.
DIRECTIONS = np.array(
    [(1, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] + [(0, 1, -1), (0, 1, 0), (0, 1, 1), (0, 0, 1)],
    dtype=np.int64,
)
# Deterministic quasi-uniform sphere sample for the Voronoi weights (error ~1e-4).
_N_SPHERE = 200_000


@functools.lru_cache(maxsize=32)
def _weights_cached(spacing):
    vecs = DIRECTIONS * np.asarray(spacing)
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    i = np.arange(_N_SPHERE) + 0.5
    cos_t = 1 - 2 * i / _N_SPHERE
    phi = np.pi * (1 + 5**0.5) * i
    sin_t = np.sqrt(1 - cos_t**2)
    pts = np.stack([cos_t, sin_t * np.cos(phi), sin_t * np.sin(phi)], axis=1)
    # |cos| picks the nearer of +d and -d: each direction owns two antipodal cells.
    nearest = np.argmax(np.abs(pts @ vecs.T), axis=1)
    weights = np.bincount(nearest, minlength=len(DIRECTIONS)) / _N_SPHERE
    weights.setflags(write=False)
    return weights


def crofton_weights(spacing_um):
    """Voronoi weights of the 13 lattice directions on the unit sphere.

    Parameters
    ----------
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um; only the ratios matter.

    Returns
    -------
    (13,) ndarray of float
        Weight of each row of :data:`DIRECTIONS`; they sum to 1.
    """
    spacing = check_spacing(spacing_um)
    scale = min(spacing)
    return _weights_cached(tuple(round(s / scale, 9) for s in spacing))


@numba.njit(cache=True, nogil=True)
def _count_kernel(lab, skip_first, n_values, directions):
    nz, ny, nx = lab.shape
    voxels = np.zeros(n_values, np.int64)
    for z in range(skip_first, nz):
        for y in range(ny):
            row = lab[z, y]
            for x in range(nx):
                voxels[row[x]] += 1
    cross = np.zeros((directions.shape[0], n_values, n_values), np.int64)
    pairs = np.zeros(directions.shape[0], np.int64)
    # Every pair (a, b) is counted, equal ones too: no branch in the inner loop. Four
    # tables taken in turn, so that runs of equal pairs do not wait on one counter.
    tables = np.zeros((4, n_values * n_values), np.int64)
    for d in range(directions.shape[0]):
        oz, oy, ox = directions[d, 0], directions[d, 1], directions[d, 2]
        # In-plane pairs of the previous slice were counted with the slab before.
        z0 = skip_first if oz == 0 else 0
        y0, y1 = max(0, -oy), ny - max(0, oy)
        x0, x1 = max(0, -ox), nx - max(0, ox)
        tables[:] = 0
        for z in range(z0, nz - oz):
            for y in range(y0, y1):
                row_a = lab[z, y]
                row_b = lab[z + oz, y + oy]
                x = x0
                while x + 4 <= x1:
                    for k in range(4):
                        tables[k, row_a[x + k] * n_values + row_b[x + k + ox]] += 1
                    x += 4
                for x in range(x, x1):
                    tables[0, row_a[x] * n_values + row_b[x + ox]] += 1
        table = tables.sum(axis=0).reshape(n_values, n_values)
        for a in range(n_values):
            for b in range(n_values):
                if a != b:
                    cross[d, a, b] = table[a, b]
        # test lines run inside the assigned region only (label 0 is outside)
        pairs[d] = table[1:, 1:].sum()
    return voxels, cross, pairs


@dataclass(frozen=True)
class SlabCounts:
    """Additive counts of a slab of slices.

    Attributes
    ----------
    shape_yx : tuple of int
        (Y, X) of the slices.
    n_slices : int
        Number of slices counted.
    voxels : (L,) ndarray of int64
        Voxels per label value (0 = unassigned).
    crossings : (13, L, L) ndarray of int64
        ``crossings[d, a, b]``: neighbour pairs along ``DIRECTIONS[d]`` whose first voxel
        has label ``a`` and second label ``b`` (a != b).
    pairs : (13,) ndarray of int64
        Neighbour pairs along each direction with both voxels assigned (test-line
        segments inside the valid region).
    """

    shape_yx: tuple[int, int]
    n_slices: int
    voxels: np.ndarray
    crossings: np.ndarray
    pairs: np.ndarray

    def __add__(self, other):
        if not isinstance(other, SlabCounts):
            return NotImplemented
        if other.shape_yx != self.shape_yx or other.voxels.shape != self.voxels.shape:
            raise ValueError(
                f"cannot add SlabCounts of slices {self.shape_yx} / {self.voxels.size} labels "
                f"to {other.shape_yx} / {other.voxels.size} labels"
            )
        return SlabCounts(
            self.shape_yx,
            self.n_slices + other.n_slices,
            self.voxels + other.voxels,
            self.crossings + other.crossings,
            self.pairs + other.pairs,
        )

    def interface_areas_um2(self, spacing_um, *, edge_correction=True):
        """Interface area between every pair of labels, in um^2.

        Parameters
        ----------
        spacing_um : sequence of 3 float
            Voxel size (dz, dy, dx) in um.
        edge_correction : bool
            True (default) estimates the area as (surface density) x (assigned volume),
            where the density is crossings per test-line length inside the assigned
            region: unbiased for a statistically homogeneous microstructure, whose test
            lines are cut short at the borders and at unassigned voxels. False returns the area of the interfaces inside the box (exact
            in the limit for an object away from the borders, e.g. one sphere).

        Returns
        -------
        (L, L) ndarray of float
            Symmetric; ``[a, b]`` is the area of the a|b interface; diagonal is 0.
        """
        spacing = np.asarray(check_spacing(spacing_um))
        weights = crofton_weights(spacing)
        step_um = np.linalg.norm(DIRECTIONS * spacing, axis=1)
        n_assigned = self.voxels[1:].sum()
        voxel_um3 = float(np.prod(spacing))
        # S_V = 2 sum c_d n_d / (pairs_d |d|), and A = S_V * V with V = voxels * voxel volume.
        scale = np.zeros(len(DIRECTIONS))
        ok = self.pairs > 0
        if edge_correction:
            scale[ok] = 2.0 * weights[ok] * n_assigned * voxel_um3 / (self.pairs[ok] * step_um[ok])
        else:
            scale[ok] = 2.0 * weights[ok] * voxel_um3 / step_um[ok]
        ordered = np.tensordot(scale, self.crossings, axes=1)
        return ordered + ordered.T


def slab_counts(labels, *, previous_slice=None, n_values):
    """Count voxels and interface crossings of a slab of slices.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        The slab's phase labels.
    previous_slice : (Y, X) ndarray of uint8, optional
        The slice just before the slab; pairs between it and the slab's first slice are
        counted here (and its own voxels are not), so consecutive slabs add up exactly.
    n_values : int
        Number of label values (phases + 1); labels must be below it.

    Returns
    -------
    SlabCounts
    """
    lab = check_labels(labels)
    n_values = int(n_values)
    if not 2 <= n_values <= 256:
        raise ValueError(f"n_values must be in [2, 256], got {n_values}")
    top = int(lab.max())
    if top >= n_values:
        raise ValueError(f"labels hold value {top}, but only {n_values} label values (0..{n_values - 1}) are known")
    skip = 0
    if previous_slice is not None:
        prev = np.asarray(previous_slice)
        if prev.shape != lab.shape[1:] or prev.dtype != np.uint8:
            raise ValueError(
                f"previous_slice must be a {lab.shape[1:]} uint8 slice, got {prev.shape} {prev.dtype}"
            )
        if int(prev.max()) >= n_values:
            raise ValueError(f"previous_slice holds value {int(prev.max())} >= n_values {n_values}")
        lab = np.concatenate([prev[None], lab])
        skip = 1
    voxels, crossings, pairs = _count_kernel(lab, skip, n_values, DIRECTIONS)
    nz, ny, nx = lab.shape
    return SlabCounts((ny, nx), nz - skip, voxels, crossings, pairs)

"""Local thickness (Hildebrand & Ruegsegger 1997), anisotropic and fast.

The local thickness of a voxel is the diameter of the largest ball that contains it and
fits inside the phase. Algorithm:

1. ``D`` = anisotropic Euclidean distance of every phase voxel to the nearest
   non-phase voxel centre (``edt``, in um): the ball of radius ``D(c)`` around ``c`` holds
   phase voxel centres only.
2. Keep the centres of maximal balls: ``c`` is dropped when a 26-neighbour ``n`` has
   ``D(n) >= D(c) + |n - c| - 0.3 voxel`` (its ball contains the ball of ``c``, up to the
   quantisation of distances between voxel centres). With a row sample (``step``), a
   ball that reaches no computed row is dropped before that test (it paints nothing).
3. Paint the kept balls from the largest down, row by row (exact anisotropic sphere, no
   radius binning); a union-find "next unpainted voxel" pointer per row skips painted runs,
   so every voxel is written once and the cost follows the number of ball rows, not the
   sum of ball volumes.

Diameter convention: ``D`` is measured between voxel *centres*, so the ball reaches half
a voxel into the neighbouring phase; the reported diameter is ``2 D - s`` with ``s`` the
voxel size (the geometric mean of the spacing when anisotropic), which makes a slab an
odd number of voxels wide measure exactly its width (the result is kept at least one
finest voxel size). ``voxel_correction=False`` returns
``2 D``, the convention of porespy (``2 * radius``) and BoneJ.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import edt
import numba
import numpy as np

from ._common import check_mask, check_spacing

__all__ = ["local_thickness", "thickness_statistics", "local_thickness_summary"]

# A ball is dropped when a neighbour's ball contains it up to this fraction of a voxel.
# Distances between voxel centres are quantised, so exact containment is rare (half of
# the voxels would stay); 0.3 voxel keeps ~18 % of them and lowers the mean local
# thickness by < 0.1 % against painting every ball (measured on a 256^3 random field).
_CENTRE_TOLERANCE = 0.3


@numba.njit(cache=True, nogil=True)
def _maximal_ball_centres(dist, phase, sz, sy, sx, tol, step, z_lo, z_hi, keep):
    """Mark in `keep` the centres of slices [z_lo, z_hi) whose ball is inside no
    neighbour's ball of the phase (up to `tol` um) and reaches a computed row (z, y
    multiples of `step`); `dist` may hold other phases' distances outside `phase`."""
    nz, ny, nx = dist.shape
    offsets = np.empty(26, np.int64)
    reach = np.empty(26, np.float32)
    i = 0
    for oz in range(-1, 2):
        for oy in range(-1, 2):
            for ox in range(-1, 2):
                if oz or oy or ox:
                    offsets[i] = (oz * ny + oy) * nx + ox
                    reach[i] = math.sqrt((oz * sz) ** 2 + (oy * sy) ** 2 + (ox * sx) ** 2) - tol
                    i += 1
    flat = dist.ravel()
    phase_flat = phase.ravel()
    keep_flat = keep.ravel()
    for z in range(z_lo, z_hi):
        for y in range(ny):
            interior = 0 < z < nz - 1 and 0 < y < ny - 1
            base = (z * ny + y) * nx
            # squared distance (um^2) from this row to the nearest computed row
            rz, ry = z % step, y % step
            row_d2 = (min(rz, step - rz) * sz) ** 2 + (min(ry, step - ry) * sy) ** 2
            for x in range(nx):
                r = dist[z, y, x]
                if not phase[z, y, x] or r * r <= row_d2:
                    continue  # not in the phase, or its ball paints no computed row
                if interior and 0 < x < nx - 1:
                    # fast path: flat offsets, no bounds checks
                    maximal = True
                    p = base + x
                    for k in range(26):
                        if flat[p + offsets[k]] >= r + reach[k] and phase_flat[p + offsets[k]]:
                            maximal = False
                            break
                    keep_flat[p] = maximal
                else:
                    keep[z, y, x] = _is_maximal_border(dist, phase, z, y, x, sz, sy, sx, tol)


@numba.njit(cache=True, nogil=True)
def _is_maximal_border(dist, phase, z, y, x, sz, sy, sx, tol):
    nz, ny, nx = dist.shape
    r = dist[z, y, x]
    for oz in range(-1, 2):
        zz = z + oz
        if zz < 0 or zz >= nz:
            continue
        for oy in range(-1, 2):
            yy = y + oy
            if yy < 0 or yy >= ny:
                continue
            for ox in range(-1, 2):
                xx = x + ox
                if xx < 0 or xx >= nx or (oz == 0 and oy == 0 and ox == 0):
                    continue
                step = math.sqrt((oz * sz) ** 2 + (oy * sy) ** 2 + (ox * sx) ** 2)
                if dist[zz, yy, xx] >= r + step - tol and phase[zz, yy, xx]:
                    return False
    return True


@numba.njit(cache=True, nogil=True)
def _next_free(nxt, z, y, x):
    # Path-halving union-find along a row: first unpainted x' >= x (X = row end).
    while nxt[z, y, x] != x:
        parent = nxt[z, y, x]
        nxt[z, y, x] = nxt[z, y, parent]
        x = nxt[z, y, x]
    return x


@numba.njit(cache=True, nogil=True)
def _paint_balls(shape, step, cz, cy, cx, radii, sz, sy, sx, part, n_parts, out):
    """Paint balls in the given order (largest first) into `out`, on the rows z, y
    multiple of `step` and the sampled planes ``z // step == part (mod n_parts)``.

    Each voxel is written once: a union-find pointer per row jumps over painted runs.
    """
    nz, ny, nx = shape
    mz, my = out.shape[0], out.shape[1]
    nxt = np.empty((mz, my, nx + 1), np.int32)
    for z in range(mz):
        for y in range(my):
            for x in range(nx + 1):
                nxt[z, y, x] = x
    for i in range(radii.shape[0]):
        r = radii[i]
        r2 = r * r
        z0, y0, x0 = cz[i], cy[i], cx[i]
        kz = int(r / sz)
        zs = max(z0 - kz, 0)
        zs += (-zs) % step
        for z in range(zs, min(z0 + kz, nz - 1) + 1, step):
            if (z // step) % n_parts != part:
                continue
            rem_z = r2 - ((z - z0) * sz) ** 2
            if rem_z <= 0:
                continue
            ky = int(math.sqrt(rem_z) / sy)
            ys = max(y0 - ky, 0)
            ys += (-ys) % step
            for y in range(ys, min(y0 + ky, ny - 1) + 1, step):
                rem = rem_z - ((y - y0) * sy) ** 2
                if rem <= 0:
                    continue
                kx = int(math.sqrt(rem) / sx)
                # strictly inside: a voxel exactly at distance r is a non-phase centre
                if (kx * sx) ** 2 >= rem:
                    kx -= 1
                hi = min(x0 + kx, nx - 1)
                zi, yi = z // step, y // step
                x = _next_free(nxt, zi, yi, max(x0 - kx, 0))
                while x <= hi:
                    out[zi, yi, x] = r
                    nxt[zi, yi, x] = x + 1
                    x = _next_free(nxt, zi, yi, x + 1)
    return out


def _in_threads(n, work):
    """Run ``work(0) .. work(n - 1)`` on `n` threads (the kernels release the GIL)."""
    if n == 1:
        work(0)
        return
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(work, range(n)))


def local_thickness(mask, *, spacing_um, voxel_correction=True, step=1, threads=None, valid=None, distance_um=None):
    """Local thickness map of a phase (Hildebrand-Ruegsegger diameter).

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The phase.
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um.
    voxel_correction : bool
        Subtract one voxel size from ``2 D`` (see the module notes); False gives porespy's
        ``2 * radius`` convention.
    step : int
        Compute the rows ``mask[::step, ::step, :]`` only (every ball still counts): the
        cost drops about ``step**2`` times and the values on those rows are exact, which
        is all that statistics need.
    threads : int, optional
        Threads (default: CPU count).
    valid : (Z, Y, X) ndarray of bool, optional
        Assigned voxels (default all). Unassigned voxels are outside the domain, like
        the volume border: not a wall (distances are to assigned non-phase voxels only)
        and never a ball centre.
    distance_um : (Z, Y, X) ndarray of float32, optional
        Distance (um) of every voxel of `mask` to the nearest voxel centre outside it, as
        ``edt`` gives it (``black_border=False``), when already computed: one multi-label
        ``edt`` of a label volume serves all its phases at the cost of about 1.3 single
        ones. Values outside `mask` are ignored. Not with `valid`.

    Returns
    -------
    (ceil(Z/step), ceil(Y/step), X) ndarray of float32
        Diameter in um on the phase voxels of the computed rows, 0 elsewhere. The volume
        border is not a wall: the phase is assumed to continue outside.
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing_um)
    walls = None
    if valid is not None:
        valid = check_mask(valid, name="valid")
        if valid.shape != mask.shape:
            raise ValueError(f"valid must have the shape of the mask {mask.shape}, got {valid.shape}")
        mask = mask & valid
        walls = mask | ~valid
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")
    rows = mask[::step, ::step]
    if not rows.any():
        return np.zeros(rows.shape, np.float32)
    if distance_um is not None:
        if valid is not None:
            raise ValueError("distance_um cannot be combined with valid (its walls would include unassigned voxels)")
        dist = np.asarray(distance_um)
        if dist.shape != mask.shape or dist.dtype != np.float32 or not dist.flags.c_contiguous:
            raise ValueError(f"distance_um must be a C-contiguous float32 array of the mask's shape {mask.shape}, "
                             f"got {dist.dtype} {dist.shape}")
    else:
        # edt is ~1.7x faster on uint8 than on bool input
        dist = edt.edt((mask if walls is None else walls).view(np.uint8), anisotropy=spacing, black_border=False,
                       parallel=threads or os.cpu_count() or 1)
        dist = np.ascontiguousarray(dist, dtype=np.float32)
        del walls
    n_threads = threads or os.cpu_count() or 1
    keep = np.zeros(mask.shape, bool)
    bounds = np.linspace(0, mask.shape[0], n_threads + 1).astype(int)
    _in_threads(n_threads, lambda t: _maximal_ball_centres(
        dist, mask, *spacing, _CENTRE_TOLERANCE * min(spacing), int(step), bounds[t], bounds[t + 1], keep))
    # centres as int32 / float32 (the centre list is the largest array after the distance map)
    flat = np.flatnonzero(keep)
    del keep
    radii = dist.ravel()[flat]
    own = dist[::step, ::step].copy() if step > 1 else dist
    del dist
    order = np.argsort(-radii, kind="stable")
    flat, radii = flat[order], radii[order].astype(np.float64)
    del order
    cz, rest = np.divmod(flat, mask.shape[1] * mask.shape[2])
    del flat
    cy, cx = np.divmod(rest, mask.shape[2])
    del rest
    cz, cy, cx = cz.astype(np.int32), cy.astype(np.int32), cx.astype(np.int32)
    radius = np.zeros(rows.shape, np.float32)
    # threads paint interleaved sampled planes: disjoint writes, shared balls
    _in_threads(n_threads, lambda t: _paint_balls(
        mask.shape, int(step), cz, cy, cx, radii, *spacing, t, n_threads, radius))
    # A voxel's own ball contains it: dropping contained balls (with the tolerance) must
    # never leave a voxel below its own distance.
    np.maximum(radius, own, out=radius)
    diameter = 2 * radius
    if voxel_correction:
        # never below the finest voxel size, even for thin features of very anisotropic voxels
        np.maximum(diameter - float(np.prod(spacing)) ** (1 / 3), min(spacing), out=diameter)
    diameter[~rows] = 0
    return diameter


def thickness_statistics(thickness_um, mask, *, bins=32, range_um=None):
    """Mean, standard deviation and histogram of a local-thickness map over a phase.

    Parameters
    ----------
    thickness_um : ndarray of float
        From :func:`local_thickness`.
    mask : ndarray of bool
        Same shape: the phase voxels to describe.
    bins : int
        Histogram bins.
    range_um : (float, float), optional
        Histogram range; default ``(0, max)``.

    Returns
    -------
    dict
        ``{"mean": um, "std": um, "voxels": n, "histogram": {"edges_um": [...], "share":
        [...]}}``, shares summing to 1 (volume-weighted, as the paper's distribution); None
        values for an empty phase.
    """
    values = np.asarray(thickness_um)[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        return {"mean": None, "std": None, "voxels": 0, "histogram": None}
    if range_um is None:
        range_um = (0.0, float(values.max()) or 1.0)
    counts, edges = np.histogram(values, bins=bins, range=range_um)
    return {
        "mean": float(values.mean(dtype=np.float64)),
        "std": float(values.std(dtype=np.float64)),
        "voxels": int(values.size),
        "histogram": {"edges_um": edges.tolist(), "share": (counts / values.size).tolist()},
    }


def local_thickness_summary(mask, *, spacing_um, voxel_correction=True, max_samples=500_000, bins=32,
                            range_um=None, threads=None, valid=None):
    """Local thickness statistics of a phase, computed on a row lattice of bounded size.

    The row step is the smallest integer keeping at most about `max_samples` phase voxels
    on the rows ``[::step, ::step, :]``; a systematic sample of a microstructure, so the
    mean and standard deviation agree with the full map to well under 1 % once a few
    hundred thousand voxels are sampled.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The phase.
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um.
    voxel_correction : bool
        See :func:`local_thickness`.
    max_samples : int
        Target number of sampled phase voxels.
    bins, range_um
        Histogram, see :func:`thickness_statistics`.
    threads : int, optional
        Threads (default: CPU count).
    valid : (Z, Y, X) ndarray of bool, optional
        Assigned voxels, see :func:`local_thickness`.

    Returns
    -------
    dict
        As :func:`thickness_statistics`, plus ``"step"``.
    """
    mask = check_mask(mask)
    if valid is not None:
        mask = mask & check_mask(valid, name="valid")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples!r}")
    n = int(np.count_nonzero(mask))
    step = max(1, math.ceil(math.sqrt(n / max_samples)))
    thickness = local_thickness(mask, spacing_um=spacing_um, voxel_correction=voxel_correction, step=step,
                                threads=threads, valid=valid)
    stats = thickness_statistics(thickness, mask[::step, ::step], bins=bins, range_um=range_um)
    stats["step"] = step
    return stats

"""Fast marching (second order, anisotropic) of the in-phase distance to a set of seed voxels.

Sethian's fast marching method on the voxels of a mask, with 6-neighbour (face) moves as
the connectivity of the network metrics: seeds are known at given distances, every other
mask voxel is reached in increasing distance order, its distance solving the upwind
eikonal equation ``sum_axes ((T - T_axis) / h_axis)^2 = 1`` over the axes whose upwind
neighbour is already known and closer. Where the next neighbour along an axis is known
too, the second-order one-sided difference is used, as scikit-fmm's ``order=2`` does (the
peer the tests compare with). Voxels not connected to a seed stay at infinity, so the
march also tells which start voxels percolate, with no labelling pass.

Order: an *untidy* priority queue (Yatziv, Bartesaghi & Sapiro 2006) instead of a heap:
trial voxels go into buckets of width ``BUCKET_VOXELS`` times the finest voxel size, taken
in increasing order and first-in first-out within a bucket; O(1) per voxel instead of
O(log front), and the buckets are contiguous arrays (cache friendly). Its cost against the
exact heap order, measured on the three phases (22-45 %) of a 48x512x512 3-phase volume
(0.02x0.01x0.01 um voxels): mean distance +0.014 to +0.017 %, mean path from the far face
(what the tortuosity averages) +0.012 to +0.016 %, largest voxel difference 0.95 to 1.2
finest voxel sizes; 2.1-2.2x faster than the heap on the same padded arrays, itself 1.5x
faster (and identical) to the heap of revision 3159442 with bounds checks.
A voxel improved again while its entry still waits in the same bucket is not queued twice:
the waiting entry is taken first anyway (first in, first out) and reads the improved
value, so the result is identical and a third fewer entries are taken (measured on a
16x1024x1024 3-phase volume: 10.1 M instead of 13.6 M for 5.4 M voxels).

One float32 array holds both the distance and the state of a voxel (one memory stream
instead of two): ``nan`` outside the mask, ``+inf`` not reached yet, ``d > 0`` trial at
distance d, ``-d`` known at distance d (seed distances must therefore be positive).
The array is padded by two voxels (never entered), so the stencils need no bounds checks.

Memory: 4 bytes per voxel of the padded array plus the buckets (8 bytes per queued voxel).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["march", "BUCKET_VOXELS"]

# Bucket width of the untidy queue, in finest voxel sizes (error measured in the notes).
BUCKET_VOXELS = 0.1
_PAD = 2


@numba.njit(cache=True, nogil=True, inline="always")
def _upwind(t, j, s, h):
    """(coefficient, value) of the upwind term along the axis of flat stride `s`; (0, inf) when none is known."""
    best = np.inf
    best2 = np.inf
    for d in (-s, s):
        k = j + d
        v = t[k]
        if not v < 0:
            continue  # not known (nan outside, +inf or positive otherwise)
        t1 = -v
        if t1 < best:
            best = t1
            best2 = np.inf
            v2 = t[k + d]
            if v2 < 0 and -v2 <= t1:
                best2 = -v2
    if best == np.inf:
        return 0.0, np.inf
    if best2 < np.inf:
        return 9.0 / (4.0 * h * h), (4.0 * best - best2) / 3.0
    return 1.0 / (h * h), float(best)


@numba.njit(cache=True, nogil=True, inline="always")
def _solve(t, j, s0, s1, s2, h0, h1, h2):
    """Upwind eikonal update of flat voxel `j` from its known neighbours."""
    c0, v0 = _upwind(t, j, s0, h0)
    c1, v1 = _upwind(t, j, s1, h1)
    c2, v2 = _upwind(t, j, s2, h2)
    if v1 < v0:
        c0, v0, c1, v1 = c1, v1, c0, v0
    if v2 < v1:
        c1, v1, c2, v2 = c2, v2, c1, v1
        if v1 < v0:
            c0, v0, c1, v1 = c1, v1, c0, v0
    # add the axes in increasing upwind value while they stay below the solution
    a_sum = c0
    b_sum = c0 * v0
    c_sum = c0 * v0 * v0 - 1.0
    t = v0 + 1.0 / math.sqrt(c0)
    for c, v in ((c1, v1), (c2, v2)):
        if v >= t:
            break
        a_n = a_sum + c
        b_n = b_sum + c * v
        c_n = c_sum + c * v * v
        disc = b_n * b_n - a_n * c_n
        if disc < 0:
            break  # second-order terms can make it unsolvable: keep the solution so far
        a_sum, b_sum, c_sum = a_n, b_n, c_n
        t = (b_sum + math.sqrt(disc)) / a_sum
    return t


@numba.njit(cache=True, nogil=True, inline="always")
def _enqueue(buckets, counts, bucket, i):
    """Append voxel `i` to `bucket` (a row of `buckets`, grown when full); returns `buckets`."""
    if counts[bucket] == buckets.shape[1]:
        grown = np.empty((buckets.shape[0], 2 * buckets.shape[1]), buckets.dtype)
        grown[:, :buckets.shape[1]] = buckets
        buckets = grown
    buckets[bucket, counts[bucket]] = i
    counts[bucket] += 1
    return buckets


@numba.njit(cache=True, nogil=True)
def _march(t, seeds, seed_values, s0, s1, s2, h0, h1, h2, delta, n_buckets):
    """March on the flat padded array; the buckets form a ring (trial values span < n_buckets)."""
    buckets = np.empty((n_buckets, max(1024, seeds.shape[0] // 4)), np.int64)
    counts = np.zeros(n_buckets, np.int64)
    inv = 1.0 / delta
    for k in range(seeds.shape[0]):
        v = np.float32(seed_values[k])
        if v < t[seeds[k]]:
            t[seeds[k]] = v
    cur = np.int64(1) << 62
    for k in range(seeds.shape[0]):
        cur = min(cur, np.int64(t[seeds[k]] * inv))
    queued = 0
    for k in range(seeds.shape[0]):
        buckets = _enqueue(buckets, counts, np.int64(t[seeds[k]] * inv) % n_buckets, seeds[k])
        queued += 1
    offsets = (-s0, s0, -s1, s1, -s2, s2)
    while queued > 0:
        r = cur % n_buckets
        k = 0
        while k < counts[r]:  # first in, first out; the bucket may grow while it is taken
            i = buckets[r, k]
            k += 1
            v = t[i]
            if v < 0:
                continue  # a stale entry: the voxel was queued again in a later bucket
            t[i] = -v  # known
            for d in offsets:
                j = i + d
                old = t[j]
                if not old > 0:
                    continue  # known, or outside the mask
                cand = np.float32(_solve(t, j, s0, s1, s2, h0, h1, h2))
                if cand < old:
                    t[j] = cand
                    # an untidy value below the current bucket joins the current bucket
                    bucket = max(np.int64(cand * inv), cur)
                    if old < np.inf and bucket == max(np.int64(old * inv), cur):
                        continue  # its waiting entry is in this bucket already and reads the new value
                    buckets = _enqueue(buckets, counts, bucket % n_buckets, j)
                    queued += 1
        queued -= counts[r]
        counts[r] = 0
        cur += 1


@numba.njit(cache=True, nogil=True)
def _distances(t):
    """Known voxels' distances in place; ``inf`` elsewhere."""
    for k in range(t.shape[0]):
        v = t[k]
        t[k] = -v if v < 0 else np.inf

def march(mask, seeds, seed_values, spacing):
    """In-mask distance (um) from seed voxels, by second-order fast marching.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        Where the front may go.
    seeds : (N,) ndarray of int
        Flat (C-order) indices of the seed voxels (inside `mask`).
    seed_values : (N,) ndarray of float
        Their distances (um), positive.
    spacing : sequence of 3 float
        (dz, dy, dx) in um.

    Returns
    -------
    (Z, Y, X) ndarray of float32
        Distance; ``inf`` where the front never arrives (outside `mask` or not connected).
        A view into the padded work array.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    seed_values = np.asarray(seed_values, np.float64)
    if seed_values.size and not seed_values.min() > 0:
        raise ValueError(f"seed_values must be positive distances, got a minimum of {seed_values.min()!r}")
    inner = tuple(slice(_PAD, -_PAD) for _ in range(3))
    t = np.full(tuple(n + 2 * _PAD for n in mask.shape), np.nan, np.float32)
    np.copyto(t[inner], np.inf, where=mask)
    coords = np.unravel_index(np.asarray(seeds, np.int64), mask.shape)
    padded_seeds = np.ravel_multi_index(tuple(c + _PAD for c in coords), t.shape)
    h = [float(v) for v in spacing]
    delta = BUCKET_VOXELS * min(h)
    # a trial value exceeds the value being accepted by at most one voxel size
    n_buckets = int(math.ceil(max(h) / delta)) + 4
    _march(t.ravel(), padded_seeds, seed_values, t.shape[1] * t.shape[2], t.shape[2], 1, *h, delta, n_buckets)
    _distances(t.ravel())
    return t[inner]

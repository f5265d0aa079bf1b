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
O(log front). Its cost against the exact heap order, measured on a 48x512x512 3-phase
volume (0.02x0.01x0.01 um voxels, one phase of 33 %): mean distance +0.02 %, mean path
from the far face (the tortuosity) +0.02 %, largest voxel difference 1.06 finest voxel
sizes; 3.4x faster (measured against the binary-heap march of revision 3159442, the same
kernels otherwise). The padded flat layout alone (heap kept) was 1.5x faster and identical.
The arrays are padded by two voxels (never entered), so the stencils need no bounds checks.

Memory: 5 bytes per voxel of the padded array (float32 distance, uint8 state) plus the
queue (about 20 bytes per voxel of the front).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["march", "BUCKET_VOXELS"]

# Bucket width of the untidy queue, in finest voxel sizes (error measured in the notes).
BUCKET_VOXELS = 0.1
_FAR, _TRIAL, _KNOWN, _OUT = 0, 1, 2, 3
_PAD = 2


@numba.njit(cache=True, nogil=True, inline="always")
def _upwind(dist, state, j, s, h):
    """(coefficient, value) of the upwind term along the axis of flat stride `s`; (0, inf) when none is known."""
    best = np.inf
    best2 = np.inf
    for d in (-s, s):
        k = j + d
        if state[k] != _KNOWN:
            continue
        t1 = dist[k]
        if t1 < best:
            best = t1
            best2 = np.inf
            k2 = k + d
            if state[k2] == _KNOWN:
                t2 = dist[k2]
                if t2 <= t1:
                    best2 = t2
    if best == np.inf:
        return 0.0, np.inf
    if best2 < np.inf:
        return 9.0 / (4.0 * h * h), (4.0 * best - best2) / 3.0
    return 1.0 / (h * h), float(best)


@numba.njit(cache=True, nogil=True, inline="always")
def _solve(dist, state, j, s0, s1, s2, h0, h1, h2):
    """Upwind eikonal update of flat voxel `j` from its known neighbours."""
    c0, v0 = _upwind(dist, state, j, s0, h0)
    c1, v1 = _upwind(dist, state, j, s1, h1)
    c2, v2 = _upwind(dist, state, j, s2, h2)
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


@numba.njit(cache=True, nogil=True)
def _enqueue(queue, head, tail, free, t, i, bucket):
    """Append (t, i) to `bucket` (FIFO linked lists in one pool); returns the pool and free list."""
    pool_t, pool_i, pool_next, used = queue
    if free >= 0:
        e = free
        free = pool_next[e]
    else:
        if used == pool_t.shape[0]:
            grown_t = np.empty(2 * used, np.float32)
            grown_t[:used] = pool_t
            grown_i = np.empty(2 * used, np.int64)
            grown_i[:used] = pool_i
            grown_next = np.empty(2 * used, np.int64)
            grown_next[:used] = pool_next
            pool_t, pool_i, pool_next = grown_t, grown_i, grown_next
        e = used
        used += 1
    pool_t[e] = t
    pool_i[e] = i
    pool_next[e] = -1
    if tail[bucket] >= 0:
        pool_next[tail[bucket]] = e
    else:
        head[bucket] = e
    tail[bucket] = e
    return (pool_t, pool_i, pool_next, used), free


@numba.njit(cache=True, nogil=True)
def _march(state, dist, seeds, seed_values, s0, s1, s2, h0, h1, h2, delta, n_buckets):
    """March on the flat padded arrays; buckets form a ring (trial values span < n_buckets)."""
    cap = max(1024, 4 * seeds.shape[0])
    queue = (np.empty(cap, np.float32), np.empty(cap, np.int64), np.empty(cap, np.int64), 0)
    head = np.full(n_buckets, -1, np.int64)
    tail = np.full(n_buckets, -1, np.int64)
    free = -1
    queued = 0
    inv = 1.0 / delta
    for k in range(seeds.shape[0]):
        v = np.float32(seed_values[k])
        if v < dist[seeds[k]]:
            dist[seeds[k]] = v
            state[seeds[k]] = _TRIAL
    cur = np.int64(1) << 62
    for k in range(seeds.shape[0]):
        cur = min(cur, np.int64(dist[seeds[k]] * inv))
    for k in range(seeds.shape[0]):
        i = seeds[k]
        queue, free = _enqueue(queue, head, tail, free, dist[i], i, max(np.int64(dist[i] * inv), cur) % n_buckets)
        queued += 1
    offsets = (-s0, s0, -s1, s1, -s2, s2)
    while queued > 0:
        r = cur % n_buckets
        e = head[r]
        if e < 0:
            cur += 1
            continue
        pool_t, pool_i, pool_next, _ = queue
        head[r] = pool_next[e]
        if head[r] < 0:
            tail[r] = -1
        t, i = pool_t[e], pool_i[e]
        pool_next[e] = free
        free = e
        queued -= 1
        if state[i] == _KNOWN or t > dist[i]:
            continue  # stale entry
        state[i] = _KNOWN
        for d in offsets:
            j = i + d
            if state[j] == _KNOWN or state[j] == _OUT:
                continue
            cand = np.float32(_solve(dist, state, j, s0, s1, s2, h0, h1, h2))
            if cand < dist[j]:
                dist[j] = cand
                state[j] = _TRIAL
                # an untidy value below the current bucket joins the current bucket
                queue, free = _enqueue(queue, head, tail, free, cand, j, max(np.int64(cand * inv), cur) % n_buckets)
                queued += 1

def march(mask, seeds, seed_values, spacing):
    """In-mask distance (um) from seed voxels, by second-order fast marching.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        Where the front may go.
    seeds : (N,) ndarray of int
        Flat (C-order) indices of the seed voxels (inside `mask`).
    seed_values : (N,) ndarray of float
        Their distances (um).
    spacing : sequence of 3 float
        (dz, dy, dx) in um.

    Returns
    -------
    (Z, Y, X) ndarray of float32
        Distance; ``inf`` where the front never arrives (outside `mask` or not connected).
        A view into the padded work array.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    inner = tuple(slice(_PAD, -_PAD) for _ in range(3))
    state = np.full(tuple(n + 2 * _PAD for n in mask.shape), _OUT, np.uint8)
    state[inner][mask] = _FAR
    dist = np.full(state.shape, np.inf, np.float32)
    coords = np.unravel_index(np.asarray(seeds, np.int64), mask.shape)
    padded_seeds = np.ravel_multi_index(tuple(c + _PAD for c in coords), state.shape)
    h = [float(v) for v in spacing]
    delta = BUCKET_VOXELS * min(h)
    # a trial value exceeds the value being accepted by at most one voxel size
    n_buckets = int(math.ceil(max(h) / delta)) + 4
    _march(state.ravel(), dist.ravel(), padded_seeds, np.asarray(seed_values, np.float64),
           state.shape[1] * state.shape[2], state.shape[2], 1, *h, delta, n_buckets)
    return dist[inner]

"""Network metrics of a phase: geometric tortuosity, connectivity, inner porosity.

Connectivity uses face neighbours (6-connectivity) throughout: two voxels of a phase
touching only along an edge or at a corner are, at the voxel scale, a segmentation
accident more often than a conducting contact, and fast marching (tortuosity) moves
through faces too, so both metrics see the same network.

Valid region: unassigned voxels (label 0: protective cap, drift border) are outside the
domain, neither a phase nor a wall. The two transport faces are therefore the first and
the last *valid* voxel of every line along the transport axis (:func:`transport_lines`),
not the planes at index 0 and -1: a cap of unassigned rows on the current-collector face
moves that face down to the first assigned row of each column.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cc3d
import numpy as np

from ._common import check_axis, check_labels, check_mask, check_spacing
from ._marching import march

__all__ = [
    "TortuosityResult",
    "transport_lines",
    "face_valid_share",
    "geometric_tortuosity",
    "percolating_mask",
    "connected_share",
    "interconnected_share",
    "inner_porosity_share",
]

_CONNECTIVITY = 6


def _components(mask):
    return cc3d.connected_components(mask, connectivity=_CONNECTIVITY)


def _valid_or_all(valid, shape):
    if valid is None:
        return None
    valid = check_mask(valid, name="valid")
    if valid.shape != shape:
        raise ValueError(f"valid must have the shape of the mask {shape}, got {valid.shape}")
    return valid


def transport_lines(valid, axis):
    """First and last valid voxel of every line along `axis`.

    Parameters
    ----------
    valid : (Z, Y, X) ndarray of bool or None
        Assigned voxels; None means all.
    axis : int
        0 (z), 1 (y) or 2 (x).

    Returns
    -------
    first, last : ndarray of int64
        Index along `axis` of the first and last valid voxel of each line (the array's
        shape without `axis`); meaningless where `has` is False.
    has : ndarray of bool
        Lines holding at least one valid voxel.
    """
    if valid is None:
        raise ValueError("valid must be a (Z, Y, X) boolean array")
    n = valid.shape[axis]
    has = valid.any(axis=axis)
    first = np.argmax(valid, axis=axis).astype(np.int64)
    last = n - 1 - np.argmax(np.flip(valid, axis=axis), axis=axis).astype(np.int64)
    return first, last, has


def face_valid_share(valid, *, axis=1):
    """Share of the transport face whose lines hold at least one assigned voxel.

    The face of the metrics is the first valid voxel of each line (module notes); lines
    with no valid voxel at all (a drift border spanning the whole depth) have no face.

    Parameters
    ----------
    valid : (Z, Y, X) ndarray of bool
    axis : int

    Returns
    -------
    float
        In [0, 1].
    """
    valid = check_mask(valid, name="valid")
    axis = check_axis(axis, name="axis")
    return float(np.count_nonzero(valid.any(axis=axis)) / (valid.size // valid.shape[axis]))


def _at(array, index, axis):
    """Values of `array` at `index` (one per line along `axis`)."""
    return np.take_along_axis(array, np.expand_dims(index, axis), axis=axis).squeeze(axis)


def _faces(shape, valid, axis):
    """(first, last, has) of the lines; the array's end planes when `valid` is None."""
    if valid is None:
        lines = shape[:axis] + shape[axis + 1:]
        return (np.zeros(lines, np.int64), np.full(lines, shape[axis] - 1, np.int64), np.ones(lines, bool))
    return transport_lines(valid, axis)


def _touching(comp, index, has, axis):
    ids = _at(comp, index, axis)[has]
    ids = np.unique(ids)
    return ids[ids > 0]


def percolating_mask(mask, *, axis=1, valid=None):
    """Phase voxels connected (6-connectivity) to both transport faces.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
    axis : int
        0 (z), 1 (y) or 2 (x).
    valid : (Z, Y, X) ndarray of bool, optional
        Assigned voxels (default all): the faces are the first and last valid voxel of
        each line along `axis`.

    Returns
    -------
    (Z, Y, X) ndarray of bool
    """
    mask = check_mask(mask)
    axis = check_axis(axis, name="axis")
    valid = _valid_or_all(valid, mask.shape)
    if valid is not None:
        mask = mask & valid
    first, last, has = _faces(mask.shape, valid, axis)
    comp = _components(mask)
    through = np.intersect1d(_touching(comp, first, has, axis), _touching(comp, last, has, axis))
    return np.isin(comp, through)


@dataclass(frozen=True)
class TortuosityResult:
    """Geometric tortuosity of a phase along an axis, both directions.

    Attributes
    ----------
    forward, backward : float or None
        Mean shortest in-phase path from the first face to the last one (``forward``,
        "+") and back ("-"), over the start-face voxels that percolate, divided by the
        mean straight length of their lines. None when nothing percolates.
    excluded_share_forward, excluded_share_backward : float or None
        Share of the phase voxels of the start face that do not reach the other face
        (excluded from the mean). None when the face holds no phase.
    paths_forward, paths_backward : int
        Number of start voxels averaged.
    path_um_forward, path_um_backward : float
        Sum of their path lengths (um), to pool several subvolumes exactly.
    straight_um_forward, straight_um_backward : float
        Sum of the straight lengths of their lines (um).
    face_voxels_forward, face_voxels_backward : int
        Phase voxels on the start face.
    """

    forward: float | None
    backward: float | None
    excluded_share_forward: float | None
    excluded_share_backward: float | None
    paths_forward: int = 0
    paths_backward: int = 0
    path_um_forward: float = 0.0
    path_um_backward: float = 0.0
    straight_um_forward: float = 0.0
    straight_um_backward: float = 0.0
    face_voxels_forward: int = 0
    face_voxels_backward: int = 0


def geometric_tortuosity(mask, *, spacing_um, axis=1, valid=None, lines=None, threads=1):
    """Geometric tortuosity of a phase along `axis`, in both directions.

    For each start-face voxel that belongs to the part of the phase connected to both
    faces, the shortest in-phase path to the opposite face is computed by fast marching
    (:mod:`._marching`, second order as scikit-fmm's, anisotropic spacing, face moves);
    start voxels the march does not reach do not percolate. The path starts at the face (half a
    voxel before the first voxel centre) and ends at the opposite face (half a voxel
    beyond the last). The tortuosity is the mean path over those voxels divided by the
    mean straight length of their lines. A straight channel gives exactly 1.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The phase.
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um.
    axis : int
        Transport axis: 0 (z), 1 (y, default, the paper's) or 2 (x).
    valid : (Z, Y, X) ndarray of bool, optional
        Assigned voxels (default all); the faces are the first and last valid voxel of
        each line along `axis`, the straight length of a line runs between them.
    lines : ndarray of bool, optional
        The lines (shape of `mask` without `axis`) whose start voxels are averaged;
        default all. A subvolume computed with a margin around it counts its own lines.
    threads : int
        2 or more marches the two directions at once (twice the distance-map memory).

    Returns
    -------
    TortuosityResult
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing_um)
    axis = check_axis(axis, name="axis")
    valid = _valid_or_all(valid, mask.shape)
    if valid is not None:
        mask = mask & valid
    first, last, has = _faces(mask.shape, valid, axis)
    straight = (last - first + 1) * spacing[axis]
    if lines is not None:
        lines = np.asarray(lines, dtype=bool)
        if lines.shape != has.shape:
            raise ValueError(f"lines must have shape {has.shape} (the mask without axis {axis}), got {lines.shape}")
    counted = has if lines is None else has & lines

    def one(start, target):
        face_phase = _at(mask, start, axis) & counted
        n_face = int(np.count_nonzero(face_phase))
        if n_face == 0:
            return None, None, 0, 0.0, 0.0, 0
        start_dist = _at(_distance_to_face(mask, spacing, axis, target, has), start, axis)
        reached = face_phase & np.isfinite(start_dist)
        path = start_dist[reached].astype(np.float64) + 0.5 * spacing[axis]
        n_paths = int(path.size)
        if n_paths == 0:
            return None, 1.0, 0, 0.0, 0.0, n_face
        path_sum, straight_sum = float(path.sum()), float(straight[reached].sum())
        return path_sum / straight_sum, 1.0 - n_paths / n_face, n_paths, path_sum, straight_sum, n_face

    directions = ((first, last), (last, first))
    if threads and threads > 1:
        with ThreadPoolExecutor(2) as pool:  # the march releases the GIL
            results = list(pool.map(lambda d: one(*d), directions))
    else:
        results = [one(*d) for d in directions]
    (fwd, ex_f, n_f, p_f, s_f, f_f), (bwd, ex_b, n_b, p_b, s_b, f_b) = results
    return TortuosityResult(fwd, bwd, ex_f, ex_b, n_f, n_b, p_f, p_b, s_f, s_b, f_f, f_b)


def _distance_to_face(mask, spacing, axis, target, has):
    """In-phase distance (um) of every voxel to the face beyond the `target` voxel of each line.

    The face lies half a voxel beyond the target voxel centre: target voxels of the phase
    are the seeds, at half a voxel. Voxels not connected to the face stay at infinity.
    """
    lines = np.nonzero(has & _at(mask, target, axis))
    coords = list(lines)
    coords.insert(axis, target[lines])
    seeds = np.ravel_multi_index(tuple(coords), mask.shape)
    return march(mask, seeds, np.full(seeds.size, 0.5 * spacing[axis]), spacing)


def connected_share(mask, *, axis=1, face=0, valid=None):
    """Share of a phase connected (6-connectivity) to one face (the current collector).

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The phase (e.g. the active material, for electronic percolation).
    axis : int
        Axis normal to the face: 0 (z), 1 (y, default) or 2 (x).
    face : int
        0 (default) for the face at the start of `axis`, -1 for the end.
    valid : (Z, Y, X) ndarray of bool, optional
        Assigned voxels (default all): the face is the first (or last) valid voxel of
        each line along `axis`.

    Returns
    -------
    float or None
        In [0, 1]; None when the phase is absent.
    """
    mask = check_mask(mask)
    axis = check_axis(axis, name="axis")
    if face not in (0, -1):
        raise ValueError(f"face must be 0 or -1, got {face!r}")
    valid = _valid_or_all(valid, mask.shape)
    if valid is not None:
        mask = mask & valid
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None
    first, last, has = _faces(mask.shape, valid, axis)
    comp = _components(mask)
    touching = _touching(comp, first if face == 0 else last, has, axis)
    sizes = np.bincount(comp.ravel())
    return float(sizes[touching].sum() / total)


def interconnected_share(mask):
    """Share of a phase in its largest 6-connected cluster.

    The paper's "% of the porosity interconnected": the part of the pore network that
    forms one connected whole, as opposed to isolated pores. (Touching two opposite faces
    is the percolation criterion of :func:`percolating_mask` instead.)

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool

    Returns
    -------
    float or None
        In [0, 1]; None when the phase is absent.
    """
    mask = check_mask(mask)
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None
    sizes = np.bincount(_components(mask).ravel())[1:]
    return float(sizes.max() / total)


def inner_porosity_share(labels, *, pore_label, active_label):
    """Share of the pore volume enclosed by the active phase.

    A pore voxel is *inner* when its 6-connected pore component touches (by faces) only
    active voxels: no other phase, no unassigned voxel and not the volume border (a pore
    cut by the border, or by the unassigned region, may open outside what is known, so it
    is not counted as enclosed). This is the paper's "NMC inner porosity" (cracks and
    voids inside the particles), as a share of all pore voxels.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase labels.
    pore_label, active_label : int
        Label values of the pore and active phases.

    Returns
    -------
    float or None
        In [0, 1]; None when there is no pore.
    """
    labels = check_labels(labels)
    pore = labels == pore_label
    n_pore = int(np.count_nonzero(pore))
    if n_pore == 0:
        return None
    # Components of everything but active: a pore component merged with any other
    # voxel there touches something else than active.
    comp = _components(labels != active_label)
    n = int(comp.max()) + 1
    total = np.bincount(comp.ravel(), minlength=n)
    pores = np.bincount(comp[pore], minlength=n)
    border = np.zeros(n, bool)
    for axis in range(3):
        for index in (0, -1):
            border[np.unique(np.take(comp, index, axis=axis))] = True
    enclosed = (pores == total) & ~border
    enclosed[0] = False
    return float(pores[enclosed].sum() / n_pore)

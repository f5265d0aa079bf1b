"""Network metrics of a phase: geometric tortuosity, connectivity, inner porosity.

Connectivity uses face neighbours (6-connectivity) throughout: two voxels of a phase
touching only along an edge or at a corner are, at the voxel scale, a segmentation
accident more often than a conducting contact, and fast marching (tortuosity) moves
through faces too, so both metrics see the same network.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
import skfmm

from ._common import check_axis, check_labels, check_mask, check_spacing

__all__ = [
    "TortuosityResult",
    "geometric_tortuosity",
    "percolating_mask",
    "connected_share",
    "interconnected_share",
    "inner_porosity_share",
]

_CONNECTIVITY = 6


def _components(mask):
    return cc3d.connected_components(mask, connectivity=_CONNECTIVITY)


def _face(array, axis, index):
    return np.take(array, index, axis=axis)


def percolating_mask(mask, *, axis=1):
    """Phase voxels connected (6-connectivity) to both faces of `axis`.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
    axis : int
        0 (z), 1 (y) or 2 (x).

    Returns
    -------
    (Z, Y, X) ndarray of bool
    """
    mask = check_mask(mask)
    axis = check_axis(axis, name="axis")
    comp = _components(mask)
    first = np.unique(_face(comp, axis, 0))
    last = np.unique(_face(comp, axis, -1))
    through = np.intersect1d(first[first > 0], last[last > 0])
    return np.isin(comp, through)


@dataclass(frozen=True)
class TortuosityResult:
    """Geometric tortuosity of a phase along an axis, both directions.

    Attributes
    ----------
    forward, backward : float or None
        Mean shortest in-phase path from the face at index 0 to the last face
        (``forward``, "+") and back ("-"), over the start-face voxels that percolate,
        divided by the straight thickness. None when nothing percolates.
    excluded_share_forward, excluded_share_backward : float or None
        Share of the phase voxels of the start face that do not reach the other face
        (excluded from the mean). None when the face holds no phase.
    paths_forward, paths_backward : int
        Number of start voxels averaged (to pool results of several subvolumes).
    """

    forward: float | None
    backward: float | None
    excluded_share_forward: float | None
    excluded_share_backward: float | None
    paths_forward: int = 0
    paths_backward: int = 0


def _path_lengths_to_face(through, spacing, axis, target_index):
    """Shortest in-phase distance (um) from every voxel of `through` to a face of `axis`.

    The source is a ghost layer beyond the target face, so the zero level set is the
    face itself (half a voxel outside the last voxel centres).
    """
    pad = [(0, 0)] * 3
    pad[axis] = (1, 0) if target_index == 0 else (0, 1)
    region = np.pad(through, pad)
    ghost = [slice(None)] * 3
    ghost[axis] = 0 if target_index == 0 else -1
    region[tuple(ghost)] = _face(through, axis, target_index)
    phi = np.ones(region.shape)
    phi[tuple(ghost)] = -1.0
    dist = skfmm.distance(np.ma.MaskedArray(phi, ~region), dx=list(spacing), order=2)
    inner = [slice(None)] * 3
    inner[axis] = slice(1, None) if target_index == 0 else slice(0, -1)
    return np.ma.getdata(dist)[tuple(inner)], np.ma.getmaskarray(dist)[tuple(inner)]


def geometric_tortuosity(mask, *, spacing_um, axis=1):
    """Geometric tortuosity of a phase along `axis`, in both directions.

    For each voxel of the start face that belongs to the part of the phase connected to
    both faces, the shortest in-phase path to the opposite face is computed by fast
    marching (scikit-fmm, second order, anisotropic spacing); the path starts at the
    face (half a voxel before the first voxel centre) and ends at the opposite face. The
    tortuosity is the mean path length over those voxels divided by the thickness along
    `axis`. A straight channel gives exactly 1.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The phase.
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um.
    axis : int
        Transport axis: 0 (z), 1 (y, default, the paper's) or 2 (x).

    Returns
    -------
    TortuosityResult
    """
    mask = check_mask(mask)
    spacing = check_spacing(spacing_um)
    axis = check_axis(axis, name="axis")
    through = percolating_mask(mask, axis=axis)
    thickness = mask.shape[axis] * spacing[axis]
    results = []
    for start, target in ((0, -1), (-1, 0)):
        face_phase = _face(mask, axis, start)
        n_face = int(np.count_nonzero(face_phase))
        if n_face == 0:
            results.append((None, None, 0))
            continue
        face_through = _face(through, axis, start)
        n_through = int(np.count_nonzero(face_through))
        excluded = 1.0 - n_through / n_face
        if n_through == 0:
            results.append((None, excluded, 0))
            continue
        dist, unreached = _path_lengths_to_face(through, spacing, axis, target)
        # Percolating voxels are all reachable; the mask guards against skfmm leaving one.
        reached = ~_face(unreached, axis, start)[face_through]
        start_dist = _face(dist, axis, start)[face_through][reached]
        n_through = int(start_dist.size)
        if n_through == 0:
            results.append((None, excluded, 0))
            continue
        mean_path = float(start_dist.mean()) + 0.5 * spacing[axis]
        results.append((mean_path / thickness, excluded, n_through))
    (fwd, ex_f, n_f), (bwd, ex_b, n_b) = results
    return TortuosityResult(fwd, bwd, ex_f, ex_b, n_f, n_b)


def connected_share(mask, *, axis=1, face=0):
    """Share of a phase connected (6-connectivity) to one face (the current collector).

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool
        The phase (e.g. the active material, for electronic percolation).
    axis : int
        Axis normal to the face: 0 (z), 1 (y, default) or 2 (x).
    face : int
        0 (default) for the face at index 0 of `axis`, -1 for the last one.

    Returns
    -------
    float or None
        In [0, 1]; None when the phase is absent.
    """
    mask = check_mask(mask)
    axis = check_axis(axis, name="axis")
    if face not in (0, -1):
        raise ValueError(f"face must be 0 or -1, got {face!r}")
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None
    comp = _components(mask)
    touching = np.unique(_face(comp, axis, face))
    touching = touching[touching > 0]
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
    cut by the border may open outside the imaged volume, so it is not counted as
    enclosed). This is the paper's "NMC inner porosity" (cracks and voids inside the
    particles), as a share of all pore voxels.

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
            border[np.unique(_face(comp, axis, index))] = True
    enclosed = (pores == total) & ~border
    enclosed[0] = False
    return float(pores[enclosed].sum() / n_pore)

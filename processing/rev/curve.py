"""Subvolume criterion: relative standard deviation of a metric against the cube edge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._common import check_spacing, check_tolerance, check_volume
from .metrics import MetricFunc, RevMetric

__all__ = ["SubvolumeCurve", "subvolume_curve", "rev_edge", "edge_voxels", "cube_values"]



@dataclass(frozen=True, eq=False)
class SubvolumeCurve:
    """Relative standard deviation of a metric against the subvolume edge.

    Attributes
    ----------
    edges_um : (N,) ndarray of float
        Cube edges in micrometres.
    voxels : (N, 3) ndarray of int
        Cube size in voxels along (z, y, x) for each edge.
    volumes_um3 : (N,) ndarray of float
        Actual cube volumes (voxel counts times voxel volume).
    n_samples : (N,) ndarray of int
        Cubes measured at each edge (non-overlapping).
    mean, std, relative_std : (N,) ndarray of float
        Over the cubes; ``std`` with ``ddof=1``, NaN when fewer than 2 cubes fit.
    tolerance : float
        The relative standard deviation that defines the REV.
    rev_edge_um : float or None
        Smallest edge beyond which ``relative_std`` stays <= `tolerance`, None
        if it is still above at the largest edge measured.
    corners : tuple of (n, 3) ndarray of int
        Voxel index of the first corner of each cube, per edge (to reproduce
        or cross-check the measurement).
    """

    edges_um: np.ndarray
    voxels: np.ndarray
    volumes_um3: np.ndarray
    n_samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    relative_std: np.ndarray
    tolerance: float
    rev_edge_um: float | None
    corners: tuple = ()


def _grid_corners(shape, size, n, rng):
    """Up to `n` corners of non-overlapping boxes of `size` on a randomly offset grid."""
    counts = [s // b for s, b in zip(shape, size)]
    if min(counts) == 0:
        return np.empty((0, 3), dtype=int)
    offsets = [int(rng.integers(0, s - c * b + 1)) for s, c, b in zip(shape, counts, size)]
    total = int(np.prod(counts))
    cells = rng.choice(total, size=min(n, total), replace=False)
    idx = np.stack(np.unravel_index(cells, counts), axis=1)
    return idx * np.asarray(size) + np.asarray(offsets)


def edge_voxels(edge_um, spacing):
    """Cube size in voxels along (z, y, x) of a cube of edge `edge_um` micrometres."""
    return tuple(max(1, int(round(edge_um / s))) for s in spacing)


def cube_values(labels, metric: RevMetric, corners, size, spacing) -> np.ndarray:
    """`metric` on the cubes of `size` voxels at `corners` (only those cubes are read)."""
    return np.array([
        metric.func(np.asarray(labels[c[0]:c[0] + size[0], c[1]:c[1] + size[1], c[2]:c[2] + size[2]]), spacing)
        for c in corners
    ], dtype=float)


def rev_edge(edges, relative_std, tolerance):
    """Smallest edge from which every measured relative std is <= tolerance."""
    measured = np.isfinite(relative_std)
    if not measured.any():
        return None
    edges, rel = edges[measured], relative_std[measured]
    above = np.nonzero(rel > tolerance)[0]
    if above.size == 0:
        return float(edges[0])
    last = above[-1]
    return float(edges[last + 1]) if last + 1 < edges.size else None


def subvolume_curve(
    labels,
    metric: RevMetric | MetricFunc,
    *,
    spacing_um,
    edges_um: Sequence[float] | None = None,
    n_samples: int = 24,
    tolerance: float = 0.05,
    rng=None,
) -> SubvolumeCurve:
    """Subvolume REV criterion: relative std of `metric` over cubes of growing edge.

    Parameters
    ----------
    labels : (Z, Y, X) array-like of int
        Phase labels; any array supporting slicing (NumPy, Zarr) works, only
        the sampled cubes are read.
    metric : RevMetric or callable
        ``f(labels, spacing_um) -> float``.
    spacing_um : tuple of 3 float
        Voxel size ``(dz, dy, dx)`` in micrometres. Cubes are cubes in
        micrometres, so they span different voxel counts along each axis.
    edges_um : sequence of float, optional
        Cube edges in micrometres. Default: 10 edges spaced geometrically from
        4 voxels (or the metric's ``min_extent_um``) to the smallest extent of
        the volume.
    n_samples : int, optional
        Cubes per edge, drawn without overlap on a randomly offset grid (fewer
        when fewer fit).
    tolerance : float, optional
        Relative std defining the REV edge.
    rng : None, int or numpy.random.Generator, optional
        Seed of the cube positions.

    Returns
    -------
    SubvolumeCurve
    """
    labels = check_volume(labels)
    spacing = check_spacing(spacing_um)
    tolerance = check_tolerance(tolerance)
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples!r}")
    metric = metric if isinstance(metric, RevMetric) else RevMetric(getattr(metric, "__name__", "metric"), metric)
    rng = np.random.default_rng(rng)
    extent = min(n * s for n, s in zip(labels.shape, spacing))
    if edges_um is None:
        lo = max(4 * max(spacing), metric.min_extent_um)
        edges_um = np.geomspace(lo, extent, 10) if lo < extent else np.array([extent])
    edges = np.asarray(edges_um, dtype=float)
    if edges.ndim != 1 or edges.size == 0 or np.any(~np.isfinite(edges)) or np.any(edges <= 0):
        raise ValueError(f"edges_um must be positive finite values, got {edges_um!r}")
    edges = np.sort(edges)
    rows, all_corners = [], []
    for edge in edges:
        size = edge_voxels(edge, spacing)
        corners = _grid_corners(labels.shape, size, int(n_samples), rng)
        values = cube_values(labels, metric, corners, size, spacing)
        mean = float(values.mean()) if values.size else math.nan
        std = float(values.std(ddof=1)) if values.size >= 2 else math.nan
        rel = std / abs(mean) if values.size >= 2 and mean != 0 else math.nan
        rows.append((size, float(np.prod(np.multiply(size, spacing))), values.size, mean, std, rel))
        all_corners.append(corners)
    voxels, volumes, n, mean, std, rel = (np.array(col) for col in zip(*rows))
    return SubvolumeCurve(
        edges_um=edges, voxels=voxels.reshape(-1, 3), volumes_um3=volumes.astype(float), n_samples=n.astype(int),
        mean=mean.astype(float), std=std.astype(float), relative_std=rel.astype(float),
        tolerance=tolerance, rev_edge_um=rev_edge(edges, rel.astype(float), tolerance),
        corners=tuple(all_corners),
    )



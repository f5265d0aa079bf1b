"""Representative elementary volume (REV): is the volume acquired so far enough?

Three criteria, each usable alone, and a streaming tracker that combines them:

- the **subvolume criterion** (:func:`subvolume_curve`): relative standard
  deviation of a metric over seeded, non-overlapping cubes of edge ``L`` (in
  micrometres, so different voxel counts per axis when the spacing is
  anisotropic); the REV edge is the smallest ``L`` beyond which it stays
  below the tolerance;
- the **statistical criterion** of Kanit et al. (2003) (:func:`fit_kanit`):
  ``sigma^2(V) = K V^-alpha`` fitted in log-log on subvolume variances; the
  relative error of a mean over ``n`` volumes ``V`` is
  ``eps = z sigma(V) / (mean sqrt(n))`` (Kanit use ``z = 2``), which predicts
  the volume, hence the number of slices, needed for a target error;
- **trend detection** along z (:func:`detect_trend`): the slope of a metric
  against depth, tested with a block size that makes the blocks nearly
  independent; a graded volume is never called representative.

:class:`RevTracker` follows a volume growing along z: each metric is measured
on blocks of slices as they complete (dyadic block sizes, so the Kanit fit of
the whole acquired volume costs only the new data), and a metric converges
when its relative error is below tolerance, no trend is significant, no drift
large enough to matter can be excluded yet, and its running value is stable,
for long enough not to flicker. The volume is representative when every
tracked metric has converged and it is at least as deep as it is wide (a
thinner slab cannot see variations along z beyond its depth). The stop
decision is latched.

A metric is any callable ``f(labels, spacing_um) -> float`` of a
``(Z, Y, X)`` label subvolume and its ``(dz, dy, dx)`` spacing in
micrometres, wrapped in :class:`RevMetric`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from processing.errors import SliceShapeError
from processing.phases import Phases

__all__ = [
    "RevMetric",
    "phase_fraction",
    "default_metrics",
    "table1_metrics",
    "SubvolumeCurve",
    "subvolume_curve",
    "KanitFit",
    "fit_kanit",
    "kanit_from_curve",
    "Trend",
    "detect_trend",
    "RevTracker",
    "RevReport",
    "rev_report",
]

logger = logging.getLogger(__name__)

MetricFunc = Callable[[np.ndarray, tuple], float]


@dataclass(frozen=True)
class RevMetric:
    """A metric followed for REV.

    Parameters
    ----------
    name : str
        Key in the ``rev`` document, e.g. ``"volume_fraction.pore"``.
    func : callable
        ``func(labels, spacing_um) -> float`` on a ``(Z, Y, X)`` label
        subvolume with spacing ``(dz, dy, dx)`` in micrometres.
    additive : bool, optional
        True when the value of a stack of equal blocks is the mean of the
        block values (a volume fraction): coarser blocks are then averaged
        instead of re-measured.
    min_extent_um : float, optional
        Smallest block thickness and cube edge, in micrometres, on which the
        metric means something (a local thickness needs room for the spheres
        it measures). 0 means a single slice will do.
    """

    name: str
    func: MetricFunc
    additive: bool = False
    min_extent_um: float = 0.0

    def __post_init__(self):
        if not callable(self.func):
            raise TypeError(f"RevMetric {self.name!r}: func must be callable, got {self.func!r}")
        if not (math.isfinite(self.min_extent_um) and self.min_extent_um >= 0):
            raise ValueError(f"RevMetric {self.name!r}: min_extent_um must be >= 0, got {self.min_extent_um!r}")


def phase_fraction(label: int) -> MetricFunc:
    """Metric callable: share of the voxels that carry `label` (unassigned included)."""
    label = int(label)

    def fraction(labels, spacing_um=None):
        labels = np.asarray(labels)
        return float(np.count_nonzero(labels == label)) / labels.size if labels.size else float("nan")

    fraction.__name__ = f"phase_fraction_{label}"
    return fraction


def default_metrics(phases: Phases | None = None) -> tuple[RevMetric, ...]:
    """The volume fraction of every phase, named ``volume_fraction.<phase>``."""
    phases = Phases() if phases is None else phases
    return tuple(
        RevMetric(f"volume_fraction.{name}", phase_fraction(label), additive=True)
        for name, label in phases.labels.items()
    )


def _or_nan(value):
    return math.nan if value is None else float(value)


def table1_metrics(
    phases: Phases | None = None,
    *,
    transport_axis: int = 1,
    min_extent_um: float = 1.0,
    expensive: bool = True,
) -> tuple[RevMetric, ...]:
    """REV metrics for Table 1, computed by :mod:`processing.metrics` on each block.

    The volume fractions of :func:`default_metrics`, then (for the phases that
    play the roles) A_active / V_cell, the coverage of the active surface by
    the electrolyte and, with `expensive`, the mean local thickness of the
    active phase, the share of active material connected to the first face
    of `transport_axis`, the interconnected share of the pore and the
    geometric tortuosity of the electrolyte along `transport_axis` (``y+``).

    Parameters
    ----------
    phases : Phases, optional
    transport_axis : int, optional
        Axis of the tortuosity and of the current-collector face.
    min_extent_um : float, optional
        Smallest block thickness / cube edge for the surface and expensive
        metrics: they measure shapes, which a thin block cuts.
    expensive : bool, optional
        Include local thickness, connectivity and tortuosity (seconds per
        block on large slices).

    Returns
    -------
    tuple of RevMetric
    """
    from processing import metrics as m  # lazy: only needed when these metrics are asked for

    phases = Phases() if phases is None else phases
    out = list(default_metrics(phases))
    active = phases.roles.get("active")
    pore = phases.roles.get("pore")
    electrolyte = phases.roles.get("electrolyte")

    last = {}  # A/V and coverage read the same counts of a block: count it once

    def counts(block, spacing):
        if last.get("block") is not block:
            doc = m.counts_metrics(m.count_volume(block, phases=phases, threads=1), spacing_um=spacing, phases=phases)
            last.update(block=block, doc=doc)
        return last["doc"]

    def mask(block, name):
        return np.asarray(block) == phases.label(name)

    if active is not None:
        out.append(RevMetric(f"surface_area_per_cell_volume_um-1.{active}",
                             lambda b, s: _or_nan(counts(b, s)["surface_area_per_cell_volume_um-1"][active]),
                             min_extent_um=min_extent_um))
        if electrolyte is not None:
            out.append(RevMetric(f"coverage_share.{active}",
                                 lambda b, s: _or_nan(counts(b, s)["coverage_share"][active]),
                                 min_extent_um=min_extent_um))
    if expensive and active is not None:
        out.append(RevMetric(f"local_thickness_um.{active}.mean",
                             lambda b, s: _or_nan(m.local_thickness_summary(mask(b, active), spacing_um=s)["mean"]),
                             min_extent_um=min_extent_um))
        out.append(RevMetric(f"connected_share.{active}",
                             lambda b, s: _or_nan(m.connected_share(mask(b, active), axis=transport_axis)),
                             min_extent_um=min_extent_um))
    if expensive and pore is not None:
        out.append(RevMetric(f"interconnected_share.{pore}",
                             lambda b, s: _or_nan(m.interconnected_share(mask(b, pore))),
                             min_extent_um=min_extent_um))
    if expensive and electrolyte is not None:
        axis_name = "zyx"[transport_axis]
        out.append(RevMetric(f"tortuosity_geometric.{electrolyte}.{axis_name}+",
                             lambda b, s: _or_nan(m.geometric_tortuosity(mask(b, electrolyte), spacing_um=s,
                                                                         axis=transport_axis).forward),
                             min_extent_um=min_extent_um))
    return tuple(out)


def _spacing(spacing_um) -> tuple[float, float, float]:
    arr = np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,))
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing_um must be 3 positive finite values (dz, dy, dx), got {spacing_um!r}")
    return tuple(float(v) for v in arr)


def _check_tolerance(tolerance, name="tolerance"):
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"{name} must be a relative error in (0, 1), got {tolerance!r}")
    return float(tolerance)


def _check_volume(labels):
    if len(getattr(labels, "shape", ())) != 3:
        raise ValueError(f"labels must be a (Z, Y, X) array, got shape {getattr(labels, 'shape', None)!r}")
    return labels


# --------------------------------------------------------------------------- subvolume criterion


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


def _edge_voxels(edge_um, spacing):
    return tuple(max(1, int(round(edge_um / s))) for s in spacing)


def _rev_edge(edges, relative_std, tolerance):
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
    labels = _check_volume(labels)
    spacing = _spacing(spacing_um)
    tolerance = _check_tolerance(tolerance)
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
        size = _edge_voxels(edge, spacing)
        corners = _grid_corners(labels.shape, size, int(n_samples), rng)
        values = np.array([
            metric.func(np.asarray(labels[c[0]:c[0] + size[0], c[1]:c[1] + size[1], c[2]:c[2] + size[2]]), spacing)
            for c in corners
        ], dtype=float)
        mean = float(values.mean()) if values.size else math.nan
        std = float(values.std(ddof=1)) if values.size >= 2 else math.nan
        rel = std / abs(mean) if values.size >= 2 and mean != 0 else math.nan
        rows.append((size, float(np.prod(np.multiply(size, spacing))), values.size, mean, std, rel))
        all_corners.append(corners)
    voxels, volumes, n, mean, std, rel = (np.array(col) for col in zip(*rows))
    return SubvolumeCurve(
        edges_um=edges, voxels=voxels.reshape(-1, 3), volumes_um3=volumes.astype(float), n_samples=n.astype(int),
        mean=mean.astype(float), std=std.astype(float), relative_std=rel.astype(float),
        tolerance=tolerance, rev_edge_um=_rev_edge(edges, rel.astype(float), tolerance),
        corners=tuple(all_corners),
    )


# --------------------------------------------------------------------------- statistical criterion


@dataclass(frozen=True, eq=False)
class KanitFit:
    """Power law ``sigma^2(V) = K V^-alpha`` of the variance of a metric over volumes V.

    Attributes
    ----------
    K : float
        Prefactor, in (metric units)^2 um^(3 alpha).
    alpha : float
        Fitted exponent (1 for independent voxels; < 1 when correlations reach
        beyond the largest volume measured).
    alpha_used : float
        `alpha` clipped to the sanity bounds given to :func:`fit_kanit`; all
        predictions use it. An exponent above 1 would promise faster
        convergence than independent samples, which a finite sample of a
        correlated structure cannot support.
    mean : float
        Mean of the metric (the denominator of relative errors).
    volumes_um3, variances : (N,) ndarray of float
        The data fitted.
    """

    K: float
    alpha: float
    alpha_used: float
    mean: float
    volumes_um3: np.ndarray
    variances: np.ndarray

    def variance(self, volume_um3):
        """Predicted variance of the metric measured on one volume `volume_um3`.

        Extrapolated from the variance measured on the largest volume (the
        data most relevant to larger volumes) with the exponent `alpha_used`.
        """
        i = int(np.argmax(self.volumes_um3))
        v0, var0 = float(self.volumes_um3[i]), float(self.variances[i])
        if var0 == 0:
            var0 = self.K * v0 ** -self.alpha
        return var0 * (np.asarray(volume_um3, dtype=float) / v0) ** -self.alpha_used

    def relative_error(self, volume_um3, *, n=1, z=2.0):
        """Kanit's ``eps = z sigma(V) / (mean sqrt(n))`` of a mean over `n` volumes `volume_um3`.

        0 for a constant metric (an absent phase included), inf for a
        varying metric of mean 0.
        """
        sigma = float(np.sqrt(self.variance(volume_um3)))
        if sigma == 0:
            return 0.0
        if self.mean == 0:
            return math.inf
        return float(z * sigma / (abs(self.mean) * math.sqrt(n)))

    def volume_needed_um3(self, tolerance, *, z=2.0):
        """Single volume whose relative error reaches `tolerance` (0 for a constant metric,
        inf for a varying metric of mean 0)."""
        tolerance = _check_tolerance(tolerance)
        v0 = float(self.volumes_um3.max())
        var0 = float(self.variance(v0))
        if var0 == 0:
            return 0.0
        if self.mean == 0:
            return math.inf
        target_var = (tolerance * abs(self.mean) / z) ** 2
        return v0 * (var0 / target_var) ** (1 / self.alpha_used)


def fit_kanit(volumes_um3, variances, *, mean, weights=None, alpha_bounds=(0.5, 1.0)) -> KanitFit:
    """Fit ``sigma^2(V) = K V^-alpha`` by least squares in log-log.

    Parameters
    ----------
    volumes_um3 : (N,) array-like of float
        Subvolume volumes, at least 2 distinct values.
    variances : (N,) array-like of float
        Variance of the metric over the subvolumes of each volume. Zero
        variances (a constant metric) give ``K = 0``.
    mean : float
        Mean of the metric.
    weights : (N,) array-like of float, optional
        Least-squares weights, typically the degrees of freedom of each
        variance (the variance of ``log s^2`` is about ``2 / dof``).
    alpha_bounds : (float, float), optional
        Sanity bounds for the exponent used in predictions.

    Returns
    -------
    KanitFit
    """
    v = np.asarray(volumes_um3, dtype=float)
    s2 = np.asarray(variances, dtype=float)
    if v.ndim != 1 or v.shape != s2.shape:
        raise ValueError(f"volumes_um3 and variances must be 1-D of equal length, got {v.shape} and {s2.shape}")
    if np.any(~np.isfinite(v)) or np.any(v <= 0) or np.any(~np.isfinite(s2)) or np.any(s2 < 0):
        raise ValueError("volumes_um3 must be > 0 and variances >= 0 and finite")
    lo, hi = (float(b) for b in alpha_bounds)
    if not 0 < lo <= hi:
        raise ValueError(f"alpha_bounds must be 0 < low <= high, got {alpha_bounds!r}")
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    positive = s2 > 0
    if np.unique(v[positive]).size < 2:
        if positive.any():
            raise ValueError(f"fit_kanit needs non-zero variances at >= 2 distinct volumes, got volumes {v[positive]!r}")
        return KanitFit(K=0.0, alpha=1.0, alpha_used=1.0, mean=float(mean), volumes_um3=v, variances=s2)
    x, y, w = np.log(v[positive]), np.log(s2[positive]), w[positive]
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(w))
    alpha = float(-slope)
    return KanitFit(
        K=float(math.exp(intercept)), alpha=alpha, alpha_used=float(np.clip(alpha, lo, hi)),
        mean=float(mean), volumes_um3=v, variances=s2,
    )


def kanit_from_curve(curve: SubvolumeCurve, *, alpha_bounds=(0.5, 1.0)) -> KanitFit:
    """Kanit fit on the cube variances of a :class:`SubvolumeCurve` (edges with >= 2 cubes)."""
    # An edge whose cubes gave no value (a small cube without the measured surface) says nothing.
    ok = (curve.n_samples >= 2) & np.isfinite(curve.mean) & np.isfinite(curve.std)
    mean = float(np.average(curve.mean[ok], weights=curve.volumes_um3[ok] * curve.n_samples[ok]))
    return fit_kanit(curve.volumes_um3[ok], curve.std[ok] ** 2, mean=mean,
                     weights=curve.n_samples[ok] - 1, alpha_bounds=alpha_bounds)


# --------------------------------------------------------------------------- trend along z


@dataclass(frozen=True)
class Trend:
    """Linear trend of a metric along z.

    Attributes
    ----------
    slope_per_um : float
        Change of the metric per micrometre of depth.
    stderr_per_um : float
        Standard error of the slope, corrected for the autocorrelation left
        between blocks.
    p_value : float
        Two-sided p-value of "no slope".
    relative_drift : float
        Slope times the depth analysed, relative to the mean: how far the
        metric moves across the volume.
    relative_drift_stderr : float
        Standard error of `relative_drift`.
    block_um : float
        Thickness of the blocks whose means were regressed.
    n_blocks : int
        Number of blocks regressed (0 when the series was too short to test).
    not_stationary : bool
        Significant at the level asked and a drift of practical size.
    reason : str
        Human-readable verdict.
    """

    slope_per_um: float
    stderr_per_um: float
    p_value: float
    relative_drift: float
    relative_drift_stderr: float
    block_um: float
    n_blocks: int
    not_stationary: bool
    reason: str

    @property
    def decided(self) -> bool:
        """True when there were enough blocks to test."""
        return self.n_blocks > 0


def _lag1(resid):
    d = resid - resid.mean()
    den = float(d @ d)
    return float(d[:-1] @ d[1:]) / den if den > 0 else 0.0


def detect_trend(
    values,
    *,
    block_um: float,
    tolerance: float = 0.05,
    significance: float = 0.01,
    min_drift: float = 0.5,
    min_blocks: int = 8,
    max_lag1: float = 0.3,
    name: str = "metric",
) -> Trend:
    """Test a series of block values along z for a linear trend.

    Adjacent blocks are merged (pairwise, repeatedly) until the lag-1
    autocorrelation of the regression residuals is at most `max_lag1` or
    fewer than ``2 * min_blocks`` blocks would remain; the slope's standard
    error is then inflated by the AR(1) factor ``sqrt((1 + r) / (1 - r))``.

    Parameters
    ----------
    values : (N,) array-like of float
        Metric measured on consecutive blocks of equal thickness, top first.
    block_um : float
        Thickness of one block in micrometres.
    tolerance : float, optional
        REV tolerance (relative).
    significance : float, optional
        Two-sided test level.
    min_drift : float, optional
        Practical threshold, as a fraction of `tolerance`: the trend must move
        the metric by at least ``min_drift * tolerance`` (relative) across the
        depth analysed to count.
    min_blocks : int, optional
        Fewest blocks a test is made on; below, the trend is undecided.
    max_lag1 : float, optional
        Autocorrelation below which blocks count as independent.
    name : str, optional
        Metric name used in the verdict.

    Returns
    -------
    Trend
    """
    y = np.asarray(values, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {y.shape}")
    if not (block_um > 0):
        raise ValueError(f"block_um must be > 0, got {block_um!r}")
    tolerance = _check_tolerance(tolerance)
    if y.size < max(int(min_blocks), 3):
        return Trend(math.nan, math.nan, math.nan, math.nan, math.nan, float(block_um), 0, False,
                     f"{name}: {y.size} blocks, too few to test for a trend along z")
    while True:
        x = (np.arange(y.size) + 0.5) * block_um
        slope, intercept = np.polyfit(x, y, 1)
        resid = y - (slope * x + intercept)
        r1 = _lag1(resid)
        if r1 <= max_lag1 or y.size // 2 < 2 * min_blocks:
            break
        y = y[: y.size // 2 * 2].reshape(-1, 2).mean(axis=1)
        block_um *= 2
    n = y.size
    sxx = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(float(resid @ resid) / (n - 2) / sxx) if sxx > 0 else math.inf
    r = min(max(r1, 0.0), 0.9)
    se *= math.sqrt((1 + r) / (1 - r))
    mean = float(y.mean())
    depth_um = n * block_um
    if se == 0:
        p = 0.0 if slope != 0 else 1.0
    else:
        p = float(2 * stats.t.sf(abs(slope) / se, n - 2))
    # Relative to the mean; a constant series (an absent phase) has no drift.
    rel_drift = 0.0 if slope == 0 else slope * depth_um / abs(mean) if mean != 0 else math.copysign(math.inf, slope)
    rel_se = 0.0 if se == 0 else se * depth_um / abs(mean) if mean != 0 else math.inf
    flagged = p < significance and abs(rel_drift) >= min_drift * tolerance
    per_um = slope / abs(mean) if mean != 0 else math.nan
    if flagged:
        reason = (f"{name} drifts {per_um:+.1%} of its mean per um of depth "
                  f"({rel_drift:+.1%} over {depth_um:.3g} um, p = {p:.1g}): not stationary")
    else:
        reason = f"{name}: no trend along z ({rel_drift:+.1%} over {depth_um:.3g} um, p = {p:.2g})"
    return Trend(float(slope), float(se), p, float(rel_drift), float(rel_se), float(block_um), n, bool(flagged), reason)


# --------------------------------------------------------------------------- streaming


class _MetricState:
    """Dyadic block values of one metric along z and its hysteresis memory."""

    def __init__(self, metric: RevMetric, base_slices: int):
        self.metric = metric
        self.base = base_slices
        self.levels: list[list[float]] = []  # levels[k][i]: block i of 2**k * base slices
        self.history: list[list[float]] = []  # [depth, running value, relative error]
        self.streak_start: int | None = None
        self.streak_updates = 0
        self.curve: SubvolumeCurve | None = None
        self.curve_depth = 0
        self.entry: dict = {}

    def extend(self, labels, depth, spacing):
        """Measure every block completed by `depth` slices."""
        level = 0
        while True:
            size = self.base << level
            if size > depth:
                break
            if level == len(self.levels):
                self.levels.append([])
            blocks = self.levels[level]
            while (len(blocks) + 1) * size <= depth:
                i = len(blocks)
                if level and self.metric.additive:
                    below = self.levels[level - 1]
                    blocks.append(0.5 * (below[2 * i] + below[2 * i + 1]))
                else:
                    block = np.asarray(labels[i * size:(i + 1) * size])
                    blocks.append(float(self.metric.func(block, spacing)))
            level += 1


def _block_variance(st: _MetricState, level: int) -> tuple[float, float]:
    """Variance of the metric over blocks of `level` and its degrees of freedom.

    For additive metrics, overlapping batch means (Meketon and Schmeiser,
    1984) over the base blocks: every window of ``2**level`` consecutive base
    blocks, about 1.5 times the degrees of freedom of disjoint blocks from the
    same slices. Otherwise the disjoint blocks measured at that level.
    """
    if not st.metric.additive:
        blocks = st.levels[level]
        return float(np.var(blocks, ddof=1)), len(blocks) - 1.0
    y = np.asarray(st.levels[0], dtype=float)
    n, m = y.size, 1 << level
    if m == 1:
        return float(np.var(y, ddof=1)), n - 1.0
    c = np.concatenate(([0.0], np.cumsum(y - y.mean())))
    windows = (c[m:] - c[:-m]) / m
    var = n / ((n - m + 1) * (n - m)) * float(windows @ windows)
    return var, 1.5 * (n / m - 1)


class RevTracker:
    """Streaming REV decision for a volume growing along z.

    Feed it the labels acquired so far after each new slice (or batch of
    slices); only the new slices are read, plus a bounded number of cubes for
    the subvolume curve on a geometric schedule.

    Parameters
    ----------
    spacing_um : tuple of 3 float
        Voxel size ``(dz, dy, dx)`` in micrometres.
    metrics : sequence of RevMetric, optional
        Tracked metrics; default :func:`default_metrics` (every phase
        fraction).
    tolerance : float, optional
        Relative error at which a metric is converged (default 5 %).
    tolerances : mapping of str to float, optional
        Per-metric overrides of `tolerance`.
    confidence : float, optional
        Two-sided confidence of the relative error: ``z`` is the Student
        quantile with the degrees of freedom of the coarsest blocks fitted
        (about 2, Kanit's value, at 0.95 with many blocks).
    hold_updates : int, optional
        Consecutive updates over which every criterion must hold.
    hold_fraction : float, optional
        ... and the span of depth over which they must hold, as a fraction of
        the depth (the verdict is re-earned after any failure).
    min_blocks : int, optional
        Fewest blocks of one size used in a variance or a trend test.
    fit_levels : int, optional
        Number of block sizes (the coarsest with `min_blocks` blocks, each
        twice the previous) in the Kanit fit.
    alpha_bounds : (float, float), optional
        Sanity bounds of the Kanit exponent used in predictions.
    trend_significance, trend_min_drift : float, optional
        See :func:`detect_trend`: a significant trend of practical size marks
        the metric ``not_stationary``.
    max_drift, drift_sigmas : float, optional
        Absence of evidence is not evidence of absence: a metric converges
        only when ``|drift| + drift_sigmas * stderr`` of its relative drift
        across the depth analysed is at most ``max_drift * tolerance``. With
        the default 2, continuing to twice the depth under any linear trend
        within `drift_sigmas` standard errors of the data moves the value by
        at most the tolerance: a trend too weak to be significant yet cannot
        carry the value away.
    min_depth_um : float, optional
        No verdict of representativeness below this depth. Default: the
        smaller lateral extent of the slices, i.e. the volume must be at least
        as deep as it is wide. Statistics of a thinner slab say nothing about
        variations along z on scales beyond its depth (a gradient over the
        whole acquisition looks flat in its first slices). 0 disables.
    subvolume_samples : int, optional
        Cubes per edge of the subvolume curve (for ``rev_edge_um``), redrawn
        each time the depth has grown by a quarter.
    rng : None, int or numpy.random.Generator, optional
        Seed of the subvolume positions.

    Examples
    --------
    >>> import numpy as np
    >>> tracker = RevTracker(spacing_um=(0.05, 0.05, 0.05), rng=0)
    >>> labels = np.random.default_rng(0).integers(1, 4, (64, 32, 32)).astype(np.uint8)
    >>> doc = tracker.update(labels)
    >>> sorted(doc["metrics"])
    ['volume_fraction.active', 'volume_fraction.electrolyte', 'volume_fraction.pore']
    """

    def __init__(
        self,
        *,
        spacing_um,
        metrics: Sequence[RevMetric] | None = None,
        tolerance: float = 0.05,
        tolerances: Mapping[str, float] | None = None,
        confidence: float = 0.95,
        hold_updates: int = 3,
        hold_fraction: float = 0.1,
        min_blocks: int = 8,
        fit_levels: int = 3,
        alpha_bounds=(0.5, 1.0),
        trend_significance: float = 0.01,
        trend_min_drift: float = 0.5,
        max_drift: float = 2.0,
        drift_sigmas: float = 1.0,
        min_depth_um: float | None = None,
        subvolume_samples: int = 16,
        rng=None,
    ):
        self.spacing = _spacing(spacing_um)
        metrics = default_metrics() if metrics is None else tuple(metrics)
        if not metrics or not all(isinstance(m, RevMetric) for m in metrics):
            raise ValueError(f"metrics must be a non-empty sequence of RevMetric, got {metrics!r}")
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics: names must be unique, got {names!r}")
        self.tolerance = _check_tolerance(tolerance)
        self.tolerances = {n: self.tolerance for n in names}
        for name, tol in (tolerances or {}).items():
            if name not in self.tolerances:
                raise ValueError(f"tolerances: unknown metric {name!r}; tracked metrics are {names!r}")
            self.tolerances[name] = _check_tolerance(tol, f"tolerances[{name!r}]")
        if not 0.5 < confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")
        if int(hold_updates) < 1:
            raise ValueError(f"hold_updates must be >= 1, got {hold_updates!r}")
        if not 0 <= hold_fraction < 1:
            raise ValueError(f"hold_fraction must be in [0, 1), got {hold_fraction!r}")
        if int(min_blocks) < 3:
            raise ValueError(f"min_blocks must be >= 3, got {min_blocks!r}")
        self.confidence = float(confidence)
        self.hold_updates = int(hold_updates)
        self.hold_fraction = float(hold_fraction)
        self.min_blocks = int(min_blocks)
        if int(fit_levels) < 2:
            raise ValueError(f"fit_levels must be >= 2, got {fit_levels!r}")
        self.fit_levels = int(fit_levels)
        self.alpha_bounds = tuple(alpha_bounds)
        self.trend_significance = float(trend_significance)
        self.trend_min_drift = float(trend_min_drift)
        if not (max_drift > 0 and drift_sigmas >= 0):
            raise ValueError(f"max_drift must be > 0 and drift_sigmas >= 0, got {max_drift!r} and {drift_sigmas!r}")
        self.max_drift = float(max_drift)
        self.drift_sigmas = float(drift_sigmas)
        self.subvolume_samples = int(subvolume_samples)
        if min_depth_um is not None and not (math.isfinite(min_depth_um) and min_depth_um >= 0):
            raise ValueError(f"min_depth_um must be >= 0, got {min_depth_um!r}")
        self.min_depth_um = min_depth_um
        self._rng = np.random.default_rng(rng)
        dz = self.spacing[0]
        self._states = [_MetricState(m, max(1, math.ceil(m.min_extent_um / dz - 1e-9))) for m in metrics]
        self._xy: tuple[int, int] | None = None
        self.depth = 0
        self._document: dict | None = None
        self._stop: dict | None = None

    # -- public state -------------------------------------------------------

    @property
    def representative(self) -> bool:
        """Whether the last update found the volume representative."""
        return bool(self._document and self._document["representative"])

    @property
    def stop(self) -> dict | None:
        """The latched stop document (``reason``, ``depth_slices``, ``rev``, ``evidence``), or None."""
        return self._stop

    def document(self) -> dict:
        """The last ``rev`` document (JSON-ready)."""
        if self._document is None:
            raise ValueError("RevTracker.document: no update yet")
        return self._document

    def history(self, name: str) -> np.ndarray:
        """``(N, 3)`` array of (depth in slices, running value, relative error or NaN) of
        metric `name` at each update: the curve against depth."""
        for st in self._states:
            if st.metric.name == name:
                return np.array(st.history, dtype=float).reshape(-1, 3)
        raise KeyError(f"unknown metric {name!r}")

    # -- update -------------------------------------------------------------

    def update(self, labels, *, values: Mapping[str, float] | None = None) -> dict:
        """Take the volume acquired so far into account.

        Parameters
        ----------
        labels : (Z, Y, X) array-like of int
            All labels acquired so far (NumPy or Zarr: only new slices and the
            sampled cubes are read). Z must not shrink and (Y, X) not change.
        values : mapping of str to float, optional
            Whole-volume values computed elsewhere (incrementally) for some
            metrics; otherwise the value is the mean over the blocks measured,
            exact for additive metrics.

        Returns
        -------
        dict
            The ``rev`` document: ``representative``, ``depth_slices``,
            ``depth_um``, ``tolerance``, ``metrics`` {name: {``value``,
            ``relative_error``, ``converged``, ``rev_edge_um``,
            ``slices_needed``, ``tolerance``, ``not_stationary``, ``alpha``,
            ``trend_relative_drift``, ``reason``}}, ``slices_needed`` (the
            most any metric or the minimum depth still needs, None when
            unknown), ``not_stationary`` (names) and ``reasons`` (why not
            representative, empty when it is).
        """
        labels = _check_volume(labels)
        depth, ny, nx = (int(s) for s in labels.shape)
        if self._xy is None:
            self._xy = (ny, nx)
        elif self._xy != (ny, nx):
            raise SliceShapeError(f"RevTracker.update: slices are {ny}x{nx}, the volume started with {self._xy[0]}x{self._xy[1]}")
        if depth < self.depth:
            raise ValueError(f"RevTracker.update: depth went from {self.depth} to {depth} slices; it can only grow")
        self.depth = depth
        values = dict(values or {})
        entries, reasons, drifting = {}, [], []
        for st in self._states:
            st.extend(labels, depth, self.spacing)
            entry = self._assess(st, labels, values.get(st.metric.name))
            entries[st.metric.name] = entry
            if entry["not_stationary"]:
                drifting.append(st.metric.name)
            if not entry["converged"]:
                reasons.append(entry["reason"])
        dz, dy, dx = self.spacing
        min_depth_um = min(ny * dy, nx * dx) if self.min_depth_um is None else self.min_depth_um
        min_slices = math.ceil(min_depth_um / dz - 1e-9)
        if depth < min_slices:
            reasons.append(f"depth {depth * dz:.3g} um is below the minimum {min_depth_um:.3g} um "
                           f"({min_slices - depth} more slices)")
        representative = not reasons
        needed = [e["slices_needed"] for e in entries.values()]
        slices_needed = None if None in needed else max(needed + [max(0, min_slices - depth)])
        self._document = {
            "representative": representative,
            "depth_slices": depth,
            "depth_um": depth * dz,
            "min_depth_um": min_depth_um,
            "slices_needed": 0 if representative else slices_needed,
            "tolerance": self.tolerance,
            "confidence": self.confidence,
            "metrics": entries,
            "not_stationary": drifting,
            "reasons": reasons,
        }
        if representative and self._stop is None:
            self._stop = self._stop_document()
            logger.info("REV reached at %d slices: %s", depth, self._stop["reason"])
        return self._document

    def _assess(self, st: _MetricState, labels, value):
        name, tol = st.metric.name, self.tolerances[st.metric.name]
        dz, dy, dx = self.spacing
        ny, nx = self._xy
        area = ny * dy * nx * dx
        base = st.levels[0] if st.levels else []
        analysed = len(base) * st.base
        if value is None:
            value = float(np.mean(base)) if base else math.nan
        st.history.append([self.depth, value, math.nan])
        entry = {"value": value, "relative_error": None, "converged": False, "rev_edge_um": None,
                 "slices_needed": None, "tolerance": tol, "not_stationary": False, "alpha": None, "reason": None}

        # Statistical criterion on the dyadic blocks of the whole acquired volume.
        # Only the coarsest block sizes enter the fit: below the correlation
        # length sigma^2 decays slower than 1/V and would bias alpha low.
        used = [(lvl, *_block_variance(st, lvl)) for lvl, blocks in enumerate(st.levels)
                if len(blocks) >= self.min_blocks]
        used = used[-self.fit_levels:]
        rel_err = math.inf
        if len(used) >= 2 and math.isfinite(value):
            lvls, variances, dofs = zip(*used)
            vols = [area * dz * (st.base << lvl) for lvl in lvls]
            fit = fit_kanit(vols, variances, mean=value, weights=dofs, alpha_bounds=self.alpha_bounds)
            z = float(stats.t.ppf(0.5 + self.confidence / 2, dofs[-1]))
            rel_err = fit.relative_error(area * dz * analysed, z=z)
            needed = math.ceil(fit.volume_needed_um3(tol, z=z) / (area * dz)) if math.isfinite(rel_err) else None
            entry.update(relative_error=rel_err, alpha=fit.alpha,
                         slices_needed=None if needed is None else max(0, needed - analysed))

        trend = detect_trend(base, block_um=st.base * dz, tolerance=tol, significance=self.trend_significance,
                             min_drift=self.trend_min_drift, min_blocks=self.min_blocks, name=name)
        entry["not_stationary"] = trend.not_stationary
        entry["trend_relative_drift"] = None if not trend.decided else trend.relative_drift
        entry["rev_edge_um"] = self._rev_edge(st, labels, tol)

        window = max(1, math.ceil(self.hold_fraction * self.depth))
        recent = [v for d, v, _ in st.history if d >= self.depth - window]
        spread = max(abs(v - value) for v in recent)
        swing = 0.0 if spread == 0 else spread / abs(value) if value else math.inf
        if not trend.decided:
            failure = trend.reason
        elif trend.not_stationary:
            failure = trend.reason
        elif not abs(trend.relative_drift) + self.drift_sigmas * trend.relative_drift_stderr <= self.max_drift * tol:
            failure = (f"{name}: a drift up to {abs(trend.relative_drift) + self.drift_sigmas * trend.relative_drift_stderr:.1%}"
                       f" across the depth cannot be excluded yet (allowed {self.max_drift * tol:.1%})")
        elif not rel_err <= tol:
            more = f", about {entry['slices_needed']} more slices" if entry["slices_needed"] is not None else ""
            failure = (f"{name}: relative error {rel_err:.1%} > {tol:.0%}{more}" if math.isfinite(rel_err)
                       else f"{name}: too few blocks for the statistical criterion yet")
        elif not swing <= tol / 2:
            failure = f"{name}: running value moved {swing:.1%} over the last {window} slices"
        else:
            failure = None
        if failure is None:
            if st.streak_start is None:
                st.streak_start, st.streak_updates = self.depth, 0
            st.streak_updates += 1
            held = self.depth - st.streak_start
            if st.streak_updates < self.hold_updates or held < self.hold_fraction * self.depth:
                failure = (f"{name}: within tolerance for {st.streak_updates} update(s) over {held} slices; "
                           f"holding for {self.hold_updates} updates and {self.hold_fraction:.0%} of the depth")
        else:
            st.streak_start, st.streak_updates = None, 0
        entry["converged"] = failure is None
        entry["reason"] = failure
        st.history[-1][2] = rel_err
        # JSON-ready: plain floats, null for anything not finite.
        for key in ("value", "relative_error", "alpha", "trend_relative_drift"):
            v = entry[key]
            entry[key] = float(v) if v is not None and math.isfinite(v) else None
        st.entry = entry
        return entry

    def _rev_edge(self, st: _MetricState, labels, tol):
        """REV edge from the subvolume curve, redrawn when the depth grew by a quarter."""
        if st.curve is None or self.depth >= 1.25 * st.curve_depth:
            extent = min(n * s for n, s in zip((self.depth, *self._xy), self.spacing))
            if extent >= max(4 * max(self.spacing), st.metric.min_extent_um):
                st.curve = subvolume_curve(labels[: self.depth], st.metric, spacing_um=self.spacing,
                                           n_samples=self.subvolume_samples, tolerance=tol, rng=self._rng)
                st.curve_depth = self.depth
        return None if st.curve is None else st.curve.rev_edge_um

    def _stop_document(self):
        doc = self._document
        evidence = {
            st.metric.name: {
                "relative_error": st.entry["relative_error"],
                "alpha": st.entry["alpha"],
                "trend_relative_drift": st.entry["trend_relative_drift"],
                "converged_since_slice": st.streak_start,
                "blocks": [len(b) for b in st.levels],
            }
            for st in self._states
        }
        reason = (f"all {len(self._states)} tracked metrics within their tolerance "
                  f"(relative error at {self.confidence:.0%} confidence, no trend along z, "
                  f"stable over the last {self.hold_fraction:.0%} of the depth) at {doc['depth_slices']} slices")
        return {"reason": reason, "depth_slices": doc["depth_slices"], "rev": doc, "evidence": evidence}


# --------------------------------------------------------------------------- offline report


@dataclass(frozen=True, eq=False)
class RevReport:
    """REV analysis of a finished volume (the paper's Figure S8, plus the depth view).

    Attributes
    ----------
    curves : dict of str to SubvolumeCurve
        Relative std against cube edge, per metric, on the whole volume.
    depth : dict of str to (N, 3) ndarray
        Per metric: depth in slices, running value and relative error, as the
        tracker saw them while replaying the volume slab by slab.
    stop_depth_slices : int or None
        Where the tracker would have stopped.
    document : dict
        The last ``rev`` document (JSON-ready).
    """

    curves: dict
    depth: dict
    stop_depth_slices: int | None
    document: dict

    def to_dict(self) -> dict:
        """JSON-ready dict: the ``rev`` document plus ``curves`` and ``depth_curves``."""
        def clean(a):
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]

        return {
            **self.document,
            "stop_depth_slices": self.stop_depth_slices,
            "curves": {name: {"edge_um": clean(c.edges_um), "relative_std": clean(c.relative_std),
                              "n_samples": [int(n) for n in c.n_samples], "rev_edge_um": c.rev_edge_um}
                       for name, c in self.curves.items()},
            "depth_curves": {name: {"depth_slices": [int(d) for d in h[:, 0]], "value": clean(h[:, 1]),
                                    "relative_error": clean(h[:, 2])}
                             for name, h in self.depth.items()},
        }


def rev_report(labels, *, spacing_um, metrics: Sequence[RevMetric] | None = None, steps: int = 64,
               n_samples: int = 24, rng=None, **tracker_options) -> RevReport:
    """REV report of a finished volume: subvolume curves and a replay along z.

    Parameters
    ----------
    labels : (Z, Y, X) array-like of int
    spacing_um : tuple of 3 float
        ``(dz, dy, dx)`` in micrometres.
    metrics : sequence of RevMetric, optional
        Default :func:`default_metrics`.
    steps : int, optional
        Number of tracker updates over the depth (the resolution of the depth
        curves and of the stop depth).
    n_samples : int, optional
        Cubes per edge of the subvolume curves.
    rng : None, int or numpy.random.Generator, optional
    **tracker_options
        Passed to :class:`RevTracker` (tolerance, confidence, ...).

    Returns
    -------
    RevReport
    """
    labels = _check_volume(labels)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    rng = np.random.default_rng(rng)
    metrics = default_metrics() if metrics is None else tuple(metrics)
    tracker = RevTracker(spacing_um=spacing_um, metrics=metrics, rng=rng, **tracker_options)
    depth = labels.shape[0]
    stop = None
    for d in np.unique(np.linspace(0, depth, int(steps) + 1).round().astype(int)[1:]):
        tracker.update(labels[:d])
        if stop is None and tracker.stop is not None:
            stop = int(d)
    curves = {m.name: subvolume_curve(labels, m, spacing_um=spacing_um, n_samples=n_samples,
                                      tolerance=tracker.tolerances[m.name], rng=rng) for m in metrics}
    return RevReport(curves=curves, depth={m.name: tracker.history(m.name) for m in metrics},
                     stop_depth_slices=stop, document=tracker.document())

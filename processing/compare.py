"""Table 1 of several volumes side by side, each value with its uncertainty (pure).

The uncertainty of a Table 1 value is its **sampling uncertainty**: how much the same metric
would differ on another volume of the same size cut from the same material. It comes from the
REV analysis of the volume itself:

1. every Table 1 metric is measured on non-overlapping cubes of growing edge
   (:func:`processing.rev.subvolume_curve`: the subvolume curve of Figure S8 of the reference
   paper, one :func:`processing.metrics.table1` per cube gives every metric at once);
2. Kanit's law ``sigma^2(V) = K V^-alpha`` is fitted on the cube variances
   (:func:`processing.rev.kanit_from_curve`; its exponent is reported); the variances of the
   three largest edges are extrapolated to the volume of the whole sample with the asymptotic
   exponent ``alpha = 1`` (a mean over a volume much larger than the metric's integral range,
   as the largest cubes are) and pooled (geometric mean weighted by their degrees of freedom):
   ``u = sigma(V_volume)`` is the standard uncertainty (one standard deviation) of the
   whole-volume value. Kanit's relative error of that value is ``eps = 2 u / |value|``.

   Calibration (``tests/benchmarks/bench_compare.py``): over samples of one material (the
   16 64^3 octants of two 128^3 generated volumes), the spread of each value divided by its
   ``u`` has a median of 0.95 over the metrics (0.37 for the interconnected pore share and
   0.60 for the connected share: conservative; 1.48 for the standard deviation of the active
   local thickness: its ``u`` is too small). Extrapolating with the fitted exponent (0.45-1.1
   on those samples) gave a ``u`` about 1.35x too large: below a few integral ranges the cube
   variance decays slower than it does beyond.

Two samples differ on a metric when ``|a - b| > k * sqrt(u_a^2 + u_b^2)`` (``k = 2`` by
default: a two-sided 95 % test for one metric when both are normal).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from processing.metrics import table1
from processing.phases import Phases
from processing.rev import RevMetric, kanit_from_curve, subvolume_curve

__all__ = [
    "UNCERTAINTY_METHOD",
    "MetricUncertainty",
    "SampleTable",
    "flatten_metrics",
    "sample_table",
    "Difference",
    "difference",
]

logger = logging.getLogger(__name__)

UNCERTAINTY_METHOD = (
    "standard uncertainty u = sigma(V) of the whole-volume value: the variances of the metric over "
    "subvolume cubes (the REV subvolume curve) of the 3 largest cube edges extrapolated to the volume V of "
    "the sample with Kanit's law sigma^2(V) = K V^-alpha at its asymptotic exponent alpha = 1, and pooled; "
    "Kanit relative error = 2 u / |value|"
)

# Largest cube edges whose extrapolated variances are pooled (as the REV tracker fits its
# coarsest block sizes only: below the correlation length the variance decays differently).
_POOLED_EDGES = 3
# Kanit exponent of the extrapolation: 1, the variance of a mean over many integral ranges.
_ALPHA_EXTRAPOLATED = 1.0
# Metrics-document fields that are not Table 1 values.
# geometry, bookkeeping and the metrics' own error figures: not compared as Table 1 values
_NOT_VALUES = {"depth_slices", "spacing_um", "details", "targeted_volume_ratio", "expensive_depth_slices",
               "expensive_windows", "face_valid_share", "sampling_error"}


def flatten_metrics(doc) -> dict[str, float | None]:
    """Every Table 1 value of a ``metrics`` document under a dotted name.

    Parameters
    ----------
    doc : dict
        From :func:`processing.metrics.table1`.

    Returns
    -------
    dict of str to float or None
        E.g. ``{"volume_fraction.active": 0.45, "tortuosity_geometric.electrolyte.y+": 1.3,
        "local_thickness_um.active.mean": 0.7, "inner_porosity_share": 0.001, ...}``, in the
        document's order; None where the document has None.
    """
    out: dict[str, float | None] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        elif value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = None if value is None or not math.isfinite(value) else float(value)

    for key, value in doc.items():
        if key not in _NOT_VALUES:
            walk(key, value)
    return out


@dataclass(frozen=True)
class MetricUncertainty:
    """One Table 1 value of one volume with its sampling uncertainty.

    Attributes
    ----------
    value : float or None
        On the whole volume (None where the metric is undefined).
    uncertainty : float or None
        Standard uncertainty ``u`` in the metric's unit (see the module docstring); None when
        fewer than two cube edges gave a variance (``reason`` says why).
    relative_error : float or None
        Kanit's ``2 u / |value|``.
    alpha : float or None
        Fitted Kanit exponent (reported; the extrapolation uses the asymptotic exponent 1).
    edges_um, relative_std : tuple of float
        The subvolume curve (relative std over the cubes against the cube edge; NaN where
        fewer than 2 cubes had a value).
    n_samples : tuple of int
        Cubes with a value at each edge.
    reason : str or None
        Why `uncertainty` is None.
    """

    value: float | None
    uncertainty: float | None
    relative_error: float | None
    alpha: float | None
    edges_um: tuple
    relative_std: tuple
    n_samples: tuple
    reason: str | None = None


@dataclass(frozen=True, eq=False)
class SampleTable:
    """Table 1 of one volume with the uncertainty of every value.

    Attributes
    ----------
    metrics : dict
        The ``metrics`` document of the whole volume (``table1(..., details=True)``).
    uncertainty : dict of str to MetricUncertainty
        Per flattened metric name (:func:`flatten_metrics`).
    volume_um3 : float
        Volume of the sample (all voxels).
    """

    metrics: dict
    uncertainty: dict
    volume_um3: float


def _finite(value):
    return float(value) if value is not None and math.isfinite(value) else None


def sample_table(labels, *, spacing_um, phases=Phases(), transport_axis=1, n_samples=16, edges_um=None,
                 min_edge_um=1.0, rng=None, threads=None) -> SampleTable:
    """Table 1 of a label volume and the sampling uncertainty of each value.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase labels (phase i of `phases` is label i + 1, 0 unassigned).
    spacing_um : sequence of 3 float
        ``(dz, dy, dx)`` in micrometres.
    phases : Phases
    transport_axis : int
        0 z, 1 y, 2 x.
    n_samples : int
        Cubes per edge (>= 2); more gives a steadier variance and costs proportionally.
    edges_um : sequence of float, optional
        Cube edges in micrometres; default 8 edges spaced geometrically from `min_edge_um` to
        half the smallest extent of the volume (larger cubes fit only once: no variance).
    min_edge_um : float
        Smallest cube edge by default: network metrics on cubes much smaller than the
        structures measure the cube, not the material (1 um, as the REV metrics of
        :func:`processing.rev.table1_metrics`).
    rng : None, int or numpy.random.Generator
        Seed of the cube positions.
    threads : int, optional
        Threads of :func:`processing.metrics.table1`.

    Returns
    -------
    SampleTable
        A cube on which :func:`processing.metrics.table1` raises ``ValueError`` (degenerate,
        e.g. one phase filling it) is left out of the statistics, with a logged warning.

    Raises
    ------
    ValueError
        Bad `labels`, `spacing_um`, `n_samples` or `edges_um` (named).
    """
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples!r}")
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a (Z, Y, X) array, got shape {labels.shape!r}")
    doc = table1(labels, spacing_um=spacing_um, phases=phases, transport_axis=transport_axis, details=True,
                 threads=threads)
    values = flatten_metrics(doc)
    spacing = tuple(float(s) for s in doc["spacing_um"])
    volume_um3 = float(np.prod(labels.shape) * np.prod(spacing))
    if edges_um is None:
        half = min(n * s for n, s in zip(labels.shape, spacing)) / 2
        lo = max(float(min_edge_um), 4 * max(spacing))
        edges_um = np.geomspace(lo, half, 8) if lo < half else [half]

    # One table1 per cube gives every metric: record them all, the curve only supplies the cubes.
    records: list[dict] = []
    failed: list[str] = []

    def measure(block, block_spacing):
        try:
            cube = table1(np.ascontiguousarray(block), spacing_um=block_spacing, phases=phases,
                          transport_axis=transport_axis, details=True, threads=threads)
        except ValueError as exc:
            # A degenerate cube (e.g. one phase filling it: an infinite local thickness) has no
            # values; it must not sink the whole table.
            failed.append(f"{block.shape}: {exc}")
            cube = {}
        records.append(flatten_metrics(cube))
        return math.nan  # the statistics are taken per metric below

    curve = subvolume_curve(labels, RevMetric("table1", measure), spacing_um=spacing, edges_um=edges_um,
                            n_samples=n_samples, rng=rng)
    if failed:
        logger.warning("%d of %d subvolume cubes gave no Table 1 (left out of the uncertainties); first: %s",
                       len(failed), len(records), failed[0])
    bounds = np.concatenate(([0], np.cumsum(curve.n_samples)))
    per_edge = [records[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    uncertainty = {name: _uncertainty(name, value, curve, per_edge, volume_um3) for name, value in values.items()}
    return SampleTable(metrics=doc, uncertainty=uncertainty, volume_um3=volume_um3)


def _uncertainty(name, value, curve, per_edge, volume_um3) -> MetricUncertainty:
    means, stds, counts = [], [], []
    for cubes in per_edge:
        v = np.array([c[name] for c in cubes if c.get(name) is not None], dtype=float)
        counts.append(v.size)
        means.append(float(v.mean()) if v.size else math.nan)
        stds.append(float(v.std(ddof=1)) if v.size >= 2 else math.nan)
    means, stds, counts = np.array(means), np.array(stds), np.array(counts, dtype=int)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(counts >= 2, stds / np.abs(means), math.nan)
    rel = np.where(np.isfinite(rel), rel, math.nan)
    common = dict(value=value, edges_um=tuple(float(e) for e in curve.edges_um),
                  relative_std=tuple(float(r) for r in rel), n_samples=tuple(int(n) for n in counts))
    if value is None:
        return MetricUncertainty(uncertainty=None, relative_error=None, alpha=None,
                                 reason="undefined on the whole volume", **common)
    usable = (counts >= 2) & np.isfinite(stds)
    if np.count_nonzero(usable) < 2:
        return MetricUncertainty(uncertainty=None, relative_error=None, alpha=None,
                                 reason=f"{np.count_nonzero(usable)} cube edge(s) with >= 2 values; need 2 "
                                        "(volume too small for its structures, or the metric undefined on cubes)",
                                 **common)
    fitted = dataclasses.replace(curve, n_samples=np.where(usable, counts, 0), mean=means, std=stds,
                                 relative_std=rel)
    if not np.any(stds[usable] > 0):
        u = 0.0
        alpha = None
    else:
        fit = kanit_from_curve(fitted)
        alpha = _finite(fit.alpha)
        # Extrapolate each of the largest edges with the asymptotic exponent (the fitted one is
        # lowered by the small cubes: calibration in the module notes) and pool them in log
        # space, weighted by their degrees of freedom: the largest edge alone holds few cubes.
        pooled = np.nonzero(usable & (stds > 0))[0][-_POOLED_EDGES:]
        logs = 2 * np.log(stds[pooled]) + _ALPHA_EXTRAPOLATED * np.log(curve.volumes_um3[pooled] / volume_um3)
        u = float(math.exp(0.5 * np.average(logs, weights=counts[pooled] - 1)))
    rel_err = 0.0 if u == 0 else (2 * u / abs(value) if value else math.inf)
    return MetricUncertainty(uncertainty=u, relative_error=_finite(rel_err), alpha=alpha, **common)


@dataclass(frozen=True)
class Difference:
    """Difference ``b - a`` of one metric between two samples.

    Attributes
    ----------
    difference : float or None
    combined_uncertainty : float or None
        ``sqrt(u_a^2 + u_b^2)``.
    significant : bool or None
        ``|b - a| > k * combined_uncertainty``; None when a value or an uncertainty is missing
        (nothing can be said).
    """

    difference: float | None
    combined_uncertainty: float | None
    significant: bool | None


def difference(a: MetricUncertainty, b: MetricUncertainty, *, k=2.0) -> Difference:
    """Whether two values of one metric differ by more than `k` combined standard uncertainties.

    Parameters
    ----------
    a, b : MetricUncertainty
    k : float
        Coverage factor (> 0).

    Returns
    -------
    Difference
    """
    if not (isinstance(k, (int, float)) and k > 0 and math.isfinite(k)):
        raise ValueError(f"k must be a positive number, got {k!r}")
    if a.value is None or b.value is None:
        return Difference(None, None, None)
    diff = b.value - a.value
    if a.uncertainty is None or b.uncertainty is None:
        return Difference(diff, None, None)
    combined = math.hypot(a.uncertainty, b.uncertainty)
    return Difference(diff, combined, bool(abs(diff) > k * combined))

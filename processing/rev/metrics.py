"""The metrics followed for REV, and the feature size that sets their smallest block.

A metric is any callable ``f(labels, spacing_um) -> float`` of a ``(Z, Y, X)`` label
subvolume and its ``(dz, dy, dx)`` spacing in micrometres, wrapped in :class:`RevMetric`.
Metrics that are ratios of additive counts (volume fractions, surface densities,
coverage) also say how to read their value and weight from the :class:`SlabCounts` of one
slice: the tracker then measures them slice by slice, exactly, from the new slices only.
Fractions are over the *assigned* voxels (label 0, unassigned, is unknown material).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from processing.metrics import DIRECTIONS, SlabCounts, count_volume, counts_metrics
from processing.phases import UNASSIGNED, Phases

__all__ = [
    "RevMetric",
    "phase_fraction",
    "default_metrics",
    "table1_metrics",
    "default_tracked",
    "mean_chords_um",
]

MetricFunc = Callable[[np.ndarray, tuple], float]
CountsFunc = Callable[[SlabCounts, tuple], "tuple[float, float]"]


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
        True when the value of a stack of slices is the mean of the slice
        values (each slice is then one sample); False for a metric that needs
        a block of slices (a tortuosity), measured on blocks of
        :attr:`min_extent_um` / :attr:`min_extent_features`.
    min_extent_um : float, optional
        Smallest block thickness and cube edge, in micrometres, on which the
        metric means something.
    counts : callable, optional
        ``counts(slab_counts, spacing_um) -> (value, weight)`` of one slice:
        the value is a ratio of additive counts and `weight` its denominator
        (the running value is the weighted mean, exact). Implies `additive`.
    min_extent_features : float, optional
        Smallest block thickness and cube edge as a multiple of the measured
        feature size (the largest mean chord length of the phases, see
        :func:`mean_chords_um`): a path or a surface needs room around it.
    n_values : int, optional
        Label values (phases + 1) the `counts` callable indexes.
    """

    name: str
    func: MetricFunc
    additive: bool = False
    min_extent_um: float = 0.0
    counts: CountsFunc | None = None
    min_extent_features: float = 0.0
    n_values: int = 0

    def __post_init__(self):
        if not callable(self.func):
            raise TypeError(f"RevMetric {self.name!r}: func must be callable, got {self.func!r}")
        for key in ("min_extent_um", "min_extent_features"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"RevMetric {self.name!r}: {key} must be >= 0, got {v!r}")
        if self.counts is not None and not self.additive:
            raise ValueError(f"RevMetric {self.name!r}: a metric read from counts is additive")

    def min_extent(self, feature_um: float) -> float:
        """Smallest block thickness / cube edge in micrometres given the feature size."""
        return max(self.min_extent_um, self.min_extent_features * feature_um)


def _assigned(voxels) -> int:
    return int(voxels.sum()) - int(voxels[UNASSIGNED])


def phase_fraction(label: int) -> MetricFunc:
    """Metric callable: share of the assigned voxels (label 0 excluded) that carry `label`."""
    label = int(label)

    def fraction(labels, spacing_um=None):
        labels = np.asarray(labels)
        assigned = labels.size - int(np.count_nonzero(labels == UNASSIGNED))
        return float(np.count_nonzero(labels == label)) / assigned if assigned else math.nan

    fraction.__name__ = f"phase_fraction_{label}"
    return fraction


def _fraction_counts(label: int) -> CountsFunc:
    def parts(counts, spacing_um=None):
        assigned = _assigned(counts.voxels)
        return (int(counts.voxels[label]) / assigned if assigned else math.nan), float(assigned)

    return parts


def default_metrics(phases: Phases | None = None) -> tuple[RevMetric, ...]:
    """The volume fraction of every phase (over assigned voxels), named ``volume_fraction.<phase>``."""
    phases = Phases() if phases is None else phases
    n_values = len(phases.names) + 1
    return tuple(
        RevMetric(f"volume_fraction.{name}", phase_fraction(label), additive=True,
                  counts=_fraction_counts(label), n_values=n_values)
        for name, label in phases.labels.items()
    )


def _or_nan(value):
    return math.nan if value is None else float(value)


def _surface_metrics(phases: Phases, min_extent_um: float, min_extent_features: float):
    """A_active / V_cell and the coverage of the active phase, from counts (slice by slice)."""
    active, electrolyte = phases.roles.get("active"), phases.roles.get("electrolyte")
    if active is None:
        return []
    n_values = len(phases.names) + 1
    last = {}  # both metrics read the same counts of a slice: turn them into metrics once

    def doc(counts, spacing):
        if last.get("counts") is not counts:
            last.update(counts=counts, doc=counts_metrics(counts, spacing_um=spacing, phases=phases))
        return last["doc"]

    def per_cell(counts, spacing):
        cell_um3 = _assigned(counts.voxels) * float(np.prod(spacing))
        return _or_nan(doc(counts, spacing)["surface_area_per_cell_volume_um-1"][active]), cell_um3

    def coverage(counts, spacing):
        area = per_cell(counts, spacing)
        return _or_nan(doc(counts, spacing)["coverage_share"][active]), area[0] * area[1] if area[1] else 0.0

    def on_block(parts):
        return lambda block, s: parts(count_volume(np.asarray(block), phases=phases, threads=1), s)[0]

    out = [RevMetric(f"surface_area_per_cell_volume_um-1.{active}", on_block(per_cell), additive=True,
                     counts=per_cell, min_extent_um=min_extent_um, min_extent_features=min_extent_features,
                     n_values=n_values)]
    if electrolyte is not None:
        out.append(RevMetric(f"coverage_share.{active}", on_block(coverage), additive=True, counts=coverage,
                             min_extent_um=min_extent_um, min_extent_features=min_extent_features,
                             n_values=n_values))
    return out


def _tortuosity_metric(phases: Phases, transport_axis: int, min_extent_um: float, min_extent_features: float):
    from processing import metrics as m  # lazy: scikit-fmm is only needed when it is tracked

    electrolyte = phases.roles.get("electrolyte")
    if electrolyte is None:
        return []
    label = phases.label(electrolyte)

    def tortuosity(block, spacing):
        mask = np.asarray(block) == label
        return _or_nan(m.geometric_tortuosity(mask, spacing_um=spacing, axis=transport_axis).forward)

    return [RevMetric(f"tortuosity_geometric.{electrolyte}.{'zyx'[transport_axis]}+", tortuosity,
                      min_extent_um=min_extent_um, min_extent_features=min_extent_features)]


def default_tracked(phases: Phases | None = None, *, transport_axis: int = 1) -> tuple[RevMetric, ...]:
    """The default tracked set: the Table 1 metrics an operator stops on.

    Every volume fraction, A_active / V_cell, the coverage of the active phase by the
    electrolyte (all three slice by slice from counts) and the geometric tortuosity of the
    conducting phase (the electrolyte) along `transport_axis`, on blocks at least two
    feature sizes thick (a path needs room to wind).
    """
    phases = Phases() if phases is None else phases
    return (*default_metrics(phases), *_surface_metrics(phases, 0.0, 2.0),
            *_tortuosity_metric(phases, transport_axis, 0.0, 2.0))


def table1_metrics(
    phases: Phases | None = None,
    *,
    transport_axis: int = 1,
    min_extent_um: float = 0.0,
    expensive: bool = True,
) -> tuple[RevMetric, ...]:
    """REV metrics for Table 1, computed by :mod:`processing.metrics`.

    The volume fractions of :func:`default_metrics`, then (for the phases that
    play the roles) A_active / V_cell and the coverage of the active surface by
    the electrolyte and, with `expensive`, the geometric tortuosity of the
    electrolyte along `transport_axis` (``y+``), the mean local thickness of
    the active phase, the share of active material connected to the first face
    of `transport_axis` and the interconnected share of the pore. Blocks and
    cubes of the surface metrics and the tortuosity are at least two feature
    sizes, those of the other expensive ones four (and at least `min_extent_um`).

    Parameters
    ----------
    phases : Phases, optional
    transport_axis : int, optional
        Axis of the tortuosity and of the current-collector face.
    min_extent_um : float, optional
        Smallest block thickness / cube edge for the surface and expensive metrics.
    expensive : bool, optional
        Include tortuosity, local thickness and connectivity (seconds per block on large slices).

    Returns
    -------
    tuple of RevMetric
    """
    from processing import metrics as m  # lazy: scikit-fmm and friends only when asked for

    phases = Phases() if phases is None else phases
    out = [*default_metrics(phases), *_surface_metrics(phases, min_extent_um, 2.0)]
    if not expensive:
        return tuple(out)
    out += _tortuosity_metric(phases, transport_axis, min_extent_um, 2.0)
    active, pore = phases.roles.get("active"), phases.roles.get("pore")

    def mask(block, name):
        return np.asarray(block) == phases.label(name)

    def block_metric(name, func):
        return RevMetric(name, func, min_extent_um=min_extent_um, min_extent_features=4.0)

    if active is not None:
        out.append(block_metric(f"local_thickness_um.{active}.mean",
                                lambda b, s: _or_nan(m.local_thickness_summary(mask(b, active), spacing_um=s)["mean"])))
        out.append(block_metric(f"connected_share.{active}",
                                lambda b, s: _or_nan(m.connected_share(mask(b, active), axis=transport_axis))))
    if pore is not None:
        out.append(block_metric(f"interconnected_share.{pore}",
                                lambda b, s: _or_nan(m.interconnected_share(mask(b, pore)))))
    return tuple(out)


_AXES = [int(np.nonzero((DIRECTIONS == axis).all(axis=1))[0][0]) for axis in np.eye(3, dtype=int)]


def mean_chords_um(counts: SlabCounts, spacing_um) -> np.ndarray:
    """Mean chord length of every label along z, y and x, in micrometres.

    A chord is a run of one label along a lattice line; each has two ends, so the mean
    chord along an axis is ``2 * voxels * step / crossings`` (chords cut by the borders
    count whole: a slight overestimate on small fields). NaN for an absent label.

    Returns
    -------
    (L, 3) ndarray of float
    """
    voxels = counts.voxels.astype(float)
    out = np.full((voxels.size, 3), math.nan)
    for j, d in enumerate(_AXES):
        ends = counts.crossings[d].sum(axis=0) + counts.crossings[d].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            chord = 2.0 * voxels * spacing_um[j] / ends
        chord[ends == 0] = np.where(voxels[ends == 0] > 0, math.inf, math.nan)
        out[:, j] = chord
    return out

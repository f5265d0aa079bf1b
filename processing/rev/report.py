"""REV analysis of a finished volume: subvolume curves and the stop replayed along z."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._common import check_volume
from .curve import subvolume_curve
from .metrics import RevMetric, default_metrics
from .tracker import RevTracker

__all__ = ["RevReport", "rev_report"]


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
        Passed to :class:`RevTracker` (tolerance, confidence, ...); the planned depth is
        the volume's depth unless given.

    Returns
    -------
    RevReport
    """
    labels = check_volume(labels)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    rng = np.random.default_rng(rng)
    metrics = default_metrics() if metrics is None else tuple(metrics)
    depth = labels.shape[0]
    tracker_options.setdefault("planned_depth_slices", depth)
    tracker = RevTracker(spacing_um=spacing_um, metrics=metrics, rng=rng, **tracker_options)
    stop = None
    for d in np.unique(np.linspace(0, depth, int(steps) + 1).round().astype(int)[1:]):
        tracker.update(labels[:d])
        if stop is None and tracker.stop is not None:
            stop = int(d)
    curves = {m.name: subvolume_curve(labels, m, spacing_um=spacing_um, n_samples=n_samples,
                                      tolerance=tracker.tolerances[m.name], rng=rng) for m in metrics}
    return RevReport(curves=curves, depth={m.name: tracker.history(m.name) for m in metrics},
                     stop_depth_slices=stop, document=tracker.document())

"""Streaming REV decision for a volume growing along z (:class:`RevTracker`).

The question the stop answers: would the value of every tracked metric at the planned
depth ``H`` differ from its value now by more than the tolerance? Each metric is measured
on units of slices as they arrive (single slices for ratios of counts, blocks a few feature
sizes thick for the rest), and :func:`~processing.rev.trend.horizon_bound` bounds the
difference at ``H``: a fitted trend extrapolated to ``H``, plus the standard errors of a
trend too weak to see yet and of the sampling of the slices still to come. A metric
converges when that bound is within its tolerance, no trend was found, and it held over
`hold_updates` updates; the volume is representative when every metric has converged.
The stop is latched.

Only the new slices are read at each update (plus the last one before them, and a bounded
number of cubes for the subvolume curve): the cost of an update does not grow with depth.
The one floor on the depth comes from the microstructure: the long-run variance needs
`min_blocks` batches, each `batch_lengths` correlation lengths along z thick (the largest
mean chord of the phases along z, measured on the slices read). Blocks are a few feature sizes
thick (the largest mean in-plane chord, measured on the first 8 slices whatever the update
schedule, so that the verdict does not depend on when the updates came).
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from processing.errors import SliceShapeError
from processing.metrics import slab_counts

from ._common import check_spacing, check_tolerance, check_volume
from .curve import cube_values, edge_voxels, rev_edge
from .kanit import fit_kanit
from .metrics import RevMetric, default_metrics, mean_chords_um
from .metrics import _AXES as _AXIS_DIRECTIONS
from .trend import horizon_bound, long_run_variance, look_level, slope_test

__all__ = ["RevTracker"]

logger = logging.getLogger(__name__)

# A block-measured metric defined on fewer of its units than this share (with enough units) is
# undefined at the block scale: it does not hold the verdict back.
_MIN_DEFINED_SHARE = 0.5
_CUBES_KEPT = 32  # values kept per cube edge for the subvolume curve (the most recent)
_LOOK_RATIO = 1.25  # trend looks on a geometric grid of depths
# The feature size (block thickness, smallest cube) is measured on exactly this many first
# slices, whatever the update schedule: blocks whose boundaries depended on the depth of the
# first update gave the agent (first update at 1 slice) and a replay (at 4) different verdicts.
_FEATURE_SLICES = 8


class _MetricState:
    """Unit values of one metric along z, its trend looks and its hysteresis memory."""

    def __init__(self, metric: RevMetric):
        self.metric = metric
        self.unit: int | None = 1 if metric.additive else None  # slices per unit
        self.values: list[float] = []
        self.weights: list[float] = []
        self.history: list[list[float]] = []  # [depth, running value, relative bound]
        self.streak_start: int | None = None
        self.streak_updates = 0
        self.looks = 0
        self.next_look = 0
        self.trend = None
        self.edges_um: np.ndarray | None = None
        self.cubes: list[list[float]] = []
        self.entry: dict = {}


def _assigned_core(block):
    """`block` without the border rows and columns that hold unassigned voxels (the drift border),
    peeled one edge line at a time, the most unassigned first: a path metric must start and end
    on faces of sample, not of unknown material."""
    if block.dtype != np.uint8:
        return block
    bad = (block == 0).any(axis=0)
    y0, y1, x0, x1 = 0, bad.shape[0], 0, bad.shape[1]
    while y1 > y0 and x1 > x0:
        sub = bad[y0:y1, x0:x1]
        edges = (sub[0].mean(), sub[-1].mean(), sub[:, 0].mean(), sub[:, -1].mean())
        k = int(np.argmax(edges))
        if edges[k] == 0:
            break
        y0, y1, x0, x1 = (y0 + (k == 0), y1 - (k == 1), x0 + (k == 2), x1 - (k == 3))
    return block[:, y0:y1, x0:x1]


def _json(v):
    return float(v) if v is not None and math.isfinite(v) else None


class RevTracker:
    """Streaming REV decision for a volume growing along z.

    Feed it the labels acquired so far after each new slice (or batch of slices); it reads
    the new slices, the slice before them and at most `subvolume_samples` cubes.

    Parameters
    ----------
    spacing_um : tuple of 3 float
        Voxel size ``(dz, dy, dx)`` in micrometres.
    metrics : sequence of RevMetric, optional
        Tracked metrics; default :func:`~processing.rev.metrics.default_metrics` (every
        phase fraction). The agent tracks :func:`~processing.rev.metrics.default_tracked`.
    tolerance : float, optional
        Relative difference at the planned depth that is acceptable (default 5 %).
    tolerances : mapping of str to float, optional
        Per-metric overrides of `tolerance`.
    confidence : float, optional
        Two-sided confidence of the bound (Student ``z`` with the degrees of freedom of the
        long-run variance).
    planned_depth_slices : int, optional
        The horizon ``H``: slices the acquisition is planned to reach. None: unknown, and
        the horizon is twice the current depth (the value must not move by more than the
        tolerance if the acquisition went on as long again). Beyond ``H`` the horizon is
        the depth.
    hold_updates : int, optional
        Consecutive updates over which every criterion must hold.
    hold_fraction : float, optional
        ... and the span of depth over which they must hold, as a fraction of the depth.
    min_blocks : int, optional
        Fewest batches in the long-run variance and in a trend test.
    batch_lengths : float, optional
        Batch thickness in correlation lengths along z.
    fit_levels : int, optional
        Batch sizes (1, 2, 4, ... batches) in the Kanit fit reported as ``alpha``.
    alpha_bounds : (float, float), optional
        Sanity bounds of the Kanit exponent.
    trend_false_alarm : float, optional
        Chance, over a whole run and all metrics, of calling a stationary volume not
        stationary (spent over the looks, see :func:`~processing.rev.trend.look_level`).
    trend_min_drift : float, optional
        A significant trend counts when it moves the metric by at least
        ``trend_min_drift * tolerance`` (relative) over the planned depth.
    min_depth_um : float, optional
        Never representative before this depth (on top of the microstructure's floor).
    subvolume_samples : int, optional
        Cubes read per update for the subvolume curve (``rev_edge_um``); 0 disables it.
    max_cube_voxels : int, optional
        Largest cube of the subvolume curve, in voxels.
    max_block_voxels : int, optional
        Largest block of a non-additive metric: blocks are the full slices when they fit,
        else a centred window of them (the metric is then a sample of each block).
    rng : None, int or numpy.random.Generator, optional
        Seed of the cube positions.

    Examples
    --------
    >>> import numpy as np
    >>> tracker = RevTracker(spacing_um=(0.05, 0.05, 0.05), planned_depth_slices=200, rng=0)
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
        planned_depth_slices: int | None = None,
        hold_updates: int = 2,
        hold_fraction: float = 0.0,
        min_blocks: int = 6,
        batch_lengths: float = 2.0,
        fit_levels: int = 3,
        alpha_bounds=(0.5, 1.0),
        trend_false_alarm: float = 0.05,
        trend_min_drift: float = 0.5,
        min_depth_um: float | None = None,
        subvolume_samples: int = 2,
        max_cube_voxels: int = 1 << 21,
        max_block_voxels: int = 1 << 22,
        rng=None,
    ):
        self.spacing = check_spacing(spacing_um)
        metrics = default_metrics() if metrics is None else tuple(metrics)
        if not metrics or not all(isinstance(m, RevMetric) for m in metrics):
            raise ValueError(f"metrics must be a non-empty sequence of RevMetric, got {metrics!r}")
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics: names must be unique, got {names!r}")
        self.tolerance = check_tolerance(tolerance)
        self.tolerances = {n: self.tolerance for n in names}
        for name, tol in (tolerances or {}).items():
            if name not in self.tolerances:
                raise ValueError(f"tolerances: unknown metric {name!r}; tracked metrics are {names!r}")
            self.tolerances[name] = check_tolerance(tol, f"tolerances[{name!r}]")
        if not 0.5 < confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")
        if planned_depth_slices is not None and not int(planned_depth_slices) >= 1:
            raise ValueError(f"planned_depth_slices must be >= 1 or None, got {planned_depth_slices!r}")
        if int(hold_updates) < 1:
            raise ValueError(f"hold_updates must be >= 1, got {hold_updates!r}")
        if not 0 <= hold_fraction < 1:
            raise ValueError(f"hold_fraction must be in [0, 1), got {hold_fraction!r}")
        if int(min_blocks) < 3:
            raise ValueError(f"min_blocks must be >= 3, got {min_blocks!r}")
        if not batch_lengths > 0:
            raise ValueError(f"batch_lengths must be > 0, got {batch_lengths!r}")
        if int(fit_levels) < 2:
            raise ValueError(f"fit_levels must be >= 2, got {fit_levels!r}")
        if not 0 < trend_false_alarm < 1:
            raise ValueError(f"trend_false_alarm must be in (0, 1), got {trend_false_alarm!r}")
        if min_depth_um is not None and not (math.isfinite(min_depth_um) and min_depth_um >= 0):
            raise ValueError(f"min_depth_um must be >= 0, got {min_depth_um!r}")
        if int(subvolume_samples) < 0 or int(max_cube_voxels) < 64:
            raise ValueError(f"subvolume_samples must be >= 0 and max_cube_voxels >= 64, "
                             f"got {subvolume_samples!r} and {max_cube_voxels!r}")
        self.confidence = float(confidence)
        self.planned_depth_slices = None if planned_depth_slices is None else int(planned_depth_slices)
        self.hold_updates = int(hold_updates)
        self.hold_fraction = float(hold_fraction)
        self.min_blocks = int(min_blocks)
        self.batch_lengths = float(batch_lengths)
        self.fit_levels = int(fit_levels)
        self.alpha_bounds = tuple(alpha_bounds)
        self.trend_false_alarm = float(trend_false_alarm)
        self.trend_min_drift = float(trend_min_drift)
        self.min_depth_um = min_depth_um
        self.subvolume_samples = int(subvolume_samples)
        self.max_cube_voxels = int(max_cube_voxels)
        self.max_block_voxels = int(max_block_voxels)
        self._rng = np.random.default_rng(rng)
        self._states = [_MetricState(m) for m in metrics]
        self._n_values = max([2] + [m.n_values for m in metrics])
        self._xy: tuple[int, int] | None = None
        self.depth = 0
        self.feature_size_um: float | None = None  # fixed on the first _FEATURE_SLICES slices: block thickness
        self._feature_fixed = False
        self._unblocked: list[np.ndarray] = []  # slices read before the feature size was fixed
        self._chord_counts = None  # (voxels (L,), axis crossings (3, L, L)) summed over the slices read
        self._tail = None  # slices of the blocks still incomplete (their window)
        self._window = None
        self._tail_start = 0
        self._times: list[tuple[int, float]] = []
        self._steps: list[int] = []  # slices added by the recent updates (the hold's length in slices)
        self._cube_turn = 0
        self.bytes_read = 0
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
        """``(N, 3)`` array of (depth in slices, running value, relative bound or NaN) of
        metric `name` at each update: the curve against depth."""
        for st in self._states:
            if st.metric.name == name:
                return np.array(st.history, dtype=float).reshape(-1, 3)
        raise KeyError(f"unknown metric {name!r}")

    def correlation_length_um(self) -> float:
        """Correlation length along z of the phase indicators, the largest over the phases.

        For phase k, ``chord_k * (1 - phi_k)`` (``1 / (1/chord_k + 1/chord_rest)``, exact for
        Debye random media; 1 voxel for white noise, about 0.7 radius for packed spheres),
        from the mean chords along z (in-plane when too few slices were read). One slice
        when the labels cannot be counted.
        """
        dz = self.spacing[0]
        if self._chord_counts is None:
            return dz
        lengths = self._correlation_lengths()
        for column in (lengths[:, 0], lengths[:, 1:].ravel()):
            finite = column[np.isfinite(column)]
            if finite.size:
                return max(dz, float(finite.max()))
        return dz

    # -- update -------------------------------------------------------------

    def update(self, labels, *, values: Mapping[str, float] | None = None, time_s: float | None = None) -> dict:
        """Take the volume acquired so far into account.

        Parameters
        ----------
        labels : (Z, Y, X) array-like of int
            All labels acquired so far (NumPy or Zarr: only new slices and the
            sampled cubes are read). Z must not shrink and (Y, X) not change.
        values : mapping of str to float, optional
            Whole-volume values computed elsewhere for some metrics (published as
            ``value`` and used as the mean of the relative bound).
        time_s : float, optional
            Time of this depth in seconds (any origin): the slice cadence, hence
            ``seconds_needed``, comes from these.

        Returns
        -------
        dict
            The ``rev`` document (see ``docs/protocol.md``).
        """
        labels = check_volume(labels)
        depth, ny, nx = (int(s) for s in labels.shape)
        if self._xy is None:
            self._xy = (ny, nx)
        elif self._xy != (ny, nx):
            raise SliceShapeError(f"RevTracker.update: slices are {ny}x{nx}, the volume started with {self._xy[0]}x{self._xy[1]}")
        if depth < self.depth:
            raise ValueError(f"RevTracker.update: depth went from {self.depth} to {depth} slices; it can only grow")
        if depth > self.depth:
            self._read_new(labels, depth)
            self._steps = (self._steps + [depth - self.depth])[-16:]
        self.depth = depth
        if time_s is not None and (not self._times or depth > self._times[-1][0]):
            self._times = (self._times + [(depth, float(time_s))])[-32:]
        if self.subvolume_samples and depth:
            self._sample_cubes(labels)
        return self._decide(dict(values or {}))

    def _read_new(self, labels, depth):
        start = max(self.depth - 1, 0)
        chunk = np.asarray(labels[start:depth])
        self.bytes_read += chunk.nbytes
        previous = chunk[0] if self.depth else None
        new = chunk[1:] if self.depth else chunk
        countable = new.dtype == np.uint8
        if countable:
            self._n_values = max(self._n_values, int(chunk.max()) + 1)
        for i in range(new.shape[0]):
            prev = previous if i == 0 else new[i - 1]
            counts = slab_counts(new[i:i + 1], previous_slice=prev, n_values=self._n_values) if countable else None
            if counts is not None:
                self._add_chords(counts)
            if not self._feature_fixed and self.depth + i + 1 >= _FEATURE_SLICES:
                # The first slice from which the phases have a finite size fixes it (labels that
                # cannot be counted have none).
                self.feature_size_um = self._in_plane_feature_um() if counts is not None else None
                self._feature_fixed = self.feature_size_um is not None or not countable
            for st in self._states:
                if st.metric.counts is not None and counts is not None:
                    v, w = st.metric.counts(counts, self.spacing)
                    st.values.append(float(v))
                    st.weights.append(float(w))
                elif st.metric.additive:
                    st.values.append(float(st.metric.func(new[i:i + 1], self.spacing)))
                    st.weights.append(1.0)
        self._blocks(new, depth)

    def _add_chords(self, counts):
        voxels, axes = counts.voxels, counts.crossings[_AXIS_DIRECTIONS]
        if self._chord_counts is not None:
            old_v, old_a = self._chord_counts
            n = old_v.size
            voxels = voxels.copy()
            voxels[:n] += old_v  # label values only ever grow: counts arrays grow with them
            axes = axes.copy()
            axes[:, :n, :n] += old_a
        self._chord_counts = (voxels, axes)

    def _correlation_lengths(self):
        """(phases, 3) correlation lengths along z, y, x from the chords counted so far."""
        from processing.metrics import SlabCounts

        voxels, axes = self._chord_counts
        crossings = np.zeros((13, voxels.size, voxels.size), np.int64)
        crossings[_AXIS_DIRECTIONS] = axes
        chords = mean_chords_um(SlabCounts(self._xy, 0, voxels, crossings, np.zeros(13, np.int64)), self.spacing)
        assigned = voxels[1:].sum()
        share = voxels[1:] / assigned if assigned else np.zeros(voxels.size - 1)
        return chords[1:] * (1 - share)[:, None]

    def _in_plane_feature_um(self):
        """Feature size: the largest mean in-plane chord of the phases (their size, not their correlation)."""
        voxels, axes = self._chord_counts
        lengths = self._correlation_lengths()
        assigned = voxels[1:].sum()
        share = voxels[1:] / assigned if assigned else np.zeros(voxels.size - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            in_plane = lengths[:, 1:] / (1 - share)[:, None]
        finite = in_plane[np.isfinite(in_plane)]
        return float(finite.max()) if finite.size else None

    def _block_window(self, thickness):
        """Centred (y, x) window of the blocks: the longer side is cut until a block holds at
        most `max_block_voxels` (the cost of a tortuosity must not grow with the field)."""
        ny, nx = self._xy
        while thickness * ny * nx > self.max_block_voxels and max(ny, nx) > 8:
            ny, nx = (ny * 3 // 4, nx) if ny >= nx else (ny, nx * 3 // 4)
        (y0, x0) = ((self._xy[0] - ny) // 2, (self._xy[1] - nx) // 2)
        return slice(y0, y0 + ny), slice(x0, x0 + nx)

    def _blocks(self, new, depth):
        """Measure the non-additive metrics on every block completed by `depth` slices."""
        blockwise = [st for st in self._states if not st.metric.additive]
        if not blockwise:
            return
        if not self._feature_fixed:  # the block thickness is not known yet
            self._unblocked.append(new)
            return
        if self._unblocked:
            new = np.concatenate([*self._unblocked, new])
            self._unblocked = []
        dz = self.spacing[0]
        for st in blockwise:
            if st.unit is None:
                st.unit = max(1, math.ceil(st.metric.min_extent(self.feature_size_um or 0.0) / dz - 1e-9))
        if self._window is None:
            self._window = self._block_window(max(st.unit for st in blockwise))
        new = new[(slice(None), *self._window)]
        self._tail = new if self._tail is None else np.concatenate([self._tail, new])
        for st in blockwise:
            while (len(st.values) + 1) * st.unit <= depth:
                z0 = len(st.values) * st.unit - self._tail_start
                block = _assigned_core(self._tail[z0:z0 + st.unit])
                st.values.append(float(st.metric.func(block, self.spacing)) if block.size else math.nan)
                st.weights.append(1.0)
        keep = min(len(st.values) * st.unit for st in blockwise)
        self._tail = self._tail[keep - self._tail_start:]
        self._tail_start = keep

    def _sample_cubes(self, labels):
        """Read `subvolume_samples` cubes, cycling over metrics and edges, for ``rev_edge_um``."""
        if not self._feature_fixed:  # the smallest cube is not known yet
            return
        dz, dy, dx = self.spacing
        ny, nx = self._xy
        cap_um = (self.max_cube_voxels * dz * dy * dx) ** (1 / 3)
        lateral = min(ny * dy, nx * dx, cap_um)
        pairs = []
        for st in self._states:
            if st.edges_um is None:
                lo = max(4 * max(self.spacing), st.metric.min_extent(self.feature_size_um or 0.0))
                st.edges_um = np.geomspace(lo, lateral, 6) if lo < lateral else np.array([])
                st.cubes = [[] for _ in st.edges_um]
            pairs += [(st, k) for k in range(st.edges_um.size)]
        for _ in range(min(self.subvolume_samples, len(pairs))):
            st, k = pairs[self._cube_turn % len(pairs)]
            self._cube_turn += 1
            size = edge_voxels(st.edges_um[k], self.spacing)
            if size[0] > self.depth:
                continue
            corner = [int(self._rng.integers(0, n - s + 1)) for n, s in zip((self.depth, ny, nx), size)]
            value = cube_values(labels, st.metric, [corner], size, self.spacing)
            self.bytes_read += int(np.prod(size)) * np.dtype(getattr(labels, "dtype", np.uint8)).itemsize
            st.cubes[k] = (st.cubes[k] + [float(value[0])])[-_CUBES_KEPT:]

    # -- decision -----------------------------------------------------------

    def _horizon(self):
        if self.planned_depth_slices is None:
            return 2 * self.depth, "unknown: twice the current depth"
        if self.depth > self.planned_depth_slices:
            return self.depth, "the depth (past the planned depth)"
        return self.planned_depth_slices, "planned depth"

    def _slices_per_s(self):
        if len(self._times) < 2:
            return None
        (d0, t0), (d1, t1) = self._times[0], self._times[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def _decide(self, values):
        dz = self.spacing[0]
        horizon, source = self._horizon()
        ell_um = self.correlation_length_um()
        batch_slices = max(1, math.ceil(self.batch_lengths * ell_um / dz - 1e-9))
        floor_user = 0 if self.min_depth_um is None else math.ceil(self.min_depth_um / dz - 1e-9)
        entries, reasons, drifting, floors = {}, [], [], [floor_user]
        rate = self._slices_per_s()
        for st in self._states:
            entry = self._assess(st, values.get(st.metric.name), horizon, batch_slices, floor_user)
            entries[st.metric.name] = entry
            floors.append(entry["min_depth_slices"])
            entry["seconds_needed"] = (None if entry["slices_needed"] is None or rate is None
                                       else entry["slices_needed"] / rate)
            if entry["not_stationary"]:
                drifting.append(st.metric.name)
            if not entry["converged"]:
                reasons.append(entry["reason"])
        min_depth = max(floors)
        if self.depth < floor_user:
            reasons.append(f"depth {self.depth * dz:.3g} um is below the configured minimum "
                           f"{self.min_depth_um:.3g} um ({floor_user - self.depth} more slices)")
        representative = not reasons
        needed = [e["slices_needed"] for e in entries.values()]
        slices_needed = 0 if representative else None if None in needed else max(needed)
        # A metric too short for a variance has no range yet: its floor counts as a point.
        ranges = [e["slices_needed_range"] or [e["slices_needed"]] * 2 for e in entries.values()]
        needed_range = ([0, 0] if representative else None if slices_needed is None
                        else [max(r[0] for r in ranges), max(r[1] for r in ranges)])
        self._document = {
            "representative": representative,
            "depth_slices": self.depth,
            "depth_um": self.depth * dz,
            "horizon_slices": horizon,
            "horizon_um": horizon * dz,
            "horizon_source": source,
            "min_depth_slices": min_depth,
            "min_depth_um": min_depth * dz,
            "min_depth_reason": (f"{self.min_blocks} batches of {self.batch_lengths:g} correlation lengths along z "
                                 f"({ell_um:.3g} um, from the mean chords of the phases) for the variance"
                                 + (f"; configured minimum {self.min_depth_um:.3g} um" if floor_user else "")),
            "feature_size_um": self.feature_size_um,
            "correlation_length_z_um": ell_um,
            "slices_needed": slices_needed,
            "slices_needed_range": needed_range,
            "slices_per_s": rate,
            "seconds_needed": None if slices_needed is None or rate is None else slices_needed / rate,
            "tolerance": self.tolerance,
            "confidence": self.confidence,
            "trend_false_alarm": self.trend_false_alarm,
            "metrics": entries,
            "not_stationary": drifting,
            "reasons": reasons,
        }
        if representative and self._stop is None:
            self._stop = self._stop_document()
            logger.info("REV reached at %d slices: %s", self.depth, self._stop["reason"])
        return self._document

    def _assess(self, st: _MetricState, value, horizon, batch_slices, floor_user):
        name, tol = st.metric.name, self.tolerances[st.metric.name]
        unit = st.unit or 1
        v, w = np.asarray(st.values, dtype=float), np.asarray(st.weights, dtype=float)
        ok = np.isfinite(v) & (w > 0)
        if value is None:
            value = float(np.average(v[ok], weights=w[ok])) if ok.any() else math.nan
        batch = max(1, math.ceil(batch_slices / unit))
        floor = max(self.min_blocks * batch * unit, floor_user)
        entry = {"value": value, "relative_error": None, "converged": False, "rev_edge_um": self._rev_edge(st, tol),
                 "slices_needed": None, "slices_needed_range": None, "seconds_needed": None, "tolerance": tol,
                 "not_stationary": False, "alpha": None, "trend_relative_drift": None, "drift_to_horizon": None, "unit_slices": unit,
                 "batch_slices": batch * unit, "min_depth_slices": floor, "reason": None}
        rel = math.inf
        if v.size >= self.min_blocks * batch and ok.sum() < _MIN_DEFINED_SHARE * v.size:
            # Measured on enough units and defined on few of them (a phase that seldom percolates
            # through a block has no tortuosity there): no block-scale REV to converge, and
            # nothing to wait for. Whether a block or two were defined depends on where the block
            # boundaries fall, so the verdict must not.
            st.history.append([self.depth, value, math.nan])
            entry.update(undefined=True, slices_needed=0, slices_needed_range=[0, 0],
                         reason=f"{name}: defined on {int(ok.sum())} of {v.size} blocks of {unit} slices: "
                                "no block-scale REV, not used for the verdict")
            failure = None
        elif ok.sum() < self.min_blocks * batch:
            st.history.append([self.depth, value, math.nan])
            failure = (f"{name}: {int(ok.sum()) * unit} slices measured, the variance needs {floor} "
                       f"({self.min_blocks} batches of {batch * unit} slices)")
            entry["slices_needed"] = max(0, floor - self.depth)
            if ok.sum() >= max(2 * batch, 3):
                # A provisional variance from the batches so far predicts past the floor (its
                # degrees of freedom are few: the range says how few).
                hb = horizon_bound(v, weights=w, horizon_units=horizon / unit, batch=batch, confidence=self.confidence)
                self._predict(entry, hb, tol, unit, floor)
        else:
            hb = horizon_bound(v, weights=w, horizon_units=horizon / unit, batch=batch, confidence=self.confidence)
            mean = value if math.isfinite(value) else hb.mean
            hb = hb.__class__(**{**hb.__dict__, "mean": mean})
            rel = hb.relative_bound
            st.history.append([self.depth, value, rel])
            entry.update(relative_error=rel, alpha=self._alpha(st, v[ok], w[ok], batch, unit),
                         drift_to_horizon=hb.drift / abs(mean) if mean else None)
            trend = self._trend(st, v[ok], w[ok], batch, unit, horizon, tol)
            if trend is not None and trend.decided:
                entry["trend_relative_drift"] = trend.relative_drift
                entry["not_stationary"] = trend.not_stationary
            window = max(1, math.ceil(self.hold_fraction * self.depth))
            recent = [h[1] for h in st.history if h[0] >= self.depth - window]
            spread = max(abs(x - value) for x in recent)
            swing = 0.0 if spread == 0 else spread / abs(value) if value else math.inf
            if entry["not_stationary"]:
                failure = trend.reason
            elif not rel <= tol:
                self._predict(entry, hb, tol, unit, floor)
                failure = (f"{name}: the value at the horizon ({horizon} slices) may differ by "
                           f"{rel:.1%} > {tol:.0%} (fitted drift {entry['drift_to_horizon'] or 0:+.1%}), "
                           f"about {entry['slices_needed']} more slices")
            elif not swing <= tol / 2:
                failure = f"{name}: running value moved {swing:.1%} over the last {window} slices"
            elif self.depth < floor:
                failure = f"{name}: below the floor of {floor} slices"
                entry["slices_needed"] = floor - self.depth
                entry["slices_needed_range"] = [floor - self.depth] * 2
            else:
                failure = None
                entry["slices_needed"] = 0
                entry["slices_needed_range"] = [0, 0]
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
        for key in ("value", "relative_error", "alpha", "trend_relative_drift", "drift_to_horizon"):
            entry[key] = _json(entry[key])
        st.entry = entry
        return entry

    def _predict(self, entry, hb, tol, unit, floor):
        """Slices still needed (``slices_needed``) and their range (``slices_needed_range``: the
        long-run variance and the future slope at their 10 and 90 % quantiles); the bound must
        then hold over `hold_updates` updates of the recent size."""
        hold = (self.hold_updates - 1) * int(np.median(self._steps)) if self._steps else 0
        low, mid, high = (max(hb.predicted_units(tol, quantile=q) * unit + hold, floor - self.depth, 0)
                          for q in (0.1, None, 0.9))
        entry["slices_needed"] = mid
        entry["slices_needed_range"] = [min(low, mid), max(high, mid)]

    def _alpha(self, st, v, w, batch, unit):
        """Kanit exponent of the variance of batch means over 1, 2, 4... batches (reported, not decided on)."""
        dz, dy, dx = self.spacing
        ny, nx = self._xy
        resid = w * (v - np.average(v, weights=w)) / w.mean()
        vols, variances, dofs = [], [], []
        for level in range(self.fit_levels):
            size = batch << level
            if resid.size < self.min_blocks * size:
                break
            s2, dof = long_run_variance(resid, size)
            vols.append(size * unit * dz * ny * dy * nx * dx)
            variances.append(s2 / size)
            dofs.append(dof)
        if np.count_nonzero(np.asarray(variances) > 0) < 2:  # a constant or periodic series has no exponent
            return None
        return fit_kanit(vols, variances, mean=1.0, weights=dofs, alpha_bounds=self.alpha_bounds).alpha

    def _trend(self, st, v, w, batch, unit, horizon, tol):
        """The trend test, at looks on a geometric grid of depths, at the level spent for the look."""
        if self.depth < st.next_look:
            return st.trend
        st.looks += 1
        st.next_look = math.ceil(self.depth * _LOOK_RATIO)
        level = look_level(st.looks, self.trend_false_alarm / len(self._states))
        # Batches twice those of the bound: a significance level is only as good as its variance
        # (measured on the replayed benchmark series, 2 correlation lengths let false alarms through).
        st.trend = slope_test(v, weights=w, batch=2 * batch, unit_um=unit * self.spacing[0], horizon_units=horizon / unit,
                              significance=level, tolerance=tol, min_drift=self.trend_min_drift, name=st.metric.name)
        return st.trend

    def _rev_edge(self, st: _MetricState, tol):
        if st.edges_um is None or not st.edges_um.size:
            return None
        rel = np.full(st.edges_um.size, math.nan)
        for k, vals in enumerate(st.cubes):
            finite = np.asarray([x for x in vals if math.isfinite(x)])
            if finite.size >= 4 and finite.mean() != 0:
                rel[k] = finite.std(ddof=1) / abs(finite.mean())
        return rev_edge(st.edges_um, rel, tol)

    def _stop_document(self):
        doc = self._document
        evidence = {
            st.metric.name: {
                "relative_error": st.entry["relative_error"],
                "drift_to_horizon": st.entry["drift_to_horizon"],
                "alpha": st.entry["alpha"],
                "trend_relative_drift": st.entry["trend_relative_drift"],
                "converged_since_slice": st.streak_start,
                "units": len(st.values),
                "unit_slices": st.entry["unit_slices"],
            }
            for st in self._states
        }
        reason = (f"all {len(self._states)} tracked metrics would stay within their tolerance up to the horizon "
                  f"of {doc['horizon_slices']} slices ({doc['horizon_source']}; {self.confidence:.0%} confidence, "
                  f"no trend along z) at {doc['depth_slices']} slices")
        return {"reason": reason, "depth_slices": doc["depth_slices"], "rev": doc, "evidence": evidence}

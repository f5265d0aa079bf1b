"""Trend along z and the horizon bound: would the value at the planned depth differ from now?

Two questions about the series of a metric measured on consecutive units of slices
(single slices for ratios of counts, blocks for the rest), top first:

- :func:`horizon_bound`: the value at the planned depth ``H`` minus the value now, under a
  linear trend fitted on the data, and a confidence bound on it. Noise correlated along z is
  handled by the long-run variance (overlapping batch means with batches several
  correlation lengths thick): the running mean over ``n`` units has variance ``S^2 / n``
  and the fitted slope ``S^2 / Sxx``. With ``N`` units planned, the value at ``H`` minus
  the value now is ``slope (N - n) / 2 + noise`` with ``var(noise) = S^2 (1/n - 1/N)``; a
  trend too weak to see yet is bounded by the slope's standard error and extrapolated
  over ``H``. The stop needs ``|drift| + z * stderr <= tolerance * |mean|``.
- :func:`slope_test` (and :func:`detect_trend` on block means): a significance test of the
  slope, for the ``not stationary`` verdict. It is repeated at every update, so the tracker
  calls it only at looks on a geometric grid of depths and spends its false-alarm budget
  over them (:func:`look_level`): the chance of *ever* calling a stationary volume not stationary
  during a run stays below the budget, however long the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ._common import check_tolerance

__all__ = ["Trend", "detect_trend", "slope_test", "look_level", "HorizonBound", "horizon_bound", "long_run_variance"]

# Median of |N(0, 1)|: the typical size of a fitted slope that is pure noise, in standard errors.
_MEDIAN_ABS_NORMAL = 0.6745



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
    tolerance = check_tolerance(tolerance)
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




def look_level(look: int, false_alarm: float) -> float:
    """Significance of the `look`-th test (1-based) of a run whose total false-alarm budget is
    `false_alarm`: ``false_alarm * 6 / (pi^2 look^2)``, which sums to `false_alarm` over any
    number of looks (a Bonferroni spending that needs no planned number of looks)."""
    if int(look) < 1:
        raise ValueError(f"look must be >= 1, got {look!r}")
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm!r}")
    return float(false_alarm * 6 / (math.pi ** 2 * int(look) ** 2))


def long_run_variance(residuals, batch: int) -> tuple[float, float]:
    """Long-run variance per unit of a correlated series and its degrees of freedom.

    Overlapping batch means (Meketon and Schmeiser, 1984) of `batch` consecutive units:
    ``S^2 = batch * var(batch means)``, about 1.5 times the degrees of freedom of disjoint
    batches. Batches a few correlation lengths thick make ``S^2 / n`` the variance of a
    mean over ``n`` units.

    Parameters
    ----------
    residuals : (n,) array-like of float
        Deviations of the unit values from their mean (weighted, see :func:`horizon_bound`).
    batch : int
        Units per batch, ``1 <= batch <= n / 2``.

    Returns
    -------
    (float, float)
        ``S^2`` (units^2 of the metric) and the degrees of freedom.
    """
    y = np.asarray(residuals, dtype=float)
    n, m = y.size, int(batch)
    if not 1 <= m <= n // 2:
        raise ValueError(f"batch must be in [1, {n // 2}] for {n} units, got {batch!r}")
    if m == 1:
        return float(np.var(y, ddof=1)), n - 1.0
    c = np.concatenate(([0.0], np.cumsum(y - y.mean())))
    windows = (c[m:] - c[:-m]) / m
    var = n / ((n - m + 1) * (n - m)) * float(windows @ windows)
    return m * var, 1.5 * (n / m - 1)


@dataclass(frozen=True)
class HorizonBound:
    """How far the value at the planned depth may be from the value now.

    Attributes
    ----------
    mean : float
        Running value (weighted mean of the units).
    drift : float
        Fitted change from now to the horizon, ``slope * (N - n) / 2``, metric units.
    stderr : float
        Its standard error, trend extrapolation and sampling of the rest together.
    z : float
        Student quantile used (two-sided, at the confidence asked).
    bound : float
        ``|drift| + z * stderr``: the difference at the horizon that cannot be excluded.
    long_run_variance : float
        ``S^2`` per unit.
    dof : float
        Degrees of freedom of ``S^2``.
    units, horizon_units : int
        ``n`` and ``N``.
    batch : int
        Units per batch of ``S^2`` (its degrees of freedom grow as ``1.5 (n / batch - 1)``).
    confidence : float
        Two-sided confidence of ``z``.
    """

    mean: float
    drift: float
    stderr: float
    z: float
    bound: float
    long_run_variance: float
    dof: float
    units: int
    horizon_units: float
    batch: int = 1
    confidence: float = 0.95

    @property
    def relative_bound(self) -> float:
        """`bound` relative to the mean (0 for a constant metric, inf for a varying one of mean 0)."""
        if self.bound == 0:
            return 0.0
        return self.bound / abs(self.mean) if self.mean != 0 else math.inf

    def predicted_units(self, tolerance: float, *, quantile: float | None = None) -> int:
        """Units still needed, if the metric stays stationary, before the bound is within `tolerance`.

        The bound at a future depth ``n`` is computed as the rule will compute it then: the
        long-run variance as now (its per-unit scaling makes the variance of the mean fall as
        ``1 / n``, that of the extrapolated slope as ``1 / n^3``), the future fitted slope at its
        median size under no trend (0.67 standard errors) and ``z`` at the degrees of freedom
        ``S^2`` will have by then. 0 when already within.

        Parameters
        ----------
        tolerance : float
            Relative tolerance.
        quantile : float, optional
            Take the long-run variance and the size of the future slope at this quantile of
            their sampling distributions (scaled chi-square with ``dof`` degrees of freedom,
            and ``|N(0, 1)|`` standard errors) instead of the estimate and the median: 0.1 and
            0.9 bracket the prediction (measured coverage in ``tests/benchmarks/bench_rev.py``).
        """
        target = tolerance * abs(self.mean)
        if self.relative_bound <= tolerance and quantile is None:
            return 0
        s2, slope_size = self.long_run_variance, _MEDIAN_ABS_NORMAL
        if quantile is not None:
            if not 0 < quantile < 1:
                raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
            s2 *= self.dof / stats.chi2.ppf(1 - quantile, max(self.dof, 1.0))
            slope_size = float(stats.norm.ppf(0.5 + quantile / 2))
        if target == 0 or not math.isfinite(s2):
            return int(math.ceil(self.horizon_units - self.units))

        def bound(n):
            trend_se, sample_se = _stderrs(s2, n, self.horizon_units)
            dof = max(1.5 * (n / self.batch - 1), self.dof, 1.0)
            z = float(stats.t.ppf(0.5 + self.confidence / 2, dof))
            return slope_size * trend_se + z * math.hypot(trend_se, sample_se)

        lo, hi = self.units, math.ceil(self.horizon_units)  # bound(hi) = 0; bisect on whole units
        if bound(lo) <= target:
            return 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if bound(mid) <= target else (mid, hi)
        return hi - self.units


def _stderrs(s2, n, horizon):
    """Standard errors of the extrapolated trend and of the rest's sampling, for n units of N."""
    sxx = n * (n * n - 1) / 12.0
    trend = 0.5 * max(horizon - n, 0.0) * math.sqrt(s2 / sxx) if sxx > 0 else math.inf
    sample = math.sqrt(s2 * max(1.0 / n - 1.0 / horizon, 0.0))
    return trend, sample


def horizon_bound(values, *, weights=None, horizon_units: float, batch: int, confidence: float = 0.95) -> HorizonBound:
    """Bound on the difference between the value at the horizon and the value now.

    Parameters
    ----------
    values : (n,) array-like of float
        The metric on consecutive units along z (top first).
    weights : (n,) array-like of float, optional
        Denominator of each unit's ratio (assigned voxels of a slice for a fraction):
        the running value is the weighted mean and the residuals are linearised
        (``w_i (v_i - mean) / mean(w)``). Units with no weight or no value are skipped.
    horizon_units : float
        Planned depth in units; the bound is 0 from there on.
    batch : int
        Units per batch of the long-run variance (a few correlation lengths).
    confidence : float, optional
        Two-sided confidence of ``z`` (Student, with the degrees of freedom of ``S^2``).

    Returns
    -------
    HorizonBound
    """
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    if v.shape != w.shape or v.ndim != 1:
        raise ValueError(f"values and weights must be 1-D of equal length, got {v.shape} and {w.shape}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")
    ok = np.isfinite(v) & (w > 0)
    v, w = v[ok], w[ok]
    n = v.size
    if n < 2 * int(batch) or n < 3:
        raise ValueError(f"horizon_bound needs at least 2 batches of {batch} units, got {n} units")
    mean = float(np.average(v, weights=w))
    resid = w * (v - mean) / w.mean()
    s2, dof = long_run_variance(resid, batch)
    x = np.arange(n) - (n - 1) / 2
    slope = float(x @ resid) / float(x @ x)
    horizon = max(float(horizon_units), float(n))
    drift = slope * (horizon - n) / 2
    trend_se, sample_se = _stderrs(s2, n, horizon)
    stderr = math.hypot(trend_se, sample_se)
    z = float(stats.t.ppf(0.5 + confidence / 2, max(dof, 1.0)))
    return HorizonBound(mean=mean, drift=drift, stderr=stderr, z=z, bound=abs(drift) + z * stderr,
                        long_run_variance=s2, dof=dof, units=n, horizon_units=horizon, batch=int(batch),
                        confidence=float(confidence))


def _linearised(values, weights):
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    ok = np.isfinite(v) & (w > 0)
    v, w = v[ok], w[ok]
    mean = float(np.average(v, weights=w)) if v.size else math.nan
    return mean, w * (v - mean) / w.mean() if v.size else v


def slope_test(values, *, weights=None, batch: int, unit_um: float, horizon_units: float, significance: float,
               tolerance: float = 0.05, min_drift: float = 0.5, name: str = "metric") -> Trend:
    """Test a unit series for a linear trend, its noise correlated along z.

    The slope is fitted on every unit; its standard error comes from the long-run variance
    of the *detrended* residuals (:func:`long_run_variance`, batches of `batch` units), so
    correlated units do not make it look precise, and its Student quantile has the degrees
    of freedom of that variance (not of a handful of block means).

    Parameters
    ----------
    values, weights : (n,) array-like of float
        As in :func:`horizon_bound`.
    batch : int
        Units per batch (a few correlation lengths).
    unit_um : float
        Thickness of one unit, micrometres.
    horizon_units : float
        Planned depth in units: a trend counts when it moves the metric by at least
        ``min_drift * tolerance`` (relative) over it.
    significance : float
        Two-sided level of this test (e.g. :func:`look_level` of the look).

    Returns
    -------
    Trend
        ``relative_drift`` is over the depth tested; ``n_blocks`` the batches.
    """
    tolerance = check_tolerance(tolerance)
    mean, resid = _linearised(values, weights)
    n = resid.size
    if n < 3 * int(batch) or n < 4:
        return Trend(math.nan, math.nan, math.nan, math.nan, math.nan, float(batch * unit_um), 0, False,
                     f"{name}: {n} units, too few to test for a trend along z")
    x = np.arange(n) - (n - 1) / 2
    sxx = float(x @ x)
    slope = float(x @ resid) / sxx
    s2, dof = long_run_variance(resid - slope * x, batch)
    se = math.sqrt(s2 / sxx)
    p = (0.0 if slope != 0 else 1.0) if se == 0 else float(2 * stats.t.sf(abs(slope) / se, max(dof, 1.0)))
    depth_um = n * unit_um
    rel = 0.0 if slope == 0 else slope * n / abs(mean) if mean != 0 else math.copysign(math.inf, slope)
    rel_se = 0.0 if se == 0 else se * n / abs(mean) if mean != 0 else math.inf
    over_plan = abs(slope) * max(horizon_units, n) / abs(mean) if mean != 0 else math.inf
    flagged = p < significance and over_plan >= min_drift * tolerance
    per_um = slope / unit_um / abs(mean) if mean != 0 else math.nan
    if flagged:
        reason = (f"{name} drifts {per_um:+.1%} of its mean per um of depth "
                  f"({rel:+.1%} over {depth_um:.3g} um, p = {p:.1g}): not stationary")
    else:
        reason = f"{name}: no trend along z ({rel:+.1%} over {depth_um:.3g} um, p = {p:.2g})"
    return Trend(slope / unit_um, se / unit_um, p, float(rel), float(rel_se), float(batch * unit_um), n // int(batch),
                 bool(flagged), reason)

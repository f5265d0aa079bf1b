"""Statistical criterion of Kanit et al. (2003): ``sigma^2(V) = K V^-alpha``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._common import check_tolerance
from .curve import SubvolumeCurve

__all__ = ["KanitFit", "fit_kanit", "kanit_from_curve"]



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
        tolerance = check_tolerance(tolerance)
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



"""Corrections applied to each raw slice before alignment and segmentation.

Each step is optional and measured in ``tests/test_correct.py``:

- **brightness normalisation**: the grey level of each phase (the modes of the slice's
  histogram) is found on every slice and an affine map (gain, offset) brings them onto the
  reference levels fitted on the first slices. Histogram modes do not move when the phase
  fractions change from slice to slice, which percentile matching would.
- **background (charging) flattening**: a low-order 2-D polynomial fitted to the residual
  ``pixel - level of its nearest phase`` (so the microstructure itself is not fitted), then
  subtracted. pystack3d removes backgrounds with polynomial fits too.
- **curtaining removal**: curtains are stripes along the milling direction, near vertical
  (straight or tilted by a few degrees; the angle is found from the slice's 2-D spectrum). Their
  profile is a robust (Huber) location, per sheared column, of the within-phase residual
  ``pixel - level of its phase`` (so a column crossing many bright particles does not count as a
  stripe; the phase is the one most of the pixel's row neighbours are nearest to, so a stripe
  deeper than half a level gap is not read as the neighbouring phase), with a slope along y
  (stripes that fade or strengthen down the slice), high-passed along x (wider variations are shading). It is subtracted only where it reduces the stripes: the
  top half's profile must explain the bottom half's stripes and vice versa (structure and noise
  differ between the halves, curtains do not), and the stripe amplitude is measured before and
  after on every slice. pystack3d uses VSNR (Gabor-filter variational destriping) or a
  wavelet-FFT notch (Münch et al., 2009), applied unconditionally.
- **slice quality** (:class:`BrightnessMonitor`): each slice's gain, contrast (level gap over
  noise) and evenness are compared with the recent good slices; sudden drops and charging
  slices are flagged and either renormalised (phases still separable) or held back.

All functions take and return ``(Y, X)`` arrays; corrected slices are float32 in the grey
units of the reference (the first slices).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
from scipy import ndimage

from processing.errors import CalibrationError, check_slice
from processing.segment import fit_gray_mixture, otsu_class_means

__all__ = [
    "BrightnessMonitor",
    "CorrectedSlice",
    "CurtainCorrection",
    "SliceQuality",
    "slice_structure",
    "stripe_angle",
    "CorrectionModel",
    "CurtainChoice",
    "choose_curtain_reference",
    "fit_correction",
    "find_levels",
    "match_brightness",
    "remove_curtaining",
    "flatten_background",
    "stripe_amplitude",
]

logger = logging.getLogger(__name__)

_CURTAIN_METHODS = (None, "column")
# Share of a pixel's row neighbours that must be nearest to one phase for the stripe residual to
# take that phase's level (:func:`_row_phase`).
_ROW_VOTE_SHARE = 0.6
# Spectral strength of the stripe direction (1 to 1.5 on clean generated and real slices, up to 2.3
# on pystack3d slices without curtains, 3.3 to 8 with curtains) needed for band profiles.
_MIN_BAND_STRENGTH = 3.0
_ANGLE_CROP = 512  # px: central crop whose spectrum gives the stripe angle (about 0.06 degree once refined)
_MAX_CONTRAST = 20.0  # level gap over binned noise beyond which contrast is not compared
_BACKGROUND_METHODS = (None, "polynomial")
_CURTAIN_REFERENCES = ("neighbours", "phases")
# "auto" takes the row neighbours only where the stripes (RMS) reach this share of the smallest
# level gap: the phase-level residual is clipped at half a gap, so stripes whose extremes (about
# 2 RMS) pass it push pixels into the neighbouring phase and are underestimated where their row
# does not outvote them (:func:`_row_phase`).
_NEIGHBOURS_MIN_STRIPES = 0.25
# ... and only where their calibration keeps every level gap at least this share of the phase
# levels' smallest: two levels closer than that are one class split in two (a phase model of its
# own, which the stripe figures cannot judge).
_NEIGHBOURS_MIN_GAP = 0.5


def _histogram(pixels, step, valid=None):
    """Histogram of a subsample (of the `valid` pixels) in 128 bins between its 0.05 and 99.95
    percentiles: (centres, counts), or (None, None) for a flat slice."""
    sample = np.asarray(pixels[::step, ::step])
    sample = sample.ravel() if valid is None else sample[np.asarray(valid, dtype=bool)[::step, ::step]]
    if sample.size == 0:
        return None, None
    if sample.dtype in (np.uint8, np.uint16):
        # integer slices: one bincount, percentiles from its cumulative sum (no sort)
        full = np.bincount(sample, minlength=256)
        cum = np.cumsum(full)
        lo, hi = np.searchsorted(cum, [0.0005 * cum[-1], 0.9995 * cum[-1]])
        if not hi > lo:
            return None, None
        width = max((hi + 1 - lo) / 128.0, 1.0)
        idx = ((np.arange(lo, hi + 1) - lo) / width).astype(int)
        counts = np.bincount(idx, weights=full[lo:hi + 1], minlength=int(idx[-1]) + 1)
        return lo + (np.arange(counts.size) + 0.5) * width - 0.5, counts
    sample = sample.astype(np.float32)
    lo, hi = np.percentile(sample, [0.05, 99.95])
    if not hi > lo:
        return None, None
    counts, edges = np.histogram(sample, bins=128, range=(float(lo), float(hi)))
    return 0.5 * (edges[:-1] + edges[1:]), counts


def find_levels(pixels, n_phases, *, init=None, step=2, valid=None):
    """Grey level of each phase: the means of a Gaussian mixture fitted to the slice's histogram.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice.
    n_phases : int
        Number of phases (2 to 4).
    init : sequence of float, optional
        Expected levels (e.g. the reference levels mapped through the previous slice's
        brightness); default: the means of the multi-Otsu classes.
    step : int, optional
        Subsampling step of the histogram (pixels).
    valid : (Y, X) bool ndarray, optional
        The specimen's pixels (a black margin would make a mode of its own).

    Returns
    -------
    levels : (n_phases,) ndarray of float
        Phase levels in grey units, dark to bright (NaN when the slice is flat).
    weights : (n_phases,) ndarray of float
        Share of the pixels of each phase (0 when NaN).
    """
    pixels = check_slice(pixels)
    if not 2 <= int(n_phases) <= 4:
        raise ValueError(f"n_phases: expected 2 to 4, got {n_phases!r}")
    n_phases = int(n_phases)
    centres, counts = _histogram(pixels, step, _checked_valid(valid, pixels.shape))
    if centres is None:
        return np.full(n_phases, np.nan), np.zeros(n_phases)
    if init is None:
        try:
            init = otsu_class_means(centres, counts, n_phases)[1]
        except ValueError:  # fewer distinct grey levels than phases
            return np.full(n_phases, np.nan), np.zeros(n_phases)
    levels, _, weights = fit_gray_mixture(centres, counts, np.sort(np.asarray(init, dtype=float)), iterations=30,
                                          tol=0.01 * (centres[1] - centres[0]))
    return levels, weights


def _map_modes(found, weights, levels, prior):
    """Affine map of the found modes onto `levels`: (gain, offset, misfit), misfit = the largest
    distance of a mapped mode from its level, in units of the smallest level gap; at least 1 when
    a mode is missing (two modes always fit exactly, so the map is unchecked), inf with one mode;
    None without any."""
    ok = np.isfinite(found) & (weights > 0.02)
    gain0, _ = prior
    if ok.sum() >= 2:
        w = weights[ok]
        a = np.vstack([found[ok], np.ones(ok.sum())]).T * np.sqrt(w)[:, None]
        gain, offset = np.linalg.lstsq(a, levels[ok] * np.sqrt(w), rcond=None)[0]
        if 0.2 < gain < 5:
            misfit = np.abs(gain * found[ok] + offset - levels[ok]).max() / np.min(np.diff(levels))
            return float(gain), float(offset), float(misfit if ok.all() else max(misfit, 1.0))
    if ok.sum() >= 1:
        k = int(np.flatnonzero(ok)[np.argmax(weights[ok])])
        return float(gain0), float(levels[k] - gain0 * found[k]), np.inf
    return None


# Largest gain change from the previous slice's map that a slice missing a phase may follow (a
# slow drift moves it by well under 1 % per slice; the sudden drops of interest are 30-70 %).
_SLOW_GAIN = 0.1


def _map_with_phases_missing(found, weights, levels, prior):
    """Map of the found modes onto `levels` when some phases are missing from the slice.

    A phase may be absent from a slice (large particles). A mode of under 2 % of the pixels, or
    one closer than half the smallest level gap to a stronger neighbour (one phase split in
    two), is no mode; the others must sit where the previous map puts their levels. Two modes
    always fit an affine map exactly, so a fitted map is only taken when its gain stays within
    :data:`_SLOW_GAIN` of the previous map's (a slow drift, followed from slice to slice; without
    it the modes would drift away from the fixed map until good slices were held); a larger
    change keeps the previous map and its misfit (a sudden drop stays an outlier).
    Returns (gain, offset, misfit) with misfit as in :func:`_map_modes`, or None with fewer than
    two modes.
    """
    gain0, offset0 = prior
    gap = float(np.min(np.diff(levels)))
    ok = np.isfinite(found) & (weights > 0.02)
    for i in range(found.size - 1):
        if ok[i] and ok[i + 1] and gain0 * (found[i + 1] - found[i]) < 0.5 * gap:
            ok[i if weights[i] < weights[i + 1] else i + 1] = False
    if ok.sum() < 2:
        return None
    w = np.sqrt(weights[ok])
    a = np.vstack([found[ok], np.ones(ok.sum())]).T * w[:, None]
    gain, offset = np.linalg.lstsq(a, levels[ok] * w, rcond=None)[0]
    if abs(np.log(max(gain, 1e-12) / gain0)) <= np.log(1 + _SLOW_GAIN):
        gain0, offset0 = gain, offset
    return float(gain0), float(offset0), float(np.abs(gain0 * found[ok] + offset0 - levels[ok]).max() / gap)


def _fit_brightness(pixels, levels, prior, step, valid=None):
    """(gain, offset, misfit, found modes) of a slice; misfit as in :func:`_map_modes`.

    The mixture starts from the previous slice's levels; when that fit is poor (a sudden drop
    moves the modes far from where they were) it is redone from the slice's own quantiles and
    the better fit kept. When neither maps every phase, the slice may lack a phase
    (:func:`_map_with_phases_missing`).
    """
    levels = np.asarray(levels, dtype=float)
    gain0, offset0 = (float(v) for v in prior)
    if not gain0 > 0:
        raise ValueError(f"prior: gain must be > 0, got {prior!r}")
    found, weights = find_levels(pixels, levels.size, init=(levels - offset0) / gain0, step=step, valid=valid)
    fit = _map_modes(found, weights, levels, (gain0, offset0))
    warm = found, weights
    if fit is None or fit[2] > 0.2 or not 0.67 < fit[0] / gain0 < 1.5:
        cold_found, cold_weights = find_levels(pixels, levels.size, step=step, valid=valid)
        cold = _map_modes(cold_found, cold_weights, levels, (gain0, offset0))
        if cold is not None and (fit is None or cold[2] < fit[2]):
            fit, found = cold, cold_found
    if fit is None or fit[2] > 0.25:
        # the modes of the warm start sit where the previous map expects them
        missing = _map_with_phases_missing(*warm, levels, (gain0, offset0))
        if missing is not None and missing[2] <= 0.25 and (fit is None or missing[2] < fit[2]):
            fit = missing
    if fit is None:
        logger.warning("brightness: no phase mode found, keeping gain %.3f offset %.1f", gain0, offset0)
        return gain0, offset0, np.inf, found
    return fit[0], fit[1], fit[2], found


def match_brightness(pixels, levels, *, prior=(1.0, 0.0), step=2):
    """Gain and offset that map the slice's phase modes onto `levels`.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A raw slice.
    levels : sequence of float
        Reference levels (grey units), dark to bright.
    prior : (gain, offset), optional
        The previous slice's map; it places the search windows and is returned unchanged when
        no mode is found.
    step : int, optional
        Subsampling step of the histogram.

    Returns
    -------
    gain, offset : float
        ``corrected = gain * pixels + offset``.
    """
    gain, offset, _, _ = _fit_brightness(pixels, levels, prior, step)
    return gain, offset


def _residual(image, levels, clip, out=None):
    """``image - nearest level``, clipped to +-clip (partial-volume pixels and outliers).

    ``step * (image > cut)`` subtracted per threshold: about twice as fast as a gather of the
    level of each pixel, ten times as fast as a subtraction ``where=`` the mask. `out` (float32,
    shape of `image`) avoids an allocation and may be `image` itself.
    """
    levels = np.asarray(levels, dtype=np.float32)
    above = [image > cut for cut in 0.5 * (levels[1:] + levels[:-1])]  # before `out` is written
    res = np.subtract(image, levels[0], out=out, dtype=np.float32)
    for mask, step in zip(above, np.diff(levels)):
        res -= step * mask
    return np.clip(res, -clip, clip, out=res)


def _default_clip(levels):
    return float(np.min(np.diff(np.sort(levels)))) / 2 if len(levels) > 1 else 50.0


def _noise_sigma(image):
    """Robust standard deviation (grey units) of the pixel noise, from differences along y (where
    vertical stripes and most structure cancel): 1.4826 MAD / sqrt(2)."""
    image = np.asarray(image)
    d = np.diff(image[:, :: max(1, image.shape[1] // 256)].astype(np.float32), axis=0)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def _binned(pixels):
    """The slice binned 2 x 2 (float32): the segmentation smooths, so this is the noise it has to
    separate the phases against."""
    p = np.asarray(pixels)
    h, w = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    if h < 4 or w < 4:
        return p.astype(np.float32)
    return p[:h, :w].astype(np.float32).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _structure_and_noise(pixels):
    """(:func:`slice_structure`, noise standard deviation of the 2 x 2 binned slice)."""
    binned = _binned(pixels)
    sigma = _noise_sigma(binned)
    spread = float(np.std(binned[::2, ::2]))
    return (spread / max(sigma, 0.3) if spread > 0 else 0.0), sigma


def _row_phase(image, levels, width_px, valid=None):
    """Index of each pixel's phase for the stripe residual, (Y, X) int: the phase most of its row
    neighbours on the specimen (``2 width_px + 1`` px, `valid` pixels only) are nearest to, where at
    least :data:`_ROW_VOTE_SHARE` of them agree; elsewhere its own nearest level.

    A stripe deeper than half a level gap pushes its pixels to the neighbouring phase's level, and
    their residual against that level hides the stripe: the robust fit settles on the pushed
    pixels (more passes do not undo it; on a randomised 150-slice acquisition a quarter of a
    bright phase under dark stripes stayed labelled as the phase below). Stripes are narrower than
    `width_px`, so the row around them outvotes them; where the row is mixed (boundaries, several
    features in the window) the pixel's own level is kept. A feature narrower than about 40 % of
    the window in a row of one other phase is outvoted too: its residual is then clipped at half
    a gap, and the Huber weights keep its pull on the column's profile small.
    """
    levels = np.asarray(levels, dtype=np.float32)
    own = np.zeros(np.shape(image), np.int8)
    for cut in 0.5 * (levels[1:] + levels[:-1]):
        own += image > cut  # (a comparison per level: several times faster than a search per pixel)
    size = 2 * int(width_px) + 1
    needed = np.full(own.shape, _ROW_VOTE_SHARE, np.float32)  # votes a phase needs (a share of the window)
    if valid is not None:
        needed *= ndimage.uniform_filter1d(np.asarray(valid, dtype=np.float32), size, axis=1, mode="nearest")
        needed[needed <= 0] = np.inf  # no specimen in the window: the pixel's own phase
    phase = own.copy()
    for i in range(levels.size):
        # a share over half is a majority: at most one phase reaches it, so the order does not matter
        mine = own == i if valid is None else (own == i) & valid
        votes = ndimage.uniform_filter1d(mine.astype(np.float32), size, axis=1, mode="nearest")
        np.copyto(phase, i, where=votes >= needed)
    return phase


def _stripe_residual(image, levels, width_px, valid=None):
    """What the stripes are measured on: ``pixel - level of its phase`` (the phase by its row,
    :func:`_row_phase`; clipped to half the smallest level gap), or without levels the pixels minus
    their smoothing along x over `width_px` (over the `valid` pixels only: a black margin's edge is
    no stripe); 0 outside `valid`."""
    if levels is not None:
        image = np.asarray(image, dtype=np.float32)
        clip = _default_clip(levels)
        res = image - np.asarray(levels, dtype=np.float32).take(_row_phase(image, levels, width_px, valid))
        np.clip(res, -clip, clip, out=res)
        return res if valid is None else np.where(valid, res, np.float32(0))
    image = np.asarray(image, dtype=np.float32)
    if valid is None:
        return image - ndimage.gaussian_filter1d(image, width_px, axis=1, mode="nearest")
    inside = np.asarray(valid, dtype=np.float32)
    smooth = ndimage.gaussian_filter1d(image * inside, width_px, axis=1, mode="nearest")
    smooth /= np.maximum(ndimage.gaussian_filter1d(inside, width_px, axis=1, mode="nearest"), np.float32(1e-6))
    return np.where(valid, image - smooth, np.float32(0))


class _Shear:
    """Columns of a slice sheared along the stripe angle: pixel (y, x) lies on column
    ``round(x - (y - yc) tan(angle)) + pad``; vertical stripes need no index (plain columns).

    Attributes: ``n`` sheared columns, ``y`` the rows' position along y (-0.5 .. 0.5) as a
    (R, 1) float32 array, ``index`` the (R, X) int32 column of each pixel (None when vertical).
    """

    def __init__(self, shape, angle_deg, rows=None):
        h, w = shape
        rows = np.arange(h) if rows is None else np.asarray(rows)
        shift = np.rint((rows - (h - 1) / 2) * np.tan(np.radians(angle_deg))).astype(np.int64)
        pad = int(np.abs(shift).max()) if shift.size else 0
        self.n = w + 2 * pad
        self.index = None if pad == 0 else (np.arange(w)[None, :] - shift[:, None] + pad).astype(np.int32)
        self.y = ((rows - (h - 1) / 2) / max(h, 1)).astype(np.float32)[:, None]

    def part(self, rows):
        """The same shear restricted to a slice of its rows."""
        sub = object.__new__(_Shear)
        sub.n, sub.y = self.n, self.y[rows]
        sub.index = None if self.index is None else self.index[rows]
        return sub

    def banded(self, band_of_row, n_bands):
        """The same shear with a separate set of columns per band of rows (band index per row)."""
        sub = object.__new__(_Shear)
        rows, w = self.y.shape[0], (self.n if self.index is None else self.index.shape[1])
        base = self.index if self.index is not None else np.broadcast_to(np.arange(w, dtype=np.int32), (rows, w))
        sub.index = (base + (np.asarray(band_of_row, dtype=np.int32) * self.n)[:, None]).astype(np.int32)
        sub.n, sub.y = self.n * n_bands, self.y
        return sub

    def gather(self, profile):
        """(R, X) values of a (n,) column profile (broadcast along y when vertical)."""
        p = np.asarray(profile, dtype=np.float32)
        return p[None, :] if self.index is None else p[self.index]

    def sum(self, values, y_power=0):
        """Per-column sums of (R, X) float32 `values` (times y ** `y_power`), float64 (n,)."""
        if self.index is None:
            # float32 sums over at most a few thousand rows: errors far below a grey level
            if y_power:  # einsum, not a BLAS product: BLAS threads crawl on a busy machine
                return np.einsum("i,ij->j", self.y[:, 0] ** y_power, values).astype(np.float64)
            return values.sum(axis=0).astype(np.float64)
        v = values * self.y ** y_power if y_power else values
        return np.bincount(self.index.ravel(), weights=v.ravel(), minlength=self.n)

    def counts(self, weights=None):
        rows = self.y.shape[0]
        if weights is None:
            if self.index is None:
                return np.full(self.n, float(rows))
            return np.bincount(self.index.ravel(), minlength=self.n).astype(float)
        return self.sum(np.asarray(weights, dtype=np.float32))


def _fit_profiles(res, shear, *, k, fade, iterations=3, weights=None):
    """Robust stripe profile along sheared columns: per column an offset (and a slope along y when
    `fade`) fitted to the residual by iteratively reweighted least squares with Huber weights of
    scale `k` (grey units), so that pixels on phase boundaries or in the wrong phase weigh little
    (a robust location, not a mean).

    Returns
    -------
    offset, slope, counts : (n,) ndarray
        ``stripe(y) = offset + slope * y`` on each sheared column; counts = pixels (weights) per column.
    """
    r = np.asarray(res, dtype=np.float32)
    base = None if weights is None else np.asarray(weights, dtype=np.float32)
    counts = shear.counts(base)
    offset = np.zeros(shear.n)
    slope = np.zeros(shear.n)
    # A slope needs the column to span most of the height (sheared corner columns do not).
    y_var = shear.sum(np.ones_like(r) if base is None else base, 2) / np.maximum(counts, 1e-12)
    slope_ok = fade & (counts >= 0.5 * counts.max()) & (y_var > 0.02)
    for _ in range(iterations):
        fit = shear.gather(offset)
        if fade:
            fit = fit + shear.gather(slope) * shear.y
        w = np.abs(r - fit)
        np.maximum(w, 1e-6, out=w)
        np.divide(np.float32(k), w, out=w)
        np.minimum(w, 1.0, out=w)
        if base is not None:
            w *= base
        wr = w * r
        s0, t0 = shear.sum(w), shear.sum(wr)
        mean = t0 / np.maximum(s0, 1e-12)
        if fade:
            s1, s2, t1 = shear.sum(w, 1), shear.sum(w, 2), shear.sum(wr, 1)
            det = s0 * s2 - s1 * s1
            ok = slope_ok & (det > 1e-3 * s0 * s0 * y_var)
            safe = np.where(ok, det, 1.0)
            offset = np.where(ok, (t0 * s2 - t1 * s1) / safe, mean)
            slope = np.where(ok, (s0 * t1 - s1 * t0) / safe, 0.0)
        else:
            offset = mean
    return offset, slope, counts


def _high_pass(profile, counts, width_px):
    """`profile` minus its count-weighted Gaussian smoothing over `width_px` (stripes are narrower;
    what is wider is shading or structure, not curtaining); 0 on empty columns."""
    w = np.asarray(counts, dtype=float)
    low = ndimage.gaussian_filter1d(profile * w, width_px, mode="constant")
    low /= np.maximum(ndimage.gaussian_filter1d(w, width_px, mode="constant"), 1e-12)
    return np.where(w > 0, profile - low, 0.0)


def _rms(profile, covered):
    return float(np.sqrt(np.mean(profile[covered] ** 2))) if covered.any() else 0.0


def stripe_amplitude(pixels, *, levels=None, angle_deg=0.0, width_px=16.0, valid=None):
    """Root mean square (grey units) of the stripe profile: the mean along each (sheared) column
    of the residual ``pixels - level of its phase`` (or of the pixels), high-passed along x over
    `width_px`. A figure of merit for curtaining (not a correction), on columns that span at
    least 90 % of the height.

    Parameters
    ----------
    pixels : (Y, X) ndarray
    levels : sequence of float, optional
        Phase levels (grey units of `pixels`).
    angle_deg : float, optional
        Stripe angle from vertical (degrees, positive when the stripes lean towards +x going down).
    width_px : float, optional
        Widest stripe counted (px).
    valid : (Y, X) bool ndarray, optional
        The specimen's pixels (black margins and the outside of a field left out).
    """
    image = np.asarray(check_slice(pixels), dtype=np.float32)
    valid = _checked_valid(valid, image.shape)
    return _profile_rms(_stripe_residual(image, levels, width_px, valid), _Shear(image.shape, angle_deg), width_px,
                        None if valid is None else valid.astype(np.float32))


def _checked_valid(valid, shape):
    """`valid` as a bool array of `shape`, or None."""
    if valid is None:
        return None
    if np.shape(valid) != tuple(shape):
        raise ValueError(f"valid: expected shape {tuple(shape)}, got {np.shape(valid)}")
    return np.asarray(valid, dtype=bool)


def _profile_rms(res, shear, width_px, weights=None):
    """RMS of the high-passed mean profile of `res` (0 outside `weights`) along the columns of
    `shear` that span at least 90 % of the height (of the most covered column, with `weights`)."""
    counts = shear.counts(weights)
    profile = shear.sum(res) / np.maximum(counts, 1)
    full = res.shape[0] if weights is None else max(float(counts.max()), 1.0)
    return _rms(_high_pass(profile, counts, width_px), counts >= 0.9 * full)


def stripe_angle(pixels, *, levels=None, max_angle_deg=15.0, width_px=16.0):
    """Dominant stripe angle near vertical, from the 2-D spectrum of the residual.

    Stripes at angle a put their energy on the line ``ky = -kx tan(a)`` of the spectrum: the
    (whitened) spectral power is summed along lines through the origin in ``[-max_angle_deg,
    max_angle_deg]``, the best line refined by the projection (sheared column) variance.
    Vertical is kept unless a tilt is clearly stronger (1.25 times vertical, 1.6 times the median line).

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice (the central 512 x 512 px are used).
    levels : sequence of float, optional
        Phase levels: the spectrum is taken of ``pixels - level of its phase``.
    max_angle_deg : float, optional
        Search range around vertical (degrees).
    width_px : float, optional
        Widest stripe (px): lower spatial frequencies are left out.

    Returns
    -------
    angle_deg : float
        Degrees from vertical, positive when the stripes lean towards +x going down.
    """
    image = np.asarray(check_slice(pixels), dtype=np.float32)
    if not 0 <= max_angle_deg <= 45:
        raise ValueError(f"max_angle_deg: expected 0 to 45 degrees, got {max_angle_deg!r}")
    return _stripe_angle(image, levels, max_angle_deg, width_px)[0]


def _stripe_angle(image, levels, max_angle_deg, width_px, fixed=None, valid=None):
    """(angle, strength) of :func:`stripe_angle`, or the strength of the `fixed` angle; strength =
    the line's whitened spectral power over the median line's within +-max(max_angle_deg, 15)
    degrees (about 1 to 1.5 without stripes)."""
    h, w = image.shape
    if min(h, w) < 32:
        return (fixed or 0.0), 1.0
    y0, x0 = max(0, (h - _ANGLE_CROP) // 2), max(0, (w - _ANGLE_CROP) // 2)
    crop = image[y0:y0 + _ANGLE_CROP, x0:x0 + _ANGLE_CROP]
    res = _stripe_residual(crop, levels, width_px,
                           None if valid is None else valid[y0:y0 + _ANGLE_CROP, x0:x0 + _ANGLE_CROP])
    if not np.any(res):
        return (fixed or 0.0), 1.0  # nothing of the specimen (or nothing but flat) in the crop
    windowed = (res - res.mean()) * (np.hanning(res.shape[0])[:, None] * np.hanning(res.shape[1])[None, :])
    power = np.fft.fftshift(np.abs(np.fft.rfft2(windowed)) ** 2, axes=0)
    ch, cw = res.shape
    k = np.arange(1.0 / (4 * width_px), 0.25, 1.0 / min(ch, cw))
    step = np.degrees(1.0 / min(ch, cw))
    span = max(max_angle_deg, 15.0, abs(fixed or 0.0))
    angles = np.arange(-span, span + step / 2, step)
    t = np.radians(angles)[:, None]
    ky, kx = -k[None, :] * np.sin(t) * ch + ch // 2, k[None, :] * np.cos(t) * cw
    polar = ndimage.map_coordinates(power, [ky.ravel(), kx.ravel()], order=1).reshape(ky.shape)
    score = (polar / np.maximum(np.median(polar, axis=0, keepdims=True), 1e-30)).mean(axis=1)
    typical = np.median(score)
    if not typical > 0:
        return (fixed or 0.0), 1.0  # most directions carry no power: no spectrum to judge stripes on
    score /= typical
    at = lambda a: float(score[np.argmin(np.abs(angles - a))])  # noqa: E731
    if fixed is not None:
        return float(fixed), at(fixed)
    inside = np.abs(angles) <= max_angle_deg
    best = float(angles[inside][np.argmax(score[inside])])
    if best == 0.0 or score[inside].max() < max(1.25 * at(0.0), 1.6):
        return 0.0, at(0.0)  # no clear tilted direction (1 to 1.5 without stripes): vertical
    # refine where a stripe stays within one pixel over the crop's height
    fine = best + np.degrees(0.5 / ch) * np.arange(-4, 5)
    amp = [_profile_rms(res, _Shear(res.shape, a), width_px) for a in fine]
    return float(fine[int(np.argmax(amp))]), at(best)


def _remove_in_bands(image, unchanged, *, levels, angle_deg, width_px, k, band_px, min_reduction, valid):
    """Curtains over part of the height: a robust profile per band of `band_px` rows along the
    sheared columns, interpolated along y between band centres. Subtracted only when the profiles
    of the even and of the odd rows agree (the noise differs between them, the stripes do not)
    and the slice's stripe amplitude drops."""
    h, w = image.shape
    n_bands = max(2, h // band_px)
    edges = np.linspace(0, h, n_bands + 1)
    band_of_row = np.minimum(np.searchsorted(edges, np.arange(h), side="right") - 1, n_bands - 1)
    shear = _Shear(image.shape, angle_deg).banded(band_of_row, n_bands)
    res = _stripe_residual(image, levels, width_px, valid)
    weights = None if valid is None else valid.astype(np.float32)
    hp = []
    for parity in (0, 1):
        rows = slice(parity, None, 2)
        off, _, cnt = _fit_profiles(res[rows], shear.part(rows), k=k, fade=False,
                                    weights=None if weights is None else weights[rows])
        off, cnt = off.reshape(n_bands, -1), cnt.reshape(n_bands, -1)
        profiles = np.array([_high_pass(o, c, width_px) for o, c in zip(off, cnt)])
        hp.append((profiles, cnt >= 0.9 * cnt.max(axis=1, keepdims=True)))
    covered = hp[0][1] & hp[1][1]
    held_before = float(np.sqrt((_rms(hp[0][0], covered) ** 2 + _rms(hp[1][0], covered) ** 2) / 2))
    held_after = _rms(hp[0][0] - hp[1][0], covered)
    unchanged = {**unchanged, "held_out_before": held_before, "held_out_after": held_after}
    if not held_after < (1 - min_reduction) * held_before:
        return CurtainCorrection(**unchanged, reason="no stripes shared by the halves of the slice, nor by the even "
                                                     "and odd rows of its bands")
    off, _, cnt = _fit_profiles(res, shear, k=k, fade=False, weights=weights)
    profiles = np.array([_high_pass(o, c, width_px)
                         for o, c in zip(off.reshape(n_bands, -1), cnt.reshape(n_bands, -1))])
    # linear interpolation along y between band centres (constant beyond the outer ones)
    centres = 0.5 * (edges[:-1] + edges[1:])
    upper = np.clip(np.searchsorted(centres, np.arange(h)), 1, n_bands - 1)
    t = np.clip((np.arange(h) - centres[upper - 1]) / (centres[upper] - centres[upper - 1]), 0, 1).astype(np.float32)
    plain = _Shear(image.shape, angle_deg)
    columns = plain.index if plain.index is not None else np.broadcast_to(np.arange(w), (h, w))
    flat = profiles.astype(np.float32).ravel()
    n = plain.n
    below, above = flat[(upper - 1)[:, None] * n + columns], flat[upper[:, None] * n + columns]
    stripes = (1 - t)[:, None] * below + t[:, None] * above
    out = _subtract_inside(image, stripes, valid)
    before = unchanged["amplitude_before"]
    after = stripe_amplitude(out, levels=levels, angle_deg=angle_deg, width_px=width_px, valid=valid)
    if not after < before:
        return CurtainCorrection(**unchanged, reason=f"stripe amplitude would rise ({before:.2f} -> {after:.2f})")
    return CurtainCorrection(**{**unchanged, "pixels": out, "applied": True, "amplitude_after": after})


@dataclass(frozen=True, eq=False)
class CurtainCorrection:
    """A slice after curtaining removal, and the evidence for doing it or not.

    Attributes
    ----------
    pixels : (Y, X) ndarray of float32
        The corrected slice, or the input unchanged when `applied` is False.
    applied : bool
        Whether the stripes were subtracted.
    angle_deg : float
        Stripe angle used (degrees from vertical).
    amplitude_before, amplitude_after : float
        :func:`stripe_amplitude` of the input and of the output (grey units).
    held_out_before, held_out_after : float
        Stripe amplitude of each half of the slice (top, bottom) before and after subtracting the
        profile estimated on the other half: the test that the stripes are real (shared by both
        halves) and not structure or noise.
    reason : str
        Why it was skipped ("" when applied).
    """

    pixels: np.ndarray
    applied: bool
    angle_deg: float
    amplitude_before: float
    amplitude_after: float
    held_out_before: float
    held_out_after: float
    reason: str = ""


def remove_curtaining(pixels, *, levels=None, angle_deg=0.0, max_angle_deg=15.0, width_px=16.0, fade=True,
                      passes=2, min_reduction=0.1, band_px=128, band_min_reduction=0.5, valid=None):
    """Subtract curtaining stripes, only where that reduces them.

    The stripe profile is fitted along (sheared) columns to the within-phase residual ``pixel -
    level of its phase`` with a robust (Huber) location, an offset and a slope along y per column
    (stripes that fade or strengthen down the slice), then high-passed along x over `width_px`
    (wider variations are shading or structure). Before anything is subtracted, the profile of
    the top half must explain the stripes of the bottom half and vice versa (held-out test):
    structure and noise differ between the halves, curtains do not. After subtraction the
    amplitude is measured again; the input is returned unchanged whenever the stripes would not
    shrink.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice in the grey units of `levels`.
    levels : sequence of float, optional
        Phase levels. Without them the residual is the slice minus its smoothing along x.
    angle_deg : float or "auto", optional
        Stripe angle from vertical (degrees); "auto" estimates it (:func:`stripe_angle`).
    max_angle_deg : float, optional
        Search range of "auto".
    width_px : float, optional
        Widest stripe removed (px).
    fade : bool, optional
        Fit a slope along y per column.
    passes : int, optional
        Strong stripes push pixels into the neighbouring phase, so the first profile is
        underestimated; later passes fit the residual of the corrected slice.
    min_reduction : float, optional
        The held-out stripe amplitude must drop by at least this share (0..1).
    band_px : int or None, optional
        When the whole slice fails the held-out test, curtains that run over part of the height
        only are looked for, if the spectrum shows a dominant stripe direction (its line at least
        twice as strong as the median line, :func:`stripe_angle`), with one profile per band of
        this height (interpolated along y), tested on the even against the odd rows with the
        stricter `band_min_reduction`. None: whole-slice profiles only.
    band_min_reduction : float, optional
        The held-out reduction the band profiles need (adjacent rows share structure, not only
        stripes, so the bar is higher).
    valid : (Y, X) bool ndarray, optional
        The specimen's pixels: the profile is fitted and the amplitude measured on them, and the
        stripes subtracted from them only (a black margin or the outside of a field stays as it
        is, and its edge is not taken for a stripe).

    Returns
    -------
    CurtainCorrection
    """
    image = np.array(check_slice(pixels), dtype=np.float32)
    if not (isinstance(passes, (int, np.integer)) and passes >= 1):
        raise ValueError(f"passes: expected an integer >= 1, got {passes!r}")
    if not width_px >= 2:
        raise ValueError(f"width_px: expected >= 2 px, got {width_px!r}")
    if not 0 <= min_reduction < 1:
        raise ValueError(f"min_reduction: expected 0 <= value < 1, got {min_reduction!r}")
    valid = _checked_valid(valid, image.shape)
    strength = None
    if angle_deg == "auto":
        angle_deg, strength = _stripe_angle(image, levels, max_angle_deg, width_px, valid=valid)
    elif not (isinstance(angle_deg, (int, float, np.floating)) and abs(angle_deg) <= 45):
        raise ValueError(f"angle_deg: expected 'auto' or degrees within +-45, got {angle_deg!r}")
    angle_deg = float(angle_deg)
    h, w = image.shape
    before = stripe_amplitude(image, levels=levels, angle_deg=angle_deg, width_px=width_px, valid=valid)
    unchanged = dict(pixels=image, applied=False, angle_deg=angle_deg, amplitude_before=before,
                     amplitude_after=before)
    # Huber scale: a few noise sigmas, floored for noise-free images
    span = (float(np.ptp(levels)) if levels is not None and len(levels) > 1
            else float(np.ptp(image if valid is None or not valid.any() else image[valid])) or 1.0)
    k = max(2.5 * _noise_sigma(image), 0.005 * span)
    step = max(1, h // 512)  # stripes are constant along y: 512 rows estimate them well enough
    rows = np.arange(0, h, step)
    shear = _Shear(image.shape, angle_deg, rows)
    row_valid = None if valid is None else valid[rows]
    weights = None if valid is None else row_valid.astype(np.float32)
    res = _stripe_residual(image[rows], levels, width_px, row_valid)

    # Held-out test: halves fitted separately, each checked against the other's profile.
    half = rows.size // 2
    hp = []
    for part in (slice(0, half), slice(half, rows.size)):
        off, _, cnt = _fit_profiles(res[part], shear.part(part), k=k, fade=False,
                                    weights=None if weights is None else weights[part])
        hp.append((_high_pass(off, cnt, width_px), cnt >= 0.9 * cnt.max()))
    covered = hp[0][1] & hp[1][1]
    held_before = float(np.sqrt((_rms(hp[0][0], covered) ** 2 + _rms(hp[1][0], covered) ** 2) / 2))
    held_after = _rms(hp[0][0] - hp[1][0], covered)
    unchanged.update(held_out_before=held_before, held_out_after=held_after)
    if not held_after < (1 - min_reduction) * held_before:
        if band_px is None or h < 2 * band_px:
            return CurtainCorrection(**unchanged, reason="no stripes shared by the top and bottom halves")
        if strength is None:
            strength = _stripe_angle(image, levels, max_angle_deg, width_px, fixed=angle_deg, valid=valid)[1]
        if strength < _MIN_BAND_STRENGTH:
            return CurtainCorrection(**unchanged, reason=f"no stripes shared by the top and bottom halves, and no "
                                                         f"dominant stripe direction (strength {strength:.2f})")
        return _remove_in_bands(image, unchanged, levels=levels, angle_deg=angle_deg, width_px=width_px, k=k,
                                band_px=band_px, min_reduction=band_min_reduction, valid=valid)

    offset = np.zeros(shear.n)
    slope = np.zeros(shear.n)
    for p in range(passes):
        if p:
            res = _stripe_residual(image[rows] - shear.gather(offset) - shear.gather(slope) * shear.y, levels,
                                   width_px, row_valid)
        off, slo, cnt = _fit_profiles(res, shear, k=k, fade=fade, weights=weights)
        offset += _high_pass(off, cnt, width_px)
        slope += _high_pass(slo, cnt, width_px)
    full = shear if step == 1 else _Shear(image.shape, angle_deg)
    out = _subtract_inside(image, full.gather(offset) + full.gather(slope) * full.y, valid)
    after = stripe_amplitude(out, levels=levels, angle_deg=angle_deg, width_px=width_px, valid=valid)
    if not after < before:
        return CurtainCorrection(**unchanged, reason=f"stripe amplitude would rise ({before:.2f} -> {after:.2f})")
    return CurtainCorrection(out, True, angle_deg, before, after, held_before, held_after)


def _subtract_inside(image, stripes, valid):
    """`image` minus `stripes` on the `valid` pixels (None: all); the others keep their grey."""
    return image - stripes if valid is None else np.where(valid, image - stripes, image).astype(np.float32)


def flatten_background(pixels, *, levels=None, order=2, step=8):
    """Subtract a smooth 2-D polynomial background (charging, shading).

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice.
    levels : sequence of float, optional
        Phase levels: the polynomial is fitted to ``pixels - nearest level`` (structure-free).
        Without levels it is fitted to the pixels themselves (and the mean is kept).
    order : int, optional
        Polynomial order (0 to 4).
    step : int, optional
        Subsampling step of the fit (pixels).

    Returns
    -------
    (Y, X) ndarray of float32
    """
    image = np.asarray(check_slice(pixels), dtype=np.float32)
    if not (isinstance(order, (int, np.integer)) and 0 <= order <= 4):
        raise ValueError(f"order: expected an integer 0..4, got {order!r}")
    h, w = image.shape
    target = _residual(image, levels, _default_clip(levels)) if levels is not None else image - image.mean()
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    yn, xn = yy.ravel() / h - 0.5, xx.ravel() / w - 0.5
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    a = np.stack([yn**i * xn**j for i, j in terms], axis=1)
    coef = np.linalg.lstsq(a, target[::step, ::step].ravel(), rcond=None)[0]
    if levels is None:
        coef[0] = 0.0  # keep the mean grey level
    y1 = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    x1 = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    background = np.zeros((h, w), dtype=np.float32)
    for (i, j), c in zip(terms, coef):
        background += np.float32(c) * (y1**i * x1**j)
    return image - background


# Percentiles of a slice's grey levels compared between slices (1 to 99 %), and the number of
# pixels sampled for them (a sort of about 65k values: a fraction of a millisecond per slice).
_PERCENTILES = np.arange(1.0, 100.0)
_PERCENTILE_SAMPLE = 65536


def grey_percentiles(pixels):
    """Percentiles 1 to 99 % of a slice's grey levels, from a regular subsample.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice.

    Returns
    -------
    (99,) ndarray of float
        Grey levels (the slice's units).
    """
    pixels = check_slice(pixels)
    step = max(1, int(np.ceil(np.sqrt(pixels.size / _PERCENTILE_SAMPLE))))
    return np.percentile(pixels[::step, ::step], _PERCENTILES)


def histogram_shift(percentiles, reference):
    """Distance between two grey-level distributions, as a share of the reference's grey range.

    The mean absolute difference of the percentiles (the Wasserstein-1 distance between the two
    histograms) over the reference's 2-98 % range: a gain change by a factor f moves it by about
    ``|1 - f|`` times the mean grey level over that range, an offset by the offset over it, while
    phase fractions changing by a share s between levels a gap g apart move it by only ``s * g``
    over it (the same slice content, unlike one percentile that may jump a whole gap).

    Parameters
    ----------
    percentiles, reference : (99,) ndarray
        :func:`grey_percentiles` of a slice and of the reference, in the same units.

    Returns
    -------
    float
        0 for the same distribution; inf when the reference is flat.
    """
    span = reference[97] - reference[1]
    return float(np.mean(np.abs(percentiles - reference)) / span) if span > 0 else np.inf


def slice_structure(pixels):
    """How much a slice shows beyond noise: the standard deviation of the 2 x 2 binned slice over
    its noise standard deviation (0 for a flat slice, about 1 for white noise only; 1.5 on the
    noisiest real slice tried, 3 to 10 on generated ones).

    Parameters
    ----------
    pixels : (Y, X) ndarray

    Returns
    -------
    float
    """
    return _structure_and_noise(check_slice(pixels))[0]


@dataclass(frozen=True, eq=False)
class CorrectedSlice:
    """A corrected slice and what was done to it.

    Attributes
    ----------
    pixels : (Y, X) ndarray of float32
        Corrected grey levels, in the reference units.
    gain, offset : float
        Brightness map applied (``gain * raw + offset``).
    structure : float
        :func:`slice_structure` of the raw slice (about 1 for a blank slice of noise).
    misfit : float
        Largest distance of a mapped phase mode from its reference level, in smallest level gaps
        (inf when fewer than two modes were found; 0 without brightness matching).
    contrast : float
        Smallest reference level gap over the noise standard deviation of the 2 x 2 binned slice,
        after the map (at most 20).
    curtain : CurtainCorrection or None
        The curtaining removal and its before/after stripe amplitudes (None when off).
    percentiles : (99,) ndarray or None
        :func:`grey_percentiles` of the raw slice (its histogram, compared between slices by
        :class:`BrightnessMonitor`).
    """

    pixels: np.ndarray
    gain: float
    offset: float
    misfit: float = 0.0
    contrast: float = np.inf
    structure: float = np.inf
    curtain: CurtainCorrection | None = None
    percentiles: np.ndarray | None = None


@dataclass(frozen=True)
class CorrectionModel:
    """Corrections fixed after calibration on the first slices; serialisable to a dict.

    Attributes
    ----------
    levels : tuple of float
        Reference grey level of each phase (histogram modes of the first slices).
    brightness : bool
        Match each slice's phase modes to `levels`.
    curtaining : {"column", None}
        Curtaining removal: robust stripe profiles along the stripe angle, applied only where
        they reduce the stripes (see :func:`remove_curtaining`).
    curtain_reference : {"neighbours", "phases"}
        What the stripes are measured against. ``"phases"``: each pixel against the level of its
        phase (the phase most of its row neighbours are nearest to), after the brightness map;
        stripes stronger than half the smallest level gap push pixels into the neighbouring
        phase, which their row gives back where it outvotes them, and the levels are found on the
        striped slices (measured on the four-phase scenarios of ``bench_label_chain.py`` before
        the row vote: 30-40 % of the stripe profile removed). ``"neighbours"``: first against each pixel's
        neighbours along the row (no phase level needed), on the raw slice before its phase modes
        are found, then what is left against the phases (60-75 %); the row neighbours alone leave
        the stripes that structure finer than `curtain_width_px` hides.
    curtain_angle : "auto" or float
        Stripe angle from vertical (degrees); "auto" estimates it on every slice within
        +-`curtain_max_angle_deg`.
    curtain_max_angle_deg : float
        Search range of the "auto" angle.
    curtain_width_px : float
        Widest stripe removed (px).
    curtain_passes : int
        Passes of the curtaining removal.
    background : {"polynomial", None}
        Background flattening method.
    background_order : int
        Polynomial order of the background.
    curtain_choice : str
        Why `curtain_reference` was chosen, with the evidence, when :func:`fit_correction` chose
        it (``curtain_reference="auto"``); "" when it was given.
    """

    levels: tuple
    brightness: bool = True
    curtaining: str | None = "column"
    curtain_angle: str | float = "auto"
    curtain_max_angle_deg: float = 15.0
    curtain_width_px: float = 16.0
    curtain_passes: int = 2
    curtain_reference: str = "phases"
    background: str | None = None
    background_order: int = 2
    curtain_choice: str = ""

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        if len(self.levels) < 2 or not np.all(np.diff(self.levels) > 0):
            raise ValueError(f"levels: expected >= 2 increasing grey levels, got {self.levels!r}")
        if self.curtaining not in _CURTAIN_METHODS:
            raise ValueError(f"curtaining: expected one of {_CURTAIN_METHODS}, got {self.curtaining!r}")
        if self.curtain_reference not in _CURTAIN_REFERENCES:
            raise ValueError(f"curtain_reference: expected one of {_CURTAIN_REFERENCES}, got {self.curtain_reference!r}")
        if self.background not in _BACKGROUND_METHODS:
            raise ValueError(f"background: expected one of {_BACKGROUND_METHODS}, got {self.background!r}")
        if self.curtain_angle != "auto" and not (isinstance(self.curtain_angle, (int, float))
                                                  and abs(self.curtain_angle) <= 45):
            raise ValueError(f"curtain_angle: expected 'auto' or degrees within +-45, got {self.curtain_angle!r}")

    def apply(self, pixels, *, prior=(1.0, 0.0), valid=None):
        """Correct one raw slice.

        Parameters
        ----------
        pixels : (Y, X) ndarray
            Raw slice.
        prior : (gain, offset), optional
            A recent good slice's brightness map (:attr:`CorrectedSlice.gain`, ``.offset``); it
            guides the search of the phase modes.
        valid : (Y, X) bool ndarray, optional
            The specimen's pixels (without black margins or the outside of a field), used with
            ``curtain_reference="neighbours"``: the phase modes are found and the curtains fitted
            and removed there only (a black margin makes a grey mode of its own, which would be
            taken for a phase). Ignored with ``"phases"`` (the behaviour before it existed: with
            a named phase not in view yet, a margin's mode has stood in for it).

        Returns
        -------
        CorrectedSlice
            With ``curtain_reference="neighbours"`` the curtain amplitudes are in the raw
            slice's grey units (the stripes are removed before the brightness map).
        """
        pixels = check_slice(pixels)
        coarse = None
        destriped = pixels
        if self.curtaining is not None and self.curtain_reference == "neighbours":
            coarse = self._remove_curtaining(pixels, None, valid, self.curtain_angle)
            destriped = coarse.pixels
        if self.brightness:
            gain, offset, misfit, _ = _fit_brightness(destriped, self.levels, prior, 2,
                                                      valid if coarse is not None else None)
        else:
            gain, offset, misfit = 1.0, 0.0, 0.0
        structure, sigma = _structure_and_noise(pixels)
        percentiles = grey_percentiles(pixels)
        # capped: beyond it the phases are perfectly separable, and noise-free slices would turn
        # quantisation noise into large contrast swings
        contrast = min(float(np.min(np.diff(self.levels)) / (gain * max(sigma, 0.3))), _MAX_CONTRAST)
        image = destriped.astype(np.float32)  # a copy, also of the destriped slice
        image *= np.float32(gain)
        image += np.float32(offset)
        if self.background is not None:
            image = flatten_background(image, levels=self.levels, order=self.background_order)
        curtain = None
        if self.curtaining is not None:
            # what is left (or all of it, with the phases as reference) against the phase levels
            angle = coarse.angle_deg if coarse is not None and coarse.applied else self.curtain_angle
            curtain = self._remove_curtaining(image, self.levels, valid if coarse is not None else None, angle)
            if coarse is not None and coarse.applied:
                # the figures of both steps: the stripes of the mapped raw slice before
                mapped = pixels.astype(np.float32) * np.float32(gain) + np.float32(offset)
                before = stripe_amplitude(mapped, levels=self.levels, angle_deg=curtain.angle_deg,
                                          width_px=self.curtain_width_px, valid=valid)
                curtain = replace(curtain, applied=True, amplitude_before=before, reason="")
            image = curtain.pixels
        return CorrectedSlice(image, float(gain), float(offset), float(misfit), contrast, structure, curtain,
                              percentiles)

    def _remove_curtaining(self, pixels, levels, valid, angle):
        return remove_curtaining(pixels, levels=levels, angle_deg=angle,
                                 max_angle_deg=self.curtain_max_angle_deg, width_px=self.curtain_width_px,
                                 passes=self.curtain_passes, valid=valid)

    def apply_stack(self, slices, *, prior=(1.0, 0.0), valid=None):
        """Correct slices in order, each one's brightness map guiding the next.

        Parameters
        ----------
        slices : iterable of (Y, X) ndarray
        prior : (gain, offset), optional
            Brightness map before the first slice.
        valid : sequence of (Y, X) bool ndarray, optional
            The specimen's pixels of each slice (see :meth:`apply`).

        Returns
        -------
        list of CorrectedSlice
        """
        out = []
        for i, pixels in enumerate(slices):
            out.append(self.apply(pixels, prior=prior, valid=None if valid is None else valid[i]))
            prior = (out[-1].gain, out[-1].offset)
        return out

    def apply_checked(self, pixels, monitor, *, prior=(1.0, 0.0), valid=None):
        """Correct one slice and check it, as the slice chain does.

        Parameters
        ----------
        pixels : (Y, X) ndarray
            Raw slice.
        monitor : BrightnessMonitor
            Checks the corrected slice (it keeps its own running reference).
        prior : (gain, offset), optional
            The brightness map that guides this slice (the last good slice's).
        valid : (Y, X) bool ndarray, optional
            The specimen's pixels (see :meth:`apply`).

        Returns
        -------
        corrected : CorrectedSlice
        quality : SliceQuality
        pixels : (Y, X) ndarray of float32
            The slice to segment (see :meth:`BrightnessMonitor.check`).
        prior : (gain, offset)
            The map for the next slice: this one's when it is good (an outlier does not guide
            the next slice), else `prior` unchanged.
        """
        corrected = self.apply(pixels, prior=prior, valid=valid)
        quality, checked = monitor.check(corrected)
        if quality.state == "good":
            prior = (corrected.gain, corrected.offset)
        return corrected, quality, checked, prior

    def apply_monitored(self, slices, monitor, *, prior=(1.0, 0.0)):
        """:meth:`apply_checked` on slices in order.

        Returns
        -------
        list of (CorrectedSlice, SliceQuality, (Y, X) ndarray of float32)
        """
        out = []
        for raw in slices:
            *checked, prior = self.apply_checked(raw, monitor, prior=prior)
            out.append(tuple(checked))
        return out

    def to_dict(self):
        """Plain-JSON form (for the volume's attributes)."""
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict` (keys of older versions, e.g. ``band_px``, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SliceQuality:
    """Whether a slice's brightness and contrast can be trusted, against the recent good slices.

    Attributes
    ----------
    state : {"good", "renormalised", "held"}
        "renormalised": an outlier whose phases are still separable, mapped onto the reference
        levels (and flattened, for charging); "held": not to be segmented (labels 0).
    reason : str
        What was found, in words ("" when good).
    gain, contrast, structure, misfit : float
        See :class:`CorrectedSlice`.
    background, streaks : float
        Spread (grey units) of the residual ``pixel - level of its phase`` over a 4 x 4 grid of
        tiles (smooth charging) and over rows after their smoothing (charging streaks).
    shift : float
        :func:`histogram_shift` of the raw slice from the last good slice (share of its grey
        range), over the square root of the slices between them; 0 without a reference. It sees
        a drop or charging slice without the phase modes, which may map onto the reference by
        chance (two phases always do).
    offset : float
        See :class:`CorrectedSlice` (with `gain`, the map of `percentiles` into reference units).
    percentiles : (99,) ndarray or None
        :attr:`CorrectedSlice.percentiles` (the raw slice's).
    registrable : bool
        Whether the slice still shows its structure for the drift registration: False for a
        blank slice, one whose phases are lost in noise, or one still uneven from charging. A
        slice held only because its brightness does not map onto the reference is registrable
        (the registration does not depend on brightness), so the drift is followed through it.
    """

    state: str
    reason: str
    gain: float
    contrast: float
    structure: float
    misfit: float
    background: float
    streaks: float
    shift: float = 0.0
    offset: float = 0.0
    percentiles: np.ndarray | None = field(default=None, compare=False, repr=False)
    registrable: bool = True


# Floor of the scale of the histogram shift's limit (share of the grey range).
_SHIFT_FLOOR = 0.01

# Misfit (level gaps) beyond which a slice's phases cannot be mapped onto the reference: held.
_HOLD_MISFIT = 0.5


class BrightnessMonitor:
    """Flags slices whose brightness, contrast or evenness departs from the recent good slices.

    A slow drift moves the running reference with it; a sudden drop, a loss of contrast or a
    charging slice stands out against it by a robust z-score (median and MAD of the last good
    slices, with floors so that a quiet run does not flag noise).

    Parameters
    ----------
    levels : sequence of float
        Reference phase levels (the correction model's).
    window : int, optional
        Number of recent good slices in the reference.
    z_limit : float, optional
        Robust z-score beyond which a slice is an outlier.
    min_structure : float, optional
        Smallest :func:`slice_structure` of a slice that is not blank.
    persist : int, optional
        A change of brightness or contrast that holds for this many consecutive slices (gains
        within a few reference scales of each other) is the new normal (the operator changed the
        detector settings): those slices become the reference and the next ones are good again.
        More than 5: pystack3d's synthetic stack dims runs of 5 slices that are outliers.
    """

    def __init__(self, levels, *, window=25, z_limit=6.0, min_structure=1.3, persist=10):
        self.levels = np.asarray(levels, dtype=float)
        if window < 3:
            raise ValueError(f"window: expected >= 3 slices, got {window!r}")
        if not z_limit > 0:
            raise ValueError(f"z_limit: expected > 0, got {z_limit!r}")
        self.gap = float(np.min(np.diff(self.levels)))
        self.z_limit = float(z_limit)
        self.min_structure = float(min_structure)
        self._good: deque = deque(maxlen=int(window))
        self.persist = int(persist)
        self._changed: list = []  # consecutive slices flagged for brightness or contrast only
        self._checked = self._good_at = 0  # slices checked, and then when the last good one was

    def _evenness(self, pixels):
        res = _residual(np.asarray(pixels[::2, ::2], dtype=np.float32), self.levels, self.gap / 2)
        h, w = res.shape
        tiles = [np.median(t) for band in np.array_split(res, 4, axis=0) for t in np.array_split(band, 4, axis=1)]
        rows = np.median(res, axis=1)
        rows = rows - ndimage.gaussian_filter1d(rows, 8.0, mode="nearest")
        return float(np.std(tiles)), float(np.sqrt(np.mean(rows ** 2)))

    def _limit(self, name, floor):
        """Upper limit of an evenness figure: median + z * max(MAD scale, floor) of the good slices."""
        v = np.array([getattr(q, name) for q in self._good])
        return float(np.median(v) + self.z_limit * max(1.4826 * np.median(np.abs(v - np.median(v))), floor))

    def check(self, corrected):
        """Assess one corrected slice; good slices join the reference.

        Parameters
        ----------
        corrected : CorrectedSlice

        Returns
        -------
        quality : SliceQuality
        pixels : (Y, X) ndarray of float32
            The slice to segment: `corrected.pixels`, or flattened when a charging slice could be
            renormalised.
        """
        pixels = corrected.pixels
        gain, offset, contrast, misfit = corrected.gain, corrected.offset, corrected.contrast, corrected.misfit
        background, streaks = self._evenness(pixels)
        # the raw histogram against the last good slice's, and once mapped against its mapped one;
        # the content changes smoothly in z, by about the square root of the slices between them
        # (slowly for a few slices, then by a trend)
        self._checked += 1
        percentiles, shift, mapped_ref = corrected.percentiles, 0.0, None
        last = self._good[-1] if self._good else None
        if percentiles is not None and last is not None and last.percentiles is not None:
            per_slice = np.sqrt(self._checked - self._good_at)
            shift = histogram_shift(percentiles, last.percentiles) / per_slice
            mapped_ref = last.gain * last.percentiles + last.offset
        figures = dict(gain=gain, contrast=contrast, structure=corrected.structure, misfit=misfit,
                       background=background, streaks=streaks, shift=shift, offset=offset, percentiles=percentiles)
        if not (np.isfinite(misfit) and corrected.structure >= self.min_structure):
            why = ("no phase modes found" if not np.isfinite(misfit)
                   else f"nothing above noise (structure {corrected.structure:.1f})")
            return SliceQuality("held", f"{why}: blank, saturated or charging slice", **figures,
                                registrable=False), pixels
        reasons, charging, lost, shifted = [], False, False, False
        # how far the slice's phase modes may sit from an affine map onto the reference: overlapping
        # phases fit their modes loosely on every slice, so the recent good slices set the limit
        misfit_limit = 0.25
        if len(self._good) >= 3:
            misfit_limit = max(misfit_limit, 3.0 * float(np.median([q.misfit for q in self._good])))
        if misfit > misfit_limit:
            reasons.append(f"phase levels do not map onto the reference (off by {misfit:.2f} level gaps)")
        # without a reference only gross unevenness counts (clean generated slices: 0.02 to 0.08 of the
        # smallest level gap, more on small slices); then the recent good slices set the limit
        bg_limit = streak_limit = 0.25 * self.gap
        shift_limit = np.inf
        reference, scale = float(np.log(gain)), 0.03
        if len(self._good) >= 3:
            log_gains = np.log([q.gain for q in self._good])
            reference = float(np.median(log_gains[-5:]))
            scale = max(0.03, 2 * 1.4826 * float(np.median(np.abs(np.diff(log_gains) - np.median(np.diff(log_gains))))))
            if abs(np.log(gain) - reference) > self.z_limit * scale:
                reasons.append(f"brightness jump: gain x{gain / np.exp(reference):.2f} against the recent slices")
            ref_contrast = float(np.median([q.contrast for q in self._good]))
            if contrast < 0.6 * ref_contrast:
                reasons.append(f"contrast dropped to {contrast / ref_contrast:.2f} of the recent slices")
                lost = contrast < 0.4 * ref_contrast
            bg_limit = max(0.08 * self.gap, self._limit("background", 0.02 * self.gap))
            streak_limit = max(0.08 * self.gap, self._limit("streaks", 0.02 * self.gap))
            # good slices: 0.01 to 0.05 of the grey range from their predecessors (the content
            # changing); drops and charging 0.1 to 0.3
            shift_limit = self._limit("shift", _SHIFT_FLOOR)
            shifted = mapped_ref is not None and shift > shift_limit
            if shifted:
                reasons.append(f"grey histogram moved by {shift:.2f} of the grey range per slice from the last good slice")
        if background > bg_limit or streaks > streak_limit:
            charging = True
            reasons.append(f"uneven brightness (charging): background spread {background:.1f}, "
                           f"streaks {streaks:.1f} grey levels")
        if not reasons:
            quality = SliceQuality("good", "", **figures)
            self._good.append(quality)
            self._good_at = self._checked
            self._changed.clear()
            return quality, pixels
        reason = "; ".join(reasons)
        if charging or misfit > 0.25:
            self._changed.clear()
        else:
            self._changed.append(SliceQuality("good", "", **figures))
            gains = np.log([q.gain for q in self._changed])
            if len(self._changed) >= self.persist and np.ptp(gains) < 3 * scale:
                logger.info("brightness or contrast changed for good over %d slices (gain x%.2f): new reference",
                            len(self._changed), gain / np.exp(reference))
                self._good.clear()
                self._good.extend(self._changed)
                self._good_at = self._checked
                self._changed.clear()
        # modes within half a level gap of the reference still label right: only a worse map is held
        if misfit > max(misfit_limit, _HOLD_MISFIT) or lost:
            return SliceQuality("held", reason + ("; phases no longer separable" if lost else ""), **figures,
                                registrable=not (lost or charging)), pixels
        if charging:
            pixels = flatten_background(pixels, levels=self.levels, order=4)
            background, streaks = self._evenness(pixels)
            figures.update(background=background, streaks=streaks)
            if background > bg_limit or streaks > streak_limit:
                return SliceQuality("held", reason + "; still uneven after flattening", **figures,
                                    registrable=False), pixels
        if shifted:
            # renormalised only when the map (and flattening) brings the histogram back
            after = histogram_shift(gain * percentiles + offset if not charging else grey_percentiles(pixels),
                                    mapped_ref) / per_slice
            if after > shift_limit:
                return SliceQuality("held", reason + f"; still {after:.2f} of the grey range off once corrected",
                                    **figures), pixels
        return SliceQuality("renormalised", reason, **figures), pixels


def _classes_shown(usable, n_phases):
    """Number of separable grey classes (2..`n_phases`) of the (slice, valid) pairs `usable`,
    estimated on the slices :func:`processing.phases.evidence_slices` picks."""
    from processing.phases import estimate_grey_classes, evidence_slices

    pick = evidence_slices([s.size for s, _ in usable])
    masks = [usable[i][1] for i in pick]
    try:
        estimate = estimate_grey_classes([usable[i][0] for i in pick],
                                         valid=None if any(m is None for m in masks) else masks)
    except CalibrationError:
        return n_phases
    return int(min(max(estimate.n_classes, 2), n_phases))


def fit_correction(slices, *, n_phases=3, brightness=True, curtaining="column", curtain_angle="auto",
                   curtain_max_angle_deg=15.0, curtain_width_px=16.0, curtain_passes=2,
                   curtain_reference="phases", background=None, background_order=2, min_structure=1.3,
                   valid=None):
    """Calibrate the corrections on the first slices of a run.

    Parameters
    ----------
    slices : (N, Y, X) ndarray or sequence of (Y, X) ndarray
        The first raw slices (a few are enough; 1 works). Blank slices (:func:`slice_structure`
        below `min_structure`) are left out; the levels are the median over the others, so a
        few charging slices do not move them.
    n_phases : int, optional
        Number of phases (2 to 4).
    brightness, curtaining, curtain_angle, curtain_max_angle_deg, curtain_width_px, curtain_passes
        See :class:`CorrectionModel`.
    curtain_reference : {"phases", "neighbours", "auto"}, optional
        See :class:`CorrectionModel`; with ``"neighbours"`` the levels are found on the slices'
        `valid` pixels without their stripes (strong curtains widen every phase's mode until a
        small phase is lost between its neighbours, and a black margin is a mode of its own), as
        many as the separable grey classes they show (:func:`processing.phases.estimate_grey_classes`,
        2 to `n_phases`): a named phase not in view yet must not make the brightness map split
        another phase's mode in two. ``"auto"``: both are fitted and the evidence on the
        calibration slices decides (:func:`choose_curtain_reference`); the model says which and
        why (:attr:`CorrectionModel.curtain_choice`).
    background, background_order
        See :class:`CorrectionModel`.
    min_structure : float, optional
        Smallest :func:`slice_structure` of a usable slice.
    valid : sequence of (Y, X) bool ndarray, optional
        The specimen's pixels of each slice (see :meth:`CorrectionModel.apply`; used with
        ``curtain_reference="neighbours"``).

    Returns
    -------
    CorrectionModel

    Raises
    ------
    CalibrationError
        When every slice is blank, or the levels found are not distinct.
    """
    slices = [np.asarray(s) for s in (slices if not isinstance(slices, np.ndarray) or slices.ndim == 3 else [slices])]
    if not slices:
        raise CalibrationError("fit_correction: no slices given")
    if valid is not None and len(valid) != len(slices):
        raise ValueError(f"valid: expected one mask per slice ({len(slices)}), got {len(valid)}")
    if curtain_reference not in (*_CURTAIN_REFERENCES, "auto"):
        raise ValueError(f"curtain_reference: expected one of {(*_CURTAIN_REFERENCES, 'auto')}, "
                         f"got {curtain_reference!r}")
    options = dict(n_phases=n_phases, brightness=brightness, curtaining=curtaining, curtain_angle=curtain_angle,
                   curtain_max_angle_deg=curtain_max_angle_deg, curtain_width_px=curtain_width_px,
                   curtain_passes=curtain_passes, background=background, background_order=background_order,
                   min_structure=min_structure, valid=valid)
    if curtain_reference != "auto":
        return _fit_correction(slices, curtain_reference=curtain_reference, **options)[0]
    phases, usable = _fit_correction(slices, curtain_reference="phases", **options)
    if curtaining is None:
        return replace(phases, curtain_choice="phases: curtaining removal is off")
    # weak stripes (most acquisitions) decide it before the row-neighbour reference is fitted
    pick = [usable[i] for i in _evidence(slices[i] for i in usable)]
    _, stripes = _raw_stripes([slices[i] for i in pick], [None if valid is None else valid[i] for i in pick], phases)
    if stripes < _NEIGHBOURS_MIN_STRIPES:
        reason = f"phases: stripes {stripes:.2f} of the smallest level gap, weaker than {_NEIGHBOURS_MIN_STRIPES}"
        logger.info("curtain reference: %s", reason)
        return replace(phases, curtain_choice=reason)
    try:
        neighbours, _ = _fit_correction(slices, curtain_reference="neighbours", **options)
    except CalibrationError as exc:
        return replace(phases, curtain_choice=f"phases: the row-neighbour reference could not be fitted ({exc})")
    choice = choose_curtain_reference([slices[i] for i in usable], phases, neighbours,
                                      valid=None if valid is None else [valid[i] for i in usable])
    logger.info("curtain reference: %s", choice.reason)
    chosen = neighbours if choice.reference == "neighbours" else phases
    return replace(chosen, curtain_choice=choice.reason)


def _fit_correction(slices, *, n_phases, brightness, curtaining, curtain_angle, curtain_max_angle_deg,
                    curtain_width_px, curtain_passes, curtain_reference, background, background_order,
                    min_structure, valid):
    """:func:`fit_correction` with one given reference; returns (model, indices of the usable slices)."""
    # levels stay at 0..1: nothing is mapped, only the stripes removed
    destripe = CorrectionModel((0.0, 1.0), brightness=False, curtaining=curtaining, curtain_angle=curtain_angle,
                               curtain_max_angle_deg=curtain_max_angle_deg, curtain_width_px=curtain_width_px,
                               curtain_passes=curtain_passes, curtain_reference=curtain_reference)
    usable, kept, structure = [], [], []
    for i, s in enumerate(slices):
        check_slice(s, f"slices[{i}]")
        structure.append(slice_structure(s))
        if structure[-1] < min_structure:
            continue
        if curtaining is not None and curtain_reference == "neighbours":
            s = destripe.apply(s, valid=None if valid is None else valid[i]).pixels
        usable.append((s, None if valid is None else valid[i]))
        kept.append(i)
    n_levels = n_phases
    if curtain_reference == "neighbours" and usable:
        n_levels = _classes_shown(usable, n_phases)
    found = []
    for s, inside in usable:
        levels, _ = find_levels(s, n_levels, valid=inside if curtain_reference == "neighbours" else None)
        if np.all(np.isfinite(levels)):
            found.append(levels)
    if not found:
        raise CalibrationError(
            f"fit_correction: all {len(slices)} slices are blank (structure over noise "
            f"{', '.join(f'{c:.1f}' for c in structure)}; needs >= {min_structure})"
        )
    levels = np.median(np.array(found), axis=0)
    if not np.all(np.diff(levels) > 0):
        raise CalibrationError(f"fit_correction: phase levels are not distinct: {levels.tolist()}")
    model = CorrectionModel(tuple(levels), brightness=brightness, curtaining=curtaining, curtain_angle=curtain_angle,
                            curtain_max_angle_deg=curtain_max_angle_deg, curtain_width_px=curtain_width_px,
                            curtain_passes=curtain_passes, curtain_reference=curtain_reference,
                            background=background, background_order=background_order)
    return model, kept


def _evidence(slices):
    """Indices of the calibration slices the curtain reference is chosen on
    (:func:`processing.phases.evidence_slices`)."""
    from processing.phases import evidence_slices

    return evidence_slices([np.asarray(s).size for s in slices])


def _raw_stripes(raw, masks, phases):
    """The raw slices' curtains measured against their row neighbours (:func:`remove_curtaining`
    without levels, the settings of `phases`), and the median stripe amplitude where its held-out
    test passed (0 elsewhere), in smallest level gaps of `phases` (the calibration slices' own
    modes, so the raw grey units)."""
    coarse = [phases._remove_curtaining(s, None, v, phases.curtain_angle) for s, v in zip(raw, masks)]
    stripes = float(np.median([c.amplitude_before if c.applied else 0.0 for c in coarse]))
    return coarse, stripes / float(np.min(np.diff(phases.levels)))


@dataclass(frozen=True)
class CurtainChoice:
    """Which curtain reference the calibration slices call for, and the evidence (medians over
    the slices, stripe amplitudes in smallest level gaps of the "phases" model).

    Attributes
    ----------
    reference : {"phases", "neighbours"}
    stripes : float
        Stripe amplitude of the raw slices against their row neighbours where the stripes are
        real (the held-out test of :func:`remove_curtaining` passed; 0 where it failed).
    rows : dict of str to float
        Stripe amplitude against the row neighbours of the raw slices (``"raw"``) and of the
        slices corrected with each reference (``"phases"``, ``"neighbours"``).
    levels : dict of str to float
        The same against phase levels: the raw slices against the "phases" model's levels, the
        slices corrected with each reference against the *other* model's levels (neither is
        measured by its own yardstick; reported, and the row neighbours' compared with raw).
    classes : dict of str to (int, float)
        Separable grey classes shown by the slices corrected with each reference (at most the
        model's levels: its brightness map and stripe residual merge the others), and their
        weakest separation (Ashman's D; 0 for a single class; reported, not compared).
    reason : str
        The choice and its evidence, in words.
    """

    reference: str
    stripes: float
    rows: dict
    levels: dict
    classes: dict
    reason: str


def choose_curtain_reference(slices, phases, neighbours, *, valid=None):
    """Choose between two fitted corrections the curtain reference for an acquisition.

    The row neighbours are taken only when all of these hold on the calibration slices, else the
    phase levels (the reference that was the default):

    - their calibration finds a level for every named phase: with fewer (a phase not in view, or
      lost between its neighbours) the phase model changes too (a name left empty, the others
      named by their order), which the stripe figures cannot judge (``bench_label_chain.py``:
      a three-phase run whose pore is out of view at calibration lost 6 points of accuracy);
    - none of their level gaps is under :data:`_NEIGHBOURS_MIN_GAP` of the phase levels' smallest
      (one class split in two for a name: on a 300-slice four-phase acquisition, levels 207.8 and
      213.3 for a class at 214, and every slice held as off the reference);
    - the stripes are strong: at least :data:`_NEIGHBOURS_MIN_STRIPES` of the smallest level
      gap (weaker stripes stay within half a gap of their phase's level, where the phase levels
      measure them well);
    - the slices corrected against the row neighbours keep less stripe amplitude against the row
      neighbours than those corrected against the phases, and less than the raw slices both
      against the row neighbours and against the "phases" model's levels (a correction never
      makes the stripes worse). The phase-level measure is not used to rank the two: it wraps at
      half a level gap where the row does not outvote the pushed pixels, so it misses stripes the
      row neighbours are chosen for (on slices with stripes of 0.6 gap RMS, before the row vote,
      it ranked the phases first although they left 7 times the stripes);
    - they show at least as many separable grey classes (counted up to the model's levels;
      removing stripes must not merge phases).

    Parameters
    ----------
    slices : sequence of (Y, X) ndarray
        The raw calibration slices (not blank).
    phases, neighbours : CorrectionModel
        Fitted on them with ``curtain_reference`` "phases" and "neighbours".
    valid : sequence of (Y, X) bool ndarray, optional
        The specimen's pixels of each slice.

    Returns
    -------
    CurtainChoice
    """
    from processing.phases import estimate_grey_classes

    if phases.curtain_reference != "phases" or neighbours.curtain_reference != "neighbours":
        raise ValueError(f"phases, neighbours: expected models with those references, got "
                         f"{phases.curtain_reference!r}, {neighbours.curtain_reference!r}")
    pick = _evidence(slices)
    raw = [np.asarray(slices[i]) for i in pick]
    masks = [None if valid is None else valid[i] for i in pick]
    any_mask = None if any(m is None for m in masks) else masks
    models = {"phases": phases, "neighbours": neighbours}
    corrected = {name: [m.apply(s, valid=v) for s, v in zip(raw, masks)] for name, m in models.items()}
    width = phases.curtain_width_px
    coarse, stripes = _raw_stripes(raw, masks, phases)
    angles = [c.angle_deg for c in coarse]
    gap = float(np.min(np.diff(phases.levels)))

    def amplitudes(images, levels):
        # raw grey units (corrected slices mapped back by their own brightness map), in level gaps
        return float(np.median([stripe_amplitude(im, levels=levels, angle_deg=a, width_px=width, valid=v)
                                for im, a, v in zip(images, angles, masks)])) / gap

    unmapped = {name: [(c.pixels - np.float32(c.offset)) / np.float32(c.gain) for c in out]
                for name, out in corrected.items()}
    rows = {"raw": amplitudes(raw, None), **{name: amplitudes(u, None) for name, u in unmapped.items()}}
    levels = {"raw": amplitudes(raw, phases.levels), "phases": amplitudes(unmapped["phases"], neighbours.levels),
              "neighbours": amplitudes(unmapped["neighbours"], phases.levels)}
    classes = {}
    for name, out in corrected.items():
        try:
            e = estimate_grey_classes([c.pixels for c in out], valid=any_mask)
            # a model maps and measures against its levels: more classes than levels are merged
            classes[name] = (min(int(e.n_classes), len(models[name].levels)),
                             float(min(e.separation)) if e.separation else 0.0)
        except CalibrationError:
            classes[name] = (0, 0.0)
    figures = (f"stripes {stripes:.2f} of the smallest level gap; left against the row neighbours "
               f"{rows['raw']:.3f} raw, {rows['phases']:.3f} phases, {rows['neighbours']:.3f} neighbours; against "
               f"the other's levels {levels['raw']:.3f} raw, {levels['phases']:.3f} phases, "
               f"{levels['neighbours']:.3f} neighbours; classes (D) {classes['phases'][0]} ({classes['phases'][1]:.2f}) "
               f"phases, {classes['neighbours'][0]} ({classes['neighbours'][1]:.2f}) neighbours")
    if len(neighbours.levels) < len(phases.levels):
        why = (f"phases: the row neighbours' calibration finds {len(neighbours.levels)} levels for "
               f"{len(phases.levels)} named phases, which changes the phase model, not only the stripes")
    elif (closest := float(np.min(np.diff(neighbours.levels)))) < _NEIGHBOURS_MIN_GAP * gap:
        why = (f"phases: the row neighbours' calibration puts two levels {closest:.1f} apart, under {_NEIGHBOURS_MIN_GAP} of the phase levels' "
               f"smallest gap ({gap:.1f}): one class split in two")
    elif stripes < _NEIGHBOURS_MIN_STRIPES:
        why = f"phases: stripes weaker than {_NEIGHBOURS_MIN_STRIPES} of the smallest level gap"
    elif not rows["neighbours"] < min(rows["phases"], rows["raw"]):
        why = "phases: the row neighbours do not leave fewer stripes"
    elif not levels["neighbours"] < levels["raw"]:
        why = "phases: the row neighbours would raise the stripes measured against the phase levels"
    elif classes["neighbours"][0] < classes["phases"][0]:
        why = "phases: the row neighbours leave fewer separable grey classes"
    else:
        why = "neighbours: strong stripes, fewer left, none raised, as many grey classes"
    return CurtainChoice(why.split(":")[0], stripes, rows, levels, classes, f"{why} ({figures})")

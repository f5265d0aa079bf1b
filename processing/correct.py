"""Corrections applied to each raw slice before alignment and segmentation.

Three steps, each optional and measured in ``tests/test_correct.py``:

- **brightness normalisation**: the grey level of each phase (the modes of the slice's
  histogram) is found on every slice and an affine map (gain, offset) brings them onto the
  reference levels fitted on the first slices. Histogram modes do not move when the phase
  fractions change from slice to slice, which percentile matching would.
- **background (charging) flattening**: a low-order 2-D polynomial fitted to the residual
  ``pixel - level of its nearest phase`` (so the microstructure itself is not fitted), then
  subtracted. pystack3d removes backgrounds with polynomial fits too.
- **curtaining removal**: curtains are vertical stripes, constant along y over long runs. Their
  profile is the per-column mean of the (clipped) residual ``pixel - nearest level``, computed in
  horizontal bands and interpolated along y, so stripes that fade or strengthen down the slice
  are followed. Using the residual instead of the raw column means keeps real structure (a
  column crossing many bright particles) out of the profile. pystack3d uses VSNR (Gabor-filter
  variational destriping) or a wavelet-FFT notch (Münch et al., 2009); both remove the same
  ``ky ~ 0`` energy but cost far more per slice than this.

All functions take and return ``(Y, X)`` arrays; corrected slices are float32 in the grey
units of the reference (the first slices).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from processing.errors import CalibrationError
from processing.segment import fit_gray_mixture

__all__ = [
    "CorrectedSlice",
    "CorrectionModel",
    "fit_correction",
    "find_levels",
    "match_brightness",
    "remove_curtaining",
    "flatten_background",
    "stripe_amplitude",
]

logger = logging.getLogger(__name__)

_CURTAIN_METHODS = (None, "column")
_BACKGROUND_METHODS = (None, "polynomial")


def _check_image(pixels, name="pixels"):
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D slice, got shape {arr.shape}")
    return arr


def _histogram(pixels, step):
    """Histogram of a subsample in 128 bins between its 0.05 and 99.95 percentiles:
    (centres, counts), or (None, None) for a flat slice."""
    sample = np.asarray(pixels[::step, ::step]).ravel()
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


def _kmeans_1d(centres, counts, init, iterations=20):
    means = np.array(init, dtype=float)
    for _ in range(iterations):
        cut = 0.5 * (means[1:] + means[:-1])
        cls = np.searchsorted(cut, centres)
        for k in range(means.size):
            w = counts[cls == k]
            if w.sum() > 0:
                means[k] = float((centres[cls == k] * w).sum() / w.sum())
        means.sort()
    return means


def find_levels(pixels, n_phases, *, init=None, step=2):
    """Grey level of each phase: the means of a Gaussian mixture fitted to the slice's histogram.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice.
    n_phases : int
        Number of phases (2 to 4).
    init : sequence of float, optional
        Expected levels (e.g. the reference levels mapped through the previous slice's
        brightness); default: 1-D k-means from the quantiles.
    step : int, optional
        Subsampling step of the histogram (pixels).

    Returns
    -------
    levels : (n_phases,) ndarray of float
        Phase levels in grey units, dark to bright (NaN when the slice is flat).
    weights : (n_phases,) ndarray of float
        Share of the pixels of each phase (0 when NaN).
    """
    pixels = _check_image(pixels)
    if not 2 <= int(n_phases) <= 4:
        raise ValueError(f"n_phases: expected 2 to 4, got {n_phases!r}")
    n_phases = int(n_phases)
    centres, counts = _histogram(pixels, step)
    if centres is None:
        return np.full(n_phases, np.nan), np.zeros(n_phases)
    if init is None:
        cum = np.cumsum(counts) / counts.sum()
        init = _kmeans_1d(centres, counts, centres[np.searchsorted(cum, (np.arange(n_phases) + 0.5) / n_phases)])
    levels, _, weights = fit_gray_mixture(centres, counts, np.sort(np.asarray(init, dtype=float)), iterations=30,
                                          tol=0.01 * (centres[1] - centres[0]))
    return levels, weights


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
        fewer than one mode is found.
    step : int, optional
        Subsampling step of the histogram.

    Returns
    -------
    gain, offset : float
        ``corrected = gain * pixels + offset``.
    """
    levels = np.asarray(levels, dtype=float)
    gain0, offset0 = (float(v) for v in prior)
    if not gain0 > 0:
        raise ValueError(f"prior: gain must be > 0, got {prior!r}")
    found, weights = find_levels(pixels, levels.size, init=(levels - offset0) / gain0, step=step)
    ok = np.isfinite(found) & (weights > 0.02)
    if ok.sum() >= 2:
        w = weights[ok]
        a = np.vstack([found[ok], np.ones(ok.sum())]).T * np.sqrt(w)[:, None]
        gain, offset = np.linalg.lstsq(a, levels[ok] * np.sqrt(w), rcond=None)[0]
        if 0.2 < gain < 5:
            return float(gain), float(offset)
    if ok.sum() >= 1:
        k = int(np.flatnonzero(ok)[np.argmax(weights[ok])])
        return gain0, float(levels[k] - gain0 * found[k])
    logger.warning("brightness: no phase mode found, keeping gain %.3f offset %.1f", gain0, offset0)
    return gain0, offset0


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


# Rows per block of the curtaining loops: a block of float32 rows stays in the CPU cache while
# the residual, its column sums and the correction are computed on it.
_BLOCK_ROWS = 64


def remove_curtaining(pixels, *, levels=None, band_px=64, passes=2, smooth_px=0.0, valid=None):
    """Subtract vertical stripes (curtaining).

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice in the grey units of `levels`.
    levels : sequence of float, optional
        Phase levels; the stripe profile is taken from ``pixels - nearest level`` so that
        structure does not leak into it. Without levels the profile is the column mean minus its
        own Gaussian smoothing over 16 px (only stripes narrower than that are removed).
    band_px : int or None, optional
        Height of the horizontal bands in which profiles are measured (then interpolated along
        y); None = one profile for the whole height.
    passes : int, optional
        Repetitions with `levels`: strong stripes push pixels across a threshold, so the first
        profile is underestimated; a second pass on the corrected slice recovers most of the
        rest (measured in the tests).
    smooth_px : float, optional
        Gaussian smoothing of each profile along x (0 = none).
    valid : (Y, X) bool ndarray, optional
        Pixels to use for the profile (e.g. the aligned slice's coverage).

    Returns
    -------
    (Y, X) ndarray of float32
    """
    image = np.array(_check_image(pixels), dtype=np.float32)
    if band_px is not None and not (isinstance(band_px, (int, np.integer)) and band_px >= 8):
        raise ValueError(f"band_px: expected an integer >= 8 or None, got {band_px!r}")
    if not (isinstance(passes, (int, np.integer)) and passes >= 1):
        raise ValueError(f"passes: expected an integer >= 1, got {passes!r}")
    if valid is not None and np.shape(valid) != image.shape:
        raise ValueError(f"valid: expected shape {image.shape}, got {np.shape(valid)}")
    _remove_stripes(image, levels, band_px, passes if levels is not None else 1, smooth_px, valid)
    return image


class _Bands:
    """Horizontal bands of a slice and the linear interpolation of per-band profiles along y."""

    def __init__(self, h, band_px):
        band = h if band_px is None else min(int(band_px), h)
        self.n = max(1, h // band)
        self.edges = np.linspace(0, h, self.n + 1).astype(int)
        centres = 0.5 * (self.edges[:-1] + self.edges[1:] - 1)
        rows = np.arange(h)
        self.upper = np.clip(np.searchsorted(centres, rows), 1, max(self.n - 1, 1))
        if self.n > 1:
            c0, c1 = centres[self.upper - 1], centres[self.upper]
            self.t = np.clip((rows - c0) / (c1 - c0), 0.0, 1.0).astype(np.float32)[:, None]

    def blocks(self):
        """(band, first row, end row) of cache-sized row blocks, band by band."""
        for b in range(self.n):
            for r0 in range(self.edges[b], self.edges[b + 1], _BLOCK_ROWS):
                yield b, r0, min(r0 + _BLOCK_ROWS, self.edges[b + 1])

    def profile_rows(self, profiles, r0, r1):
        """(r1 - r0, X) stripe estimate of rows r0:r1 interpolated from (n, X) `profiles`."""
        if self.n == 1:
            return profiles[0][None, :]
        t, up = self.t[r0:r1], self.upper[r0:r1]
        lower = profiles[up - 1]
        return lower + t * (profiles[up] - lower)


def _remove_stripes(image, levels, band_px, passes, smooth_px, valid):
    """Subtract the stripes of float32 `image` in place (see :func:`remove_curtaining`).

    Each pass measures the profiles of the residual of ``image - stripes so far`` block by block,
    so no full-size temporary is made; the stripes are subtracted once at the end.
    """
    h, w = image.shape
    bands = _Bands(h, band_px)
    total = np.zeros((bands.n, w), dtype=np.float32)
    clip = _default_clip(levels) if levels is not None else None
    mean = None if levels is not None else np.float32(image.mean())
    buf = np.empty((min(_BLOCK_ROWS, h), w), dtype=np.float32)
    for p in range(passes):
        sums = np.zeros((bands.n, w), dtype=np.float64)
        counts = np.zeros((bands.n, w), dtype=np.float64)
        for b, r0, r1 in bands.blocks():
            block = buf[:r1 - r0]
            if p:
                np.subtract(image[r0:r1], bands.profile_rows(total, r0, r1), out=block)
            else:
                block[...] = image[r0:r1]
            if levels is not None:
                _residual(block, levels, clip, out=block)
            else:
                block -= mean
            if valid is None:
                sums[b] += block.sum(axis=0)
                counts[b] += r1 - r0
            else:
                m = np.asarray(valid[r0:r1], dtype=bool)
                sums[b] += np.where(m, block, 0).sum(axis=0)
                counts[b] += m.sum(axis=0)
        profiles = (sums / np.maximum(counts, 1)).astype(np.float32)
        if levels is None:
            profiles -= ndimage.gaussian_filter1d(profiles, 16.0, axis=1, mode="nearest")
        if smooth_px > 0:
            profiles = ndimage.gaussian_filter1d(profiles, smooth_px, axis=1, mode="nearest")
        profiles[counts == 0] = 0.0
        if levels is not None:
            # the global offset belongs to the brightness step, not to the stripes
            profiles -= np.median(profiles, axis=1, keepdims=True)
        total += profiles
    for _, r0, r1 in bands.blocks():
        image[r0:r1] -= bands.profile_rows(total, r0, r1)


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
    image = np.asarray(_check_image(pixels), dtype=np.float32)
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


def stripe_amplitude(pixels, *, levels=None):
    """Standard deviation (grey units) of the stripe profile: the per-column mean of the
    residual ``pixels - nearest level`` (or of the pixels), high-passed along x over 16 px.

    A figure of merit for curtaining (not a correction).
    """
    image = np.asarray(_check_image(pixels), dtype=np.float32)
    res = _residual(image, levels, _default_clip(levels)) if levels is not None else image
    prof = res.mean(axis=0)
    return float(np.std(prof - ndimage.gaussian_filter1d(prof, 16.0, mode="nearest")))


@dataclass(frozen=True)
class CorrectedSlice:
    """A corrected slice and what was done to it.

    Attributes
    ----------
    pixels : (Y, X) ndarray of float32
        Corrected grey levels, in the reference units.
    gain, offset : float
        Brightness map applied (``gain * raw + offset``).
    """

    pixels: np.ndarray
    gain: float
    offset: float


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
        Curtaining removal method.
    band_px : int or None
        Band height of the stripe profiles (see :func:`remove_curtaining`).
    curtain_passes : int
        Passes of the curtaining removal.
    background : {"polynomial", None}
        Background flattening method.
    background_order : int
        Polynomial order of the background.
    """

    levels: tuple
    brightness: bool = True
    curtaining: str | None = "column"
    band_px: int | None = 64
    curtain_passes: int = 2
    background: str | None = None
    background_order: int = 2

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        if len(self.levels) < 2 or not np.all(np.diff(self.levels) > 0):
            raise ValueError(f"levels: expected >= 2 increasing grey levels, got {self.levels!r}")
        if self.curtaining not in _CURTAIN_METHODS:
            raise ValueError(f"curtaining: expected one of {_CURTAIN_METHODS}, got {self.curtaining!r}")
        if self.background not in _BACKGROUND_METHODS:
            raise ValueError(f"background: expected one of {_BACKGROUND_METHODS}, got {self.background!r}")

    def apply(self, pixels, *, prior=(1.0, 0.0)):
        """Correct one raw slice.

        Parameters
        ----------
        pixels : (Y, X) ndarray
            Raw slice.
        prior : (gain, offset), optional
            The previous slice's brightness map (:attr:`CorrectedSlice.gain`, ``.offset``); it
            guides the search of the phase modes.

        Returns
        -------
        CorrectedSlice
        """
        pixels = _check_image(pixels)
        gain, offset = match_brightness(pixels, self.levels, prior=prior) if self.brightness else (1.0, 0.0)
        image = pixels.astype(np.float32)
        image *= np.float32(gain)
        image += np.float32(offset)
        if self.background is not None:
            image = flatten_background(image, levels=self.levels, order=self.background_order)
        if self.curtaining is not None:
            _remove_stripes(image, self.levels, self.band_px, self.curtain_passes, 0.0, None)
        return CorrectedSlice(image, float(gain), float(offset))

    def apply_stack(self, slices, *, prior=(1.0, 0.0)):
        """Correct slices in order, each one's brightness map guiding the next.

        Parameters
        ----------
        slices : iterable of (Y, X) ndarray
        prior : (gain, offset), optional
            Brightness map before the first slice.

        Returns
        -------
        list of CorrectedSlice
        """
        out = []
        for pixels in slices:
            out.append(self.apply(pixels, prior=prior))
            prior = (out[-1].gain, out[-1].offset)
        return out

    def to_dict(self):
        """Plain-JSON form (for the volume's attributes)."""
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def fit_correction(slices, *, n_phases=3, brightness=True, curtaining="column", band_px=64, curtain_passes=2,
                   background=None, background_order=2):
    """Calibrate the corrections on the first slices of a run.

    Parameters
    ----------
    slices : (N, Y, X) ndarray or sequence of (Y, X) ndarray
        The first raw slices (a few are enough; 1 works).
    n_phases : int, optional
        Number of phases (2 to 4).
    brightness, curtaining, band_px, curtain_passes, background, background_order
        See :class:`CorrectionModel`.

    Returns
    -------
    CorrectionModel

    Raises
    ------
    CalibrationError
        When the slices do not show `n_phases` distinct grey levels.
    """
    slices = [np.asarray(s) for s in (slices if not isinstance(slices, np.ndarray) or slices.ndim == 3 else [slices])]
    if not slices:
        raise CalibrationError("fit_correction: no slices given")
    found = []
    for s in slices:
        _check_image(s, "slices[i]")
        levels, _ = find_levels(s, n_phases)
        if np.all(np.isfinite(levels)):
            found.append(levels)
    if not found:
        raise CalibrationError(f"fit_correction: none of the {len(slices)} slices shows {n_phases} grey-level modes")
    levels = np.median(np.array(found), axis=0)
    if not np.all(np.diff(levels) > 0):
        raise CalibrationError(f"fit_correction: phase levels are not distinct: {levels.tolist()}")
    return CorrectionModel(tuple(levels), brightness=brightness, curtaining=curtaining, band_px=band_px,
                           curtain_passes=curtain_passes, background=background, background_order=background_order)

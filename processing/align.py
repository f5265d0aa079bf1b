"""Slice-to-slice drift correction: subpixel phase correlation against a running reference.

Conventions
-----------
Shifts are ``(dy, dx)`` in pixels, in the :func:`scipy.ndimage.shift` sign convention: the
aligned slice is ``aligned[y, x] = raw[y - dy, x - dx]``. A :class:`DriftTracker` reports the
*cumulative* shift of each slice relative to the first one, i.e. the shift that puts the slice
onto the canvas of the first slice.

Canvas and border policy
------------------------
The canvas of a run is the shape of its first slice; it never changes. Canvas pixels that the
shifted slice does not cover (and pixels whose interpolation taps fall outside the slice) are set
to ``fill`` and marked ``False`` in the valid mask returned by :func:`apply_shift`; downstream,
segmentation labels them 0 (unassigned).

How the tracker avoids build-up of error
----------------------------------------
Registering each slice only to the previous one adds the errors of every step (a random walk).
The tracker instead registers the raw slice directly to *references on the canvas*: the
previous slice, an exponential running mean of the aligned slices (weight
``reference_weight``) and a keyframe kept as long as it still matches. Each estimate is a
cumulative shift, not a step; with the keyframe the error stays bounded while the structure
persists (measured: 300 slices of a z-constant structure, 0.38 px RMS with the previous slice and
running mean only, a few hundredths with the keyframe). When the structure itself changes from
slice to slice, features that are inclined in z appear to move laterally; no registration by
image content can tell that from stage drift, and that apparent motion accumulates (the
evolving-structure test measures the tracker against that floor). The way out is what FIB-SEM
labs do: register on z-invariant content, the protective cap band at the top of every slice
(``roi``; :func:`find_reference_band` finds it on the first slices): 300 evolving slices of
512^2, 0.08 px RMS on a 40-row cap band against 5 to 8 px on the whole slice
(tests/benchmarks/bench_drift_cap.py). Only the ROI is registered and kept in the references.

Robustness
----------
- brightness drift: each window is normalised (zero mean, unit variance) and the cross-power
  spectrum is whitened (phase correlation is insensitive to gain and offset);
- curtaining (vertical stripes, constant along y): the per-column mean of each window is removed
  before correlation, which deletes the ``ky = 0`` line of the spectrum where stripes live;
- noise: the slice is binned for the coarse search and the cross-power spectrum is weighted by a
  Gaussian low-pass;
- jumps: the search covers the whole overlap window (up to half its size around the prediction);
  when nothing matches there (a jump beyond half a thin band's height), a masked normalised
  cross-correlation over the whole slice finds the region again, and the slice is measured
  from there;
- black margins and the outside of a circular field stay put in the raw frame while the sample
  drifts: they are found on the first slice (:func:`processing.mask.flat_margins`, one fill
  around a large field) and left out of every window and of the cap template;
- a registration region (band) that keeps failing (``max_rejected`` slices in a row) is given up
  for the whole slice, with a warning;
- low confidence (peak-to-sidelobe ratio of the correlation, mapped to 0..1, below
  ``min_confidence``; e.g. a blank slice), or a jump beyond the recent motion seen by a single
  reference with a confidence below ``JUMP_CONFIDENCE``: the estimate is flagged
  ``reliable=False``, the shift predicted from the recent motion is applied instead and the
  references are not updated.

Several references, solved jointly, and an honest error
-------------------------------------------------------
Besides the previous slice, the running mean and the keyframe, each slice is registered against
the slices placed 2, 4 and 8 slices before (``lags``). Every measurement is pairwise (this slice
minus that one); those that agree with the most confident one are solved jointly by least
squares over the last 16 slices. ``DriftEstimate.residual_px`` is the estimated error of the
applied shift. Each window is also registered block by block (up to 3 x 3) against the previous
slice and the keyframe: the blocks see different features, whose apparent motion is
independent, so the spread of their shifts measures how far the structure's change moves the
whole window's. Through a lasting keyframe (z-invariant content) that error stays bounded;
through a chain of changing slices it accumulates, multiplied by the correlation time of the
apparent motion (an inclined feature keeps moving the same way for many slices), taken from the
running autocorrelation of the blocks' shifts. ``wander`` flags a residual above 1 px. Measured
on tests/benchmarks/bench_align.py (``random``): whole-slice registration on evolving samples
still bends (no registration by content can tell the apparent motion of a few large inclined
particles from stage drift), but the bend is reported; where a feature common to the whole
field (few large particles) moves, the blocks agree and the residual is underestimated.

Cap mode
--------
With ``interface_row`` the shift comes from a running template of the cap's lasting features
(fiducial mark, the cap side of the interface) fitted by Lucas-Kanade with gain and offset, fused
per axis with the correlation by a Kalman filter: a cap whose grain changes in every slice (a 3-D
Pt/C deposit) still registers (300 slices of 256^2 with an X mark: 0.25-0.42 px RMS). The
template is blended in at the applied shifts, so it would follow their errors (and keep those of
its first slices): every 10 slices it is registered onto the first slice's cap, the canvas's
origin, and moved back. Curtains the correction left, fixed in the raw frame, would pull its fit
towards zero shift: the template learns their profile along their angle (found on the first
slice) from its residuals in the raw frame and takes it out before each fit (randomised
acquisitions with a cap, as the chain feeds them: see tests/benchmarks/bench_align.py). The
template is blended in only where the cap held both axes (a shift it did not hold would blend its
error in, and the next fits would confirm it). A cap without vertical features (no fiducial, no
side wall) leaves x free: when the joint fit fails, y alone is fitted on the row profiles, where
the changing grain averages out and the interface's edge remains. An axis the cap does not measure
on a slice takes the correlation's step unless the correlation is worse than standing still: its
error per slice (the innovations where the cap held an axis, times their correlation time, since
the changing sample pulls the same way for many slices) against the stage's own steps (likewise);
then the axis is held and its variance grows by the stage's (randomised seed 11, 126-px inclined
particles, no fiducial: the correlation ran away to 58 px RMS, held 13 px, the stage's own
excursion, reported 0.87 of it). Otherwise it reports the larger of that error and the whole-slice
budget. The cap is measured while a quarter of its band is in view (the stage moving down pushes
it out of the top), and where the correlation's step disagrees with the cap beyond any expected error (a
confident false match on the changing sample) the cap's shift is taken alone. Where the cap's fit
does not hold at the correlation's shift, it is tried where the last slice was and where a
rejected correlation put the slice (after held slices, a decorrelated sample gives the right
shift with a weak peak), and a lost cap is searched around where the phase correlation of its band
with the template puts it, not only +-3 px around the guess (randomised seed 3 through the
chain, a stage jump of 5 px over two held slices: 3.57 -> 0.53 px RMS, the rest on the two held
slices, which keep the last shift). A cap that holds no axis for ``CAP_LOST_SLICES`` (3) slices is
reported lost (``DriftEstimate.cap_lost``, a warning, and "found again" when it holds an axis again)
and looked for every 3 slices over the height of its band (:meth:`_CapTemplate.reacquire`): by its
profile of horizontal edges (the interface across the whole width, whichever side is brighter in
each column block), then by its column profile for x; an unclear match leaves it lost. Randomised
seed 11 at 300 slices is not helped: after its magnification change a 15-row margin hides the top of
the slice and the stage moves the 34-row cap up under it, so from slice ~130 on at most a few cap
rows show, over a sample of nearly the cap's grey (the fit fails even at the true shift): the cap
is reported lost there, and the figure stays 5.7 px RMS.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from processing.correct import stripe_angle
from processing.errors import SliceShapeError, check_slice
from processing.mask import flat_margins

__all__ = ["DriftEstimate", "DriftTracker", "apply_shift", "find_reference_band", "phase_correlate", "rows_keep_content"]

logger = logging.getLogger(__name__)

# peak-to-sidelobe ratio reached by chance when correlating unrelated images (noise)
_PSR_NOISE = 6.0


@dataclass(frozen=True)
class DriftEstimate:
    """Drift of one slice.

    Attributes
    ----------
    shift_px : tuple of float
        ``(dy, dx)`` in pixels to apply to the raw slice (``scipy.ndimage.shift`` convention)
        to put it on the canvas of the first slice. When ``reliable`` is False this is the
        predicted shift, not the (rejected) measurement.
    step_px : tuple of float
        ``(dy, dx)`` change of ``shift_px`` since the previous slice.
    confidence : float
        0..1; ``1 - 6 / PSR`` where PSR is the correlation peak's height over the rest of the
        surface in standard deviations. 0 for a blank or unrelated slice (PSR <= 6).
    reliable : bool
        False when ``confidence < min_confidence`` (the shift is then a prediction).
    measured_px : tuple of float or None
        The measurement, even when rejected (None for the first slice or when nothing matched).
    residual_px : float
        Estimated error of `shift_px` (px, root of the summed per-axis variances), including
        what has built up since the first slice. From the inconsistency of the slice's
        measurements against several earlier slices (jointly solved), or of the cap template's
        fit; for a rejected slice, the prediction's. 0 for the first slice.
    wander : bool
        True when `residual_px` exceeds ``DriftTracker.WANDER_PX`` (1 px): the stack may have
        wandered that far from the first slice's frame.
    cap_lost : bool
        Registration on the cap (cap mode) has not found the cap's lasting features for
        ``DriftTracker.CAP_LOST_SLICES`` slices or more: the shift is the sample's correlation's
        or held, not the cap's. False outside cap mode.
    """

    shift_px: tuple[float, float]
    step_px: tuple[float, float]
    confidence: float
    reliable: bool
    measured_px: tuple[float, float] | None = None
    residual_px: float = 0.0
    wander: bool = False
    cap_lost: bool = False


def _as_pair(value, name):
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size != 2 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected two finite numbers (dy, dx), got {value!r}")
    return float(arr[0]), float(arr[1])


def apply_shift(pixels, shift_px, *, fill=0, order=1):
    """Shift a slice onto the canvas (same shape), with a mask of the pixels it covers.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        The raw slice (any real dtype).
    shift_px : (dy, dx) float
        Shift in pixels, ``aligned[y, x] = pixels[y - dy, x - dx]``.
    fill : scalar, optional
        Value of the canvas pixels the shifted slice does not cover.
    order : {0, 1}, optional
        0 = nearest pixel (grey levels unchanged), 1 = bilinear (default).

    Returns
    -------
    aligned : (Y, X) ndarray, same dtype as `pixels`
        The slice on the canvas (rounded when the dtype is integer).
    valid : (Y, X) bool ndarray
        True where every interpolation tap fell inside the slice; False pixels hold `fill`.
    """
    pixels = check_slice(pixels)
    if order not in (0, 1):
        raise ValueError(f"order: expected 0 or 1, got {order!r}")
    dy, dx = _as_pair(shift_px, "shift_px")
    if order == 0:
        dy, dx = float(np.round(dy)), float(np.round(dx))
    h, w = pixels.shape
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    # taps: aligned[y] = (1-fy) raw[y-iy] + fy raw[y-iy-1]; the second tap only matters if fy > 0
    ty = 2 if fy > 1e-6 else 1
    tx = 2 if fx > 1e-6 else 1
    # canvas rows whose taps y-iy-(0..ty-1) are all inside [0, h)
    y0, y1 = max(iy + ty - 1, 0), min(h + iy, h)
    x0, x1 = max(ix + tx - 1, 0), min(w + ix, w)
    valid = np.zeros((h, w), dtype=bool)
    out_dtype = pixels.dtype
    aligned = np.full((h, w), fill, dtype=out_dtype)
    if y1 <= y0 or x1 <= x0:
        return aligned, valid
    valid[y0:y1, x0:x1] = True

    def tap(ky, kx):
        return pixels[y0 - iy - ky:y1 - iy - ky, x0 - ix - kx:x1 - ix - kx]

    if ty == 1 and tx == 1:
        aligned[y0:y1, x0:x1] = tap(0, 0)
        return aligned, valid
    acc = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for ky in range(ty):
        wy = (1.0 - fy) if ky == 0 else fy
        for kx in range(tx):
            wx = (1.0 - fx) if kx == 0 else fx
            acc += np.float32(wy * wx) * tap(ky, kx)
    if np.issubdtype(out_dtype, np.integer):
        info = np.iinfo(out_dtype)
        np.rint(acc, out=acc)
        np.clip(acc, info.min, info.max, out=acc)
    aligned[y0:y1, x0:x1] = acc.astype(out_dtype, copy=False)
    return aligned, valid


def resample_to_pixel_size(pixels, pixel_size_um, reference_um, *, fill=0):
    """A slice taken at another magnification, resampled onto the pixel size of the run.

    The microscope zooms about the centre of the field, so the slice is scaled about its centre:
    ``out(y) = pixels(c + (y - c) * reference / pixel_size)`` on the same shape. At a higher
    magnification (smaller pixels) the slice covers less than the canvas: the rest is `fill`;
    it is low-pass filtered first so that its noise and edges match the run's coarser pixels.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        The slice as written.
    pixel_size_um : (dy, dx) float
        Its pixel size, micrometres.
    reference_um : (dy, dx) float
        The run's pixel size (the first slice's), micrometres.
    fill : scalar, optional
        Value of the pixels the slice does not cover.

    Returns
    -------
    resampled : (Y, X) ndarray, the dtype of `pixels`
    covered : (Y, X) bool ndarray
        True where the slice shows something.
    """
    pixels = check_slice(pixels)
    size = np.asarray(_as_pair(pixel_size_um, "pixel_size_um"), dtype=float)
    reference = np.asarray(_as_pair(reference_um, "reference_um"), dtype=float)
    if not (np.all(size > 0) and np.all(reference > 0)):
        raise ValueError(f"pixel sizes must be > 0, got {tuple(size)} and {tuple(reference)}")
    scale = reference / size  # slice pixels per run pixel
    image = pixels.astype(np.float32)
    if np.any(scale > 1):
        # an area average over the run's pixel: a Gaussian of the width that turns the slice's
        # pixel into the run's (sigma^2 = (scale^2 - 1) / 12 of a box, in slice pixels)
        image = ndimage.gaussian_filter(image, np.sqrt(np.maximum(scale**2 - 1, 0) / 12), mode="nearest")
    centre = (np.asarray(pixels.shape, dtype=float) - 1) / 2
    out = ndimage.affine_transform(image, scale, offset=centre - centre * scale, order=1, mode="constant",
                                   cval=np.nan)
    covered = np.isfinite(out)
    out[~covered] = fill
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(pixels.dtype), covered


def _nanmean0(values):
    """Mean of a 2-D array along axis 0 over its finite values; NaN where there are none."""
    seen = np.isfinite(values)
    count = seen.sum(axis=0)
    total = np.where(seen, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _bin(image, factor):
    """Mean of ``factor x factor`` blocks (float32; factor 1 returns `image` unconverted);
    trailing rows/columns are dropped."""
    if factor == 1:
        return np.asarray(image)
    image = np.asarray(image, dtype=np.float32)
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _inner_box(valid):
    """The rectangle ``(y0, y1, x0, x1)`` left of a (Y, X) bool mask after peeling off, one line
    at a time, the border row or column holding the most invalid pixels (margins, the outside
    of a circular field), until none is left inside."""
    y0, x0, (y1, x1) = 0, 0, valid.shape
    bad = ~valid
    while y1 - y0 > 1 and x1 - x0 > 1:
        part = bad[y0:y1, x0:x1]
        if not part.any():
            break
        counts = (part[0].sum(), part[-1].sum(), part[:, 0].sum(), part[:, -1].sum())
        side = int(np.argmax(counts))
        if side == 0:
            y0 += 1
        elif side == 1:
            y1 -= 1
        elif side == 2:
            x0 += 1
        else:
            x1 -= 1
    return y0, y1, x0, x1


def _prepare(window, taper, destripe):
    """Normalise, remove column means (curtaining) and taper one correlation window."""
    win = np.asarray(window, dtype=np.float32)
    win = win - win.mean()
    if destripe:
        win = win - win.mean(axis=0, keepdims=True)
    std = win.std()
    if not np.isfinite(std) or std < 1e-6:
        return None
    return (win / std) * taper


def _aligned_box(pixels, shift_px, box):
    """``apply_shift(pixels, shift_px)[box]`` and its valid mask, computing only the box.

    `box` is a pair of slices of the canvas (the shape of `pixels`); the result is float32.
    Only the raw pixels the box needs are read, so a thin registration band costs little.
    """
    (y0, y1), (x0, x1) = ((s.start, s.stop) for s in box)
    iy, ix = int(np.floor(shift_px[0])), int(np.floor(shift_px[1]))
    # raw rows r0-1 .. r0+bh-1 (one extra for the second bilinear tap); NaN outside the slice
    r0, c0 = y0 - iy - 1, x0 - ix - 1
    crop = np.full((y1 - y0 + 1, x1 - x0 + 1), np.nan, dtype=np.float32)
    h, w = pixels.shape
    ry0, ry1, rx0, rx1 = max(r0, 0), min(r0 + crop.shape[0], h), max(c0, 0), min(c0 + crop.shape[1], w)
    if ry1 > ry0 and rx1 > rx0:
        crop[ry0 - r0:ry1 - r0, rx0 - c0:rx1 - c0] = pixels[ry0:ry1, rx0:rx1]
    aligned, valid = apply_shift(crop, (shift_px[0] - iy, shift_px[1] - ix), fill=np.nan)
    aligned, valid = aligned[1:, 1:], valid[1:, 1:]
    return aligned, valid & np.isfinite(aligned)


def _tukey(n, alpha=0.25):
    if n < 3:
        return np.ones(n, dtype=np.float32)
    x = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    edge = alpha / 2
    lo, hi = x < edge, x > 1 - edge
    w[lo] = 0.5 * (1 + np.cos(np.pi * (2 * x[lo] / alpha - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * (2 * x[hi] / alpha - 2 / alpha + 1)))
    return w.astype(np.float32)


def _upsampled_correlation(cross, upsample, centre):
    """Cross-correlation sampled at ``1/upsample`` px on a 3x3 px patch around `centre`.

    A matrix-multiply DFT (Guizar-Sicairos et al., 2008): only the patch is computed.
    """
    n = int(np.ceil(3 * upsample))
    out = []
    for axis, c in enumerate(centre):
        size = cross.shape[axis]
        freqs = scipy.fft.fftfreq(size)
        offs = c + (np.arange(n) - n // 2) / upsample
        out.append(np.exp(2j * np.pi * np.outer(offs, freqs)))
    ky, kx = out
    return (ky @ cross @ kx.T).real, n


def _spectrum(window, taper, destripe, workers):
    """FFT of one normalised, destriped, tapered window; None when the window is flat."""
    prepared = _prepare(window, taper, destripe)
    return None if prepared is None else scipy.fft.fft2(prepared, workers=workers)


def _gaussian_peak_offset(corr, peak):
    """Subpixel offset of a Gaussian-shaped peak from its 3-point log-parabola fit per axis.

    The low-pass weight makes the correlation peak Gaussian, for which this fit is exact.
    """
    out = []
    for axis in range(2):
        idx = list(peak)
        vals = []
        for d in (-1, 0, 1):
            idx[axis] = (peak[axis] + d) % corr.shape[axis]
            vals.append(corr[tuple(idx)])
        if min(vals) <= 0:
            lm, l0, lp = vals  # fall back to a plain parabola on non-positive samples
        else:
            lm, l0, lp = np.log(vals)
        denom = lm - 2 * l0 + lp
        out.append(float(np.clip(0.5 * (lm - lp) / denom, -0.5, 0.5)) if denom < 0 else 0.0)
    return np.array(out)


def _correlate(fa, fb, *, upsample, lowpass, whiten, destripe, workers):
    """Shift and confidence from two window spectra (see :func:`phase_correlate`)."""
    cross = fa * np.conj(fb)
    if whiten > 0:
        mag = np.abs(cross)
        cross /= (mag + 1e-6 * mag.max()) ** whiten
    ky = scipy.fft.fftfreq(cross.shape[0]).astype(np.float32)
    kx = scipy.fft.fftfreq(cross.shape[1]).astype(np.float32)
    weight = np.exp(-(ky[:, None] ** 2 + kx[None, :] ** 2) / np.float32(2 * lowpass**2))
    if destripe:
        weight[0, :] = 0.0  # the ky = 0 line is where vertical stripes live
    cross *= weight
    corr = scipy.fft.ifft2(cross, workers=workers).real
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    top = float(corr[peak])
    # significance of the peak over the rest of the surface (peak-to-sidelobe ratio): the
    # maximum of a correlation of unrelated images stays below ~_PSR_NOISE standard deviations
    side = np.roll(corr, (-peak[0] + 3, -peak[1] + 3), axis=(0, 1))[7:, 7:]
    sd = float(side.std())
    psr = (top - float(side.mean())) / sd if sd > 0 else 0.0
    confidence = float(np.clip(1.0 - _PSR_NOISE / psr, 0.0, 1.0)) if psr > 0 else 0.0
    coarse = np.array([p if p <= s // 2 else p - s for p, s in zip(peak, corr.shape)], dtype=float)
    if upsample > 1:
        patch, n = _upsampled_correlation(cross, upsample, coarse)
        sub = np.array(np.unravel_index(int(np.argmax(patch)), patch.shape), dtype=float)
        coarse = coarse + (sub - n // 2) / upsample
    else:
        coarse = coarse + _gaussian_peak_offset(corr, peak)
    return (float(coarse[0]), float(coarse[1])), confidence


def phase_correlate(reference, moving, *, upsample=1, lowpass=0.25, whiten=1.0, destripe=True, workers=None):
    """Subpixel shift that registers `moving` onto `reference` (same-shape windows).

    Parameters
    ----------
    reference, moving : (Y, X) ndarray
        Windows of equal shape.
    upsample : int, optional
        1 (default): subpixel peak from a Gaussian fit of the (low-passed, hence Gaussian)
        correlation peak, O(1). >1: matrix-multiply upsampled DFT around the peak, precision
        ``1 / upsample`` px (Guizar-Sicairos et al., 2008), slower.
    lowpass : float, optional
        Sigma of the Gaussian weight on the cross-power spectrum, in cycles per pixel.
    whiten : float, optional
        Exponent of the spectral whitening: 1 = phase correlation, 0 = plain cross-correlation.
    destripe : bool, optional
        Remove per-column means before correlating (curtaining-insensitive).
    workers : int, optional
        Threads for the FFTs.

    Returns
    -------
    shift : (dy, dx) float
        ``scipy.ndimage.shift(moving, shift)`` ~ `reference`.
    confidence : float
        0..1, ``1 - 6 / PSR`` (peak-to-sidelobe ratio); 0 when a window is flat or unrelated.
    """
    reference = np.asarray(reference, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if reference.shape != moving.shape or reference.ndim != 2:
        raise ValueError(f"reference/moving: expected equal 2-D shapes, got {reference.shape} and {moving.shape}")
    taper = np.outer(_tukey(reference.shape[0]), _tukey(reference.shape[1]))
    fa = _spectrum(reference, taper, destripe, workers)
    fb = _spectrum(moving, taper, destripe, workers)
    if fa is None or fb is None:
        return (0.0, 0.0), 0.0
    return _correlate(fa, fb, upsample=upsample, lowpass=lowpass, whiten=whiten, destripe=destripe,
                      workers=workers)


class _CapTemplate:
    """Registration on the cap's z-invariant features, insensitive to its changing grain.

    A Pt/C cap is a 3-D deposit: its grain changes from slice to slice, but its interface with
    the sample, a fiducial mark milled into it and the trench's side walls do not. The template
    is a running mean of the registered cap bands on the canvas, from which the changing grain
    averages out; each raw slice is registered onto it by Gauss-Newton steps (Lucas-Kanade with
    gain and offset) weighted by the template's own gradients, so only its lasting features
    count. The standard error of each axis comes from the fit's residual: an axis without
    lasting features (no fiducial, no wall: x) gets a large one and is not used.
    """

    # rows of sample below the interface in the band (the sample changes: keep it short)
    BELOW = -2
    # weight of a new slice in the running template, after a plain mean over the first slices:
    # low, so that the template averages the changing grain and follows errors slowly
    WEIGHT = 0.03
    # an axis counts when its standard error (px) is below this
    MAX_SIGMA_PX = 0.5
    # low-pass of template and slices (px): above the grain's size, below the features'
    SMOOTH_PX = 2.0
    # rows and columns along the template's borders left out of the fits: the low-pass's reach,
    # where the template's differs from the slice's
    MARGIN = int(np.ceil(3 * SMOOTH_PX))
    # pixels per independent residual (grain and blur correlate neighbours)
    CORRELATED_PX = 10.0  # calibrated: the standard error then matches the error on the benchmark
    # rows of sample below the interface in the y-only fit of the row profiles (along a row the
    # sample's changing grain averages out and the interface's edge stands out)
    ROWS_BELOW = 4
    # least share of the band in view: as the stage moves down the cap leaves the top of the
    # slice, and its interface rows (the lasting y feature) are the last to go
    MIN_SEEN = 0.25
    # slices between two registrations of the template onto the first slice (:meth:`_anchor`)
    ANCHOR_EVERY = 10
    # weight of a new slice in the curtains' profile (:meth:`_learn_pattern`)
    PATTERN_WEIGHT = 0.1
    # a lost cap found again by its profile of horizontal edges (:meth:`reacquire`): the least
    # correlation with the template's, and the margin by which it must beat every offset further
    # away than REACQUIRE_APART_PX (else unsure: the cap stays lost)
    REACQUIRE_R = 0.6
    REACQUIRE_MARGIN = 0.1
    REACQUIRE_APART_PX = 5  # beyond the width of the interface's step
    # width of the column blocks whose rows' steps make the edge profile (:meth:`_edge_profile`)
    EDGE_BLOCK_PX = 16

    def __init__(self, interface_row, weight=None):
        self.interface_row = int(interface_row)
        self.stripe_angle_deg = 0.0  # of the curtains, set by the tracker from the first slice
        self.weight = float(self.WEIGHT if weight is None else weight)
        self.template = None  # (rows, X) float64, canvas rows 0 .. interface + BELOW
        self._failures = 0  # measurements lost in a row
        self._slices = 0

    def start(self, canvas_slice):
        """Template from a slice already on the canvas."""
        pixels = np.asarray(canvas_slice, dtype=np.float64)
        rows = self.interface_row + self.BELOW + self.MARGIN
        self.template = pixels[:rows].copy()
        self._first = pixels[:rows + 8].copy()  # the canvas's origin, by definition
        self._slices = 1
        # curtains the correction left, fixed in the raw frame: a profile along the (sheared)
        # raw columns, see :meth:`_learn_pattern`
        tilt = np.tan(np.radians(self.stripe_angle_deg))
        self._pad = int(np.ceil(abs(tilt) * pixels.shape[0])) + 1
        self.pattern = np.zeros(pixels.shape[1] + 2 * self._pad)
        self._pattern_slices = 0

    def _columns(self, top, bottom, width):
        """Index into :attr:`pattern` of raw rows ``top:bottom``, columns ``0:width``."""
        rows = np.arange(top, bottom)[:, None]
        tilt = np.tan(np.radians(self.stripe_angle_deg))
        return np.rint(np.arange(width)[None, :] - rows * tilt).astype(int) + self._pad

    def _unpatterned(self, pixels, top, bottom):
        """Raw rows ``top:bottom`` of `pixels` (float64) minus the curtains' profile."""
        crop = np.array(pixels[top:bottom], dtype=np.float64)
        if self._pattern_slices:
            crop -= self.pattern[self._columns(top, top + crop.shape[0], crop.shape[1])]
        return crop

    def _warp(self, pixels, shift, grid):
        """Raw `pixels` sampled at canvas positions `grid` for `shift`; NaN outside the slice."""
        pos = [grid[0] - shift[0], grid[1] - shift[1]]
        inside = ((pos[0] >= 0) & (pos[0] <= pixels.shape[0] - 1) & (pos[1] >= 0) & (pos[1] <= pixels.shape[1] - 1))
        out = ndimage.map_coordinates(pixels, pos, order=1, mode="nearest")
        out[~inside] = np.nan
        return out

    def measure(self, pixels, guess):
        """((dy, dx), (sigma_y, sigma_x)) of a raw slice, from `guess` (dy, dx); None if lost.

        Gauss-Newton from `guess`; when that does not converge, an integer search of +-3 px
        around it on low-passed copies first.
        """
        rows, width = self.template.shape
        margin = self.MARGIN
        y0, y1 = margin, self.interface_row + self.BELOW
        y1_rows = min(rows, self.interface_row + self.ROWS_BELOW)
        grid = np.mgrid[y0:y1_rows, margin:width - margin].astype(np.float64)
        guess = np.asarray(guess, dtype=float)
        top = max(0, int(np.floor(y0 - guess[0])) - 8)  # the raw rows the band can come from
        crop = self._unpatterned(pixels, top, min(pixels.shape[0], int(np.ceil(y1_rows - guess[0])) + 8))
        if crop.shape[0] < 8:
            return None
        grid[0] -= top
        # a young template still holds the grain of its few slices: low-pass it a little
        smoothed = self.template if self._slices >= 10 else ndimage.gaussian_filter(self.template, 1.0, mode="nearest")
        fine_rows = smoothed[y0:y1_rows, margin:width - margin]
        grid_rows, grid, fine = grid, grid[:, :y1 - y0], fine_rows[:y1 - y0]
        found = self._refine(crop, guess, grid, fine)
        start = guess
        if found is None:
            self._failures += 1
            if self._failures <= 3 or self._failures % 10 == 0:  # a cap without lasting features: search rarely
                best = self._search(crop, guess, grid, y0, y1, margin)
                if best is not None:
                    found = self._refine(crop, best, grid, fine)
                    start = best
        if found is not None:
            self._failures = 0
            if max(found[1]) < self.MAX_SIGMA_PX:
                return found
            start = np.asarray(found[0])
        # a cap without vertical features (no fiducial, no side wall) leaves x free and the joint
        # fit wanders along it: its interface still holds y
        rows = self._refine_rows(crop, start, grid_rows, fine_rows)
        if rows is None or (found is not None and found[1][0] <= rows[1][0]):
            return found
        if found is None:
            return rows
        return (rows[0][0], found[0][1]), (rows[1][0], found[1][1])

    def reacquire(self, pixels, guess, reach):
        """A lost cap looked for anew: ((dy, dx), (sigma_y, sigma_x)) of a raw slice, or None.

        y is where the slice's profile of horizontal edges best matches the template's over
        +-`reach` px around `guess`: per column block of :attr:`EDGE_BLOCK_PX`, the step of the
        mean grey from row to row, its magnitude averaged over the blocks (the interface's edge
        across the whole width, whichever side is brighter in each block, and the horizontal
        arms of a fiducial; the changing grain averages out along the rows). The interface must
        be in view, and half the band. x is where the cap rows' column profile (a fiducial's
        vertical arm, side walls; less its smooth trend) best matches the template's over a
        quarter of the width each way. Then :meth:`measure` from there, with its search; its
        standard errors say which axes hold (none, on a cap with nothing lasting in view).
        None when unsure: the best match below
        :attr:`REACQUIRE_R`, or another offset further than :attr:`REACQUIRE_APART_PX`
        within :attr:`REACQUIRE_MARGIN` of it (an edge of the sample, a band of rows alike).
        """
        margin = self.MARGIN
        canvas = np.arange(margin, min(self.template.shape[0], self.interface_row + self.ROWS_BELOW))
        unpatterned = self._unpatterned(pixels, 0, pixels.shape[0])
        # y: the profiles of horizontal edges, with the interface's rows in view
        dy = self._best_offset(self._edge_profile(self.template)[canvas], canvas, self._edge_profile(unpatterned),
                               int(round(float(guess[0]))), int(reach),
                               must_see=np.abs(canvas - self.interface_row) <= 3)
        if dy is None:
            return None
        # x: the cap rows' column profile (a fiducial's vertical arm, side walls) against the
        # template's, over a quarter of the width each way
        cap_rows = np.arange(margin, self.interface_row - 2)
        r = cap_rows - dy
        r = r[(r >= 0) & (r < pixels.shape[0])]
        if r.size < 4:
            return None
        columns = self._column_profile(unpatterned[r])
        width = columns.size
        gx = int(round(float(guess[1])))
        # the best match even when unsure: :meth:`measure`'s standard error says whether x holds
        best_x = self._best_offset(self._column_profile(self.template[r + dy]), np.arange(width), columns, gx,
                                   width // 4, take_unsure=True)
        best_x = gx if best_x is None else best_x
        failures, self._failures = self._failures, 0  # search around the new guess
        found = self.measure(pixels, (float(dy), float(best_x)))
        if found is None:
            self._failures = failures + 1
        return found

    def _best_offset(self, reference, at, profile, centre, reach, *, must_see=None, take_unsure=False):
        """The integer offset d within +-`reach` of `centre` at which the raw `profile` (1-D, NaN
        where unseen) best matches `reference`, its values at canvas positions `at` (canvas = raw
        + d), by their correlation; None when unsure.

        An offset counts with half the positions in view at least (8 at the least: a few match
        anything) and all those of `must_see` (bool, like `at`) that the reference sees. Unsure:
        no offset counts, or (unless `take_unsure`) the best correlation is below
        :attr:`REACQUIRE_R`, or another offset further than :attr:`REACQUIRE_APART_PX` is within
        :attr:`REACQUIRE_MARGIN` of it (an edge of the sample, a band of rows alike).
        """
        must_see = np.zeros(at.size, bool) if must_see is None else must_see & np.isfinite(reference)
        offsets, scores = [], []
        for d in range(centre - reach, centre + reach + 1):
            raw = at - d  # the raw position that shows each canvas position
            inside = (raw >= 0) & (raw < profile.size)
            p = np.full(at.size, np.nan)
            p[inside] = profile[raw[inside]]
            ok = np.isfinite(p) & np.isfinite(reference)
            if (ok.sum() < max(8, at.size // 2) or not ok[must_see].all()
                    or np.ptp(p[ok]) <= 0 or np.ptp(reference[ok]) <= 0):
                continue
            offsets.append(d)
            scores.append(float(np.corrcoef(reference[ok], p[ok])[0, 1]))
        if not scores:
            return None
        offsets, scores = np.array(offsets), np.array(scores)
        best = int(np.argmax(scores))
        rivals = scores[np.abs(offsets - offsets[best]) > self.REACQUIRE_APART_PX]
        if not take_unsure and (scores[best] < self.REACQUIRE_R
                                or (rivals.size and rivals.max() >= scores[best] - self.REACQUIRE_MARGIN)):
            logger.debug("cap not found again: best profile match %.3f at offset %d, rival %.3f", scores[best],
                         offsets[best], rivals.max() if rivals.size else np.nan)
            return None
        return int(offsets[best])

    @staticmethod
    def _column_profile(rows):
        """Mean of `rows` ((R, X), NaN where unseen) per column, less its smooth trend (shading)."""
        profile = _nanmean0(np.asarray(rows, dtype=float))
        seen = np.isfinite(profile)
        if not seen.any():
            return profile
        filled = np.where(seen, profile, np.nanmean(profile))
        return np.where(seen, filled - ndimage.gaussian_filter1d(filled, 8.0), np.nan)

    def _edge_profile(self, image):
        """Per row of `image` ((Y, X), NaN where unseen): the magnitude of the step of the column
        blocks' mean grey to the next row, averaged over the blocks; NaN where no block sees both."""
        height, width = image.shape
        n = max(1, width // self.EDGE_BLOCK_PX)
        blocks = []
        for b in range(n):
            part = image[:, b * width // n:(b + 1) * width // n]
            seen = np.isfinite(part).mean(axis=1) >= self.MIN_SEEN
            if seen.sum() < 2:
                continue
            mean = np.interp(np.arange(height), np.flatnonzero(seen), np.nanmean(part[seen], axis=1))
            # unseen rows take their neighbours' grey: no step at the border of the view
            blocks.append(np.abs(np.diff(ndimage.gaussian_filter1d(mean, 1.0)))
                          * np.where(seen[1:] & seen[:-1], 1.0, np.nan))
        if not blocks:
            return np.full(height, np.nan)
        return np.concatenate([_nanmean0(np.array(blocks)), [np.nan]])

    def _search(self, crop, guess, grid, y0, y1, margin):
        """The integer offset that best matches the low-passed template, within +-3 px of `guess`
        or of where the phase correlation of the band with the template puts it (a jump of the
        stage while the sample gave no shift: held slices, a sample that decorrelated)."""
        width = self.template.shape[1]
        t = ndimage.gaussian_filter(self.template, self.SMOOTH_PX, mode="nearest")[y0:y1, margin:width - margin]
        smooth = ndimage.gaussian_filter(crop, self.SMOOTH_PX, mode="nearest")
        centres = [np.round(guess)]
        w = self._warp(smooth, guess, grid)
        ok = np.isfinite(w) & np.isfinite(t)
        if ok.sum() >= self.MIN_SEEN * w.size:
            # the band sampled at `guess` is the template moved by minus the error of `guess`
            error, _ = phase_correlate(np.where(ok, t, np.nanmean(t[ok])), np.where(ok, w, np.nanmean(w[ok])))
            centres.append(np.round(guess + np.asarray(error)))
        best, best_r = None, -np.inf
        tried = set()
        for centre in centres:
            for oy in range(-3, 4):
                for ox in range(-3, 4):
                    offset = (float(centre[0] + oy), float(centre[1] + ox))
                    if offset in tried:
                        continue
                    tried.add(offset)
                    w = self._warp(smooth, np.asarray(offset) + guess - np.round(guess), grid)
                    ok = np.isfinite(w) & np.isfinite(t)
                    if ok.sum() < self.MIN_SEEN * w.size:
                        continue
                    r = float(np.corrcoef(w[ok], t[ok])[0, 1])
                    if r > best_r:
                        best, best_r = np.asarray(offset) + guess - np.round(guess), r
        return best

    def _refine(self, crop, shift, grid, template):
        """Gauss-Newton steps from `shift`; None unless they converge within 2 px of it."""
        gy, gx = np.gradient(template)
        known = np.isfinite(gy) & np.isfinite(gx)  # NaN: margins, never seen
        start = shift.copy()
        for _ in range(10):
            w = self._warp(crop, shift, grid)
            ok = np.isfinite(w) & known
            if ok.sum() < self.MIN_SEEN * w.size:
                return None
            # the noisy slice regressed on the clean template: p(y - s) ~ alpha (t + ds . grad t) + beta
            design = np.stack([template[ok], np.ones(int(ok.sum())), gy[ok], gx[ok]], axis=1)
            coef, *_ = np.linalg.lstsq(design, w[ok], rcond=None)
            if coef[0] <= 1e-6:
                return None
            step = np.clip(coef[2:] / coef[0], -1.0, 1.0)
            shift = shift + step
            if np.abs(step).max() < 2e-3:
                break
        if np.abs(step).max() > 0.05:
            return None
        if np.abs(shift - start).max() > 2.0:
            return None
        residual = w[ok] - design @ coef
        # the grain and the blur correlate the residual over a few pixels: fewer independent ones
        cov = np.linalg.pinv(design.T @ design) * float(residual @ residual) / max(ok.sum() - 4, 1) * self.CORRELATED_PX
        sigma = np.sqrt(np.clip(np.diag(cov)[2:], 0.0, None)) / coef[0]
        return (float(shift[0]), float(shift[1])), (float(sigma[0]), float(sigma[1]))

    def _refine_rows(self, crop, shift, grid, template):
        """Gauss-Newton on y alone, the slice's row profile against the template's, from the best
        integer offset within +-2 px of `shift`; None unless it converges within 3 px of it. x
        stays at `shift`'s, with an infinite standard error.

        Averaged along the rows, the grain that x does not hold (the template blended it in at
        shifts x had not placed) drops out, and the interface's edge remains.
        """
        seen_rows = np.isfinite(template).any(axis=1)
        if seen_rows.sum() < 6:
            return None
        profile = np.full(template.shape[0], np.nan)
        profile[seen_rows] = np.nanmean(template[seen_rows], axis=1)
        slope = np.gradient(profile)
        start = shift.copy()
        # an integer search first: y is wherever the correlation's guess left it
        scores = []
        for oy in range(-2, 3):
            w = self._warp(crop, shift + (oy, 0.0), grid)
            rows = (np.isfinite(w).sum(axis=1) >= self.MIN_SEEN * w.shape[1]) & np.isfinite(profile)
            scores.append(np.corrcoef(np.nanmean(w[rows], axis=1), profile[rows])[0, 1] if rows.sum() >= 6 else -np.inf)
        shift = shift + (float(np.argmax(scores)) - 2.0, 0.0)
        for _ in range(10):
            w = self._warp(crop, shift, grid)
            rows = (np.isfinite(w).sum(axis=1) >= self.MIN_SEEN * w.shape[1]) & np.isfinite(slope)
            if rows.sum() < 6:
                return None
            seen = np.nanmean(w[rows], axis=1)
            design = np.stack([profile[rows], np.ones(int(rows.sum())), slope[rows]], axis=1)
            coef, *_ = np.linalg.lstsq(design, seen, rcond=None)
            if coef[0] <= 1e-6:
                return None
            step = float(np.clip(coef[2] / coef[0], -1.0, 1.0))
            shift = shift + (step, 0.0)
            if abs(step) < 2e-3:
                break
        if abs(step) > 0.05 or np.abs(shift - start).max() > 3.0:
            return None
        residual = seen - design @ coef
        # the blur correlates neighbouring rows: fewer independent ones
        cov = (np.linalg.pinv(design.T @ design) * float(residual @ residual) / max(rows.sum() - 3, 1)
               * np.sqrt(self.CORRELATED_PX))
        sigma = float(np.sqrt(max(cov[2, 2], 0.0))) / coef[0]
        return (float(shift[0]), float(shift[1])), (sigma, np.inf)

    def update(self, pixels, shift):
        """Blend the slice's band, registered with `shift`, into the template, and what the
        template does not explain in the raw frame into the fixed pattern."""
        t = self.template
        grid = np.mgrid[0:t.shape[0], 0:t.shape[1]].astype(np.float64)
        raw = self._unpatterned(pixels, 0, pixels.shape[0])
        w = self._warp(raw, shift, grid)
        seen = np.isfinite(w)
        ok = seen & np.isfinite(t)
        if ok.sum() < self.MIN_SEEN * w.size:
            return
        # onto the template's grey scale (brightness drift): the noisy slice regressed on the
        # clean template, so that the noise does not flatten the template
        a, b = np.polyfit(t[ok], w[ok], 1)
        if a <= 1e-6:
            return
        if self.stripe_angle_deg:  # vertical curtains: a fiducial's vertical arm would enter the profile
            self._learn_pattern(raw, shift, a, b)
        self._slices += 1
        weight = max(self.weight, 1.0 / self._slices)  # a plain mean over the first slices
        t[ok] = (1 - weight) * t[ok] + weight * (w[ok] - b) / a
        new = seen & ~np.isfinite(t)  # first seen (behind a margin until now)
        t[new] = (w[new] - b) / a
        if self._slices % self.ANCHOR_EVERY == 0:
            self._anchor()

    def _learn_pattern(self, raw, shift, a, b):
        """Fold the residual of the band's raw rows against the template (placed back in the
        raw frame), averaged along the curtains' direction, into their profile.

        Curtains fixed in the raw frame (what the correction left of them) pull the template's
        fit towards zero shift (10 degree curtains on a 26-row cap: 3 % of the shift). The
        sample's drift moves the cap's features across the raw frame and its grain changes, so
        their residuals average out of the profile; a misfit along y (the interface) is the same
        in every column and does not enter it.
        """
        t = self.template
        top, bottom = max(0, int(np.floor(-shift[0]))), min(raw.shape[0], int(np.ceil(t.shape[0] - 1 - shift[0])))
        if bottom - top < 4:
            return
        grid = np.mgrid[top:bottom, 0:raw.shape[1]].astype(np.float64)
        pos = [grid[0] + shift[0], grid[1] + shift[1]]  # canvas = raw + shift
        placed = ndimage.map_coordinates(t, pos, order=1, mode="nearest", cval=np.nan)
        inside = (pos[1] >= 0) & (pos[1] <= t.shape[1] - 1)
        residual = (raw[top:bottom] - b) / a - placed
        ok = inside & np.isfinite(residual)
        columns = self._columns(top, bottom, raw.shape[1])[ok]
        counts = np.bincount(columns, minlength=self.pattern.size)
        sums = np.bincount(columns, weights=residual[ok], minlength=self.pattern.size)
        seen = counts >= 4
        profile = sums[seen] / counts[seen]
        profile -= profile.mean()  # an offset is the fit's, not a curtain
        self._pattern_slices += 1
        self.pattern[seen] += self.PATTERN_WEIGHT * (profile - self.pattern[seen])

    def _anchor(self):
        """Put the template back on the first slice's frame.

        Each slice is blended in at its applied shift, so the template follows the errors of the
        shifts (and the errors of the warm-up slices stay in it): registered onto the first slice
        (the canvas's origin by definition), the template is moved back by what it has drifted.
        """
        failures = self._failures
        found = self.measure(self._first, (0.0, 0.0))
        self._failures = failures
        if found is None:
            return
        drift, sigma = np.asarray(found[0]), np.asarray(found[1])
        drift = np.where(sigma < self.MAX_SIGMA_PX, drift, 0.0)
        if np.abs(drift).max() > 0:
            # the first slice sits at `drift` on the template: move the template by -drift
            self.template = ndimage.shift(self.template, -drift, order=1, mode="nearest", cval=np.nan)


WINDOW = 16


class _JointShifts:
    """Cumulative shifts of the slices from pairwise measurements, solved jointly.

    Each measurement registers slice ``a`` onto an earlier aligned slice ``b`` and so measures
    ``s_a - s_b`` (whatever shift ``b`` was placed with). The shifts of the last `window` slices
    are the least-squares solution of all their measurements, weighted by confidence^2 over the
    measurement variance; older slices are frozen with the variance they had. The variance of a
    measurement of weight 1 is learnt from the inconsistency of the measurements (their
    least-squares residual): when the slices disagree, because the structure changes or a
    measurement is wrong, the reported variance grows.
    """

    def __init__(self, *, window=WINDOW, unit_var=0.05**2, floor_var=0.02**2):
        self.window_size = int(window)
        self.est = {}  # slice -> (2,) estimated shift (px)
        self.var = {}  # slice -> per-axis variance of the estimate (px^2)
        self.applied = {}  # slice -> (2,) shift the slice was placed on the canvas with
        self.window = []  # slices still solved for
        self.edges = []  # (a, b, d (2,), w): s_a - s_b = d, weight w (confidence^2)
        self.unit_var = float(unit_var)
        self.floor_var = float(floor_var)

    def freeze(self, n, shift, var):
        """Slice `n` placed with `shift`, known to `var` (px^2 per axis); not solved for."""
        self.est[n] = self.applied[n] = np.asarray(shift, dtype=float)
        self.var[n] = float(var)

    def drop(self, n):
        """Forget slice `n`'s measurements (it was rejected after :meth:`add`)."""
        if n in self.window:
            self.window.remove(n)
        self.edges = [e for e in self.edges if e[0] != n]
        self.est.pop(n, None)
        self.var.pop(n, None)

    def prediction(self, n, *, steps=4):
        """Shift of slice `n` extrapolated from the recent motion, and its variance."""
        known = sorted(self.applied)[-(steps + 1):]
        last = known[-1]
        if len(known) < 2:
            return self.applied[last].copy(), self.unit_var
        rate = (self.applied[last] - self.applied[known[0]]) / (last - known[0])
        spread = np.diff([self.applied[k] for k in known], axis=0)
        step_var = float(np.mean(np.var(spread, axis=0))) if len(spread) > 1 else self.unit_var
        # stage drift is not ballistic (the microscope re-centres): extrapolate two slices at most
        return self.applied[last] + rate * min(n - last, 2), (n - last) * max(step_var, self.unit_var)

    def _solve(self):
        idx = {s: i for i, s in enumerate(self.window)}
        size = len(self.window)
        h = np.zeros((size, size))
        g = np.zeros((size, 2))
        for a, b, d, w in self.edges:
            i = idx[a]
            if b in idx:
                j, wt = idx[b], w / self.unit_var
                h[i, i] += wt
                h[j, j] += wt
                h[i, j] -= wt
                h[j, i] -= wt
                g[i] += wt * d
                g[j] -= wt * d
            else:  # onto a frozen slice: an absolute measurement, with that slice's variance
                wt = 1.0 / (self.unit_var / w + self.var[b])
                h[i, i] += wt
                g[i] += wt * (self.est[b] + d)
        cov = np.linalg.inv(h + 1e-9 * np.eye(size))
        return cov @ g, np.diag(cov)

    def _residuals(self, shifts):
        idx = {s: i for i, s in enumerate(self.window)}
        out = []
        for a, b, d, w in self.edges:
            sb = shifts[idx[b]] if b in idx else self.est[b]
            out.append(d - (shifts[idx[a]] - sb))
        return np.array(out)

    def add(self, n, measurements, *, gate):
        """Solve with slice `n`'s measurements ``[(b, cumulative shift, weight), ...]``.

        Measurements of `n` that disagree with the solution by more than 4 standard deviations
        and `gate` px are dropped. Returns (shift, variance, kept measurements) or None when
        none is left (then `n` is not kept).
        """
        mine = [(n, b, np.asarray(x, dtype=float) - self.applied[b], float(w))
                for b, x, w in measurements if w > 0 and b in self.applied]
        if not mine:
            return None
        self.window.append(n)
        base = len(self.edges)
        self.edges.extend(mine)
        while True:
            shifts, var = self._solve()
            res = self._residuals(shifts)[base:]
            worst = int(np.argmax(np.abs(res).max(axis=1)))
            limit = max(gate, 4.0 * np.sqrt(self.unit_var / self.edges[base + worst][3]))
            if np.abs(res[worst]).max() <= limit or len(self.edges) - base == 1:
                break
            del self.edges[base + worst]
        if np.abs(res[worst]).max() > limit:  # the last one left disagrees too
            del self.edges[base:]
            self.window.pop()
            return None
        # the variance of a weight-1 measurement, from the inconsistency of the window's
        all_res = self._residuals(shifts)
        dof = len(self.edges) - len(self.window)
        if dof > 0:
            weights = np.array([e[3] for e in self.edges])
            chi = float((weights[:, None] * all_res**2).sum() / (2 * dof))
            self.unit_var = max(0.8 * self.unit_var + 0.2 * chi, self.floor_var)
            shifts, var = self._solve()
        for s, v, x in zip(self.window, var, shifts):
            self.est[s], self.var[s] = x, float(v)
        while len(self.window) > self.window_size:  # the oldest keeps its last solution
            old = self.window.pop(0)
            self.edges = [e for e in self.edges if e[0] != old]
        return self.est[n].copy(), self.var[n], len(self.edges) - base


class DriftTracker:
    """Cumulative drift of each slice, registered on the canvas against two references.

    Each raw slice is registered (binned) against three references on the canvas: the previous
    reliable slice, a running mean of the aligned slices and a keyframe (an older slice kept
    while it still matches). The estimates that agree with the most confident one (within half a
    binned pixel) are averaged with weights confidence^2. All are cumulative, so a slice is
    never placed by adding steps alone.

    Parameters
    ----------
    roi : (y0, y1, x0, x1) int, optional
        Region of the canvas (first slice's frame) used for registration, in pixels. Default:
        the whole canvas. Choose a region with structure and without charging or labels. The
        most accurate choice is a z-invariant region: the protective cap band along the top rows
        (and its fiducial mark), e.g. ``(0, 48, 0, width)``; a thin band is fine (at least 16
        rows visible on every slice), :func:`find_reference_band` finds it. Registering on the
        sample itself cannot tell stage drift from the lateral motion of features inclined in z,
        which accumulates over a long run.
    upsample : int, optional
        1 (default): Gaussian peak fit; > 1: upsampled-DFT refinement with precision
        ``bin / upsample`` px (see :func:`phase_correlate`).
    bin : int, optional
        Binning factor of the search. Default: chosen from the registration region (the ROI, or
        the whole slice) so that its binned short side is at least 256 px (1 up to 511 px, 2 up
        to 1023 px, 4 from 1024 px... see ``auto_bin``); a thin band is therefore not binned.
    reference_weight : float, optional
        Weight of each newly aligned slice in the running-mean reference (0 < w <= 1).
    min_confidence : float, optional
        Estimates with a lower confidence are rejected (``reliable=False``).
    max_rejected : int, optional
        After this many consecutive rejections the tracker re-anchors on the current slice at the
        predicted shift (so a change of scene cannot freeze it for the rest of the run).
    keyframe : bool, optional
        Also register against a keyframe: an older aligned slice kept as long as it matches
        about as well as the newest references (confidence >= 0.95 x the best, agreement within
        half a binned pixel), then replaced by the current slice. While structure persists this bounds the error instead
        of letting it random-walk (300 static slices: RMS 0.38 px without, see the tests).
    lowpass : float, optional
        Gaussian weight of the cross-power spectrum, in cycles per binned pixel.
    whiten : float, optional
        Spectral whitening exponent (1 = phase correlation, 0 = cross-correlation).
    destripe : bool, optional
        Make the correlation insensitive to vertical stripes (curtaining).
    workers : int, optional
        Threads for the FFTs (default 2).
    interface_row : int, optional
        Canvas row of the interface between the protective cap (above) and the sample. Then y
        comes from the interface (row profile, a strong horizontal edge) and x from the column
        profile of the cap rows when it holds a fiducial mark (or other vertical features),
        both registered on running templates: the cap's grain may change from slice to slice
        (a Pt/C deposit is 3-D). x falls back on the registration on `roi` when the cap shows
        no such feature.
    lags : tuple of int, optional
        Also register against the slices placed this many slices ago (besides the previous
        one, the running mean and the keyframe). All measurements are pairwise (this slice
        minus that one) and solved jointly by least squares over the last 16 slices, so that an
        error of one step does not carry over as it would with the previous slice alone.
    """

    # a jump beyond the recent motion seen by a single reference is kept only with this confidence
    JUMP_CONFIDENCE = 0.6
    # an estimated error of the applied shift above this (px) is reported as a wander
    WANDER_PX = 1.0
    # cap mode: slices the cap holds an axis on before its steps and the correlation's errors are known
    STAGE_SLICES = 3
    # cap mode: slices in a row without the cap before it is reported lost and looked for over its
    # whole band (then again every as many slices, until found)
    CAP_LOST_SLICES = 3

    def __init__(self, *, roi=None, upsample=1, bin=None, reference_weight=0.5, min_confidence=0.5,
                 max_rejected=5, keyframe=True, lowpass=0.1, whiten=1.0, destripe=True, workers=2,
                 interface_row=None, lags=(2, 4, 8)):
        if roi is not None:
            roi = tuple(int(v) for v in roi)
            if len(roi) != 4 or roi[1] <= roi[0] or roi[3] <= roi[2] or min(roi) < 0:
                raise ValueError(f"roi: expected (y0, y1, x0, x1) with y0 < y1 and x0 < x1, got {roi!r}")
        if not (isinstance(upsample, (int, np.integer)) and upsample >= 1):
            raise ValueError(f"upsample: expected an integer >= 1, got {upsample!r}")
        if bin is not None and not (isinstance(bin, (int, np.integer)) and bin >= 1):
            raise ValueError(f"bin: expected an integer >= 1, got {bin!r}")
        if not 0 < reference_weight <= 1:
            raise ValueError(f"reference_weight: expected 0 < w <= 1, got {reference_weight!r}")
        if not 0 <= min_confidence < 1:
            raise ValueError(f"min_confidence: expected 0 <= c < 1, got {min_confidence!r}")
        if not (isinstance(max_rejected, (int, np.integer)) and max_rejected >= 1):
            raise ValueError(f"max_rejected: expected an integer >= 1, got {max_rejected!r}")
        if not 0 < lowpass <= 1:
            raise ValueError(f"lowpass: expected 0 < f <= 1 cycles/px, got {lowpass!r}")
        if not 0 <= whiten <= 1:
            raise ValueError(f"whiten: expected 0 <= p <= 1, got {whiten!r}")
        if interface_row is not None and not (isinstance(interface_row, (int, np.integer)) and interface_row >= 8):
            raise ValueError(f"interface_row: expected an integer >= 8 (rows of cap), got {interface_row!r}")
        lags = tuple(int(v) for v in lags)
        if any(v < 2 for v in lags):
            raise ValueError(f"lags: expected integers >= 2 (lag 1 is the previous slice), got {lags!r}")
        self.lags = lags
        self._cap = None if interface_row is None else _CapTemplate(interface_row)
        self._joint = _JointShifts()
        self._error_var = 0.0  # per-axis variance of the last placed slice's shift (px^2)
        self._var_of = {}  # slice -> per-axis variance of its applied shift (px^2), while a reference
        # the blocks' apparent motion: its running autocorrelation over 32 slices (px^2)
        self._acf = np.zeros(33)
        self._acf_count = 0
        self._block_history = deque(maxlen=32)
        self._block_residuals = None
        self._lagged = deque(maxlen=max(self.lags, default=1))  # (slice, canvas) of the last placed slices
        self._previous_id = self._keyframe_id = 0
        self._cap_var = np.zeros(2)  # variance of the applied shift per axis (px^2), cap mode
        self._cap_q = np.full(2, 0.2**2)  # variance of the correlation's step per axis (px^2)
        self._cap_held = False  # the cap's fit held both axes on the last slice
        # cap mode, the last 32 slices: the cap's shift minus the correlation's, and the steps of
        # the applied shift (px, NaN on an axis the cap did not hold)
        self._innovations = deque(maxlen=32)
        self._stage_steps = deque(maxlen=32)
        self._held = np.zeros(2, dtype=bool)  # axes held at the last shift (cap mode)
        self._cap_lost = 0  # slices in a row on which the cap held no axis (cap mode)
        self.roi = roi
        self.upsample = int(upsample)
        self.bin = bin
        self.reference_weight = float(reference_weight)
        self.min_confidence = float(min_confidence)
        self.max_rejected = int(max_rejected)
        self.keyframe = bool(keyframe)
        self.lowpass = float(lowpass)
        self.whiten = float(whiten)
        self.destripe = bool(destripe)
        self.workers = workers
        self._shape = None
        self._bin = None
        self._raw_box = None  # the raw slice's rectangle without flat margins (binned px)
        self._previous = None  # last reliable slice on the canvas (binned)
        self._mean = None  # running mean of aligned slices on the canvas (binned)
        self._keyframe = None  # an older aligned slice kept while it still matches (binned)
        self._stale_keyframe = False
        self._shift = (0.0, 0.0)
        self._held_shift = None  # the cap's shift of the last held slice (:meth:`skip`)
        self._rejected = 0
        self.n_slices = 0

    @staticmethod
    def auto_bin(shape):
        """Default binning for a slice shape: the binned short side stays >= 256 px."""
        short = min(shape)
        return max(1, 2 ** int(np.floor(np.log2(max(short, 1) / 256)))) if short >= 512 else 1

    @property
    def canvas_shape(self):
        """Shape of the canvas (the first slice's shape), or None before the first slice."""
        return self._shape

    @property
    def shift_px(self):
        """Cumulative shift applied to the last slice."""
        return self._shift

    def _region_shape(self, shape):
        """(height, width) of the registration region (ROI clipped to the slice), in pixels."""
        if self.roi is None:
            return tuple(shape)
        y0, y1, x0, x1 = self.roi
        return min(y1, shape[0]) - y0, min(x1, shape[1]) - x0

    def _choose_bin(self, shape):
        """Binning for a run whose slices have `shape`; checks the region is large enough."""
        region = self._region_shape(shape)
        b = self.auto_bin(region) if self.bin is None else self.bin
        if min(region) // b < 16 or min(shape) // b < 32:
            raise SliceShapeError(
                f"slice shape {tuple(shape)} with roi {self.roi} leaves a region of {region} px: too small for "
                f"bin {b} (need 16 px binned in the region and 32 px binned in the slice)")
        return b

    def _region_box(self, binned_shape):
        """The registration region on the binned canvas, as a pair of slices."""
        b = self._bin
        h, w = binned_shape
        if self.roi is None:
            return slice(0, h), slice(0, w)
        return (slice(self.roi[0] // b, min(-(-self.roi[1] // b), h)),
                slice(self.roi[2] // b, min(-(-self.roi[3] // b), w)))

    def _find_raw_box(self, pixels):
        """The rectangle of the raw slice that shows the sample, without its flat margins.

        Black margins and the outside of a circular field stay put in the raw frame while the
        sample drifts: correlated, their edges pull the shift towards zero. They are found on a
        slice (:func:`processing.mask.flat_margins`) and left out of every window.
        """
        h, w = (n // self._bin for n in pixels.shape)
        flat = flat_margins(pixels)
        if not flat.any():
            return 0, h, 0, w
        box = _inner_box(_bin((~flat).astype(np.float32), self._bin) > 0.999)
        levels = np.asarray(pixels)[flat]
        # margins are one fill (black, or the outside of a circular field) around a large field;
        # flat patches of several grey levels, or a small rectangle left, are a noise-free sample
        if (min(box[1] - box[0], box[3] - box[2]) < 32 or (box[1] - box[0]) * (box[3] - box[2]) < 0.4 * h * w
                or float(np.ptp(levels)) > 0.05 * max(float(np.ptp(pixels)), 1e-6)):
            logger.warning("flat regions that do not look like margins (sample rectangle %s binned px, grey "
                           "%.0f-%.0f): registering on the whole slice", box, levels.min(), levels.max())
            return 0, h, 0, w
        logger.info("registration leaves out flat margins: raw rows %d-%d, columns %d-%d kept",
                    box[0] * self._bin, box[1] * self._bin, box[2] * self._bin, box[3] * self._bin)
        return box

    def _find_stripe_angle(self, pixels):
        """Angle (degrees from vertical) of the curtains of a slice, 0 when straight or none.

        The cap template learns the profile of what the curtain correction left of them along
        this direction (:meth:`_CapTemplate._learn_pattern`).
        """
        angle = float(stripe_angle(_bin(pixels, self._bin)))
        if angle:
            logger.info("curtains tilted by %.1f degrees", angle)
        return angle

    def _masked(self, binned):
        """`binned` with NaN outside the raw rectangle (so that margins never reach a reference)."""
        y0, y1, x0, x1 = self._raw_box
        if (y0, x0) == (0, 0) and (y1, x1) == binned.shape:
            return binned
        out = np.full(binned.shape, np.nan, dtype=np.float32)
        out[y0:y1, x0:x1] = binned[y0:y1, x0:x1]
        return out

    def _masked_full(self, pixels):
        """The raw slice (float64) with NaN outside the raw rectangle, at full resolution."""
        y0, y1, x0, x1 = (v * self._bin for v in self._raw_box)
        if (y0, x0) == (0, 0) and y1 >= pixels.shape[0] - self._bin and x1 >= pixels.shape[1] - self._bin:
            return pixels
        out = np.full(pixels.shape, np.nan)
        out[y0:y1, x0:x1] = pixels[y0:y1, x0:x1]
        return out

    def _windows(self, binned_shape, offset):
        """Overlapping canvas window and raw window (binned px) for an integer offset."""
        (y0, y1), (x0, x1) = ((s.start, s.stop) for s in self._region_box(binned_shape))
        ry0, ry1, rx0, rx1 = self._raw_box
        oy, ox = offset
        # canvas row y shows raw row y - oy: keep rows where both exist (raw: inside the margins)
        cy0, cy1 = max(y0, ry0 + oy), min(y1, ry1 + oy)
        cx0, cx1 = max(x0, rx0 + ox), min(x1, rx1 + ox)
        if cy1 - cy0 < 16 or cx1 - cx0 < 16:
            return None
        return (slice(cy0, cy1), slice(cx0, cx1)), (slice(cy0 - oy, cy1 - oy), slice(cx0 - ox, cx1 - ox))

    def update(self, pixels, *, raw=None):
        """Measure the drift of the next slice.

        Parameters
        ----------
        pixels : (Y, X) ndarray
            The raw (or corrected, not yet shifted) slice; the same shape as the first slice.
        raw : (Y, X) ndarray, optional
            The slice as acquired when `pixels` is corrected: its flat margins are found on it
            (the curtain correction stripes the margins of the corrected slice, which would then
            count as sample, fixed in the raw frame).

        Returns
        -------
        DriftEstimate

        Raises
        ------
        SliceShapeError
            When the slice's shape differs from the first slice's.
        """
        pixels = check_slice(pixels)
        if raw is None:
            raw = pixels
        elif np.shape(raw) != pixels.shape:
            raise SliceShapeError(f"raw: expected the shape of pixels {pixels.shape}, got {np.shape(raw)}")
        if self._shape is None:
            self._start(pixels, raw)
            return DriftEstimate((0.0, 0.0), (0.0, 0.0), 1.0, True, None)
        self._on_canvas(pixels)
        b = self._bin
        if self._raw_box is None:  # resumed: the margins are found on the first raw slice
            self._raw_box = self._find_raw_box(raw)
        binned = self._masked(_bin(pixels, b))
        prev = self._shift
        self._held_shift = None
        n = self.n_slices
        predicted, predicted_var = self._joint.prediction(n)
        offset = (int(round(prev[0] / b)), int(round(prev[1] / b)))
        results = self._measure(binned, offset)
        confidence = max((c for _, _, c, _ in results), default=0.0)
        if confidence < self.min_confidence:
            # lost: a jump beyond the window's reach (a thin band sees +-half its height) is
            # looked for over the whole slice, and measured again from there
            found = self._search_wide(binned)
            if found is not None and found != offset:
                retry = self._measure(binned, found)
                if max((c for _, _, c, _ in retry), default=0.0) > confidence:
                    logger.warning("slice %d: registration lost at (%d, %d) px, found again at (%d, %d) px by a "
                                   "search over the whole slice", n, offset[0] * b, offset[1] * b,
                                   found[0] * b, found[1] * b)
                    results = retry
                    confidence = max(c for _, _, c, _ in results)
        # the measurements that agree with the most confident one (within half a binned pixel):
        # on evolving structure the others are pulled by the structure's change, not the stage
        best = max(results, key=lambda item: item[2], default=None)
        usable = [(ref, x, c**2) for ref, x, c, _ in results
                  if c >= self.min_confidence and np.abs(np.subtract(x, best[1])).max() < 0.5 * b]
        solved = self._joint.add(n, usable, gate=float(b)) if usable else None
        measured = None if solved is None else solved[0]
        # error budget: the references, each pulled by how the structure changed since it was
        # taken, disagree; their spread adds to the error built up so far (a random walk: the
        # joint solution does not make the references independent, so no sqrt(n) is claimed)
        var = self._error_budget(results, usable)
        if solved is not None and np.abs(measured - predicted).max() > max(4.0 * b, 4.0 * np.sqrt(predicted_var)):
            # a jump: real ones are seen by several references, confidently
            if solved[2] < 2 and confidence < self.JUMP_CONFIDENCE:
                logger.warning("slice %d: jump to (%.1f, %.1f) px not confirmed (%d measurement(s), confidence "
                               "%.2f): rejected", n, *measured, solved[2], confidence)
                self._joint.drop(n)
                solved = None
        reliable = solved is not None
        if self._cap is not None:
            self._joint.drop(n)
            # a rejected correlation may still have found the shift (the sample decorrelated after
            # held slices, leaving a weak peak): the cap's lasting features can confirm it
            measured, confidence, reliable, var = self._measure_cap(
                self._masked_full(pixels), measured if reliable else predicted, confidence, reliable, var,
                candidate=None if reliable or best is None else best[1])
        if reliable:
            shift = np.asarray(measured, dtype=float)
            self._error_var = var
            if self._cap is not None:
                self._joint.freeze(n, shift, var)
            self._joint.applied[n] = shift
            self._rejected = 0
            self._update_references(binned, shift, n)
            self._var_of[n] = var
            self._record_block_motion()
            if self._cap is not None and self._cap_held:
                # a shift the cap did not hold in x (or at all) would blend its error into the
                # template, which the next fits would then confirm
                self._cap.update(self._masked_full(pixels), shift)
        else:
            shift, var = predicted, self._error_var + predicted_var
            self._rejected += 1
            logger.warning("slice %d: drift estimate rejected (confidence %.2f), keeping the shift predicted from "
                           "the recent motion (%.2f, %.2f)", n, confidence, *shift)
            if self._rejected >= self.max_rejected and np.nanstd(binned) > 1e-6:
                logger.warning("slice %d: %d rejections in a row, re-anchoring the references on this slice",
                               n, self._rejected)
                if self.roi is not None:
                    # the band has stopped matching (it was not z-invariant, or has left the view)
                    logger.warning("slice %d: the registration region %s is given up for the whole slice",
                                   n, self.roi)
                    self.roi = None
                    self._bin = self._choose_bin(pixels.shape)
                    self._raw_box = self._find_raw_box(raw)
                    binned = self._masked(_bin(pixels, self._bin))
                    self._lagged.clear()
                self._previous = self._mean = self._keyframe = None
                self._joint.freeze(n, shift, var)
                self._error_var = var
                self._update_references(binned, shift, n)
                self._var_of[n] = var
                self._rejected = 0
        self._shift = (float(shift[0]), float(shift[1]))
        self.n_slices += 1
        residual = float(np.sqrt(2.0 * var))
        return DriftEstimate(
            shift_px=self._shift,
            step_px=(self._shift[0] - prev[0], self._shift[1] - prev[1]),
            confidence=float(confidence),
            reliable=bool(reliable),
            measured_px=None if measured is None else (float(measured[0]), float(measured[1])),
            residual_px=residual,
            wander=residual > self.WANDER_PX,
            cap_lost=self._cap_lost >= self.CAP_LOST_SLICES,
        )

    def reframe(self, raw):
        """The raw frame changed (a slice resampled from another magnification): its flat margins,
        left out of every window, are found again on `raw`, a slice of the new frame.

        Parameters
        ----------
        raw : (Y, X) ndarray
            A slice as it now comes, the shape of the first slice.
        """
        raw = check_slice(raw)
        if self._shape is not None:
            if raw.shape != self._shape:
                raise SliceShapeError(f"raw: expected the run's shape {self._shape}, got {raw.shape}")
            self._raw_box = self._find_raw_box(raw)

    def skip(self, pixels=None):
        """The estimate of a slice the caller does not register (a blank or charging slice).

        The tracker learns nothing from it: its references, template and motion model are
        unchanged and the next slice is registered as usual. Its shift is the last slice's
        (extrapolating the recent motion was worse on the randomised acquisitions: 0.62 against
        0.46 px RMS on one with a 1.5 px/slice drift, the error all on the held slices), flagged
        unreliable, with the prediction's error. With a cap and `pixels`, the cap's fit instead
        (it has a gain and an offset of its own: a slice at a fraction of the brightness still
        shows the interface and the fiducial, only noisier) where it holds both axes as for a
        registered slice, or with a smaller error than the prediction's and within three times
        their joint error of the last shift.

        Parameters
        ----------
        pixels : (Y, X) ndarray, optional
            The slice, for a tracker on a cap.

        Returns
        -------
        DriftEstimate

        Raises
        ------
        SliceShapeError
            When `pixels` has another shape than the first slice.
        """
        if self._shape is None:
            return DriftEstimate((0.0, 0.0), (0.0, 0.0), 0.0, False)
        _, predicted_var = self._joint.prediction(self.n_slices)
        predicted_error = float(np.sqrt(2.0 * (self._error_var + predicted_var)))
        found = None
        if pixels is not None:
            pixels = self._on_canvas(check_slice(pixels))
            if self._cap is not None and self._raw_box is not None:  # (resumed: not yet)
                found = self._cap_alone(pixels, predicted_error)
        self.n_slices += 1
        if found is None:
            return DriftEstimate(self._shift, (0.0, 0.0), 0.0, False, residual_px=predicted_error,
                                 wander=predicted_error > self.WANDER_PX,
                                 cap_lost=self._cap_lost >= self.CAP_LOST_SLICES)
        shift, residual = (float(found[0][0]), float(found[0][1])), float(np.hypot(*found[1]))
        self._held_shift = shift  # where the next held slice is looked for first
        return DriftEstimate(shift, (shift[0] - self._shift[0], shift[1] - self._shift[1]),
                             float(np.clip(1.0 - residual / _CapTemplate.MAX_SIGMA_PX, 0, 1)), True,
                             measured_px=shift, residual_px=residual, wander=residual > self.WANDER_PX)

    def _on_canvas(self, pixels):
        """`pixels`, of the first slice's shape, else SliceShapeError."""
        if pixels.shape != self._shape:
            raise SliceShapeError(
                f"slice shape {pixels.shape} differs from the run's canvas {self._shape} (first slice)")
        return pixels

    def _cap_alone(self, pixels, predicted_error):
        """The cap's fit ((dy, dx), (sigma_y, sigma_x)) of a slice the tracker does not learn
        from, or None: see :meth:`skip`."""
        masked = self._masked_full(pixels)
        failures = self._cap._failures  # the template's search schedule is the registered slices'
        found = None
        # from the last shift, then (a run of held slices: the stage moves on) the last held one's
        for guess in (self._shift, self._held_shift):
            fit = None if guess is None else self._cap.measure(masked, guess)
            if fit is None:
                continue
            error = float(np.hypot(*fit[1]))
            apart = float(np.hypot(*np.subtract(fit[0], self._shift)))
            if max(fit[1]) < _CapTemplate.MAX_SIGMA_PX or (
                    error < predicted_error and apart <= 3.0 * np.hypot(error, predicted_error)):
                found = fit
                break
        self._cap._failures = failures
        return found

    def _error_budget(self, results, usable):
        """Per-axis variance (px^2) of the slice's shift: a reference's own variance plus the pair's.

        The pair's variance is the spread of the shifts of the window's blocks (each sees other
        features, whose apparent motion as the structure changes is independent) over their
        number: it stays at the noise's on z-invariant content and grows with the change between
        the two slices. Through a lasting keyframe (older than the longest lag: z-invariant
        content) the error stays bounded; through the previous slice (a chain of changing
        slices) the pair's variance is multiplied by the correlation time of the apparent
        motion (:meth:`_correlation_slices`) and accumulates.
        """
        used = {ref for ref, _, _ in usable}
        pairs = {ref: v for ref, _, _, v in results if ref in used and v is not None and ref in self._var_of}
        if self._keyframe_id in pairs and self._keyframe_id < self.n_slices - max(self.lags, default=1):
            # a lasting keyframe (z-invariant content): the error is bounded by its own
            return max(self._var_of[self._keyframe_id] + pairs[self._keyframe_id], self._joint.floor_var)
        if self._previous_id in pairs:
            # a chain of changing slices: the apparent motion of inclined features persists over
            # many slices, so the errors of successive steps add up over its correlation time
            step = pairs[self._previous_id] * self._correlation_slices()
            return max(self._var_of[self._previous_id] + step, self._joint.floor_var)
        if pairs:
            ref = min(pairs)
            return max(self._var_of[ref] + pairs[ref], self._joint.floor_var)
        spread = [(np.asarray(x), c**2) for _, x, c, _ in results if c >= self.min_confidence]
        if len(spread) > 1:
            xs, ws = np.array([x for x, _ in spread]), np.array([w for _, w in spread])
            mean = (ws[:, None] * xs).sum(axis=0) / ws.sum()
            step_var = float((ws[:, None] * (xs - mean) ** 2).sum(axis=0).mean() / ws.sum())
        else:
            step_var = self._joint.unit_var
        return self._error_var + max(step_var, self._joint.floor_var)

    def _correlation_slices(self):
        """Integrated autocorrelation time (slices, >= 1) of the blocks' apparent motion.

        From the running autocorrelation of each block's shift (against the previous slice)
        minus the blocks' mean, summed over lags up to its first non-positive value.
        """
        acf = self._acf
        if acf[0] <= 0:
            return 1.0
        rho = acf[1:] / acf[0]
        stop = np.flatnonzero(rho <= 0)
        rho = rho[:stop[0]] if stop.size else rho
        return float(1.0 + 2.0 * rho.sum())

    def _record_block_motion(self):
        """Fold the last previous-slice pair's block residuals into the running autocorrelation."""
        current = self._block_residuals
        self._block_residuals = None
        if not current:
            return
        lags = len(self._acf) - 1
        sums = np.full(lags + 1, np.nan)
        sums[0] = np.mean([r @ r for r in current.values()])
        for j, past in enumerate(reversed(self._block_history), start=1):
            common = current.keys() & past.keys()
            if common:
                sums[j] = np.mean([current[k] @ past[k] for k in common])
        self._block_history.append(current)
        self._acf_count += 1
        alpha = max(0.02, 1.0 / self._acf_count)
        seen = np.isfinite(sums)
        self._acf[seen] = (1 - alpha) * self._acf[seen] + alpha * sums[seen]

    def _block_var(self, reference, moving, *, record=False):
        """Per-axis variance (px^2) of a window's shift from the spread of its blocks' shifts.

        With `record`, each block's shift minus the blocks' mean (px) is kept for
        :meth:`_record_block_motion`.
        """
        h, w = reference.shape
        ny, nx = min(3, max(1, h // 48)), min(3, max(1, w // 48))
        if ny * nx < 2:
            return None
        shifts, index = [], []
        for i in range(ny):
            for j in range(nx):
                box = (slice(i * h // ny, (i + 1) * h // ny), slice(j * w // nx, (j + 1) * w // nx))
                x, c = phase_correlate(reference[box], moving[box], lowpass=self.lowpass, whiten=self.whiten,
                                       destripe=self.destripe, workers=self.workers)
                if c >= self.min_confidence:
                    shifts.append(x)
                    index.append((i, j))
        if len(shifts) < 2:
            return None
        shifts = np.array(shifts) * self._bin
        if record:
            mean = shifts.mean(axis=0)
            self._block_residuals = {k: x - mean for k, x in zip(index, shifts)}
        return float(np.var(shifts, axis=0, ddof=1).mean()) / len(shifts)

    def _measure_cap(self, pixels, measured, confidence, reliable, budget, *, candidate=None):
        """Fuse the correlation's shift with the cap template's (a Kalman filter per axis).

        The correlation on the slice tracks the steps but its cumulative error grows (the
        sample changes); the cap template measures the shift itself, noisier but without
        build-up. The step noise is learnt from the innovations. `budget` is the whole-slice
        error budget (px^2, :meth:`_error_budget`), the variance of an axis the cap does not
        hold. `candidate` is a rejected correlation's shift, where the cap is looked for too when
        it is not found at `measured`. Returns the shift, confidence, reliability and the per-axis
        variance of the shift (px^2).
        """
        m = np.asarray(measured, dtype=float)
        previous = np.asarray(self._shift)
        q = self._cap_q if reliable else np.full(2, 1.0)  # a prediction knows little
        p_pred = self._cap_var + q
        found = self._cap.measure(pixels, m)
        # the correlation's step may be what is wrong (a confident false match on the changing
        # sample): the cap is looked for where the last slice was too, and where a rejected
        # correlation put the slice
        for guess in (previous, candidate):
            if (found is None or max(found[1]) >= _CapTemplate.MAX_SIGMA_PX) and guess is not None \
                    and np.abs(m - guess).max() > 1.0:
                other = self._cap.measure(pixels, guess)
                if other is not None and (found is None or max(other[1]) < _CapTemplate.MAX_SIGMA_PX):
                    found = other  # the cap held there on both axes (or was found nowhere else)
        lost = found is None or not (np.asarray(found[1]) < _CapTemplate.MAX_SIGMA_PX).any()
        if lost and (self._cap_lost + 1) % self.CAP_LOST_SLICES == 0:
            # lost for a while: the shift applied since may be off by more than the fit's reach
            # (held axes, a correlation that bent); looked for over the height of its band
            other = self._cap.reacquire(pixels, previous, self._cap.interface_row)
            if other is not None and (np.asarray(other[1]) < _CapTemplate.MAX_SIGMA_PX).any():
                found, lost = other, False
        if lost:
            self._cap_lost += 1
            if self._cap_lost == self.CAP_LOST_SLICES:
                logger.warning("slice %d: the cap lost (%d slices without its lasting features in view): the shift "
                               "follows the sample's correlation or is held; the cap is looked for over its band "
                               "every %d slices", self.n_slices, self._cap_lost, self.CAP_LOST_SLICES)
        else:
            if self._cap_lost >= self.CAP_LOST_SLICES:
                logger.warning("slice %d: the cap found again after %d slices without it, at (%.2f, %.2f) px where "
                               "the last shift was (%.2f, %.2f)", self.n_slices, self._cap_lost, *found[0], *previous)
            self._cap_lost = 0
        sigma = np.full(2, np.inf) if found is None else np.asarray(found[1])
        use = sigma < _CapTemplate.MAX_SIGMA_PX
        self._cap_held = bool(use.all())
        self._held = self._held & ~use
        # what the correlation's error (the innovations, where the cap held an axis) and the
        # stage's own motion (its steps there) add up to per slice
        step_var = self._persistent_var(self._innovations)
        stage_var = float(np.mean(self._persistent_var(self._stage_steps)))  # a stage drifts alike on both axes
        if reliable and not use.all() and np.isfinite(step_var).all() and np.isfinite(stage_var):
            # an axis the cap does not measure here: the correlation's step, unless its error (learnt
            # from the innovations where the cap held the axis, times their correlation time: the
            # changing sample pulls the same way for many slices) exceeds the stage's own steps
            # (their mean square, where the cap held an axis); then the shift is held, and its
            # error grows by what the stage may have moved
            hold = ~use & (step_var > stage_var)
            started = "".join(a for a, h, was in zip("yx", hold, self._held) if h and not was)
            if started:
                logger.warning("slice %d: nothing lasting measures %s and the sample's correlation errs by more "
                               "than the stage moves: %s held, its error grows by the stage's motion",
                               self.n_slices, started, started)
            self._held = hold
            m = np.where(hold, previous, m)
            p_pred = np.where(hold, self._cap_var + stage_var, np.where(use, p_pred, self._cap_var + step_var))
        if found is None:  # the cap shows nothing lasting here: the correlation alone
            self._cap_var = p_pred
            return m, confidence, reliable, max(float(p_pred.mean()), budget)
        z = np.asarray(found[0])
        r = sigma**2
        innovation = z - m
        gain = np.where(use, p_pred / (p_pred + r), 0.0)
        # the cap's lasting features against a correlation that disagrees beyond any expected
        # error: the correlation's step was false, the cap's measurement stands alone
        false_step = use & (innovation**2 > 16 * (p_pred + r)) & (np.abs(innovation) > 1.0)
        if false_step.any():
            logger.warning("slice %d: the correlation's shift (%.2f, %.2f) disagrees with the cap's (%.2f, %.2f): "
                           "the cap's is kept", self.n_slices, *m, *z)
            gain = np.where(false_step, 1.0, gain)
        if reliable:  # E[innovation^2] = p + q + r; a false step counts too (clipped): it is what the
            # correlation's steps are worth on this sample
            learnt = np.clip(innovation**2 - self._cap_var - r, 0.02**2, 4.0)
            self._cap_q = np.where(use, 0.9 * self._cap_q + 0.1 * learnt, self._cap_q)
            self._innovations.append(np.where(use, innovation, np.nan))
        self._cap_var = np.where(false_step, r, (1 - gain) * p_pred)
        shift = m + gain * innovation
        if reliable:  # the stage's steps, seen on the axes the cap holds
            self._stage_steps.append(np.where(use, shift - previous, np.nan))
        # an axis the cap does not hold is the correlation's on the changing sample: its error
        # is the whole-slice budget's (it bends like whole-slice registration)
        var = float(np.where(use, self._cap_var, np.maximum(self._cap_var, budget)).mean())
        if not use.all() and not reliable:
            return shift, confidence, False, var
        if use.all():  # confidence from the cap's standard error, on the 1 - 6 / PSR scale
            confidence = max(confidence, float(np.clip(1.0 - np.hypot(*sigma) / _CapTemplate.MAX_SIGMA_PX, 0, 1)))
        return shift, confidence, True, var

    @staticmethod
    def _persistent_var(history):
        """Per axis, what a series of errors or steps adds up to per slice (px^2), or NaN.

        The mean square of `history` ((N, 2), NaN where an axis was not seen) times its
        correlation time, from its autocorrelation about zero, not about its mean: a bias that
        persists (the apparent motion of an inclined feature, a stage drifting one way) counts as
        correlation; summed over lags up to its first non-positive value. An axis seen on fewer
        than ``STAGE_SLICES`` slices takes the others' (isotropic); NaN when none was.
        """
        history = np.asarray(history, dtype=float).reshape(-1, 2)
        out = np.full(2, np.nan)
        for axis in range(2):
            v = history[:, axis]
            if np.isfinite(v).sum() < DriftTracker.STAGE_SLICES:
                continue
            power = float(np.nanmean(v * v))
            slices = 1.0
            for lag in range(1, len(v) - 2):
                products = v[lag:] * v[:-lag]
                if not power > 0 or np.isfinite(products).sum() < 3:
                    break
                rho = np.nanmean(products) / power
                if rho <= 0:
                    break
                slices += 2.0 * rho
            out[axis] = power * slices
        if np.isnan(out).all():
            return out
        return np.where(np.isnan(out), np.nanmean(out), out)

    def _search_wide(self, binned):
        """Integer cumulative shift (binned px) of the slice over the whole overlap, or None.

        Masked normalised cross-correlation (Padfield, 2012) of the running mean's registration
        region against the raw slice's sample rectangle: every shift that keeps a third of the
        region in view is tried, so a jump larger than the region is found.
        """
        from skimage.registration import phase_cross_correlation

        if self._mean is None:
            return None
        box = self._region_box(binned.shape)
        ref_mask = np.zeros(binned.shape, dtype=bool)
        ref_mask[box] = True
        moving = np.asarray(binned, dtype=np.float32)
        mov_mask = np.isfinite(moving)
        if mov_mask.sum() < 256 or float(np.std(moving[mov_mask])) < 1e-6:  # a blank slice
            return None
        moving = np.where(mov_mask, moving, 0.0)
        shift = phase_cross_correlation(self._mean, moving, reference_mask=ref_mask, moving_mask=mov_mask,
                                        overlap_ratio=0.3)
        shift = np.asarray(shift[0] if isinstance(shift, tuple) else shift, dtype=float)
        if not np.all(np.isfinite(shift)):
            return None
        return int(round(shift[0])), int(round(shift[1]))

    def _measure(self, binned, offset):
        """Cumulative shift (px) and confidence of the slice against each reference.

        Returns ``[(slice the reference shows, shift, confidence, pair variance), ...]``; the
        running mean counts as the previous slice. The pair variance (px^2 per axis, see
        :meth:`_block_var`) is given for the previous slice and the keyframe (not in cap mode),
        None for the others.
        """
        windows = self._windows(binned.shape, offset)
        if windows is None:
            return []
        canvas_win, raw_win = windows
        taper = np.outer(_tukey(binned[raw_win].shape[0]), _tukey(binned[raw_win].shape[1]))
        fb = _spectrum(binned[raw_win], taper, self.destripe, self.workers)
        if fb is None:
            return []
        references = [("previous", self._previous_id, self._previous), ("mean", self._previous_id, self._mean)]
        if self.keyframe:
            references.append(("keyframe", self._keyframe_id, self._keyframe))
        lagged = list(self._lagged)
        references += [("lag", *lagged[-lag]) for lag in self.lags if lag <= len(lagged)]
        results = []
        b = self._bin
        for name, ref_id, reference in references:
            if reference is None:
                continue
            fa = _spectrum(reference[canvas_win], taper, self.destripe, self.workers)
            if fa is None:
                continue
            r, c = _correlate(fa, fb, upsample=self.upsample, lowpass=self.lowpass, whiten=self.whiten,
                              destripe=self.destripe, workers=self.workers)
            # the error budget's pairs (in cap mode, for an axis the cap does not hold)
            spread = name in ("previous", "keyframe")
            v = (self._block_var(reference[canvas_win], binned[raw_win], record=name == "previous")
                 if spread and c >= self.min_confidence else None)
            results.append((name, ref_id, ((offset[0] + r[0]) * b, (offset[1] + r[1]) * b), c, v))
        if results:
            best = max(results, key=lambda item: item[3])
            key = [(x, c) for name, _, x, c, _ in results if name == "keyframe"]
            # a keyframe that matches clearly worse than the newest references (the structure has
            # changed since) is replaced by this slice: on persistent structure it stays for good
            self._stale_keyframe = bool(key) and (
                key[0][1] < max(self.min_confidence, 0.95 * best[3])
                or np.hypot(*np.subtract(key[0][0], best[2])) >= 0.5 * b)
        # the variances of the slices a reference may still show (the keyframe, the lags)
        oldest = min([self._keyframe_id, *(k for k, _ in lagged)]) if lagged else self._keyframe_id
        for k in [k for k in self._var_of if k < oldest]:
            del self._var_of[k]
        return [(ref_id, x, c, v) for _, ref_id, x, c, v in results]

    def resume(self, aligned, shift_px):
        """Continue a run after a restart, from the last stored slice.

        Parameters
        ----------
        aligned : (Y, X) ndarray
            The last slice as stored: corrected and already shifted onto the canvas, 0 where it
            did not cover the canvas.
        shift_px : (float, float)
            The cumulative shift that was applied to it.
        """
        aligned = check_slice(aligned, "aligned")
        self._bin = self._choose_bin(aligned.shape)
        self._shape = aligned.shape
        self._raw_box = None
        binned = _bin(aligned.astype(np.float32), self._bin)
        covered = _bin((aligned > 0).astype(np.float32), self._bin) > 0.99
        fill = binned[covered].mean() if covered.any() else 0.0
        self._first_references(np.where(covered, binned, fill), 0)
        if self._cap is not None:
            self._cap.stripe_angle_deg = self._find_stripe_angle(aligned)
            self._cap.start(aligned)
        self._shift = tuple(float(v) for v in _as_pair(shift_px, "shift_px"))
        self._joint.freeze(0, self._shift, 0.0)  # the stored shift: the new canvas's origin
        self._error_var = 0.0
        self._var_of = {0: 0.0}
        self.n_slices = 1

    def _start(self, pixels, raw):
        # the bin first: a refused region leaves the tracker unstarted (the same error next time)
        self._bin = self._choose_bin(pixels.shape)
        self._shape = pixels.shape
        self._raw_box = self._find_raw_box(raw)
        self._joint.freeze(0, (0.0, 0.0), 0.0)
        self._var_of = {0: 0.0}
        self._update_references(self._masked(_bin(pixels, self._bin)), (0.0, 0.0), 0)
        if self._cap is not None:
            self._cap.stripe_angle_deg = self._find_stripe_angle(pixels)
            self._cap.start(self._masked_full(pixels))
        self._shift = (0.0, 0.0)
        self.n_slices = 1

    def _update_references(self, binned, shift, n):
        """Place slice `n` on the canvas; refresh the previous-slice, running-mean and lagged references.

        Canvas pixels the slice does not cover keep their older content, so the references
        always cover the whole canvas.
        """
        b = self._bin
        box = self._region_box(binned.shape)  # only the region is ever read back
        aligned, valid = _aligned_box(binned, (shift[0] / b, shift[1] / b), box)
        if self._previous is None:
            fill = aligned[valid].mean() if valid.any() else 0.0
            first = np.full(binned.shape, fill, dtype=np.float32)
            first[box] = np.where(valid, aligned, fill)
            self._first_references(first, n)
            return
        if valid.sum() < 64:
            return
        # match the slice's grey levels to the references' (brightness drift) before blending
        a_vals = aligned[valid]
        a_std = a_vals.std()
        if a_std < 1e-6:
            return
        for ref, w in ((self._previous[box], 1.0), (self._mean[box], self.reference_weight)):
            r_vals = ref[valid]
            matched = (a_vals - a_vals.mean()) * (r_vals.std() / a_std) + r_vals.mean()
            ref[valid] = (1 - w) * r_vals + w * matched
        self._previous_id = n
        self._lagged.append((n, self._previous.copy()))
        if self._stale_keyframe:
            self._keyframe = self._previous.copy()
            self._keyframe_id = n
            self._stale_keyframe = False


    def _first_references(self, canvas, n):
        """Every reference (previous slice, running mean, keyframe, lagged) from slice `n` alone,
        `canvas` (binned, covering the whole canvas)."""
        self._previous = canvas
        self._mean = canvas.copy()
        self._keyframe = canvas.copy()
        self._previous_id = self._keyframe_id = n
        self._lagged.clear()
        self._lagged.append((n, canvas.copy()))

def _band_correlation(reference, moving):
    """Correlation coefficient of two destriped windows after registering them (subpixel)."""
    (dy, dx), _ = phase_correlate(reference, moving)
    aligned, valid = apply_shift(moving.astype(np.float32), (dy, dx), fill=np.nan)
    if valid.sum() < 64:
        return 0.0
    box = np.ix_(valid.any(axis=1), valid.any(axis=0))  # the valid pixels form a rectangle
    a, b = reference[box].astype(np.float64), aligned[box].astype(np.float64)
    # column means removed: curtaining (vertical stripes) evolves along z and is not content
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _kept(near, far):
    """The share of its correlation with the next slice a window keeps with a later one (0 when
    it does not match even the next: nothing to keep)."""
    return far / near if near > 0.05 else 0.0


def rows_keep_content(slices, rows, *, tolerance=0.8):
    """Whether rows ``[y0, y1)`` keep their content along z while as many rows below them change
    (or have none to keep: flat, a correlation with the next slice under 0.05).

    The evidence that a band on top of the section is a protective cap (z-invariant, maybe of
    the grey of the particles under it) and not sample: each band registered on its own (a
    wandering whole-slice registration does not count), the correlation of the last slice with
    the first is compared with that of the second with the first, for the rows (below any flat
    margin on top) and for the same number of rows under them. A single slice, or slices that
    do not change at all, give no such evidence.

    Parameters
    ----------
    slices : sequence of (Y, X) arrays
        The first slices of a run (raw, of one shape); fewer than 3 give False.
    rows : (int, int)
        Rows ``[y0, y1)`` of the first slice.
    tolerance : float, optional
        The rows keep their content when the ratio is at least `tolerance` (0..1), and the rows
        under them change when theirs is below it.

    Returns
    -------
    bool
    """
    if len(slices) < 3:
        return False
    first, near, far = (np.asarray(s, dtype=np.float32) for s in (slices[0], slices[1], slices[-1]))
    margin = flat_margins(first).all(axis=1)
    y0 = max(int(rows[0]), int(np.argmin(margin)) if not margin.all() else 0)
    y1 = int(rows[1])
    below = min(first.shape[0], y1 + (y1 - y0))
    if y1 - y0 < 8 or below - y1 < 8:
        return False
    kept, changed = (_kept(_band_correlation(first[a:b], near[a:b]), _band_correlation(first[a:b], far[a:b]))
                     for a, b in ((y0, y1), (y1, below)))
    logger.info("rows %d-%d keep %.0f %% of their correlation along %d slices, the %d rows under them %.0f %%",
                y0, y1, 100 * kept, len(slices), below - y1, 100 * changed)
    return kept >= tolerance > changed


def find_reference_band(slices, *, band_rows=16, tolerance=0.8, min_rows=24):
    """Rows of the canvas whose content does not change along z (protective cap, fiducial).

    The slices are registered to the first one on the whole frame; then, band of rows by band
    (bands overlapping by half; a row counts when every band covering it passes),
    the correlation of the last slice with the first is compared with that of the second slice
    with the first (each band registered on its own first, so residual drift does not count).
    Bands of z-invariant content keep their correlation; bands of evolving microstructure lose
    it. The longest run of invariant bands is returned, to pass as ``DriftTracker(roi=...)``.

    A run is only trusted when it stands out: it must be at least `min_rows` rows high, and the
    rest of the slice must be seen to change (the median ratio of the other bands below
    `tolerance`); otherwise (e.g. large particles that barely change over the first slices, where
    a few rows pass by chance) the band is rejected with a warning and None is returned, so that
    the run registers on the whole slice.

    Parameters
    ----------
    slices : sequence of (Y, X) arrays
        The first slices of a run (at least 3), raw, of one shape. The first and last should be
        far enough apart for the microstructure to change (about a particle radius in z: with
        0.5 um particles and 50 nm slices, 10 slices).
    band_rows : int, optional
        Height of the bands that are compared, in rows; >= 8.
    tolerance : float, optional
        A band is z-invariant when its first-to-last correlation is at least this share of its
        first-to-second correlation (0 < tolerance < 1).
    min_rows : int, optional
        Shortest band returned, in rows (>= 16, the least :class:`DriftTracker` registers on;
        the default 24 leaves 16 rows in view after a drift of 8 px; beyond, a lost band is found
        again by a search over the whole slice).

    Returns
    -------
    (y0, y1, x0, x1) tuple of int or None
        The band on the canvas of the first slice (full width), or None when no band passes.

    Raises
    ------
    ValueError
        Fewer than 3 slices, slices of different shapes, or bad options.
    """
    slices = [np.asarray(s) for s in slices]
    if len(slices) < 3 or any(s.ndim != 2 or s.shape != slices[0].shape for s in slices):
        raise ValueError(f"slices: expected at least 3 slices of one 2-D shape, got "
                         f"{[np.shape(s) for s in slices]}")
    if not (isinstance(band_rows, (int, np.integer)) and 8 <= band_rows <= slices[0].shape[0] // 2):
        raise ValueError(f"band_rows: expected an integer in [8, {slices[0].shape[0] // 2}], got {band_rows!r}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance: expected 0 < t < 1, got {tolerance!r}")
    if not (isinstance(min_rows, (int, np.integer)) and min_rows >= 16):
        raise ValueError(f"min_rows: expected an integer >= 16, got {min_rows!r}")
    starts, ratio = _band_ratios(slices, band_rows)
    height = slices[0].shape[0]
    # a row is invariant when every band covering it is (the bands overlap by half)
    covering = np.zeros(height, dtype=int)
    passing = np.zeros(height, dtype=int)
    for y0, r in zip(starts, ratio):
        covering[y0:y0 + band_rows] += 1
        passing[y0:y0 + band_rows] += r >= tolerance
    invariant = (covering > 0) & (passing == covering)
    runs, n = ndimage.label(invariant)
    if n == 0:
        return None
    lengths = ndimage.sum_labels(invariant, runs, index=np.arange(1, n + 1))
    rows = np.flatnonzero(runs == int(np.argmax(lengths)) + 1)
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    outside = [r for s, r in zip(starts, ratio) if s + band_rows <= y0 or s >= y1]
    rest = float(np.median(outside)) if outside else 1.0
    if y1 - y0 < min_rows or rest >= tolerance:
        logger.warning(
            "reference band rows %d-%d rejected (%d rows, need %d; the rest of the slice keeps %.0f %% of its "
            "correlation, a z-invariant band must stand out below %.0f %%): registering on the whole slice",
            y0, y1, y1 - y0, min_rows, 100 * rest, 100 * tolerance)
        return None
    return y0, y1, 0, int(slices[0].shape[1])


def _band_ratios(slices, band_rows):
    """Start rows of the bands and, per band, the first-to-last over first-to-second correlation."""
    tracker = DriftTracker(min_confidence=0.0)
    shifts = [tracker.update(s).shift_px for s in slices]
    first = slices[0].astype(np.float32)
    height, width = first.shape
    starts = range(0, height - band_rows + 1, band_rows // 2)
    ratio = []
    for y0 in starts:
        corr = []
        for k in (1, len(slices) - 1):
            # the part of slice k that shows canvas rows y0..y0+band_rows (integer part of the shift)
            oy, ox = (int(round(v)) for v in shifts[k])
            c0, c1 = max(0, ox), min(width, width + ox)
            if not (0 <= y0 - oy <= height - band_rows) or c1 - c0 < 16:
                corr.append(0.0)
                continue
            moving = slices[k][y0 - oy:y0 - oy + band_rows, c0 - ox:c1 - ox]
            corr.append(_band_correlation(first[y0:y0 + band_rows, c0:c1], moving))
        ratio.append(_kept(*corr))
    return list(starts), ratio

"""Phase segmentation: a grey-level model fixed after calibration, and a trainable classifier.

:func:`fit_phase_model` calibrates a :class:`PhaseModel` on the first (corrected) slices: a
1-D Gaussian mixture of the (lightly smoothed) grey levels, initialised with multi-Otsu, gives
the phase levels and the thresholds between neighbouring phases (balanced: each phase takes as
many pixels of its neighbour as it loses to it, so noise does not bias the fractions). The
thresholds are then fixed for the run, so labels are consistent along z. Two refinements that measurably improve
accuracy on blurred, noisy slices (``tests/test_segment.py``):

- a Gaussian pre-filter (``smooth_px``) before thresholding: averages the noise inside phases;
- partial-volume rims: a blurred boundary between the darkest and the brightest phase passes
  through the middle phase's grey levels and would leave a thin false rim of it. Middle-phase
  pixels with the darkest phase on one side and the brightest on the opposite side, within the
  width of a blurred edge, are reassigned to the nearer extreme (``rim_fix``).

At run time a slice is rounded to 256 steps spanning the phase levels before the pre-filter, so
smoothing, thresholds and rims work on small integers, in row blocks that stay in cache (about
8 ms per 1024^2 slice instead of 20, 33 instead of 60 at 2048^2;
labels unchanged to within a step, far below the noise).

``uncertain_share`` is the share of valid pixels whose smoothed grey level lies where the
mixture's most probable phase has a posterior below ``certainty`` (default 0.95): near a
threshold (counted on every 2nd row and column). It goes into the status as the per-slice quality figure.

:func:`fit_pixel_classifier` trains a random forest on multiscale features from a sparse label
image (scikit-image's ``fit_segmenter``, the ilastik / Weka approach) for samples whose phases
are not separable by grey level alone; it needs scikit-learn (optional extra ``ml``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize
from scipy.special import ndtr

from processing.errors import CalibrationError, SliceShapeError, check_slice

__all__ = [
    "SegmentedSlice",
    "PhaseModel",
    "fit_phase_model",
    "fit_gray_mixture",
    "PixelClassifier",
    "fit_pixel_classifier",
    "calibrate_phases",
    "sparse_labels_from_rectangles",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentedSlice:
    """Labels of one slice and a quality figure.

    Attributes
    ----------
    labels : (Y, X) ndarray of uint8
        Phase labels 1..n (dark to bright); 0 where not valid.
    uncertain_share : float
        Share (0..1) of the valid pixels whose phase is uncertain.
    """

    labels: np.ndarray
    uncertain_share: float


def _histogram(values, bins=256):
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    lo, hi = np.percentile(values, [0.01, 99.99])
    if not hi > lo:
        raise CalibrationError(f"grey levels are constant ({lo!r}): nothing to segment")
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return 0.5 * (edges[:-1] + edges[1:]), counts.astype(float)


def otsu_class_means(centres, counts, n_classes):
    """Multi-Otsu thresholds of a histogram and the mean grey level of each class between them:
    the starting point of :func:`fit_gray_mixture` (robust where quantiles are not, e.g. four
    classes of unequal shares).

    Parameters
    ----------
    centres, counts : (B,) ndarray
        Histogram bin centres (grey units) and counts.
    n_classes : int
        Number of classes.

    Returns
    -------
    thresholds : (n_classes - 1,) ndarray
    means : list of float
        Dark to bright.

    Raises
    ------
    ValueError
        The histogram cannot be split into `n_classes` classes (from scikit-image).
    """
    from skimage.filters import threshold_multiotsu

    thresholds = threshold_multiotsu(hist=(np.asarray(counts).astype(np.int64), centres), classes=n_classes)
    cls = np.searchsorted(thresholds, centres)
    means = [float((centres[cls == k] * counts[cls == k]).sum() / max(counts[cls == k].sum(), 1))
             for k in range(n_classes)]
    return thresholds, means


def fit_gray_mixture(centres, counts, means, *, iterations=50, equal_sigma=True, tol=0.0):
    """1-D Gaussian mixture fitted to a histogram by expectation-maximisation.

    Parameters
    ----------
    centres, counts : (B,) ndarray
        Histogram bin centres (grey units) and counts.
    means : sequence of float
        Initial component means, dark to bright.
    iterations : int, optional
        EM iterations.
    equal_sigma : bool, optional
        One common standard deviation (noise does not depend on the phase; this keeps a small
        phase from taking a huge sigma).
    tol : float, optional
        Stop before `iterations` once no mean moves by more than this (grey units); a warm
        start from the previous slice's levels converges in about 10 iterations.

    Returns
    -------
    means, sigmas, weights : (K,) ndarray
        Sorted by mean.
    """
    centres = np.asarray(centres, dtype=float)
    counts = np.asarray(counts, dtype=float)
    mu = np.array(means, dtype=float)
    k = mu.size
    total = counts.sum()
    if total <= 0 or k < 1:
        raise CalibrationError("fit_gray_mixture: empty histogram")
    span = centres[-1] - centres[0]
    sigma = np.full(k, span / (4 * k))
    weight = np.full(k, 1.0 / k)
    floor = max(abs(centres[1] - centres[0]), 1e-6)
    for _ in range(iterations):
        z = (centres[None, :] - mu[:, None]) / sigma[:, None]
        dens = weight[:, None] * np.exp(-0.5 * z * z) / sigma[:, None]
        resp = dens / np.maximum(dens.sum(axis=0, keepdims=True), 1e-300)
        nk = (resp * counts).sum(axis=1)
        keep = nk > 1e-9 * total
        previous = mu.copy()
        mu[keep] = (resp * counts * centres).sum(axis=1)[keep] / nk[keep]
        var = (resp * counts * (centres[None, :] - mu[:, None]) ** 2).sum(axis=1)
        if equal_sigma:
            sigma[:] = max(np.sqrt(var.sum() / total), floor)
        else:
            sigma[keep] = np.maximum(np.sqrt(var[keep] / nk[keep]), floor)
        weight = np.maximum(nk / total, 1e-12)
        if np.abs(mu - previous).max() <= tol:
            break
    order = np.argsort(mu)
    return mu[order], sigma[order], weight[order]


def _bayes_thresholds(mu, sigma, weight):
    """Grey level between neighbouring components where their weighted densities are equal."""
    out = []
    for i in range(mu.size - 1):
        grid = np.linspace(mu[i], mu[i + 1], 2001)
        d0 = weight[i] * np.exp(-0.5 * ((grid - mu[i]) / sigma[i]) ** 2) / sigma[i]
        d1 = weight[i + 1] * np.exp(-0.5 * ((grid - mu[i + 1]) / sigma[i + 1]) ** 2) / sigma[i + 1]
        cross = np.flatnonzero(np.diff(np.sign(d1 - d0)))
        out.append(float(grid[cross[0]]) if cross.size else float(0.5 * (mu[i] + mu[i + 1])))
    return out


def _balanced_thresholds(mu, sigma, weight):
    """Grey level between neighbouring components where each takes as many pixels of the other as
    it gives up: ``w_i P(x > t | i) = w_(i+1) P(x < t | i+1)``, so noise does not bias the phase
    fractions. The Bayes threshold (equal weighted densities, the fewest errors) lies further into
    the smaller phase and takes its pixels. Measured on seeds 0-15 of ``bench_label_chain.py``:
    seeds 7 and 13 (noise 25 and 21 % of the contrast) gain 2.1 and 7.6 points of accuracy and
    lose 2.3 and 10.7 points of bias; the others stay within 0.4 point of accuracy and 0.3 of bias,
    but seed 14's bias is 0.9 point worse. Where the counts cannot balance between the two levels
    (a tiny phase beside a wide one), the Bayes threshold."""
    out = []
    for i, bayes in enumerate(_bayes_thresholds(mu, sigma, weight)):

        def surplus(t, i=i):
            return weight[i] * ndtr((mu[i] - t) / sigma[i]) - weight[i + 1] * ndtr((t - mu[i + 1]) / sigma[i + 1])

        lo, hi = float(mu[i]), float(mu[i + 1])
        out.append(optimize.brentq(surplus, lo, hi) if surplus(lo) > 0 > surplus(hi) else bayes)
    return out


def _certain_bounds(mu, sigma, weight, thresholds, certainty):
    """For each threshold, the grey interval around it where the top posterior < certainty."""
    lo_all = mu[0] - 10 * sigma.max()
    hi_all = mu[-1] + 10 * sigma.max()
    grid = np.linspace(lo_all, hi_all, 8001)
    dens = weight[:, None] * np.exp(-0.5 * ((grid[None, :] - mu[:, None]) / sigma[:, None]) ** 2) / sigma[:, None]
    post = dens.max(axis=0) / np.maximum(dens.sum(axis=0), 1e-300)
    uncertain = post < certainty
    bounds = []
    for t in thresholds:
        i = int(np.searchsorted(grid, t))
        lo = hi = i
        while lo > 0 and uncertain[lo - 1]:
            lo -= 1
        while hi < grid.size - 1 and uncertain[hi + 1]:
            hi += 1
        bounds.append((float(grid[lo]), float(grid[hi])))
    return bounds


# Pixels per row block of :meth:`PhaseModel.segment` (uint16 temporaries of 1 MiB): measured
# best of 2^15..2^20 at 1024^2 and 2048^2 (smaller blocks pay numpy call overheads).
_BLOCK_PIXELS = 1 << 19


def _binomial_order(sigma):
    """Even order ``n ~ 4 sigma^2`` of the binomial kernel approximating a Gaussian (variance n/4)."""
    return max(2, 2 * int(round(2 * sigma * sigma)))


def _binomial_sum(image, order):
    """Unnormalised separable binomial filter of `order` (sum ``4**order``), edges repeated.

    Applied as `order` pairwise sums per axis (``[1, 1]`` convolved `order` times is the
    binomial row): one addition per tap and no multiplication, in the dtype of `image` (the
    caller picks one that cannot overflow).
    """
    half = order // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        out = np.pad(out, pad, mode="edge")
        for _ in range(order):
            out = out[1:] + out[:-1] if axis == 0 else out[:, 1:] + out[:, :-1]
    return out


# Largest binomial order summed in float32 before normalising: its sum 4**32 times a 16-bit
# grey stays far below float32's range (at order 64, sigma 4 px, 8-bit slices overflowed to inf)
_FLOAT_ORDER = 32


def _smooth(image, sigma):
    """Gaussian smoothing by its binomial approximation, float32 (for sigma 1 the 5-tap
    [1, 4, 6, 4, 1] / 16, about twice as fast as ``ndimage.gaussian_filter``)."""
    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image
    order = _binomial_order(sigma)
    # binomials of orders a and b in turn are the binomial of order a + b (both even here)
    while order:
        part = min(order, _FLOAT_ORDER)
        image = _binomial_sum(image, part) * np.float32(4.0**-part)
        order -= part
    return image


def _seen_along(mask, dy, dx, reach):
    """(Y, X) bool: True where `mask` holds at ``(y + k dy, x + k dx)`` for some k in 1..reach."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for k in range(1, reach + 1):
        oy, ox = k * dy, k * dx
        if abs(oy) >= h or abs(ox) >= w:
            break
        out[max(-oy, 0):h - max(oy, 0), max(-ox, 0):w - max(ox, 0)] |= mask[max(oy, 0):h + min(oy, 0),
                                                                            max(ox, 0):w + min(ox, 0)]
    return out


def _square_reduce(image, size, op):
    """``op`` (a ufunc such as ``np.bitwise_or`` or ``np.maximum``) over a size x size square,
    edges repeated.

    Separable, with numpy slices: an order of magnitude faster than ndimage's filters on uint8.
    """
    r = size // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        take = (lambda a: padded[a:a + n]) if axis == 0 else (lambda a: padded[:, a:a + n])
        acc = take(0).copy()
        for j in range(1, size):
            op(acc, take(j), out=acc)
        out = acc
    return out


# Scale (pixels) of the dark-ridge detector: a line one or two pixels wide, blurred by about
# 1 px (a wider dark phase has a histogram mode of its own).
DARK_RIDGE_SIGMA_PX = 0.7
# A dark ridge: a Hessian response this many robust spreads (1.4826 MAD over the valid pixels:
# the noise's and the texture's own) above the median response.
DARK_RIDGE_Z = 3.0


def dark_ridges(image, *, sigma=DARK_RIDGE_SIGMA_PX):
    """Dark-line cue of a slice: where a pixel is darker than both sides across a line.

    The largest eigenvalue of the Hessian of the slice smoothed at `sigma` (the "valley"
    response of ilastik's and Frangi's Hessian features; a morphological black top-hat marks
    the same pixels but also every concave corner): large and positive across a dark line, near
    0 inside a phase and along a straight edge. A blurred film of a phase between brighter
    phases is a dark ridge too; only a ridge darker than the darkest phase level found cannot be
    made by blurring the phases found (a blur is a positive average), so it is a darker phase
    that shows no histogram mode of its own (pores one or two pixels wide at interfaces).

    Parameters
    ----------
    image : (Y, X) ndarray
        Grey levels.
    sigma : float, optional
        Scale (pixels).

    Returns
    -------
    response : (Y, X) ndarray of float32
        Grey units per pixel^2.
    grey : (Y, X) ndarray of float32
        The slice smoothed at `sigma` (the grey level at the ridge).
    """
    # Gaussian derivatives (a 1-D pass per axis, shared): central differences of a binomial
    # smoothing are 8 times faster but noisier and anisotropic: they found dark lines on 1.5-1.9 %
    # of the pixels of the synthetic slices without any (tests/test_phases.py), these at most 0.4 %
    image = np.asarray(image, dtype=np.float32)
    across = [ndimage.gaussian_filter1d(image, sigma, axis=1, order=k, mode="nearest") for k in (0, 1, 2)]
    d_rr = ndimage.gaussian_filter1d(across[0], sigma, axis=0, order=2, mode="nearest")
    d_rc = ndimage.gaussian_filter1d(across[1], sigma, axis=0, order=1, mode="nearest")
    d_cc = ndimage.gaussian_filter1d(across[2], sigma, axis=0, order=0, mode="nearest")
    half = 0.5 * (d_rr - d_cc)
    response = 0.5 * (d_rr + d_cc) + np.sqrt(half * half + d_rc * d_rc)
    return response, ndimage.gaussian_filter1d(across[0], sigma, axis=0, order=0, mode="nearest")


def _classify(image, thresholds):
    """1 + number of thresholds below each pixel, uint8 (comparisons beat searchsorted and a
    lookup table here)."""
    labels = np.ones(image.shape, dtype=np.uint8)
    for t in thresholds:
        labels += image > t
    return labels


@dataclass(frozen=True)
class PhaseModel:
    """Grey-level phase model, fixed after calibration; a plain-dict round trip for resume.

    Attributes
    ----------
    thresholds : tuple of float
        Grey levels separating phase i and i+1 (``len = n_phases - 1``), on the smoothed image.
    levels : tuple of float
        Mixture means (grey units), dark to bright.
    sigmas, weights : tuple of float
        Mixture standard deviations and weights (calibration slices).
    smooth_px : float
        Gaussian pre-filter sigma (pixels) applied before thresholding.
    rim_fix : bool
        Reassign middle-phase partial-volume rims between the extreme phases (>= 3 phases).
    rim_px : int
        Reach (pixels) within which a middle-phase pixel must see the darkest phase on one side
        and the brightest on the opposite side (along a row, column or diagonal) to count as a
        rim; about the width of a blurred edge (2 for blur ~1 px).
    uncertain_bounds : tuple of (float, float)
        Grey intervals (smoothed image) whose pixels count as uncertain.
    label_values : tuple of int
        Label of each fitted class, dark to bright, when the data show fewer classes than the
        configured phases (``()`` = classes 1..n are labels 1..n): the phases the data do not
        show stay empty instead of being invented (:func:`calibrate_phases`).
    thin_label : int
        Label of a thin dark phase that has no grey class (0 = none): given to the dark lines
        (:func:`dark_ridges` response above `ridge_threshold`) whose grey level is below
        `ridge_level`, the darkest class's level (:class:`processing.phases.DarkRidges`).
    ridge_threshold, ridge_level : float
        See `thin_label` (grey / px^2, grey units).
    """

    thresholds: tuple
    levels: tuple
    sigmas: tuple
    weights: tuple
    smooth_px: float = 1.0
    rim_fix: bool = True
    uncertain_bounds: tuple = ()
    rim_px: int = 2
    label_values: tuple = ()
    thin_label: int = 0
    ridge_threshold: float = 0.0
    ridge_level: float = 0.0

    @property
    def n_phases(self):
        return len(self.levels)

    def segment(self, pixels, *, valid=None, lines_in=None):
        """Label one (corrected, aligned) slice.

        Parameters
        ----------
        pixels : (Y, X) ndarray
            Grey levels in the calibration's units.
        valid : (Y, X) bool ndarray, optional
            Pixels to label (the aligned slice's coverage); others get 0.
        lines_in : (Y, X) ndarray, optional
            The slice in which the thin dark phase's lines are looked for (default `pixels`): the
            slice itself when `pixels` is its average along z, which fades lines that move from
            slice to slice.

        Returns
        -------
        SegmentedSlice
        """
        pixels = check_slice(pixels)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != pixels.shape:
                raise SliceShapeError(f"valid: shape {valid.shape} differs from pixels {pixels.shape}")
        h, w = pixels.shape
        order = _binomial_order(self.smooth_px) if self.smooth_px > 0 else 0
        # wide kernels (sigma > ~1.6 px) would overflow the integer sums: smooth in float32 first
        float_px = self.smooth_px if 255 * 4**order >= 2**32 else 0.0
        reach = int(np.ceil(4 * float_px)) if float_px else order // 2
        order = 0 if float_px else order
        norm = 4**order  # sum of the 2-D binomial kernel
        kind = np.uint16 if 255 * norm < 2**16 else np.uint32
        base, scale = self._quantisation()

        def to_smooth(grey):
            # grey level -> nearest smoothed unit (1/200 grey for 8-bit levels and sigma 1), as
            # the array's own type: a Python float would make every comparison a float64 one
            return kind(min(max(round((grey - base) * scale * norm), 0), 255 * norm))

        thresholds = [to_smooth(t) for t in self.thresholds]
        bounds = [(to_smooth(lo), to_smooth(hi)) for lo, hi in self.uncertain_bounds]
        rims = self.rim_fix and self.n_phases >= 3
        # Row blocks that stay in the CPU cache through every step; each carries a halo of the
        # rows its smoothing and rim windows reach, so the labels equal whole-slice ones.
        halo = reach + (self.rim_px if rims else 0)
        rows = 2 * max(8, _BLOCK_PIXELS // (2 * w))  # even: the 2 x 2 uncertainty grid is global
        labels = np.empty((h, w), dtype=np.uint8)
        n_uncertain = n_counted = 0
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            e0, e1 = max(r0 - halo, 0), min(r1 + halo, h)
            block_pixels = pixels[e0:e1]
            if float_px:
                block_pixels = ndimage.gaussian_filter(block_pixels.astype(np.float32), float_px, mode="nearest")
            smooth = self._quantised_smooth(block_pixels, base, scale, order, kind)
            block = _classify(smooth, thresholds)
            if rims:
                self._fix_rims(block, smooth, to_smooth)
            labels[r0:r1] = block[r0 - e0:r1 - e0]
            # a quality figure: every 2nd row and column is plenty (a quarter of the work)
            sub = smooth[r0 - e0:r1 - e0:2, ::2]
            uncertain = np.zeros(sub.shape, dtype=bool)
            for lo, hi in bounds:
                uncertain |= (sub >= lo) & (sub <= hi)
            if valid is not None:
                sub_valid = valid[r0:r1:2, ::2]
                uncertain &= sub_valid
                n_counted += int(np.count_nonzero(sub_valid))
            else:
                n_counted += sub.size
            n_uncertain += int(np.count_nonzero(uncertain))
        if self.label_values:
            labels = np.array((0, *self.label_values), dtype=np.uint8)[labels]
        self.label_thin_dark(labels, pixels if lines_in is None else lines_in)
        if valid is not None:
            np.multiply(labels, valid, out=labels)
        return SegmentedSlice(labels, n_uncertain / n_counted if n_counted else 0.0)

    def label_thin_dark(self, labels, pixels):
        """Give the thin dark phase its pixels, in place: the dark lines below the darkest class's
        level (nothing without `thin_label`).

        A blurred dark line also pulls its neighbours' grey down, by about a quarter of its
        depth at blur 1 px: a bright phase beside it falls into the next darker class (measured
        on the generator's seed 8, slice 1: 4886 of the 30233 active pixels labelled
        electrolyte, all at 1 px from a pore). So a pixel touching a line (8-neighbours) takes
        the label of the pixel one step further from the line, if that one touches no line.
        """
        if not self.thin_label:
            return
        response, grey = dark_ridges(pixels)
        thin = (response > self.ridge_threshold) & (grey < self.ridge_level)
        if not thin.any():
            return
        beside = (_square_reduce(thin.view(np.uint8), 3, np.maximum) > 0) & ~thin
        beyond = ~(beside | thin)
        # each pixel beside a line takes the label one step further from the line (the side
        # neighbours first, then the diagonal ones); one with none keeps its own
        todo = beside.copy()
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
            away = todo & _seen_along(beyond, dy, dx, 1) & _seen_along(thin, -dy, -dx, 1)
            if away.any():
                ys, xs = np.nonzero(away)
                labels[ys, xs] = labels[ys + dy, xs + dx]
                todo &= ~away
        labels[thin] = self.thin_label

    def _quantisation(self):
        """(base, scale) of the rounding ``(grey - base) * scale`` to 256 steps.

        The steps span the phase levels with a margin of half their range (or 6 mixture sigmas)
        on each side: a step is well below the noise, and the clipped tails lie far beyond every
        threshold. Smoothing, thresholds and rims then work on small integers (uint16 sums for
        the usual kernels) instead of float32.
        """
        lo_level, hi_level = self.levels[0], self.levels[-1]
        margin = max(0.5 * (hi_level - lo_level), 6.0 * max(self.sigmas))
        return lo_level - margin, 255.0 / (hi_level - lo_level + 2 * margin)

    @staticmethod
    def _quantised_smooth(pixels, base, scale, order, kind):
        """`pixels` rounded to 256 steps, then the unnormalised binomial sum of `order` in `kind`."""
        q = np.asarray(pixels, dtype=np.float32) * np.float32(scale)
        q += np.float32(0.5 - base * scale)  # + 0.5: the cast below truncates
        np.clip(q, 0, 255, out=q)
        q = q.astype(np.uint8)
        return _binomial_sum(q.astype(kind), order) if order else q

    def _fix_rims(self, labels, smooth, to_smooth):
        """Middle phases lying between the darkest and the brightest phase -> nearer extreme.

        A rim is a middle-phase pixel with the darkest phase on one side and the brightest on
        the opposite side, each within `rim_px` along one of the four lines through it (rows,
        columns, diagonals): the width of a blurred edge. A middle-phase region that merely
        touches both extremes (a thin film, a small grain between a pore and a particle) keeps
        its own pixels where the opposite side is more of itself."""
        low, high = 1, self.n_phases
        dark, bright = labels == low, labels == high
        rim = np.zeros(labels.shape, dtype=bool)
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            dark_ahead, dark_behind = _seen_along(dark, dy, dx, self.rim_px), _seen_along(dark, -dy, -dx, self.rim_px)
            bright_ahead, bright_behind = (_seen_along(bright, dy, dx, self.rim_px),
                                           _seen_along(bright, -dy, -dx, self.rim_px))
            rim |= (dark_ahead & bright_behind) | (bright_ahead & dark_behind)
        rim &= ~(dark | bright)
        cut = to_smooth(0.5 * (self.levels[0] + self.levels[-1]))
        labels[rim] = np.where(smooth[rim] < cut, low, high).astype(np.uint8)

    def to_dict(self):
        """Plain-JSON form (stored in the volume's attributes)."""
        return {
            "thresholds": list(self.thresholds),
            "levels": list(self.levels),
            "sigmas": list(self.sigmas),
            "weights": list(self.weights),
            "smooth_px": self.smooth_px,
            "rim_fix": self.rim_fix,
            "rim_px": self.rim_px,
            "uncertain_bounds": [list(b) for b in self.uncertain_bounds],
            "label_values": list(self.label_values),
            "thin_label": self.thin_label,
            "ridge_threshold": self.ridge_threshold,
            "ridge_level": self.ridge_level,
        }

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                thresholds=tuple(float(v) for v in data["thresholds"]),
                levels=tuple(float(v) for v in data["levels"]),
                sigmas=tuple(float(v) for v in data["sigmas"]),
                weights=tuple(float(v) for v in data["weights"]),
                smooth_px=float(data.get("smooth_px", 1.0)),
                rim_fix=bool(data.get("rim_fix", True)),
                rim_px=int(data.get("rim_px", 2)),
                uncertain_bounds=tuple(tuple(float(v) for v in b) for b in data.get("uncertain_bounds", ())),
                label_values=tuple(int(v) for v in data.get("label_values", ())),
                thin_label=int(data.get("thin_label", 0)),
                ridge_threshold=float(data.get("ridge_threshold", 0.0)),
                ridge_level=float(data.get("ridge_level", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"PhaseModel.from_dict: invalid model {data!r}: {exc}") from exc


def fit_phase_model(slices, *, n_phases=3, smooth_px=1.0, method="gmm", rim_fix=True, rim_px=2,
                    certainty=0.95, valid=None, start=None, equal_sigma=True):
    """Calibrate the phase model on the first (corrected) slices.

    Parameters
    ----------
    slices : (N, Y, X) or (Y, X) ndarray, or sequence of (Y, X) ndarray
        Calibration slices (grey units of the corrected slices).
    n_phases : int, optional
        Number of phases, 2 to 4 (dark to bright).
    smooth_px : float, optional
        Gaussian pre-filter sigma in pixels (0 = none).
    method : {"gmm", "otsu"}, optional
        ``"otsu"``: multi-Otsu thresholds; ``"gmm"``: balanced thresholds of a Gaussian mixture
        initialised with multi-Otsu (less biased when phase fractions differ).
    rim_fix, rim_px : optional
        See :class:`PhaseModel`.
    certainty : float, optional
        Posterior below which a pixel counts as uncertain (0.5 < c < 1).
    valid : sequence of (Y, X) bool ndarray, optional
        Pixels of each slice to use.
    start : (sequence of float, sequence of float), optional
        ``(phase_levels, halo_levels)``: start the mixture at the `n_phases` phase levels of the
        grey classes found (:func:`processing.phases.estimate_grey_classes`) instead of multi-Otsu,
        with one more component at each edge-halo level, fitted alongside and then left out of the
        model (its pixels go to its neighbours by the thresholds): a blurred-edge rim is then not
        taken for a phase, nor does it pull a phase's level towards it.
    equal_sigma : bool, optional
        One common standard deviation for the mixture's components (see
        :func:`fit_gray_mixture`); False lets a class widened by partial volume (small pores under
        blur) keep its width instead of lending it to two narrow neighbours, which a common width
        can merge into one.

    Returns
    -------
    PhaseModel

    Raises
    ------
    CalibrationError
        When the grey levels do not show `n_phases` classes.
    """
    if not (isinstance(n_phases, (int, np.integer)) and 2 <= n_phases <= 4):
        raise ValueError(f"n_phases: expected an integer 2..4, got {n_phases!r}")
    if method not in ("gmm", "otsu"):
        raise ValueError(f"method: expected 'gmm' or 'otsu', got {method!r}")
    if not smooth_px >= 0:
        raise ValueError(f"smooth_px: expected >= 0, got {smooth_px!r}")
    if not 0.5 < certainty < 1:
        raise ValueError(f"certainty: expected 0.5 < c < 1, got {certainty!r}")
    if not (isinstance(rim_px, (int, np.integer)) and rim_px >= 1):
        raise ValueError(f"rim_px: expected an integer >= 1, got {rim_px!r}")
    if isinstance(slices, np.ndarray) and slices.ndim == 2:
        slices = [slices]
    slices = list(slices)
    if not slices:
        raise CalibrationError("fit_phase_model: no slices given")
    values = []
    for i, s in enumerate(slices):
        s = check_slice(s, f"slices[{i}]")
        sm = _smooth(s, smooth_px)
        values.append(sm[np.asarray(valid[i], dtype=bool)] if valid is not None else sm.ravel())
    values = np.concatenate(values)
    centres, counts = _histogram(values)
    try:
        otsu, init = otsu_class_means(centres, counts, n_phases)
    except ValueError as exc:
        raise CalibrationError(f"fit_phase_model: cannot find {n_phases} phases: {exc}") from exc
    halo = np.zeros(n_phases, dtype=bool)
    if start is not None:
        phase_levels, halo_levels = (sorted(float(v) for v in levels) for levels in start)
        if len(phase_levels) != n_phases:
            raise ValueError(f"start: expected {n_phases} phase levels, got {phase_levels!r}")
        init = sorted(phase_levels + halo_levels)
        halo = np.isin(init, halo_levels) & ~np.isin(init, phase_levels)
    mu, sigma, weight = fit_gray_mixture(centres, counts, init, equal_sigma=equal_sigma)
    if halo.any():
        # EM keeps the order of components started apart; the halo's pixels go to its neighbours
        mu, sigma, weight = mu[~halo], sigma[~halo], weight[~halo] / weight[~halo].sum()
    if np.any(np.diff(mu) <= 0) or np.any(weight < 1e-4):
        raise CalibrationError(f"fit_phase_model: the grey levels do not show {n_phases} phases "
                               f"(mixture means {mu.round(1).tolist()}, weights {weight.round(4).tolist()})")
    thresholds = list(otsu) if method == "otsu" else _balanced_thresholds(mu, sigma, weight)
    bounds = _certain_bounds(mu, sigma, weight, thresholds, certainty)
    return PhaseModel(
        thresholds=tuple(float(t) for t in thresholds),
        levels=tuple(float(v) for v in mu),
        sigmas=tuple(float(v) for v in sigma),
        weights=tuple(float(v) for v in weight),
        smooth_px=float(smooth_px),
        rim_fix=bool(rim_fix),
        uncertain_bounds=tuple(bounds),
        rim_px=int(rim_px),
    )


class PixelClassifier:
    """Random-forest pixel classifier on multiscale features (ilastik / Weka style).

    Create it with :func:`fit_pixel_classifier`.
    """

    def __init__(self, forest, *, n_phases, feature_options, certainty):
        self.forest = forest
        self.n_phases = n_phases
        self.feature_options = dict(feature_options)
        self.certainty = certainty

    def features(self, pixels):
        """(Y, X, F) float32 multiscale features of a slice."""
        from skimage.feature import multiscale_basic_features

        return multiscale_basic_features(np.asarray(pixels, dtype=np.float32), **self.feature_options).astype(np.float32)

    def segment(self, pixels, *, valid=None):
        """Label one slice (same contract as :meth:`PhaseModel.segment`)."""
        pixels = check_slice(pixels)
        feats = self.features(pixels)
        flat = feats.reshape(-1, feats.shape[-1])
        mask = np.ones(flat.shape[0], dtype=bool) if valid is None else np.asarray(valid, dtype=bool).ravel()
        labels = np.zeros(flat.shape[0], dtype=np.uint8)
        share = 0.0
        if mask.any():
            proba = self.forest.predict_proba(flat[mask])
            classes = np.asarray(self.forest.classes_, dtype=np.uint8)
            labels[mask] = classes[np.argmax(proba, axis=1)]
            share = float((proba.max(axis=1) < self.certainty).mean())
        return SegmentedSlice(labels.reshape(pixels.shape), share)


def fit_pixel_classifier(image, sparse_labels, *, sigma_min=1.0, sigma_max=16.0, intensity=True, edges=True,
                         texture=True, n_estimators=50, max_depth=12, certainty=0.8, rng=None, n_jobs=None):
    """Train a pixel classifier from a few labelled strokes.

    Parameters
    ----------
    image : (Y, X) ndarray
        A (corrected) slice.
    sparse_labels : (Y, X) ndarray of int
        1..n on the labelled pixels, 0 elsewhere (the user's strokes).
    sigma_min, sigma_max : float, optional
        Scales of the features (pixels).
    intensity, edges, texture : bool, optional
        Feature families of :func:`skimage.feature.multiscale_basic_features`.
    n_estimators, max_depth : int, optional
        Random forest size.
    certainty : float, optional
        A pixel whose top class probability is below this counts as uncertain.
    rng : None, int or numpy.random.Generator, optional
        Seed of the forest.
    n_jobs : int, optional
        Threads of the forest.

    Returns
    -------
    PixelClassifier

    Raises
    ------
    CalibrationError
        Fewer than two classes labelled, or scikit-learn missing.
    """
    image = np.asarray(image)
    sparse_labels = np.asarray(sparse_labels)
    if image.ndim != 2 or sparse_labels.shape != image.shape:
        raise SliceShapeError(f"image {image.shape} and sparse_labels {sparse_labels.shape} must be equal 2-D shapes")
    classes = np.unique(sparse_labels[sparse_labels > 0])
    if classes.size < 2:
        raise CalibrationError(f"fit_pixel_classifier: need strokes of at least 2 phases, got {classes.tolist()}")
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as exc:
        raise CalibrationError("fit_pixel_classifier needs scikit-learn (pip install 'revwatch[ml]')") from exc
    from skimage.future import fit_segmenter

    seed = int(np.random.default_rng(rng).integers(2**31 - 1))
    forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=seed,
                                    n_jobs=n_jobs)
    clf = PixelClassifier(forest, n_phases=int(classes.max()), certainty=certainty,
                          feature_options=dict(intensity=intensity, edges=edges, texture=texture,
                                               sigma_min=sigma_min, sigma_max=sigma_max))
    fit_segmenter(sparse_labels, clf.features(image), forest)
    return clf


def sparse_labels_from_rectangles(shape, rectangles, phases):
    """A sparse label image from rectangles of known phase (training labels for the classifier).

    Parameters
    ----------
    shape : (int, int)
        The slice's shape (Y, X).
    rectangles : dict of str to list of (y0, y1, x0, x1)
        Phase name -> rectangles (pixels, ``[y0, y1) x [x0, x1)``) that show only that phase.
    phases : processing.phases.Phases
        The named phases (label of each name).

    Returns
    -------
    (Y, X) ndarray of uint8
        The phase's label inside its rectangles, 0 elsewhere.

    Raises
    ------
    ValueError
        An unknown phase name, a malformed or empty rectangle, or rectangles of two phases that overlap.
    """
    out = np.zeros(tuple(shape), dtype=np.uint8)
    for name, rects in rectangles.items():
        if name not in phases.names:
            raise ValueError(f"rectangles: unknown phase {name!r}; phases are {phases.names!r}")
        for rect in rects:
            y0, y1, x0, x1 = (int(v) for v in rect)
            if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
                raise ValueError(f"rectangles: {name!r} rectangle {list(rect)} is empty or outside the slice {tuple(shape)}")
            box = out[y0:y1, x0:x1]
            label = phases.label(name)
            if np.any((box > 0) & (box != label)):
                raise ValueError(f"rectangles: {name!r} rectangle {list(rect)} overlaps another phase's")
            box[...] = label
    return out


# Pre-filters tried by ``smooth_px="auto"`` (pixels), and the separation that is enough: with
# D >= 3.5 two equal Gaussian classes overlap on about 4 % of a class's pixels.
AUTO_SMOOTH_PX = (1.0, 1.5, 2.0, 3.0)
_ENOUGH_SEPARATION = 3.5
# A class count that only one pre-filter shows is evidence only if its classes are at least this
# separable (Ashman's D): at 2.5 noise alone mislabels about 11 % of each of two equal classes; a
# weaker class seen at one width only is as likely a texture the filter turns into a plateau
# (leftover curtain stripes, rims) as a phase.
_CLEAR_SEPARATION = 2.5
# Neighbouring phase levels of a fitted model closer than this (Ashman's D) are one class split.
_DEGENERATE_SEPARATION = 1.0


def _auto_smoothing(slices, valid, n_names):
    """(smooth_px, estimate): a pre-filter of AUTO_SMOOTH_PX chosen from the class estimates.

    The count of separable grey classes (up to the `n_names` named) of a width wider than the
    narrowest is trusted when its classes are clearly separable (every neighbouring pair D >= 2.5)
    or a neighbouring width of AUTO_SMOOTH_PX shows at least as many (the class structure is
    stable); the widths not trusted take no part. Of the trusted widths, those with the most
    classes (more smoothing takes noise away and may separate two close phases); among those, the
    smallest that separates every neighbouring pair with D >= 3.5, else the best separating."""
    from processing.phases import _ashman_d, estimate_grey_classes

    candidates = []
    for smooth_px in AUTO_SMOOTH_PX:
        estimate = estimate_grey_classes(slices, valid=valid, smooth_px=smooth_px)
        found = estimate.phase_classes
        d = min((_ashman_d(a.level, a.sigma, b.level, b.sigma) for a, b in zip(found[:-1], found[1:])), default=0.0)
        candidates.append((min(len(found), n_names), d, smooth_px, estimate))
    counts = [c[0] for c in candidates]
    # the narrowest pre-filter needs no support: smoothing does not invent its classes (a thin phase may
    # even show at it only)
    stable = [i == 0 or any(m >= n for m in counts[i - 1:i] + counts[i + 1:i + 2]) for i, n in enumerate(counts)]
    trusted = []
    for (n, d, smooth_px, estimate), supported in zip(candidates, stable):
        if supported or d >= _CLEAR_SEPARATION:
            trusted.append((n, d, smooth_px, estimate))
        else:
            logger.info("phase model: the %d grey classes at a %g px pre-filter are not trusted (weakest D %.1f < "
                        "%.1f, and no neighbouring pre-filter shows as many)", n, smooth_px, d, _CLEAR_SEPARATION)
    candidates = trusted
    most = max(c[0] for c in candidates)
    candidates = [c for c in candidates if c[0] == most]
    enough = [c for c in candidates if c[1] >= _ENOUGH_SEPARATION]
    if enough:
        return enough[0][2], enough[0][3]
    d, smooth_px, estimate = max(candidates, key=lambda c: c[1])[1:]
    logger.info("phase model: no pre-filter of %s separates the classes to D >= %.1f; best D %.1f at %g px",
                AUTO_SMOOTH_PX, _ENOUGH_SEPARATION, d, smooth_px)
    return smooth_px, estimate


def _separations(model):
    """Ashman's D between the neighbouring levels of a grey-level phase model."""
    from processing.phases import _ashman_d

    return [_ashman_d(a, sa, b, sb) for a, sa, b, sb in zip(model.levels[:-1], model.sigmas[:-1], model.levels[1:],
                                                            model.sigmas[1:])]


def calibrate_phases(slices, phases, *, valid=None, training_labels=None, rng=0, **options):
    """Fit the segmentation model on the calibration slices and check it against the data.

    The grey classes the data show (:func:`processing.phases.estimate_grey_classes`) are
    compared with the named phases (:func:`processing.phases.check_phases`); every mismatch is a
    warning of the returned check. When the data show fewer separable classes than names, the
    grey-level model is fitted with the classes found and the names left over stay empty (no
    invented phase); when they show more, the names are kept and the check says what is mixed.

    Parameters
    ----------
    slices : sequence of (Y, X) ndarray
        Corrected calibration slices.
    phases : Phases
        Names (dark to bright) and roles.
    valid : sequence of (Y, X) bool ndarray, optional
        The valid region of each slice.
    training_labels : (Y, X) ndarray of int, or dict of str to list of rectangles, optional
        Sparse labels (phase label 1..n, 0 = not labelled) drawn on ``slices[0]``, or rectangles
        per phase name (:func:`sparse_labels_from_rectangles`): fit the trainable pixel
        classifier instead of the grey-level model.
    rng : None, int or numpy.random.Generator, optional
        Seed of the pixel classifier.
    **options
        Passed to :func:`fit_phase_model`; ``smooth_px="auto"`` picks the pre-filter from the
        data (:data:`AUTO_SMOOTH_PX`: of those showing the most separable classes, up to the
        names, the smallest that separates them with Ashman's D >= 3.5, else the one that
        separates them best; a class count that one width only shows, weakly separated, is not
        trusted: see :func:`_auto_smoothing`).

    Returns
    -------
    model : PhaseModel or PixelClassifier
    check : processing.phases.PhaseCheck

    Raises
    ------
    CalibrationError
        The model cannot be fitted (see :func:`fit_phase_model`, :func:`fit_pixel_classifier`).
    """
    from dataclasses import replace

    from processing.phases import check_phases, estimate_grey_classes, evidence_slices

    slices = [np.asarray(s) for s in ([slices] if isinstance(slices, np.ndarray) and slices.ndim == 2 else slices)]
    n = len(phases.names)
    pick = evidence_slices([s.size for s in slices])
    sample = [slices[i] for i in pick]
    sample_valid = None if valid is None else [list(valid)[i] for i in pick]
    if options.get("smooth_px") == "auto":
        options["smooth_px"], estimate = _auto_smoothing(sample, sample_valid, n)
    else:
        estimate = estimate_grey_classes(sample, valid=sample_valid, smooth_px=options.get("smooth_px", 1.0))
    if training_labels is not None:
        if isinstance(training_labels, dict):
            try:
                training_labels = sparse_labels_from_rectangles(slices[0].shape, training_labels, phases)
            except ValueError as exc:
                raise CalibrationError(f"training labels: {exc}") from None
        training_labels = np.asarray(training_labels)
        if training_labels.shape != slices[0].shape:
            raise CalibrationError(f"training labels are {training_labels.shape}, the slices {slices[0].shape}")
        if training_labels.size and int(training_labels.max()) > n:
            raise CalibrationError(f"training labels go up to {int(training_labels.max())}, but {n} phases are named")
        check = check_phases(estimate, phases)
        missing = [name for i, name in enumerate(phases.names) if not np.any(training_labels == i + 1)]
        train_valid = valid[0] if valid is not None else None
        sparse = training_labels if train_valid is None else np.where(train_valid, training_labels, 0)
        model = fit_pixel_classifier(slices[0], sparse, rng=rng)
        notes = [f"the training labels have no pixel of {', '.join(repr(m) for m in missing)}: the classifier "
                 "never outputs it"] if missing else []
        # the grey-level count is evidence, not a rule, for a classifier trained on texture too
        return model, replace(check, warnings=check.warnings + tuple(notes), n_fit=n,
                              label_values=tuple(range(1, n + 1)), empty_names=tuple(missing))
    try:
        model = fit_phase_model(slices, n_phases=n, valid=valid, **options)
        levels = model.levels
    except CalibrationError:
        model, levels = None, None
    check = check_phases(estimate, phases, model_levels=levels)
    found = estimate.phase_classes
    from_classes = ([c.level for c in found], [c.level for c in estimate.classes if c.halo])  # halos fitted aside
    start = None
    if levels is not None and len(found) == check.n_fit == n and len(found) < len(estimate.classes):
        # one component per name took the edge halo for a phase, or put two levels on one class:
        # the classes found, halo apart, are the phases; start from them, the halo fitted aside
        nearest = [min(range(len(estimate.classes)), key=lambda k: abs(estimate.classes[k].level - v)) for v in levels]
        if len(set(nearest)) < n or any(estimate.classes[k].halo for k in nearest):
            start = from_classes
            note = ("one mixture component per name put a level on an edge halo or two levels on one class (levels "
                    + ", ".join(f"{v:.0f}" for v in levels) + "): the model starts from the classes found instead")
            check = replace(check, notes=(*check.notes, note))
    if check.n_fit != n and start is None and len(found) == check.n_fit:
        # fewer (or more) classes than names: the model's levels are the classes the names were
        # given to (a mixture started anew may put its levels elsewhere: on a halo, two on a class)
        start = from_classes
    if check.n_fit != n or start is not None:
        model = fit_phase_model(slices, n_phases=check.n_fit, valid=valid, start=start, **options)
        if check.n_fit != n:
            model = replace(model, label_values=check.label_values)
        if check.thin_name is not None:
            ridges = estimate.dark_ridges
            model = replace(model, thin_label=phases.label(check.thin_name), ridge_threshold=ridges.threshold,
                            ridge_level=ridges.level)
    elif model is None:
        model = fit_phase_model(slices, n_phases=n, valid=valid, **options)  # raises with the reason
    d = _separations(model)
    if d and min(d) < _DEGENERATE_SEPARATION and start is None and check.n_fit == n == len(found):
        # one common width merged two narrow classes the estimate separates (their neighbour widened
        # by partial volume): each class its own width, from the classes found
        try:
            refit = fit_phase_model(slices, n_phases=n, valid=valid, equal_sigma=False, start=from_classes, **options)
        except CalibrationError:
            refit = None  # the degenerate model stands, with its warning
        d_refit = None if refit is None else _separations(refit)
        if d_refit is not None and min(d_refit) >= _DEGENERATE_SEPARATION:
            note = (f"one width for all classes merged two of them (Ashman's D {min(d):.1f}): fitted from the "
                    "classes found, each with its own width")
            model, d, check = refit, d_refit, replace(check, notes=(*check.notes, note))
    if d and min(d) < _DEGENERATE_SEPARATION:
        i = int(np.argmin(d))
        warning = (f"the fitted phase levels {model.levels[i]:.1f} and {model.levels[i + 1]:.1f} are not separable "
                   f"(Ashman's D {d[i]:.1f}): the phase model is degenerate and the labels of these two phases are "
                   "a guess; check the names against the classes of `revwatch calibrate`, or train the pixel "
                   "classifier")
        check = replace(check, warnings=(*check.warnings, warning))
    return model, check

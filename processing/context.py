"""Labels decided in 3-D context, with boundaries placed where the edges are.

Thresholding a blurred slice biases the phase fractions wherever a boundary is blurred across a
third phase's grey levels: between the darkest and the brightest phase the blurred edge passes
through the middle phase's levels and leaves a false rim of it, and a rule that removes rims by
their labels also eats real thin films of the middle phase. Which way the bias goes depends on
the feature size (measured on the synthetic generator, particles of 7-15 px radius: pore +1.3 to
+4.1 points and electrolyte -1.8 to -5.1 points with :class:`PhaseModel`'s rim rule; the
opposite sign without it). The decision here removes most of it:

- **markers**: a pixel is decided by its grey level alone where that is unambiguous: its
  smoothed grey level is at least ``marker_margin_sigma`` mixture sigmas from every threshold,
  and the local gradient is below ``edge_gradient_share`` of the smallest contrast between
  neighbouring phases (it is not on a blurred edge);
- **blurred edges**: an undecided pixel that has markers of a darker and of a brighter phase
  within a few pixels (a grey level passing through its own phase's range on the way from one to
  the other) takes the phase of the nearest marker (Euclidean). A symmetric blur leaves undecided
  bands of equal width on both sides of an edge, so the split falls on the edge itself;
- every other pixel keeps its grey-level phase (edges between neighbouring phases, where the
  threshold is the unbiased cut, and films with markers of their own).

Measured (`tests/test_context.py` and the segmentation study in the module's commit): phase
fraction bias at most 0.6 point on generator slices of particles of 7-30 px radius, noise 12-25
grey levels, blur 1-2 px (0.1-4.1 points with the rim rule), accuracy equal or up to 0.8 point
better. Limits: a film of a middle phase thinner than about two blur widths, with no plateau of
its own grey level, is taken for a blurred edge; blur above ~1.5 px can leave a 1 px rim. And a
counter-case: on the system test's acquisition (128 px field, cap, drift with jumps, curtains)
the edge rule gives electrolyte +1.5 / active -1.2 points where thresholds with the rim rule are
unbiased, and on five randomised acquisitions both give the same accuracy within 0.1 point; so
the chain's default is ``boundaries="thresholds"`` until a wider benchmark says otherwise.

3-D context: FIB-SEM slices are thinner than the structures, so the same phase continues into
the neighbouring slices. With ``context_slices`` k > 0, slice z is decided once slices z+1..z+k
are in: its grey levels are averaged with those of slices z-k..z+k where they agree (a bilateral
weight on the grey difference, so edges that move between slices are not blurred along z). This
lowers the noise inside phases before the markers are chosen (measured: +0.5 to +0.8 point of
accuracy at noise 25 % of the contrast and blur 2 px, neutral on clean slices). The in-plane
pre-filter of the decision is then narrowed by the factor the average lowered the noise (measured
once, on the first slice with neighbours: about sqrt(2k + 1) for independent noise, 1 for
repeated slices; never below 1 px): the noise the calibration's thresholds were set for, with
edges blurred less (a wide pre-filter, e.g. 3 px picked by ``smooth_px="auto"`` on noisy slices,
blurs a pore/active edge across the middle phase's levels over several pixels, further than the
rim rule reaches).

Shine-through in pores: an open pore of the darkest phase shows part of the material behind the
cut, so its grey level rises towards that of the slices behind it, and a pore over a particle is
taken for a brighter phase (the pores' fraction biased low). The following slice shows, at the
same place, what lies behind, so with ``context_slices`` >= 1 the expected grey level of a pore
pixel is ``L1 + s (g_next - L1)`` (``L1`` the darkest level, ``g_next`` the next slice smoothed,
``s`` the shine share). ``s`` is measured on the run itself (:class:`ShineEstimate`): the mean grey
of pixels deep inside the darkest phase whose next slice is bright, against those whose next
slice is dark (a difference of phase levels, so stripes and noise shared between slices do not
count). A pixel that thresholds put in a brighter phase goes to the darkest phase when its grey
level is nearer that expectation than any brighter level; where the two are within a mixture
sigma the pixel counts as uncertain. No shine is assumed until ``s`` >= 0.08 is measured on at
least 500 pixels of each group (a darkest phase that is solid shows none).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from processing.errors import SliceShapeError, check_slice
from processing.segment import PhaseModel, SegmentedSlice, _classify, _smooth, _square_reduce

__all__ = ["segment_in_context", "DepthContext", "ShineEstimate"]

# reach (px) of the markers that tell a blurred edge between two other phases
_REACH_PX = 3


def _check_options(marker_margin_sigma, edge_gradient_share):
    if not marker_margin_sigma >= 0:
        raise ValueError(f"marker_margin_sigma: expected >= 0, got {marker_margin_sigma!r}")
    if not 0 < edge_gradient_share <= 1:
        raise ValueError(f"edge_gradient_share: expected 0 < share <= 1, got {edge_gradient_share!r}")


def _denoise_along_z(grey, reference, neighbours, similarity):
    """Mean of `grey` and its neighbours, each neighbour weighted by its agreement with `grey`.

    `reference` and the second item of each neighbour pair are the slices lightly smoothed
    (the agreement is judged without the noise)."""
    total = grey.astype(np.float32, copy=True)
    weights = np.ones_like(total)
    for other, other_reference in neighbours:
        difference = (other_reference - reference) * np.float32(1.0 / similarity)
        w = np.exp(np.float32(-0.5) * difference * difference)
        total += w * other
        weights += w
    return total / weights


# offsets to look for a rim pixel's nearest marker, nearest first: every rim pixel has markers
# within _REACH_PX rows and columns, so within this disc
_NEAREST_OFFSETS = sorted(
    ((dy, dx) for dy in range(-2 * _REACH_PX, 2 * _REACH_PX + 1) for dx in range(-2 * _REACH_PX, 2 * _REACH_PX + 1)
     if 0 < dy * dy + dx * dx <= 2 * _REACH_PX * _REACH_PX),
    key=lambda o: o[0] * o[0] + o[1] * o[1],
)


def _nearest_marker_phase(labels, markers, rim):
    """`labels` with each `rim` pixel given the phase of its nearest marker (Euclidean)."""
    pad = 2 * _REACH_PX
    marker_phase = np.pad(np.where(markers, labels, 0), pad)
    ys, xs = np.nonzero(rim)
    todo = np.arange(ys.size)
    phase = np.zeros(ys.size, dtype=labels.dtype)
    for dy, dx in _NEAREST_OFFSETS:
        found = marker_phase[ys[todo] + (pad + dy), xs[todo] + (pad + dx)]
        hit = found > 0
        phase[todo[hit]] = found[hit]
        todo = todo[~hit]
        if not todo.size:
            break
    out = labels.copy()
    out[ys, xs] = phase
    return out


def _gradient_magnitude(image):
    """Central-difference gradient magnitude (grey units per pixel), edges repeated."""
    padded = np.pad(image, 1, mode="edge")
    gy = padded[2:, 1:-1] - padded[:-2, 1:-1]
    gx = padded[1:-1, 2:] - padded[1:-1, :-2]
    return np.sqrt(gy * gy + gx * gx) * np.float32(0.5)


def segment_in_context(grey, model: PhaseModel, *, neighbours=(), valid=None, marker_margin_sigma=0.5,
                       edge_gradient_share=0.25):
    """Label one corrected, aligned slice, using its aligned neighbours along z.

    Parameters
    ----------
    grey : (Y, X) ndarray
        The slice's corrected, aligned grey levels (the phase model's units).
    model : PhaseModel
        The calibrated phase model (levels, thresholds, mixture sigmas, smoothing).
    neighbours : sequence of (Y, X) ndarray, optional
        Aligned, corrected grey levels of the slices just before and after (any number, in any
        order; none for a 2-D decision).
    valid : (Y, X) bool ndarray, optional
        Pixels to label; others get 0 and are not used as markers.
    marker_margin_sigma : float, optional
        A marker's smoothed grey level lies at least this many mixture sigmas from every threshold.
    edge_gradient_share : float, optional
        A marker's gradient magnitude (grey units per pixel) is below this share of the smallest
        contrast between neighbouring phase levels.

    Returns
    -------
    SegmentedSlice
        Labels 1..n (0 outside `valid`) and the share of valid pixels whose phase is uncertain
        (smoothed grey level in the model's uncertain intervals, as :meth:`PhaseModel.segment`).

    Raises
    ------
    SliceShapeError
        A slice is not 2-D, or a neighbour or `valid` has another shape.
    """
    grey = check_slice(grey, "grey").astype(np.float32, copy=False)
    neighbours = [check_slice(n, f"neighbours[{i}]", shape=grey.shape).astype(np.float32, copy=False)
                  for i, n in enumerate(neighbours)]
    valid = None if valid is None else check_slice(valid, "valid", shape=grey.shape).astype(bool, copy=False)
    _check_options(marker_margin_sigma, edge_gradient_share)
    return _segment(grey, model, [(n, _smooth(n, 1.0)) for n in neighbours], valid,
                    marker_margin_sigma, edge_gradient_share)


def _segment(grey, model, neighbours, valid, marker_margin_sigma, edge_gradient_share, reference=None,
             boundaries="edges"):
    """:func:`segment_in_context` on checked input, neighbours as (grey, lightly smoothed) pairs."""
    sigma = float(np.mean(model.sigmas))
    if neighbours:
        reference = _smooth(grey, 1.0) if reference is None else reference
        image = _denoise_along_z(grey, reference, neighbours, 1.5 * sigma)
    else:
        image = grey
    if boundaries == "thresholds":
        return model.segment(image, valid=valid, lines_in=grey)
    smooth = _smooth(image, model.smooth_px)
    labels = _classify(smooth, model.thresholds)

    distance = np.full(smooth.shape, np.inf, dtype=np.float32)
    for t in model.thresholds:
        np.minimum(distance, np.abs(smooth - np.float32(t)), out=distance)
    gradient = _gradient_magnitude(smooth)
    contrast = float(np.min(np.diff(model.levels)))
    markers = (distance >= marker_margin_sigma * sigma) & (gradient < edge_gradient_share * contrast)
    if valid is not None:
        markers &= valid
    if markers.any() and not markers.all():
        # Which phases have markers within reach of each pixel (one bit per phase).
        near = _square_reduce(np.where(markers, np.left_shift(1, labels), 0).astype(np.uint8),
                              2 * _REACH_PX + 1, np.bitwise_or)
        darker = near & (np.left_shift(1, labels) - 2)  # bits 1..label-1
        brighter = near >> (labels + 1)
        # Undecided and sandwiched between a darker and a brighter phase: a blurred edge between
        # those, where the grey level passes through this phase's range; the nearest marker decides.
        rim = ~markers & (darker != 0) & (brighter != 0)
        if rim.any():
            labels = _nearest_marker_phase(labels, markers, rim)
    if model.label_values:  # fewer classes in the data than phase names: the classes' labels
        labels = np.array((0, *model.label_values), dtype=np.uint8)[labels]
    model.label_thin_dark(labels, grey)
    uncertain = np.zeros(smooth.shape, dtype=bool)
    for lo, hi in model.uncertain_bounds:
        uncertain |= (smooth >= lo) & (smooth <= hi)
    if valid is not None:
        labels *= valid
        counted = int(np.count_nonzero(valid))
        n_uncertain = int(np.count_nonzero(uncertain & valid))
    else:
        counted, n_uncertain = uncertain.size, int(np.count_nonzero(uncertain))
    return SegmentedSlice(labels, n_uncertain / counted if counted else 0.0)


# Shine-through: the smallest shine share acted on, the pixels each group needs, the depth (px)
# inside the darkest phase of the pixels measured (beyond blur and alignment error), the largest
# share believed (more would leave a pore nothing of its own level), and the smoothing (px) of the
# following slice (its noise would otherwise enter the expectation).
_MIN_SHINE = 0.08
_MIN_SHINE_PIXELS = 500
_SHINE_DEPTH_PX = 2
_MAX_SHINE = 0.8
_SHINE_SMOOTH_PX = 2.0
# The share is a property of the acquisition: measured on the first slices that have a following
# one (the cost of the rule is then nil on the rest of a run without shine).
_SHINE_SLICES = 32


@dataclass
class ShineEstimate:
    """Running measurement of the shine-through share of the darkest phase (see the module notes).

    Sums over the pixels deep inside the darkest phase (of the first :data:`_SHINE_SLICES` slices
    with a following one), split by the next slice's grey level
    at the same place: ``low`` (below the first threshold: pore behind) and ``high`` (above the
    first threshold by half the way to the second level: brighter material behind).
    """

    slices: int = 0
    n_low: int = 0
    n_high: int = 0
    grey_low: float = 0.0
    grey_high: float = 0.0
    next_low: float = 0.0
    next_high: float = 0.0

    def add(self, grey, following, model, valid=None):
        """Add one slice: `grey` its grey levels and `following` the next slice's (aligned)."""
        grey = _smooth(grey, model.smooth_px)
        behind = _smooth(following, _SHINE_SMOOTH_PX)
        labels = _classify(grey, model.thresholds)
        deep = _square_reduce((labels != 1).view(np.uint8), 2 * _SHINE_DEPTH_PX + 1, np.maximum) == 0
        if valid is not None:
            deep &= valid
        behind = behind[deep]
        grey = grey[deep]
        low = behind < model.thresholds[0]
        high = behind >= 0.5 * (model.thresholds[0] + model.levels[1])
        self.slices += 1
        self.n_low += int(np.count_nonzero(low))
        self.n_high += int(np.count_nonzero(high))
        self.grey_low += float(grey[low].sum())
        self.grey_high += float(grey[high].sum())
        self.next_low += float(behind[low].sum())
        self.next_high += float(behind[high].sum())

    @property
    def share(self) -> float:
        """The shine share s (0 = none, or not measured yet on enough pixels)."""
        if min(self.n_low, self.n_high) < _MIN_SHINE_PIXELS:
            return 0.0
        spread = self.next_high / self.n_high - self.next_low / self.n_low
        if not spread > 0:
            return 0.0
        s = (self.grey_high / self.n_high - self.grey_low / self.n_low) / spread
        return float(min(s, _MAX_SHINE)) if s >= _MIN_SHINE else 0.0

    def expected(self, following):
        """Expected grey level of a darkest-phase pixel given the next slice's smoothed grey
        `following`: the line through the two groups' means (the darkest level measured with
        the shine of its usual background already in it)."""
        s = self.share
        base = self.grey_low / max(self.n_low, 1) - s * self.next_low / max(self.n_low, 1)
        return np.float32(base) + np.float32(s) * following


def _undo_shine(seg, smooth, expected, model, valid):
    """Labels with the pixels whose grey level the darkest phase's shine-through explains better
    than any brighter level moved to the darkest phase; the uncertain share grows by the pixels
    where the two explanations are within a mixture sigma."""
    labels = seg.labels
    levels = np.asarray(model.levels, dtype=np.float32)
    brighter = np.min(np.abs(smooth[..., None] - levels[None, None, 1:]), axis=-1)
    to_darkest = np.abs(smooth - expected)
    sigma = np.float32(np.mean(model.sigmas))
    # only where the shine raises a pore above its usual level: elsewhere
    # the thresholds decide
    candidates = (labels > (model.label_values[0] if model.label_values else 1)) & (expected > levels[0])
    if valid is not None:
        candidates &= valid
    flip = candidates & (to_darkest < brighter)
    unsure = candidates & (np.abs(to_darkest - brighter) <= sigma)
    # pixels already counted uncertain by their grey level alone are not counted twice
    for lo, hi in model.uncertain_bounds:
        unsure &= (smooth < lo) | (smooth > hi)
    counted = int(np.count_nonzero(valid)) if valid is not None else labels.size
    if not flip.any() and not unsure.any():
        return seg
    darkest = model.label_values[0] if model.label_values else 1
    labels = np.where(flip, np.uint8(darkest), labels).astype(np.uint8)
    extra = int(np.count_nonzero(unsure)) / counted if counted else 0.0
    return SegmentedSlice(labels, min(seg.uncertain_share + extra, 1.0))


# Side (px) of the central crop on which the noise left by the z average is measured.
_NOISE_CROP_PX = 512


def _noise(image, valid):
    """Robust noise of a slice: 1.4826 x MAD of its residual from a 1 px smoothing."""
    residual = (image - _smooth(image, 1.0))[valid]
    return 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) if residual.size else 0.0


def _narrowed(model, pending, neighbours):
    """The model with the pre-filter the decision needs after the average along z.

    The average lowers the noise by a factor f (measured on a central crop: about
    sqrt(number of slices) for independent noise, 1 for repeated slices); a pre-filter f times
    narrower then leaves the noise for which the calibration set the thresholds, and blurs the
    edges less (a wide pre-filter, e.g. 3 px picked by ``smooth_px="auto"`` on noisy slices,
    blurs a pore/active edge across the middle phase's levels further than the rim rule reaches).
    Never below 1 px.
    """
    if model.smooth_px <= 1.0:
        return model
    h, w = pending.grey.shape
    y0, x0 = max(0, (h - _NOISE_CROP_PX) // 2), max(0, (w - _NOISE_CROP_PX) // 2)
    crop = (slice(y0, y0 + _NOISE_CROP_PX), slice(x0, x0 + _NOISE_CROP_PX))
    grey = pending.grey[crop]
    valid = np.ones(grey.shape, bool) if pending.valid is None else pending.valid[crop]
    averaged = _denoise_along_z(grey, pending.reference[crop], [(g[crop], r[crop]) for g, r in neighbours],
                                1.5 * float(np.mean(model.sigmas)))
    before, after = _noise(grey, valid), _noise(averaged, valid)
    if not (before > 0 and after > 0):
        return model
    factor = float(np.clip(before / after, 1.0, np.sqrt(len(neighbours) + 1)))
    return replace(model, smooth_px=max(1.0, model.smooth_px / factor))


@dataclass
class _Pending:
    grey: np.ndarray | None  # float32; None: a slice not to segment (e.g. held back as blank)
    reference: np.ndarray | None  # lightly smoothed, to judge agreement with neighbours
    valid: np.ndarray | None
    payload: object


class DepthContext:
    """Decide each slice's labels once its following slices are in (a bounded delay).

    A small stateful helper (no I/O): it keeps the last ``2 * context_slices + 1`` aligned,
    corrected slices. Slice z is labelled by :func:`segment_in_context` with slices
    z-k..z+k around it, as soon as slice z+k has been pushed; :meth:`flush` decides the
    remaining slices with the neighbours there are (at the end of a run).

    Parameters
    ----------
    model : PhaseModel or PixelClassifier
        The calibrated phase model (a pixel classifier decides each slice on its own, by its
        ``segment``, in the same order and with the same delay).
    context_slices : int, optional
        k, the slices used on each side, and so the delay (in slices) before a slice's labels are
        decided. 0 decides each slice on its own at once.
    boundaries : {"thresholds", "edges"}, optional
        ``"thresholds"``: the phase model's own decision (:meth:`PhaseModel.segment`, thresholds
        and its rim rule) on the slice denoised along z; ``"edges"``: :func:`segment_in_context`'s
        markers and blurred-edge rule (less biased on fine structures without drift, more biased
        on the system test's acquisition: see the module notes).
    marker_margin_sigma, edge_gradient_share : float, optional
        See :func:`segment_in_context`.
    """

    def __init__(self, model: PhaseModel, *, context_slices: int = 1, boundaries: str = "thresholds",
                 marker_margin_sigma=0.5, edge_gradient_share=0.25):
        if not (isinstance(context_slices, (int, np.integer)) and 0 <= context_slices <= 8):
            raise ValueError(f"context_slices: expected an integer 0..8, got {context_slices!r}")
        if boundaries not in ("edges", "thresholds"):
            raise ValueError(f"boundaries: expected 'edges' or 'thresholds', got {boundaries!r}")
        _check_options(marker_margin_sigma, edge_gradient_share)
        self.model = model
        self.context_slices = int(context_slices)
        # the decision's pre-filter, narrowed once the noise the z average leaves is measured
        self._decision_model = None  # measured on the first slice with all its neighbours
        self.options = {"marker_margin_sigma": marker_margin_sigma, "edge_gradient_share": edge_gradient_share,
                        "boundaries": boundaries}
        self._window: deque[_Pending] = deque(maxlen=2 * self.context_slices + 1)
        self.shine = ShineEstimate()
        self._undecided = 0  # pending slices at the end of the window
        self._shape = None

    @property
    def delay_slices(self) -> int:
        """Slices pushed but not yet decided (at most ``context_slices``)."""
        return self._undecided

    def push(self, grey, *, valid=None, payload=None) -> list[tuple[object, SegmentedSlice | None]]:
        """Add the next slice; returns ``(payload, SegmentedSlice)`` of the slices now decided.

        `grey` None stands for a slice not to segment (held back as blank or charging): it keeps
        its place in the order, is decided as ``(payload, None)`` and is no neighbour of others.
        """
        if grey is None:
            self._window.append(_Pending(None, None, None, payload))
        else:
            grey = check_slice(grey, "grey").astype(np.float32, copy=False)
            if self._shape is not None and grey.shape != self._shape:
                raise SliceShapeError(f"grey: shape {grey.shape} differs from the previous slices' {self._shape}")
            self._shape = grey.shape
            valid = None if valid is None else check_slice(valid, "valid", shape=grey.shape).astype(bool, copy=False)
            reference = _smooth(grey, 1.0) if self.context_slices else None
            self._window.append(_Pending(grey, reference, valid, payload))
        self._undecided += 1
        if self._undecided <= self.context_slices:
            return []
        return [self._decide(len(self._window) - 1 - self.context_slices)]

    def flush(self) -> list[tuple[object, SegmentedSlice | None]]:
        """Decide every pending slice with the neighbours available."""
        n = len(self._window)
        out = [self._decide(i) for i in range(n - self._undecided, n)]
        return out

    def _decide(self, i):
        k = self.context_slices
        pending = self._window[i]
        self._undecided -= 1
        if pending.grey is None:
            return pending.payload, None
        neighbours = [(self._window[j].grey, self._window[j].reference)
                      for j in range(max(i - k, 0), min(i + k + 1, len(self._window)))
                      if j != i and self._window[j].grey is not None]
        if not isinstance(self.model, PhaseModel):
            return pending.payload, self.model.segment(pending.grey, valid=pending.valid)
        if self._decision_model is None and len(neighbours) == 2 * k:
            self._decision_model = _narrowed(self.model, pending, neighbours)
        decision = self._decision_model if neighbours and self._decision_model is not None else self.model
        seg = _segment(pending.grey, decision, neighbours, pending.valid, reference=pending.reference, **self.options)
        following = self._window[i + 1] if i + 1 < len(self._window) else None
        if following is None or following.grey is None:
            return pending.payload, seg
        # shine-through in the darkest phase, judged on what the next slice shows behind each pixel
        valid = pending.valid if following.valid is None else (
            following.valid if pending.valid is None else pending.valid & following.valid)
        if self.shine.slices < _SHINE_SLICES:
            self.shine.add(pending.grey, following.grey, self.model, valid)
        if self.shine.share:
            smooth = _smooth(pending.grey, self.model.smooth_px)
            expected = self.shine.expected(_smooth(following.grey, _SHINE_SMOOTH_PX))
            seg = _undo_shine(seg, smooth, expected, self.model, valid)
        return pending.payload, seg

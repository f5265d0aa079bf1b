"""The per-slice chain: correct, align, segment, with the phase model calibrated once.

A small stateful helper (no I/O): it remembers the drift of the previous slices and the phase
model fitted on the first slices, so that labels stay consistent along z. The agent feeds it
slices in index order and stores what comes out; the benchmark times the same object.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from processing.align import DriftEstimate, DriftTracker, apply_shift, find_reference_band, rows_keep_content
from processing.context import DepthContext
from processing.correct import BrightnessMonitor, CorrectionModel, fit_correction, slice_structure
from processing.errors import CalibrationError, SliceShapeError
from processing.io import SliceImage
from processing.mask import RegionMask, cap_of_band, find_cap
from processing.phases import Phases, estimate_grey_classes
from processing.segment import PhaseModel, calibrate_phases

__all__ = ["ProcessedSlice", "SliceChain"]

log = logging.getLogger(__name__)

_MIN_SLICES_FOR_BAND = 8
_MIN_CONTRAST = 1.3  # smallest structure over noise (processing.correct.slice_structure) of a usable slice
_MAX_HELD_PER_CALIBRATION_SLICE = 4  # slices without contrast held while waiting, per calibration slice
# A named phase may not be in view yet (large particles): calibration waits for it up to this
# many calibration windows, then goes on with the classes the data show (no invented phase).
PHASE_WAIT_WINDOWS = 6
# While the data show a single grey class (one particle filling the view, or phases that noise
# and blur do not separate), there is nothing to calibrate on: slices are held up to this many
# calibration windows, then the model is fitted on what there is and watched for the classes to
# come (as for a named phase not in view).
SINGLE_CLASS_WAIT_WINDOWS = 12
# Either wait holds at most this many bytes of raw slices (64 slices of 2048 x 2048 x 16 bit).
CALIBRATION_HOLD_BYTES = 512 << 20
# fewer cap rows than this hold no usable cap features: register on the band as a region
_MIN_CAP_ROWS = 16
# Most a slice may claim (quality) while the phase names are a guess: fewer grey classes than
# names, and nothing shows which name is missing (the labels may be named after the other reading).
_GUESSED_NAMES_QUALITY = 0.5


@dataclass(frozen=True, eq=False)
class ProcessedSlice:
    """One slice after correction, alignment and segmentation, on the run's canvas.

    Attributes
    ----------
    index : int
        Slice index from the file name.
    source : str
        The slice file.
    z_um : float or None
        z position recorded by the instrument, if any.
    pixel_size_um : (float, float) or None
        Pixel size (dy, dx) from the slice's metadata, if any.
    arrival_time_unix_s : float
        When the chain received the slice.
    grey : (Y, X) ndarray
        Corrected and aligned grey levels, the input's dtype; 0 outside the field of view.
    labels : (Y, X) ndarray of uint8
        Phase labels (phase i = label i+1), 0 = unassigned (outside the field of view).
    drift : DriftEstimate
        Shift applied (cumulative vs the first slice), step, confidence, reliability.
    uncertain_share : float
        Share of the slice's valid pixels whose phase is uncertain (a segmentation quality figure);
        1 for a held slice, and for a renormalised one never below the recent good slices'.
    timings_ms : dict of str to float
        Time spent per stage (``correct``, ``align``, ``mask`` (valid region), ``segment``).
    flag : {None, "renormalised", "held"}
        None for a good slice; "renormalised": a brightness, contrast or charging outlier mapped
        back onto the reference levels; "held": not segmented (labels 0), e.g. blank or charging.
    flag_reason : str
        What was found ("" when good).
    quality : float
        0 (held) .. 1: ``1 - uncertain_share`` for a good slice, half that for a renormalised one;
        at most 0.5 while the phase names given to the classes are a guess (fewer grey classes
        than names, :attr:`processing.phases.PhaseCheck.naming_unsure`).
    curtain : dict or None
        Curtaining removal: ``applied``, ``angle_deg``, ``amplitude_before``, ``amplitude_after``
        (grey units), ``reason`` when skipped; None when off.
    """

    index: int
    source: str
    z_um: float | None
    pixel_size_um: tuple[float, float] | None
    arrival_time_unix_s: float
    grey: np.ndarray
    labels: np.ndarray
    drift: DriftEstimate
    uncertain_share: float
    timings_ms: dict = field(default_factory=dict)
    flag: str | None = None
    flag_reason: str = ""
    quality: float = 1.0
    curtain: dict | None = None


class SliceChain:
    """Correct, align and segment slices in index order.

    Parameters
    ----------
    phases : Phases
        The phases to segment, dark to bright.
    calibration_slices : int, optional
        The phase model is fitted on this many first slices whose phases are separable, then kept
        fixed. Slices are held back (not returned) until then; blank or charging slices (no
        contrast) do not count, so calibration waits for usable ones. While the data show fewer
        grey classes than named phases, it also waits (a phase may come into view later), trying
        again every `calibration_slices` slices, up to :data:`PHASE_WAIT_WINDOWS` times as many
        slices; while they show a single class (a particle filling the view), up to
        :data:`SINGLE_CLASS_WAIT_WINDOWS` times as many, each attempt fitting on the slices since
        the last (the single class would outweigh them); either wait holds at most
        :data:`CALIBRATION_HOLD_BYTES` of slices. Once calibrated, the held slices are all
        processed (those without contrast are held: labels 0, flagged). While named phases are still empty, the grey classes of the last
        `calibration_slices` slices are estimated again every `calibration_slices` slices; when
        they show more classes than the model, the corrections and the phase model are
        re-calibrated on them (:attr:`recalibrations`, a logged warning); slices decided before
        keep their labels.
    brightness_normalisation, curtaining_removal, background_flattening : bool, optional
        Corrections applied before alignment and segmentation.
    curtain_angle : "auto" or float, optional
        Curtain angle from vertical (degrees), "auto" = estimated on every slice.
    curtain_reference : {"phases", "neighbours", "auto"}, optional
        What the stripes are measured against (:class:`processing.correct.CorrectionModel`);
        with "neighbours" the valid region of each raw slice (the region mask) is where the
        curtains are fitted and the phase modes found; "auto": chosen at each calibration from
        the calibration slices (:func:`processing.correct.choose_curtain_reference`; the choice
        and its evidence are logged and kept in ``correction.curtain_choice``).
    outlier_z : float, optional
        Robust z-score beyond which a slice's brightness, contrast or evenness is an outlier
        against the recent good slices (:class:`processing.correct.BrightnessMonitor`).
    roi : (y0, y1, x0, x1), "auto" or None, optional
        Alignment region on the canvas, in pixels. ``"auto"`` looks, on the calibration slices,
        for rows that do not change along z (the protective cap, a fiducial) and registers on
        them: the sample itself changes from slice to slice, and registering on it lets that
        apparent motion accumulate as drift error. Falls back to the whole slice (None) when
        there is no such band. With `cap_rows`, the cap is the region.
    cap_rows : int, optional
        Rows at the top of the canvas that show the protective cap, not the sample: their labels
        are unassigned (0), so that the metrics describe the sample only.
    context_slices : int, optional
        Labels of slice z are decided once slices z+1..z+k are in, with slices z-k..z+k as 3-D
        context (:class:`processing.context.DepthContext`); 0 decides each slice on its own.
    boundaries : {"edges", "thresholds"}, optional
        How pixels on blurred edges are decided (:class:`processing.context.DepthContext`).
    phase_model : PhaseModel, optional
        A model fitted earlier (resume): no calibration.
    correction : CorrectionModel, optional
        Corrections fitted earlier (resume).
    region : RegionMask, optional
        The valid region of each slice (automatic flat margins and the user's overrides);
        pixels outside it are labelled 0 and left out of the calibration. Rows found
        z-invariant with ``roi="auto"`` (cap, fiducial band) are left out too. Default: the
        automatic detection only.
    training_labels : (Y, X) ndarray of int, or dict of str to rectangles, optional
        Sparse phase labels drawn on the first slice, or rectangles per phase name: segment
        with the trainable pixel classifier instead of the grey-level model (no 3-D context).
    smooth_px : float or "auto", optional
        Gaussian pre-filter of the grey-level model, pixels (raise it for very noisy slices;
        ``"auto"``: chosen from the calibration slices, see :func:`calibrate_phases`).

    Attributes
    ----------
    phase_check : processing.phases.PhaseCheck or None
        After calibration: the configured phases compared with the grey classes of the data
        (its ``warnings`` say every mismatch); replaced at a re-calibration.
    recalibrations : list of dict
        Every re-calibration after a named phase came into view, or more grey classes than the
        single one the model was fitted on (``index``:
        the slice that triggered it, ``classes_before``, ``classes_after``, ``empty_before``,
        ``empty_after``, ``message``). Labels of slices decided before it are not changed.
    """

    def __init__(
        self,
        *,
        phases: Phases,
        calibration_slices: int = 8,
        brightness_normalisation: bool = True,
        curtaining_removal: bool = True,
        background_flattening: bool = False,
        curtain_angle="auto",
        curtain_reference: str = "phases",
        outlier_z: float = 6.0,
        roi=None,
        cap_rows: int = 0,
        context_slices: int = 1,
        boundaries: str = "thresholds",
        phase_model: PhaseModel | None = None,
        correction: CorrectionModel | None = None,
        region: RegionMask | None = None,
        training_labels=None,
        smooth_px=1.0,
    ):
        if calibration_slices < 1:
            raise ValueError(f"calibration_slices must be >= 1, got {calibration_slices!r}")
        if (phase_model is None) != (correction is None):
            raise ValueError("phase_model and correction are fitted together: give both or neither")
        self.phases = phases
        self.calibration_slices = int(calibration_slices)
        self._calibrate_at = self.calibration_slices  # usable slices at the next calibration attempt
        self._fit_from = 0  # the first usable held slice the next calibration attempt fits on
        self.correction_options = {
            "brightness": bool(brightness_normalisation),
            "curtaining": "column" if curtaining_removal else None,
            "background": "polynomial" if background_flattening else None,
            "curtain_angle": curtain_angle,
            "curtain_reference": curtain_reference,
        }
        self.outlier_z = float(outlier_z)
        self.monitor = None if correction is None else BrightnessMonitor(correction.levels, z_limit=self.outlier_z)
        self._good_uncertain: deque = deque(maxlen=25)  # recent good slices' uncertain shares
        self._contrast: list[float] = []  # of the held slices, while calibrating
        self._missing_phases: tuple = ()  # named phases not seen by the last calibration attempt
        self._single_class = False  # the last calibration attempt saw one grey class
        self._recent: deque = deque(maxlen=self.calibration_slices)  # raw slices, while names are empty
        self._since_check = 0  # good slices since the last look for a phase come into view
        self.recalibrations: list[dict] = []  # each re-calibration: slice index, phases before and after
        self.dropped: list[tuple[SliceImage, str]] = []  # held slices given up before calibration
        self.correction = correction
        self.phase_model = phase_model
        if cap_rows < 0:
            raise ValueError(f"cap_rows must be >= 0, got {cap_rows!r}")
        self.cap_rows = int(cap_rows)
        if roi is not None and roi != "auto":
            roi = tuple(int(v) for v in roi)
        self.roi = roi
        self._nonsample_rows: tuple[int, int] | None = None  # the cap found with roi "auto"
        self._find_region = roi == "auto"
        self.tracker = None if roi == "auto" else self._new_tracker()
        self.context_slices = int(context_slices)
        self.boundaries = boundaries
        self._context = None if phase_model is None else DepthContext(phase_model, context_slices=self.context_slices, boundaries=self.boundaries)
        self.region = RegionMask() if region is None else region
        self.training_labels = training_labels
        self.smooth_px = smooth_px if smooth_px == "auto" else float(smooth_px)
        self.phase_check = None
        self._resumed_names_guessed = False  # a resumed run's, until it calibrates again
        self._brightness = (1.0, 0.0)  # the previous slice's (gain, offset): guides the next match
        self._held: list[tuple[SliceImage, float]] = []
        self._reframe = False  # the raw frame changed: the tracker finds the margins again
        self._dtype = None

    @classmethod
    def from_config(cls, config, *, phases: Phases, region: RegionMask | None = None,
                    training_labels=None, smooth_px=1.0) -> SliceChain:
        """A chain set up from the ``[processing]`` section of the configuration (the valid
        region and training labels are read by the agent)."""
        return cls(
            phases=phases,
            calibration_slices=config.calibration_slices,
            brightness_normalisation=config.brightness_normalisation,
            curtaining_removal=config.curtaining_removal,
            background_flattening=config.background_flattening,
            curtain_angle=config.curtain_angle_deg,
            curtain_reference=config.curtain_reference,
            outlier_z=config.outlier_z,
            roi=None if config.roi == "whole" else config.roi,
            cap_rows=config.cap_rows,
            context_slices=config.context_slices,
            boundaries=config.boundaries,
            region=region,
            training_labels=training_labels,
            smooth_px=smooth_px,
        )

    @classmethod
    def resume(cls, state: dict, *, config, phases: Phases, last_aligned: np.ndarray, last_shift_px,
               region: RegionMask | None = None) -> SliceChain:
        """A chain that continues a run from its saved :meth:`state` and its last stored slice."""
        chain = cls.from_config(config, phases=phases, region=region)
        if (state.get("phase_model") or {}).get("pixel_classifier"):
            raise CalibrationError("a run segmented with the pixel classifier cannot be resumed (the classifier "
                                   "is not stored): write a new volume (volume.path)")
        if state.get("nonsample_rows"):
            chain._nonsample_rows = tuple(state["nonsample_rows"])
        chain._resumed_names_guessed = bool(state.get("names_guessed"))
        if state.get("phase_model") and state.get("correction"):
            chain.phase_model = PhaseModel.from_dict(state["phase_model"])
            chain.correction = CorrectionModel.from_dict(state["correction"])
            chain.monitor = BrightnessMonitor(chain.correction.levels, z_limit=chain.outlier_z)
            chain._context = DepthContext(chain.phase_model, context_slices=chain.context_slices, boundaries=chain.boundaries)
        # The region found or given when the run was calibrated, not searched for again.
        chain.roi = tuple(state["roi"]) if state.get("roi") else None
        chain.tracker = chain._new_tracker()
        last_aligned = np.asarray(last_aligned)
        chain.tracker.resume(last_aligned, last_shift_px)
        chain._dtype, chain._shape = last_aligned.dtype, last_aligned.shape
        return chain

    def state(self) -> dict:
        """What a resumed run needs (JSON-able): the calibrated corrections, phase model and ROI."""
        return {
            "roi": None if self.roi is None or self.roi == "auto" else list(self.roi),
            "phase_model": None if self.phase_model is None else (
                self.phase_model.to_dict() if isinstance(self.phase_model, PhaseModel) else {"pixel_classifier": True}),
            "nonsample_rows": None if self._nonsample_rows is None else list(self._nonsample_rows),
            "correction": None if self.correction is None else self.correction.to_dict(),
            "names_guessed": self._names_guessed,
        }

    @property
    def _names_guessed(self) -> bool:
        """Whether the phase names given to the grey classes are a guess (PhaseCheck.naming_unsure)."""
        return self.phase_check.naming_unsure if self.phase_check is not None else self._resumed_names_guessed

    @property
    def calibrating(self) -> bool:
        """True while slices are held back for the phase-model calibration."""
        return self.phase_model is None

    @property
    def calibration_state(self) -> str:
        """What calibration is waiting for, in words (for the status)."""
        if not self.calibrating:
            return "calibrated"
        usable = sum(c >= _MIN_CONTRAST for c in self._contrast)
        if usable < len(self._contrast):
            return f"calibrating: waiting for contrast ({len(self._held)} slices held, {usable} usable)"
        if self._single_class:
            return f"calibrating: waiting for a second grey class, one phase fills the view ({usable} slices held)"
        if self._missing_phases:
            return (f"calibrating: waiting for {', '.join(self._missing_phases)} to come into view "
                    f"({usable} slices held)")
        return f"calibrating ({usable} of {self.calibration_slices} slices)"

    @property
    def label_delay_slices(self) -> int:
        """Slices aligned but whose labels wait for the following slices (3-D context)."""
        return 0 if self._context is None else self._context.delay_slices

    def frame_changed(self) -> None:
        """The slices pushed from now on have another raw frame (resampled from another
        magnification: new margins, a border the slice does not cover): the registration finds
        the margins again on the next slice it registers."""
        self._reframe = True

    def push(self, image: SliceImage) -> list[ProcessedSlice]:
        """Take the next slice; returns the slices finished by it (none while calibrating).

        Raises
        ------
        SliceShapeError
            The slice's shape or dtype differs from the first slice's; the chain is unchanged.
        """
        pixels = np.asarray(image.pixels)
        if self._dtype is None:
            self._dtype, self._shape = pixels.dtype, pixels.shape
        elif pixels.shape != self._shape or pixels.dtype != self._dtype:
            raise SliceShapeError(
                f"slice {image.index} ({image.source}) is {pixels.dtype} {pixels.shape}; "
                f"this run's slices are {self._dtype} {self._shape}"
            )
        self._held.append((image, time.time()))
        if not self.calibrating:
            decided = self._watch_for_new_phase(image)
            return decided + self._process_held(final=False)
        self._contrast.append(slice_structure(pixels))
        usable = sum(c >= _MIN_CONTRAST for c in self._contrast)
        log.info("calibration attempt on slice %d: structure over noise %.1f (%s); %d of %d usable slices, %d held",
                 image.index, self._contrast[-1], "usable" if self._contrast[-1] >= _MIN_CONTRAST else "no contrast",
                 usable, self.calibration_slices, len(self._held))
        if len(self._held) - usable > _MAX_HELD_PER_CALIBRATION_SLICE * self.calibration_slices:
            # a long blank start: give up the oldest slice without contrast rather than hold them all
            k = next(i for i, c in enumerate(self._contrast) if c < _MIN_CONTRAST)
            self.dropped.append((self._held.pop(k)[0], "no phase contrast before calibration (blank or charging)"))
            self._contrast.pop(k)
        if usable < self._calibrate_at:
            return []
        return self._process_held(final=False)

    def flush(self) -> list[ProcessedSlice]:
        """Process every slice held back, calibrating first if needed on the usable ones (even if fewer
        than asked), and decide the labels still waiting for their following slices (end of a run).
        Slices that still cannot be calibrated move to :attr:`dropped`, with the reason."""
        return self._process_held(final=True) + self.decide_waiting()

    def decide_waiting(self) -> list[ProcessedSlice]:
        """Decide the labels of the slices waiting for their following slices, with the context
        there is (the acquisition paused or ended); later slices still use them as context."""
        return [] if self._context is None else [self._finish(*decided) for decided in self._context.flush()]

    def _process_held(self, *, final: bool) -> list[ProcessedSlice]:
        """Correct, align and hand to the 3-D context the slices held back, calibrating first.

        A calibration that fails (no usable slice, or :class:`CalibrationError` from a fit) leaves
        the chain uncalibrated and unchanged, to be tried again on later slices; with `final`
        (the end of the run) the held slices move to :attr:`dropped` instead, with the reason.
        """
        if not self._held:
            return []
        if self.calibrating:
            try:
                aligned = self._calibrate()
            except CalibrationError as exc:
                log.warning("calibration attempt on %d held slices failed: %s", len(self._held), exc)
                self._forget_calibration()
                self._missing_phases, self._single_class = (), False
                if final:
                    self.dropped.extend((image, f"not processed: {exc}") for image, _ in self._held)
                    self._held, self._contrast, self._fit_from = [], [], 0
                    self._calibrate_at = self.calibration_slices
                return []
            usable = sum(c >= _MIN_CONTRAST for c in self._contrast)
            check = self.phase_check
            self._missing_phases = check.empty_names if check is not None else ()
            # (a pixel classifier is trained on the first slice, its labels drawn there)
            self._single_class = (check is not None and len(check.estimate.phase_classes) < 2
                                  and self.training_labels is None)
            # the wait for a missing name counts from the slices that show more than one class
            windows, since = ((SINGLE_CLASS_WAIT_WINDOWS, 0) if self._single_class
                              else (PHASE_WAIT_WINDOWS, self._fit_from))
            held_bytes = sum(image.pixels.nbytes for image, _ in self._held)
            with_next = held_bytes * (1 + self.calibration_slices / len(self._held))  # the next window's too
            if (not final and (self._single_class or self._missing_phases)
                    and usable - since + self.calibration_slices <= windows * self.calibration_slices
                    and with_next <= CALIBRATION_HOLD_BYTES):
                log.info("calibration: %s in %d slices; waiting for %d more", "one grey class only"
                         if self._single_class else f"{', '.join(self._missing_phases)} not in view",
                         usable, self.calibration_slices)
                self._forget_calibration()
                self._calibrate_at = usable + self.calibration_slices
                if self._single_class:
                    # the next attempt fits on the slices to come, and finds the cap on them too
                    self._fit_from = usable
                    if self._find_region:
                        self.tracker, self.roi, self._nonsample_rows = None, "auto", None
                return []
            self._missing_phases, self._single_class = (), False
            for warning in self.phase_check.warnings if self.phase_check is not None else ():
                log.warning("phase model: %s", warning)
            for note in self.phase_check.notes if self.phase_check is not None else ():
                log.info("phase model: %s", note)
        else:
            aligned = [self._correct_and_align(image) for image, _ in self._held]
        held, self._held, self._contrast, self._fit_from = self._held, [], [], 0
        return [done for (image, arrival), a in zip(held, aligned) for done in self._segment(image, arrival, *a)]

    def _forget_calibration(self):
        """Back to the state before a calibration attempt: nothing fitted, nothing aligned."""
        if self.tracker is not None:
            self.tracker = self._new_tracker()
        self.correction = self.monitor = self.phase_model = self.phase_check = self._context = None
        self._brightness = (1.0, 0.0)

    def _calibrate(self):
        """Fit the corrections and the phase model on the held slices that are not blank (from
        `_fit_from` on, after a single-class attempt); returns the held slices corrected and
        aligned. Raises CalibrationError."""
        fit = [i for i, c in enumerate(self._contrast) if c >= _MIN_CONTRAST]
        # after a single-class attempt, the slices since then (the single class would outweigh them)
        fit = fit[self._fit_from:] or fit
        usable = [self._held[i][0].pixels for i in fit]
        if not usable:
            raise CalibrationError(f"none of the {len(self._held)} held slices shows structure above noise")
        if self.tracker is None:
            self.roi = self._find_roi(usable)
            if not self.cap_rows:
                # z-invariant rows are cap or fiducial, not sample: out of calibration and labels
                band = None if self.roi is None else cap_of_band(usable[0], self.roi)
                if band is None and len(usable) >= _MIN_SLICES_FOR_BAND:
                    # a slowly changing band of large particles can outlast the cap in the whole
                    # slice: the cap is on top, so look for it in the top half on its own
                    top = find_reference_band([u[: u.shape[0] // 2] for u in usable])
                    band = None if top is None else cap_of_band(usable[0], top)
                    if band is not None:
                        log.info("the cap found in the top half of the slice: rows %d-%d", *band)
                        self.roi = (top[0], top[1], 0, usable[0].shape[1])
                # whether the slices show a cap, and whether the band is it: find_cap decides (by its look,
                # or the band's content along z where no edge shows)
                rows = (find_cap(usable, band=band, keeps_content=lambda rows: rows_keep_content(usable, rows))
                        if self.region.auto else band)
                if band is None or rows != band:
                    band = None
                    self.roi = None  # registered on the whole slice
                if rows is not None:
                    self._nonsample_rows = rows
                    log.warning("not sample: rows %d-%d, the protective cap (one material on top of the section%s); "
                                "state processing.cap_rows or set mask.auto = false to override", *rows,
                                ", z-invariant" if band is not None else "")
            log.info("alignment region: %s",
                     "whole slice" if self.roi is None else f"rows {self.roi[0]}-{self.roi[1]}")
            self.tracker = self._new_tracker()
        self.correction = fit_correction(usable, n_phases=len(self.phases.names), min_structure=_MIN_CONTRAST,
                                         valid=[self._specimen(u) for u in usable], **self.correction_options)
        self.monitor = BrightnessMonitor(self.correction.levels, z_limit=self.outlier_z)
        log.info("calibrated on %d usable of %d held slices: levels %s; curtains against the %s%s", len(usable),
                 len(self._held), ", ".join(f"{v:.1f}" for v in self.correction.levels),
                 self.correction.curtain_reference,
                 f" ({self.correction.curtain_choice})" if self.correction.curtain_choice else "")
        if self._fit_from:
            # the held slices before the fit window may show one phase only, which fits no
            # brightness map: they start from the window's
            first = usable[0]
            corrected = self.correction.apply(first, valid=self._specimen(first))
            self._brightness = (corrected.gain, corrected.offset)
        aligned = [self._correct_and_align(image) for image, _ in self._held]
        window = [aligned[i] for i in fit] if self._fit_from else aligned
        good = [a for a in window if a[4].state != "held"] or window  # the model needs slices
        self.phase_model, self.phase_check = calibrate_phases(
            [grey for grey, *_ in good], self.phases, valid=[valid for _, valid, *_ in good],
            training_labels=self.training_labels, smooth_px=self.smooth_px,
        )
        self._context = DepthContext(self.phase_model, context_slices=self.context_slices, boundaries=self.boundaries)
        return aligned

    def _new_tracker(self) -> DriftTracker:
        """The drift tracker: on the cap's lasting features when the cap rows are known, stated
        (`cap_rows`) or found on the calibration slices."""
        cap = self.cap_rows or (0 if self._nonsample_rows is None else self._nonsample_rows[1])
        if cap >= _MIN_CAP_ROWS:
            # The cap's grain may change from slice to slice (a 3-D deposit): the tracker takes
            # the shift from the cap's lasting features (fiducial, interface side) and the steps
            # between slices from the correlation on the whole slice.
            return DriftTracker(interface_row=cap)
        return DriftTracker(roi=self.roi)

    def _find_roi(self, slices):
        if self.cap_rows:
            return (0, self.cap_rows, 0, slices[0].shape[1])
        # A z-invariant band can only be told from the sample over several slices.
        return find_reference_band(slices) if len(slices) >= _MIN_SLICES_FOR_BAND else None

    def _specimen(self, pixels):
        """The valid region of a raw slice in its own frame (margins, the user's overrides), or
        None when there is nothing to exclude."""
        return None if self.region.is_trivial else self.region.valid(pixels)

    def _correct_and_align(self, image: SliceImage):
        t0 = time.perf_counter()
        region = self._specimen(image.pixels)
        corrected, quality, pixels, self._brightness = self.correction.apply_checked(
            image.pixels, self.monitor, prior=self._brightness, valid=region)
        if quality.state != "good":
            log.warning("slice %d %s: %s", image.index, quality.state, quality.reason)
        t1 = time.perf_counter()
        if not quality.registrable:
            # a blank or charging slice would mislead the registration: placed by the cap where
            # one holds, else the last shift, with its error
            drift = self.tracker.skip(pixels)
        else:
            if self._reframe:
                self.tracker.reframe(image.pixels)
                self._reframe = False
            # the margins are found on the raw slice: the curtain correction stripes them
            drift = self.tracker.update(pixels, raw=image.pixels)
        grey, valid = apply_shift(pixels, drift.shift_px, fill=0)
        t2 = time.perf_counter()
        if region is not None and not region.all():
            # found and drawn in the slice's own frame, moved with it onto the canvas
            valid &= apply_shift(region.view(np.uint8), drift.shift_px, fill=0, order=0)[0] > 0
        valid[: self.cap_rows] = False  # the cap is not sample: unassigned, and out of the calibration
        if self._nonsample_rows is not None:
            valid[self._nonsample_rows[0]:self._nonsample_rows[1]] = False
        t3 = time.perf_counter()
        c = corrected.curtain
        curtain = None if c is None else {
            "applied": c.applied, "angle_deg": c.angle_deg, "amplitude_before": c.amplitude_before,
            "amplitude_after": c.amplitude_after, **({"reason": c.reason} if c.reason else {}),
        }
        timings_ms = {"correct": 1e3 * (t1 - t0), "align": 1e3 * (t2 - t1), "mask": 1e3 * (t3 - t2)}
        return grey, valid, drift, timings_ms, quality, curtain

    def _segment(self, image: SliceImage, arrival: float, grey, valid, drift, timings_ms, quality, curtain
                 ) -> list[ProcessedSlice]:
        """Hand the aligned slice to the 3-D context; returns the slices whose labels are now decided.

        A held slice (blank, charging) is not segmented and is no context for its neighbours."""
        t0 = time.perf_counter()
        decided = self._context.push(None if quality.state == "held" else grey, valid=valid,
                                     payload=(image, arrival, grey, drift, timings_ms, quality, curtain))
        timings_ms["segment"] = 1e3 * (time.perf_counter() - t0)
        return [self._finish(*d) for d in decided]

    def _watch_for_new_phase(self, image: SliceImage) -> list[ProcessedSlice]:
        """Re-calibrate when a named phase left empty comes into view: the grey classes of the
        last `calibration_slices` raw slices outnumber the phase model's (or, for a model fitted
        where the data showed a single class, that one).

        The brightness correction is re-fitted with the phase model (its reference levels were
        fitted on the classes seen so far, and the new phase's mode would make every later slice
        a brightness outlier). The slices waiting in the 3-D context are decided first, with the
        old model; returns them."""
        check = self.phase_check
        seen = 0 if check is None else len(check.estimate.phase_classes)
        if not isinstance(self.phase_model, PhaseModel) or check is None or (not check.empty_names and seen >= 2):
            return []
        self._recent.append(np.asarray(image.pixels))
        self._since_check += 1
        if self._since_check < self.calibration_slices:
            return []
        self._since_check = 0
        raw = list(self._recent)
        valid = [self._frame_valid(pixels) for pixels in raw]
        before = self.phase_model.n_phases if seen >= 2 else seen
        estimate = estimate_grey_classes(raw, valid=valid, smooth_px=self.phase_model.smooth_px)
        if len(estimate.phase_classes) <= before:
            return []
        try:
            specimen = [self._specimen(pixels) for pixels in raw]
            correction = fit_correction(raw, n_phases=len(self.phases.names), min_structure=_MIN_CONTRAST,
                                        valid=specimen, **self.correction_options)
            corrected = correction.apply_stack(raw, valid=specimen)
            model, new_check = calibrate_phases([c.pixels for c in corrected], self.phases, valid=valid,
                                                smooth_px=self.smooth_px)
        except CalibrationError as exc:
            log.warning("slice %d: %d grey classes where the phase model has %d, but re-calibration failed: %s",
                        image.index, len(estimate.phase_classes), before, exc)
            return []
        if model.n_phases <= before:
            return []
        message = (f"phase model re-calibrated at slice {image.index}: the last {len(raw)} slices show "
                   f"{model.n_phases} grey classes where the model was fitted on {before} "
                   f"(empty phases before: {', '.join(check.empty_names) or 'none'}; now: "
                   f"{', '.join(new_check.empty_names) or 'none'}); slices decided before keep their labels")
        log.warning(message)
        self.recalibrations.append({"index": image.index, "classes_before": before, "classes_after": model.n_phases,
                                    "empty_before": list(check.empty_names),
                                    "empty_after": list(new_check.empty_names), "message": message})
        decided = self.decide_waiting()
        self.correction, self.phase_model, self.phase_check = correction, model, new_check
        self.monitor = BrightnessMonitor(correction.levels, z_limit=self.outlier_z)
        # the window's slices before this one seed the new running reference, and the last good
        # one guides the next map: a sudden drop among them (validation scenario 13, a drop on the
        # slice of re-calibration) would else become the reference, unflagged, and flag the good
        # slices after it
        self._brightness = (corrected[-1].gain, corrected[-1].offset)
        for earlier in corrected[:-1]:
            if self.monitor.check(earlier)[0].state == "good":
                self._brightness = (earlier.gain, earlier.offset)
        self._context = DepthContext(model, context_slices=self.context_slices, boundaries=self.boundaries)
        self._recent.clear()
        return decided

    def _frame_valid(self, pixels) -> np.ndarray:
        """The valid region of a raw slice in its own frame: the region mask, without the cap rows
        and the z-invariant band (widened by the drift so far)."""
        valid = self._specimen(pixels)
        valid = np.ones(pixels.shape, dtype=bool) if valid is None else valid
        valid[: self.cap_rows] = False
        if self._nonsample_rows is not None:
            shift = self.tracker.shift_px if self.tracker is not None and self.tracker.shift_px is not None else (0, 0)
            reach = int(np.ceil(abs(shift[0]))) + 2
            valid[max(self._nonsample_rows[0] - reach, 0):self._nonsample_rows[1] + reach] = False
        return valid

    def _finish(self, payload, seg) -> ProcessedSlice:
        image, arrival, grey, drift, timings_ms, quality, curtain = payload
        if seg is None:
            labels, uncertain, score = np.zeros(grey.shape, dtype=np.uint8), 1.0, 0.0
        else:
            labels, uncertain = seg.labels, float(seg.uncertain_share)
            if quality.state == "good":
                self._good_uncertain.append(uncertain)
                score = 1.0 - uncertain
            else:
                # a renormalised slice never claims more confidence than the recent good ones
                if self._good_uncertain:
                    uncertain = max(uncertain, float(np.median(self._good_uncertain)))
                score = 0.5 * (1.0 - uncertain)
            if self._names_guessed:
                score = min(score, _GUESSED_NAMES_QUALITY)
        return ProcessedSlice(
            index=image.index,
            source=image.source,
            z_um=image.z_um,
            pixel_size_um=image.pixel_size_um,
            arrival_time_unix_s=arrival,
            grey=_to_dtype(grey, self._dtype),
            labels=labels,
            drift=drift,
            uncertain_share=uncertain,
            timings_ms=timings_ms,
            flag=None if quality.state == "good" else quality.state,
            flag_reason=quality.reason,
            quality=score,
            curtain=curtain,
        )


def _to_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """Corrected grey levels back to the slice's integer dtype (rounded, clipped)."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)

"""The per-slice chain: correct, align, segment, with the phase model calibrated once.

A small stateful helper (no I/O): it remembers the drift of the previous slices and the phase
model fitted on the first slices, so that labels stay consistent along z. The agent feeds it
slices in index order and stores what comes out; the benchmark times the same object.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from processing.align import DriftEstimate, DriftTracker, apply_shift, find_reference_band
from processing.correct import CorrectionModel, fit_correction
from processing.errors import CalibrationError, SliceShapeError
from processing.io import SliceImage
from processing.mask import RegionMask, grow_rows
from processing.phases import Phases
from processing.segment import PhaseModel, calibrate_phases

__all__ = ["ProcessedSlice", "SliceChain"]

log = logging.getLogger(__name__)

_MIN_SLICES_FOR_BAND = 8


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
        Share of the slice's valid pixels whose phase is uncertain (a segmentation quality figure).
    timings_ms : dict of str to float
        Time spent per stage (``correct``, ``align``, ``mask`` (valid region), ``segment``).
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


class SliceChain:
    """Correct, align and segment slices in index order.

    Parameters
    ----------
    phases : Phases
        The phases to segment, dark to bright.
    calibration_slices : int, optional
        The phase model is fitted on this many first slices, then kept fixed. Slices are held
        back (not returned) until then.
    brightness_normalisation, curtaining_removal, background_flattening : bool, optional
        Corrections applied before alignment and segmentation.
    roi : (y0, y1, x0, x1), "auto" or None, optional
        Alignment region on the canvas, in pixels. ``"auto"`` looks, on the calibration slices,
        for rows that do not change along z (the protective cap, a fiducial) and registers on
        them: the sample itself changes from slice to slice, and registering on it lets that
        apparent motion accumulate as drift error. Falls back to the whole slice (None) when
        there is no such band. With `cap_rows`, the cap is the region.
    cap_rows : int, optional
        Rows at the top of the canvas that show the protective cap, not the sample: their labels
        are unassigned (0), so that the metrics describe the sample only.
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
        with the trainable pixel classifier instead of the grey-level model.
    smooth_px : float or "auto", optional
        Gaussian pre-filter of the grey-level model, pixels (raise it for very noisy slices;
        ``"auto"``: chosen from the calibration slices, see :func:`calibrate_phases`).

    Attributes
    ----------
    phase_check : processing.phases.PhaseCheck or None
        After calibration: the configured phases compared with the grey classes of the data
        (its ``warnings`` say every mismatch).
    """

    def __init__(
        self,
        *,
        phases: Phases,
        calibration_slices: int = 8,
        brightness_normalisation: bool = True,
        curtaining_removal: bool = True,
        background_flattening: bool = False,
        roi=None,
        cap_rows: int = 0,
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
        self.correction_options = {
            "brightness": bool(brightness_normalisation),
            "curtaining": "column" if curtaining_removal else None,
            "background": "polynomial" if background_flattening else None,
        }
        self.correction = correction
        self.phase_model = phase_model
        if cap_rows < 0:
            raise ValueError(f"cap_rows must be >= 0, got {cap_rows!r}")
        self.cap_rows = int(cap_rows)
        if roi is not None and roi != "auto":
            roi = tuple(int(v) for v in roi)
        self.roi = roi
        self.tracker = None if roi == "auto" else DriftTracker(roi=roi)
        self.region = RegionMask() if region is None else region
        self.training_labels = training_labels
        self.smooth_px = smooth_px if smooth_px == "auto" else float(smooth_px)
        self.phase_check = None
        self._nonsample_rows: tuple[int, int] | None = None  # z-invariant band found with roi "auto"
        self._brightness = (1.0, 0.0)  # the previous slice's (gain, offset): guides the next match
        self._held: list[tuple[SliceImage, float]] = []
        self._z_um: list[float] = []
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
            roi=None if config.roi == "whole" else config.roi,
            cap_rows=config.cap_rows,
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
        if state.get("phase_model") and state.get("correction"):
            chain.phase_model = PhaseModel.from_dict(state["phase_model"])
            chain.correction = CorrectionModel.from_dict(state["correction"])
        # The region found or given when the run was calibrated, not searched for again.
        chain.roi = tuple(state["roi"]) if state.get("roi") else None
        chain.tracker = DriftTracker(roi=chain.roi)
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
        }

    @property
    def calibrating(self) -> bool:
        """True while slices are held back for the phase-model calibration."""
        return self.phase_model is None

    @property
    def slice_spacing_um(self) -> float | None:
        """Median z step of the slices that recorded their z position, or None."""
        z = np.asarray(self._z_um, dtype=float)
        if z.size < 2:
            return None
        steps = np.diff(np.sort(z))
        steps = steps[steps > 0]
        return float(np.median(steps)) if steps.size else None

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
        if image.z_um is not None:
            self._z_um.append(image.z_um)
        self._held.append((image, time.time()))
        if self.calibrating and len(self._held) < self.calibration_slices:
            return []
        return self.flush()

    def flush(self) -> list[ProcessedSlice]:
        """Process the slices held back, calibrating first on them if needed (even if fewer than asked)."""
        held, self._held = self._held, []
        if not held:
            return []
        if self.calibrating:
            if self.tracker is None:
                self.roi = self._find_roi([image.pixels for image, _ in held])
                log.info("alignment region: %s", "whole slice" if self.roi is None else f"rows {self.roi[0]}-{self.roi[1]}")
                if self.roi is not None and not self.cap_rows:
                    # z-invariant rows are cap or fiducial, not sample: out of calibration and labels;
                    # the band found is a core of the strip, grown to the rows that look like it
                    self._nonsample_rows = grow_rows(held[0][0].pixels, (self.roi[0], self.roi[1]))
                    log.info("not sample: rows %d-%d", *self._nonsample_rows)
                self.tracker = DriftTracker(roi=self.roi)
            self.correction = fit_correction(
                [image.pixels for image, _ in held], n_phases=len(self.phases.names), **self.correction_options
            )
            aligned = [self._correct_and_align(image) for image, _ in held]
            self.phase_model, self.phase_check = calibrate_phases(
                [grey for grey, _, _, _ in aligned], self.phases,
                valid=[valid for _, valid, _, _ in aligned], training_labels=self.training_labels,
                smooth_px=self.smooth_px,
            )
        else:
            aligned = [self._correct_and_align(image) for image, _ in held]
        return [self._segment(image, arrival, *a) for (image, arrival), a in zip(held, aligned)]

    def _find_roi(self, slices):
        if self.cap_rows:
            return (0, self.cap_rows, 0, slices[0].shape[1])
        # A z-invariant band can only be told from the sample over several slices.
        return find_reference_band(slices) if len(slices) >= _MIN_SLICES_FOR_BAND else None

    def _correct_and_align(self, image: SliceImage):
        t0 = time.perf_counter()
        corrected = self.correction.apply(image.pixels, prior=self._brightness)
        self._brightness = (corrected.gain, corrected.offset)
        t1 = time.perf_counter()
        drift = self.tracker.update(corrected.pixels)
        grey, valid = apply_shift(corrected.pixels, drift.shift_px, fill=0)
        t2 = time.perf_counter()
        if not self.region.is_trivial:
            # found and drawn in the slice's own frame, moved with it onto the canvas
            region = self.region.valid(image.pixels)
            if not region.all():
                valid &= apply_shift(region.view(np.uint8), drift.shift_px, fill=0, order=0)[0] > 0
        valid[: self.cap_rows] = False  # the cap is not sample: unassigned, and out of the calibration
        if self._nonsample_rows is not None:
            valid[self._nonsample_rows[0]:self._nonsample_rows[1]] = False
        t3 = time.perf_counter()
        return grey, valid, drift, {"correct": 1e3 * (t1 - t0), "align": 1e3 * (t2 - t1), "mask": 1e3 * (t3 - t2)}

    def _segment(self, image: SliceImage, arrival: float, grey, valid, drift, timings_ms) -> ProcessedSlice:
        t0 = time.perf_counter()
        seg = self.phase_model.segment(grey, valid=valid)
        timings_ms["segment"] = 1e3 * (time.perf_counter() - t0)
        return ProcessedSlice(
            index=image.index,
            source=image.source,
            z_um=image.z_um,
            pixel_size_um=image.pixel_size_um,
            arrival_time_unix_s=arrival,
            grey=_to_dtype(grey, self._dtype),
            labels=seg.labels,
            drift=drift,
            uncertain_share=float(seg.uncertain_share),
            timings_ms=timings_ms,
        )


def _to_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """Corrected grey levels back to the slice's integer dtype (rounded, clipped)."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)

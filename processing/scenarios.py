"""Domain-randomised synthetic acquisitions with complete truth, for validation.

:func:`random_scenario` draws a :class:`Scenario` (a frozen set of parameters) over wide ranges,
:func:`render_scenario` turns it into raw slices and a :class:`ScenarioTruth`, and
:func:`write_scenario` writes the slices as the vendor software does, with the configuration a
user would write (the phase names, dark to bright) and the truth beside them. It builds on
:mod:`processing.synthetic` (microstructure, rendering, drift, writing) and adds the artefacts
that belong to a whole run rather than to one slice.

Ranges drawn by :func:`random_scenario` (issues 10 and 11)
----------------------------------------------------------
- Slices: 256 x 256 px by default (any ``shape`` up to 2048 x 2048), 300 of them by default;
  8-bit (80 %) or 16-bit; pixel 5-20 nm, slice step 1-3 pixels.
- Phases: 2 (pore + active, or electrolyte + active), 3 (pore, electrolyte, active) or 4 (with
  carbon-binder hugging the particles); grey order random except that pore is darkest (30 % of
  scenarios swap two solid phases, e.g. electrolyte brighter than active). Fractions: active
  0.25-0.6, pore 0.05-0.3, carbon-binder 0.05-0.15, electrolyte the rest (>= 0.1).
- Particles: spheres, randomly oriented ellipsoids (aspect 1.3-3) or faceted polyhedra, 30 % of
  them fractured (thin cracks filled with the darkest phase); mean radius 5-150 px (log-uniform,
  raised where the volume would need too many particles), polydispersity 0-0.6.
- Pores: a smooth random field, spherical voids, or gaps hugging the particle surfaces.
- Grey levels: darkest phase at 15-70 (8-bit scale), steps of 25-75 between phases; noise
  5-25 % of the smallest step; blur 0.7-2 px; shine-through in pores 0-0.6 (60 % of scenarios).
- Brightness: a slow gain ramp or bow of up to +-30 % over the run plus a weak random walk;
  0-3 sudden drops of 1-3 slices at 0.3-0.6x (60 % of scenarios); 0-2 charging slices (bright
  scan-line streaks, 40 % of scenarios); drops and charging never in the first 15 slices.
- Curtains: strength 0-0.35 of half the level span, straight (50 %) or tilted 3-15 degrees.
- Non-sample regions: protective cap of 20-60 rows (50 %) with a fiducial cross (half of those);
  black margins of 4-24 px on each side (25 % per side); a circular field (15 %).
- Stage drift: 0.2-2 px per slice per axis, pulled back by the microscope's re-centring (the
  wander stays within 4-12 px RMS), jumps of 5-20 px with probability 0-1 % per slice.
- Geometry (issue 11): FEI (45 %), Zeiss Atlas with z in the names (35 %) or TESCAN (20 %);
  Atlas runs get non-uniform z (half of them): a step change by 1.5-2x at some slice and/or
  1-5 dropped slices; a magnification change (pixel 0.85-0.95x from some slice on, 15 %).

Truth conventions
-----------------
Truth labels are on the canvas of slice 0 (at slice 0's pixel size, also after a magnification
change), label ``i + 1`` is ``phase_names[i]`` (dark to bright), 0 is not sample: the cap, black
margins, outside the circular field, and canvas pixels the slice does not image after its drift.
Drift is in the convention of :class:`processing.synthetic.SyntheticAcquisition`. Slice ``k``
(0-based) is written as file index ``k + 1``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from processing.synthetic import (
    SyntheticAcquisition,
    _smooth_noise,
    generate_microstructure,
    render_acquisition,
    simulate_drift,
    write_acquisition,
)

__all__ = [
    "Scenario",
    "ScenarioTruth",
    "RenderedScenario",
    "random_scenario",
    "render_scenario",
    "write_scenario",
    "read_truth",
]

logger = logging.getLogger(__name__)

PHASE_SETS = {
    2: (("pore", "active"), ("electrolyte", "active")),
    3: (("pore", "electrolyte", "active"),),
    4: (("pore", "carbon-binder", "electrolyte", "active"),),
}
# Labels of generate_microstructure, plus carbon-binder split off the electrolyte.
_CODES = {"pore": 1, "electrolyte": 2, "active": 3, "carbon-binder": 4}
# Particles a scenario may need at most (generation time grows with their number).
_PARTICLE_BUDGET = 250_000
# Injected drops and charging are kept out of the first slices (the calibration's).
_FIRST_FAULT_SLICE = 15
_RENDER_PAD = 10


@dataclass(frozen=True)
class Scenario:
    """Parameters of one synthetic acquisition (see the module docstring for the ranges).

    Slice positions are 0-based (file index ``k + 1``); lengths in pixels of slice 0 unless the
    name says otherwise.
    """

    seed: int
    n_slices: int
    shape: tuple[int, int]
    dtype: str
    layout: str
    pixel_size_um: float
    slice_spacing_um: float
    phase_names: tuple[str, ...]
    fractions: tuple[float, ...]
    particle_shape: str
    aspect: float
    fractured: bool
    particle_radius_px: float
    polydispersity: float
    pore_model: str
    levels: tuple[float, ...]
    noise_share: float
    blur_px: float
    brightness_ramp: float
    ramp_bow: bool
    brightness_walk: float
    drop_slices: tuple[int, ...]
    drop_factor: float
    charging_slices: tuple[int, ...]
    curtaining: float
    curtain_angle_deg: float
    pore_back: float
    cap_px: int
    fiducial: bool
    margins_px: tuple[int, int, int, int]
    circle_share: float | None
    drift_px_per_slice: float
    drift_wander_px: float
    jump_probability: float
    jump_px: float
    z_step_change: tuple[int, float] | None
    dropped_slices: tuple[int, ...]
    magnification_change: tuple[int, float] | None

    def describe(self) -> str:
        """One line for tables."""
        parts = [
            f"{self.n_slices}x{self.shape[0]}x{self.shape[1]}", self.layout, "/".join(self.phase_names),
            f"{self.particle_shape}{'+cracks' if self.fractured else ''} r{self.particle_radius_px:.0f}px",
            f"pores:{self.pore_model}", f"noise {self.noise_share:.0%}", f"drift {self.drift_px_per_slice:.1f}px",
        ]
        if self.cap_px:
            parts.append("cap+fid" if self.fiducial else "cap")
        if self.drop_slices:
            parts.append(f"{len(self.drop_slices)} drop")
        if self.charging_slices:
            parts.append(f"{len(self.charging_slices)} charging")
        if self.curtain_angle_deg:
            parts.append(f"tilt {self.curtain_angle_deg:.0f}deg")
        if any(self.margins_px):
            parts.append("margins")
        if self.circle_share:
            parts.append("circle")
        if self.z_step_change or self.dropped_slices:
            parts.append("z non-uniform")
        if self.magnification_change:
            parts.append("mag change")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class ScenarioTruth:
    """What a perfect agent would report for a scenario.

    Attributes
    ----------
    labels : (Z, H, W) ndarray of uint8
        Phase labels on the canvas of slice 0; 0 = not sample (see the module docstring).
    drift_px : (Z, 2) ndarray of float
        True ``(dy, dx)`` of each slice (shift that maps it onto slice 0), pixels of slice 0.
    z_um : (Z,) ndarray of float
        True z of each slice, micrometres (first 0).
    pixel_size_um : (Z,) ndarray of float
        True (square) pixel size of each slice, micrometres.
    drop_slices, charging_slices : tuple of int
        0-based positions of the injected brightness drops and charging slices.
    phase_names : tuple of str
        Dark to bright; label ``i + 1`` is ``phase_names[i]``.
    fractions : dict of str to float
        True volume fraction of each phase over the sample voxels (label > 0).
    cap_px : int
        Rows of protective cap at the top of the canvas (0 = none).
    fiducial : bool
    gain : (Z,) ndarray of float
        Total brightness gain of each slice (drift, ramp and drops).
    """

    labels: np.ndarray
    drift_px: np.ndarray
    z_um: np.ndarray
    pixel_size_um: np.ndarray
    drop_slices: tuple
    charging_slices: tuple
    phase_names: tuple
    fractions: dict
    cap_px: int
    fiducial: bool
    gain: np.ndarray

    @property
    def depth_um(self) -> float:
        """Sum of the true steps between the first and the last slice."""
        return float(self.z_um[-1] - self.z_um[0])


@dataclass(frozen=True, eq=False)
class RenderedScenario:
    """Raw slices ``(Z, H, W)`` uint8/uint16 of a :class:`Scenario`, and its truth."""

    scenario: Scenario
    slices: np.ndarray
    truth: ScenarioTruth


def _draw_positions(rng, n_slices, count, *, run=1):
    """Sorted distinct 0-based slice positions (runs of `run` slices) after the calibration."""
    lo, hi = _FIRST_FAULT_SLICE, n_slices - run
    if count == 0 or hi <= lo:
        return ()
    starts = rng.choice(np.arange(lo, hi), size=min(count, hi - lo), replace=False)
    return tuple(sorted({int(s) + j for s in starts for j in range(run)}))


def random_scenario(rng, *, n_slices=None, shape=None, **fixed):
    """Draw a :class:`Scenario` at random over the ranges of the module docstring.

    Parameters
    ----------
    rng : int or numpy.random.Generator
        Seed or generator; the same seed gives the same scenario.
    n_slices : int, optional
        Number of slices (default 300).
    shape : (int, int), optional
        ``(H, W)`` of the slices (default 256 x 256; up to 2048 x 2048).
    **fixed
        Any other :class:`Scenario` field, to pin it (e.g. ``layout="zeiss"``, ``cap_px=0``).

    Returns
    -------
    Scenario
    """
    if isinstance(rng, (int, np.integer)):
        seed = int(rng)
    else:
        seed = int(np.random.default_rng(rng).integers(2**31))
    rng = np.random.default_rng(seed)
    n_slices = 300 if n_slices is None else int(n_slices)
    if n_slices < 2:
        raise ValueError(f"n_slices must be >= 2, got {n_slices!r}")
    shape = (256, 256) if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 64 or max(shape) > 2048:
        raise ValueError(f"shape must be (H, W) within 64..2048 px, got {shape!r}")
    unknown = set(fixed) - {f.name for f in dataclasses.fields(Scenario)}
    if unknown:
        raise ValueError(f"unknown Scenario fields {sorted(unknown)}")

    n_phases = int(rng.choice([2, 3, 4], p=[0.2, 0.55, 0.25]))
    sets = PHASE_SETS[n_phases]
    names = list(sets[int(rng.integers(len(sets)))])
    active = rng.uniform(0.25, 0.6)
    pore = rng.uniform(0.05, 0.3) if "pore" in names else 0.0
    cbd = rng.uniform(0.05, 0.15) if "carbon-binder" in names else 0.0
    if "electrolyte" in names:
        active = min(active, 0.9 - pore - cbd)
    else:  # two phases: the other one fills the rest
        pore = 1.0 - active if "pore" in names else 0.0
    electrolyte = 1.0 - active - pore - cbd
    fraction_of = {"pore": pore, "electrolyte": electrolyte, "active": active, "carbon-binder": cbd}
    solids = [i for i, n in enumerate(names) if n != "pore"]
    if len(solids) >= 2 and rng.uniform() < 0.3:
        i, j = rng.choice(solids, size=2, replace=False)
        names[i], names[j] = names[j], names[i]
    steps = rng.uniform(25, 75, n_phases - 1)
    steps *= min(1.0, (235 - 15) / steps.sum())
    dark = rng.uniform(15, min(70, 240 - steps.sum()))
    levels = tuple(float(v) for v in dark + np.concatenate([[0.0], np.cumsum(steps)]))

    dz_px = rng.uniform(1.0, 3.0)
    radius = math.exp(rng.uniform(math.log(5), math.log(150)))
    volume_px = n_slices * dz_px * (shape[0] + 100) * (shape[1] + 100)
    radius = max(radius, (active * volume_px / _PARTICLE_BUDGET / (4 / 3 * math.pi)) ** (1 / 3))
    layout = str(rng.choice(["fei", "zeiss", "tescan"], p=[0.45, 0.35, 0.2]))
    cap_px = int(rng.integers(20, 61)) if rng.uniform() < 0.5 else 0
    z_step_change, dropped = None, ()
    if layout == "zeiss" and rng.uniform() < 0.5:
        if rng.uniform() < 0.6:
            z_step_change = (int(rng.integers(n_slices // 4, 3 * n_slices // 4)), float(rng.uniform(1.5, 2.0)))
        if z_step_change is None or rng.uniform() < 0.5:
            dropped = tuple(sorted(int(k) for k in rng.choice(np.arange(5, n_slices - 1),
                                                                 size=int(rng.integers(1, 6)), replace=False)))
    drop_run = int(rng.integers(1, 4))
    scenario = Scenario(
        seed=seed,
        n_slices=n_slices,
        shape=shape,
        dtype="uint16" if rng.uniform() < 0.2 else "uint8",
        layout=layout,
        pixel_size_um=float(rng.uniform(0.005, 0.02)),
        slice_spacing_um=0.0,  # set below from dz_px
        phase_names=tuple(names),
        fractions=tuple(float(fraction_of[n]) for n in names),
        particle_shape=str(rng.choice(["sphere", "ellipsoid", "faceted"])),
        aspect=float(rng.uniform(1.3, 3.0)),
        fractured=bool(rng.uniform() < 0.3),
        particle_radius_px=float(radius),
        polydispersity=float(rng.uniform(0.0, 0.6)),
        pore_model=str(rng.choice(["field", "voids", "interface"])),
        levels=levels,
        noise_share=float(rng.uniform(0.05, 0.25)),
        blur_px=float(rng.uniform(0.7, 2.0)),
        brightness_ramp=float(rng.uniform(-0.3, 0.3)),
        ramp_bow=bool(rng.uniform() < 0.5),
        brightness_walk=float(rng.uniform(0.0, 0.006)),
        drop_slices=_draw_positions(rng, n_slices, int(rng.integers(1, 4)), run=drop_run) if rng.uniform() < 0.6 else (),
        drop_factor=float(rng.uniform(0.3, 0.6)),
        charging_slices=_draw_positions(rng, n_slices, int(rng.integers(1, 3))) if rng.uniform() < 0.4 else (),
        curtaining=float(rng.uniform(0.0, 0.35)),
        curtain_angle_deg=float(rng.choice([-1, 1]) * rng.uniform(3, 15)) if rng.uniform() < 0.5 else 0.0,
        pore_back=float(rng.uniform(0.0, 0.6)) if rng.uniform() < 0.6 else 0.0,
        cap_px=cap_px,
        fiducial=bool(cap_px and rng.uniform() < 0.5),
        margins_px=tuple(int(rng.integers(4, 25)) if rng.uniform() < 0.25 else 0 for _ in range(4)),
        circle_share=float(rng.uniform(1.0, 1.3)) if rng.uniform() < 0.15 else None,
        drift_px_per_slice=float(rng.uniform(0.2, 2.0)),
        drift_wander_px=float(rng.uniform(4.0, 12.0)),
        jump_probability=float(rng.uniform(0.0, 0.01)),
        jump_px=float(rng.uniform(5.0, 20.0)),
        z_step_change=z_step_change,
        dropped_slices=dropped,
        magnification_change=(int(rng.integers(n_slices // 3, 2 * n_slices // 3)), float(rng.uniform(0.85, 0.95)))
        if rng.uniform() < 0.15 else None,
    )
    scenario = dataclasses.replace(scenario, slice_spacing_um=float(dz_px * scenario.pixel_size_um))
    # Drops and charging never on the same slice: a slice has one injected fault.
    charging = tuple(k for k in scenario.charging_slices if k not in scenario.drop_slices)
    scenario = dataclasses.replace(scenario, charging_slices=charging)
    return dataclasses.replace(scenario, **fixed) if fixed else scenario


def _planes(scenario):
    """Plane (microstructure z index) of every slice: step changes and dropped slices skip planes."""
    step = np.ones(scenario.n_slices)
    if scenario.z_step_change is not None:
        at, factor = scenario.z_step_change
        step[at:] = factor
    for k in scenario.dropped_slices:
        step[k] += 1.0  # the slice before k was milled but not imaged
    step[0] = 0.0
    return np.rint(np.cumsum(step)).astype(int)


def _microstructure(scenario, n_planes, size_yx, rng):
    """Labels ``(n_planes, Y, X)`` in grey order (label i+1 = phase_names[i])."""
    px = scenario.pixel_size_um
    spacing = (scenario.slice_spacing_um, px, px)
    fr = dict(zip(scenario.phase_names, scenario.fractions))
    cbd = fr.get("carbon-binder", 0.0)
    base = {"pore": fr.get("pore", 0.0), "active": fr["active"]}
    base["electrolyte"] = max(0.0, 1.0 - base["pore"] - base["active"])
    radius_um = scenario.particle_radius_px * px
    codes = generate_microstructure(
        (n_planes, *size_yx), spacing_um=spacing, fractions=base, particle_radius_um=radius_um,
        polydispersity=scenario.polydispersity, pore_size_um=max(radius_um / 2, 2 * px),
        particle_shape=scenario.particle_shape, aspect=scenario.aspect, pore_model=scenario.pore_model, rng=rng,
    )
    active = codes == _CODES["active"]
    if cbd > 0:
        # Carbon-binder hugs the particles: the electrolyte voxels closest to them, roughened.
        near = ndimage.distance_transform_edt(~active, sampling=spacing).astype(np.float32) * np.float32(-1 / radius_um)
        near += np.float32(0.1) * _smooth_noise(codes.shape, np.array(spacing), 2 * radius_um / 3, rng)
        free = codes == _CODES["electrolyte"]
        n = min(int(round(cbd * codes.size)), int(free.sum()))
        if n > 0:
            values = near[free]
            cut = np.partition(values, values.size - n)[values.size - n]
            codes[free & (near >= cut)] = _CODES["carbon-binder"]
        del near
    if scenario.fractured:
        # Thin cracks: where a smooth field of the particle's size crosses zero, ~4 % of the active.
        field = _smooth_noise(codes.shape, np.array(spacing), radius_um, rng)
        mag = np.abs(field[active])
        if mag.size:
            cut = np.partition(mag, int(0.04 * (mag.size - 1)))[int(0.04 * (mag.size - 1))]
            filler = next(n for n in scenario.phase_names if n != "active")
            codes[active & (np.abs(field) <= cut)] = _CODES[filler]
    lut = np.zeros(max(_CODES.values()) + 1, dtype=np.uint8)
    for label, name in enumerate(scenario.phase_names, start=1):
        lut[_CODES[name]] = label
    return lut[codes]


def _gain_profile(scenario):
    """Slow ramp (or bow) times the sudden drops, (Z,)."""
    t = np.linspace(0.0, 1.0, scenario.n_slices)
    shape = np.sin(np.pi * t) if scenario.ramp_bow else t
    gain = 1.0 + scenario.brightness_ramp * shape
    gain[list(scenario.drop_slices)] *= scenario.drop_factor
    return gain


def _zoom_about_centre(image, factor, *, order):
    """``out(y) = image(c + (y - c) * factor)`` (factor < 1 magnifies), same shape."""
    centre = (np.array(image.shape) - 1) / 2
    return ndimage.affine_transform(image, np.full(2, factor), offset=centre - centre * factor,
                                    order=order, mode="nearest" if order else "constant", cval=0)


def render_scenario(scenario):
    """Render a :class:`Scenario`: raw slices and complete truth.

    Parameters
    ----------
    scenario : Scenario

    Returns
    -------
    RenderedScenario
    """
    rng = np.random.default_rng([scenario.seed, 1])
    n, (h, w) = scenario.n_slices, scenario.shape
    memory = math.sqrt(max(0.0, 1.0 - (scenario.drift_px_per_slice / scenario.drift_wander_px) ** 2)) or 0.5
    drift = simulate_drift(n, drift_px_per_slice=scenario.drift_px_per_slice,
                           jump_probability=scenario.jump_probability, jump_px=scenario.jump_px,
                           memory=memory, rng=rng)
    cap_px = scenario.cap_px
    if cap_px:
        # Keep the cap in view: it leaves the top of the slice as the stage moves down.
        cap_px = min(max(cap_px, int(np.ceil(drift[:, 0].max())) + 12), h // 2)
    margin = np.ceil(np.abs(drift).max(axis=0)).astype(int) + _RENDER_PAD
    planes = _planes(scenario)
    labels = _microstructure(scenario, int(planes[-1]) + 1, (h + 2 * margin[0], w + 2 * margin[1]), rng)[planes]
    levels = np.asarray(scenario.levels)
    min_step = float(np.diff(levels).min())
    acq = render_acquisition(
        labels, levels=levels, blur_px=scenario.blur_px, noise_sigma=scenario.noise_share * min_step,
        curtaining=scenario.curtaining, curtain_angle_deg=scenario.curtain_angle_deg,
        brightness_drift=scenario.brightness_walk, drift_px=drift, pore_back=scenario.pore_back,
        dtype=np.dtype(scenario.dtype), field_shape=(h, w), cap_px=cap_px, fiducial=scenario.fiducial and cap_px >= 8,
        gain_profile=_gain_profile(scenario), rng=rng,
    )
    del labels
    slices = acq.slices
    maxval = float(np.iinfo(slices.dtype).max)
    span = float(np.ptp(acq.levels))

    pixel_size = np.full(n, scenario.pixel_size_um)
    if scenario.magnification_change is not None:
        at, factor = scenario.magnification_change
        pixel_size[at:] *= factor
        for k in range(at, n):
            slices[k] = _zoom_about_centre(slices[k].astype(np.float32), factor, order=1).round().astype(slices.dtype)

    for k in scenario.charging_slices:
        # Charging: bright streaks along the scan lines, building up from left to right.
        grey = slices[k].astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):
            top = int(rng.integers(0, h - 4))
            rows = slice(top, min(h, top + int(rng.integers(max(3, h // 30), max(4, h // 6)))))
            build = 1.0 - np.exp(-3.0 * np.arange(w) / w)
            grey[rows] += np.float32(rng.uniform(0.6, 1.2) * span) * build[None, :].astype(np.float32)
        grey += np.float32(0.15 * span)
        slices[k] = np.clip(grey, 0, maxval).round().astype(slices.dtype)

    # The detector frame: black margins and a circular field (fixed in the raw slice, not in the scene).
    seen = np.ones((h, w), dtype=bool)
    top, bottom, left, right = scenario.margins_px
    seen[:top], seen[h - bottom:], seen[:, :left], seen[:, w - right:] = False, False, False, False
    if scenario.circle_share is not None:
        yy, xx = np.mgrid[:h, :w]
        radius = scenario.circle_share * min(h, w) / 2
        seen &= (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= radius**2
    slices[:, ~seen] = 0

    truth_labels = acq.labels
    for k in range(n):
        frame = seen
        if pixel_size[k] != pixel_size[0]:
            frame = _zoom_about_centre(seen.astype(np.uint8), pixel_size[0] / pixel_size[k], order=0) > 0
        # Canvas pixel Y shows raw pixel Y - dy: shift the raw frame's mask by the drift.
        canvas_seen = ndimage.shift(frame.astype(np.uint8), np.rint(drift[k]), order=0, cval=0) > 0
        truth_labels[k][~canvas_seen] = 0

    sample = truth_labels > 0
    counts = np.bincount(truth_labels[sample].ravel(), minlength=len(scenario.phase_names) + 1)
    fractions = {name: float(counts[i + 1] / max(counts[1:].sum(), 1)) for i, name in enumerate(scenario.phase_names)}
    truth = ScenarioTruth(
        labels=truth_labels,
        drift_px=drift,
        z_um=planes * scenario.slice_spacing_um,
        pixel_size_um=pixel_size,
        drop_slices=tuple(scenario.drop_slices),
        charging_slices=tuple(scenario.charging_slices),
        phase_names=tuple(scenario.phase_names),
        fractions=fractions,
        cap_px=int(cap_px),
        fiducial=bool(scenario.fiducial and cap_px >= 8),
        gain=acq.gain,
    )
    logger.debug("rendered scenario %d: %s", scenario.seed, scenario.describe())
    return RenderedScenario(scenario=scenario, slices=slices, truth=truth)


def _toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_scenario(rendered, root):
    """Write a rendered scenario as a user would find it.

    ``root/acquisition/`` holds the slices as the vendor writes them (FEI project, Zeiss Atlas
    detector folder with z in the names, or TESCAN slices with sidecars); ``root/revwatch.toml``
    the configuration a user would write (the phase names dark to bright, and the slice spacing
    for TESCAN, whose files do not carry it); ``root/truth.npz`` the truth (:func:`read_truth`).

    Parameters
    ----------
    rendered : RenderedScenario
    root : str or os.PathLike
        Created if missing; must not hold an acquisition yet.

    Returns
    -------
    dict
        ``{"acquisition": Path, "config": Path, "truth": Path}``.
    """
    root = Path(root)
    folder = root / "acquisition"
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} already holds files: write each scenario into a new folder")
    sc, truth = rendered.scenario, rendered.truth
    zeiss = sc.layout == "zeiss"
    write_acquisition(
        _as_acquisition(rendered), folder, layout=sc.layout,
        pixel_size_um=sc.pixel_size_um, slice_spacing_um=sc.slice_spacing_um,
        z_um=truth.z_um if zeiss else None, pixel_scale=truth.pixel_size_um / sc.pixel_size_um,
    )
    lines = ["# What a user would set for this acquisition: the phases, dark to bright.",
             "[phases]", f"names = {_toml_list(sc.phase_names)}"]
    if sc.layout == "tescan":
        lines += ["", "[acquisition]", f"slice_spacing_nm = {sc.slice_spacing_um * 1000:.4f}"]
    config = root / "revwatch.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    truth_path = root / "truth.npz"
    np.savez_compressed(
        truth_path,
        labels=truth.labels, drift_px=truth.drift_px, z_um=truth.z_um, pixel_size_um=truth.pixel_size_um,
        drop_slices=np.array(truth.drop_slices, dtype=int), charging_slices=np.array(truth.charging_slices, dtype=int),
        phase_names=np.array(truth.phase_names), fractions=np.array([truth.fractions[n] for n in truth.phase_names]),
        cap_px=truth.cap_px, fiducial=truth.fiducial, gain=truth.gain,
        scenario=json.dumps(dataclasses.asdict(sc)),
    )
    return {"acquisition": folder, "config": config, "truth": truth_path}


def _as_acquisition(rendered):
    """The fields :func:`write_acquisition` reads, from a rendered scenario."""
    t = rendered.truth
    return SyntheticAcquisition(slices=rendered.slices, drift_px=t.drift_px, labels=t.labels,
                                levels=rendered.scenario.levels, gain=t.gain, offset=np.zeros_like(t.gain))


def read_truth(path):
    """Read a ``truth.npz`` written by :func:`write_scenario`; returns ``(ScenarioTruth, Scenario)``."""
    with np.load(path, allow_pickle=False) as data:
        raw = json.loads(str(data["scenario"]))
        for key in ("shape", "phase_names", "fractions", "levels", "drop_slices", "charging_slices",
                    "margins_px", "dropped_slices", "z_step_change", "magnification_change"):
            if raw[key] is not None:
                raw[key] = tuple(raw[key])
        names = tuple(str(n) for n in data["phase_names"])
        truth = ScenarioTruth(
            labels=data["labels"], drift_px=data["drift_px"], z_um=data["z_um"], pixel_size_um=data["pixel_size_um"],
            drop_slices=tuple(int(k) for k in data["drop_slices"]),
            charging_slices=tuple(int(k) for k in data["charging_slices"]),
            phase_names=names, fractions=dict(zip(names, (float(v) for v in data["fractions"]))),
            cap_px=int(data["cap_px"]), fiducial=bool(data["fiducial"]), gain=data["gain"],
        )
    return truth, Scenario(**raw)

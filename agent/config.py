"""The run configuration: one TOML file, validated at start, overridable from the command line.

Every key that has a unit carries it in its name (``pixel_size_nm``, ``interval_s``). The
defaults below are the only place where defaults live; ``deploy/revwatch.example.toml`` shows
them all with comments. A bad file is refused at start with a :class:`ConfigError` that names
the key, the value and what was expected.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from processing.errors import RevwatchError
from processing.phases import Phases

__all__ = ["Config", "ConfigError", "load_config", "apply_overrides"]


class ConfigError(RevwatchError, ValueError):
    """The configuration is invalid; the message names the key, the value and what was expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AcquisitionConfig(_Section):
    """Where the microscope writes, and how to tell that a slice is complete."""

    folder: Path | None = Field(None, description="folder the microscope writes slices into (watched recursively)")
    polling: bool = Field(False, description="poll the folder instead of waiting for file-system events (network shares)")
    poll_interval_s: float = Field(1.0, gt=0, description="polling period")
    settle_s: float = Field(0.5, ge=0, description="a file's size must stay the same this long before it is read")
    incomplete_timeout_s: float = Field(600.0, gt=0, description="a file that never becomes readable is reported after this")
    gap_timeout_s: float = Field(300.0, gt=0, description="how long to wait for a missing slice index before skipping it")
    pixel_size_nm: float | None = Field(None, gt=0, description="pixel size; None = from the slice metadata")
    slice_spacing_nm: float | None = Field(
        None, gt=0, description="nominal slice thickness; None = from the project (EMProject.emxml); z in the file "
        "names (Atlas) takes precedence: z = index x spacing only for slices without their own z",
    )
    force_pixel_size: bool = Field(
        False, description="use pixel_size_nm even where the slice metadata says otherwise (logged); "
        "false = a mismatch over 1 % refuses the run",
    )
    on_pixel_size_change: Literal["resample", "refuse"] = Field(
        "resample", description="a slice whose pixel size differs from the first slice's by over 1 % (the "
        "magnification changed): 'resample' = scaled about the field's centre onto the run's pixel size (the "
        "part of the canvas it does not cover is unassigned; one error document at each change, the original "
        "pixel size in the slice's provenance); 'refuse' = skipped and recorded",
    )
    detector: str | None = Field(
        None, description="the detector folder whose slices make the volume (name or relative path, e.g. "
        "'SEM Image' or 'Images/SEM Image'); None = the folder must hold one detector's slices",
    )
    # The REV horizon: the stop asks whether the value at the planned depth would differ from now.
    planned_depth_um: float | None = Field(None, gt=0, description="depth the acquisition is planned to reach")
    planned_slices: int | None = Field(
        None, ge=1, description="slices planned (used when planned_depth_um is not set); "
        "both None = unknown: the REV horizon is twice the current depth",
    )


class VolumeConfig(_Section):
    """The OME-Zarr volume written by the run."""

    path: Path | None = Field(None, description="volume path; None = '<folder>.revwatch.ome.zarr' beside the folder")


class PhasesConfig(_Section):
    """Phase names from dark to bright (label i+1), the role each plays, and how to segment them."""

    names: list[str] = Field(default_factory=lambda: ["pore", "electrolyte", "active"])
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="role -> phase name (roles: pore, electrolyte, active, carbon-binder, other); a phase named "
        "after a role plays it",
    )
    training_labels: Path | None = Field(
        None,
        description="train the pixel classifier instead of the grey-level model: a sparse label image (TIFF/PNG, "
        "phase label 1..n, 0 = unlabelled) drawn on the first slice, or a TOML/JSON file of rectangles per phase "
        "name ({ pore = [[y0, y1, x0, x1], ...], ... })",
    )
    smooth_px: float | Literal["auto"] = Field(
        "auto", description="Gaussian pre-filter of the grey-level model, pixels (0-4); raise it (1.5-3) when "
        "`revwatch calibrate` says neighbouring classes overlap (very noisy slices); 'auto' = of 1, 1.5, 2, 3, "
        "the one that shows the most separable classes (up to the names), then the smallest that separates them; "
        "a class count that a width above 1 shows and no neighbouring width, weakly separated (Ashman's D < 2.5), "
        "is not trusted",
    )
    @field_validator("smooth_px")
    @classmethod
    def _smooth_px(cls, v):
        if v != "auto" and not 0 <= v <= 4:
            raise ValueError("expected 0 to 4 pixels, or 'auto'")
        return v

    on_mismatch: Literal["warn", "refuse"] = Field(
        "warn",
        description="when the calibration slices do not show the named phases: 'warn' (error document and log; "
        "a named phase the data do not show stays empty) or 'refuse' (stop the run before any slice is stored)",
    )

    @model_validator(mode="after")
    def _check(self):
        try:
            Phases(tuple(self.names), dict(self.roles))
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self

    def to_phases(self) -> Phases:
        return Phases(tuple(self.names), dict(self.roles))


class ProcessingConfig(_Section):
    """Per-slice corrections, alignment and segmentation."""

    calibration_slices: int = Field(10, ge=1, le=200, description="slices used to fit the phase model, then fixed")
    brightness_normalisation: bool = True
    curtaining_removal: bool = True
    curtain_angle_deg: float | Literal["auto"] = Field(
        "auto", description="curtain angle from vertical in degrees (within +-45); 'auto' = estimated on every "
        "slice within +-15; stripes are removed only where that reduces them")
    curtain_reference: Literal["phases", "neighbours", "auto"] = Field(
        "phases", description="what curtain stripes are measured against: 'phases' = each pixel's phase level "
        "(after the brightness map; the phase most of its row neighbours are nearest to); 'neighbours' = first "
        "each pixel's neighbours along the row on the raw slice's "
        "valid region (stripes stronger than half the smallest level gap, black margins), then the phase levels; "
        "'auto' = chosen at calibration from the calibration slices (neighbours only where the stripes reach a "
        "quarter of the smallest level gap, it leaves fewer and raises none, keeps as many grey classes and finds a "
        "level for every named phase without splitting a class in two; the choice and its evidence are logged; not "
        "the default: the two runs it helps at 150 slices keep the phases at 300, see the README)")
    outlier_z: float = Field(
        6.0, gt=0, description="robust z-score beyond which a slice's brightness, contrast or evenness is flagged "
        "against the recent good slices (renormalised, or held back with labels 0)")
    background_flattening: bool = False
    roi: list[int] | Literal["auto", "whole"] = Field(
        "auto",
        description="alignment region [y0, y1, x0, x1] in pixels; 'auto' = the rows that do not change along z "
        "(protective cap, fiducial) found on the calibration slices, else the whole slice; 'whole' = whole slice",
    )

    context_slices: int = Field(
        1, ge=0, le=8, description="labels of a slice are decided once this many following slices are in, "
        "using them as 3-D context (a delay, in slices); 0 = each slice on its own",
    )
    boundaries: Literal["thresholds", "edges"] = Field(
        "thresholds", description="pixels on blurred edges: 'thresholds' = grey level and rim rule; 'edges' = "
        "the phase of the nearest unambiguous pixel where the edge passes through a third phase's grey levels",
    )
    context_wait_s: float | None = Field(
        None, gt=0, description="decide waiting labels with the context there is when no slice came for this "
        "long; None = 3 slice intervals (2 s to 10 min)",
    )
    cap_rows: int = Field(
        0, ge=0, description="rows at the top of the slice showing the protective cap, not sample: labelled "
        "unassigned, and the alignment region when roi is 'auto'",
    )

    @field_validator("curtain_angle_deg")
    @classmethod
    def _curtain_angle(cls, v):
        if v != "auto" and not -45 <= v <= 45:
            raise ValueError("expected 'auto' or an angle within -45..45 degrees from vertical")
        return v

    @field_validator("roi")
    @classmethod
    def _roi(cls, v):
        if isinstance(v, list) and (len(v) != 4 or v[0] >= v[1] or v[2] >= v[3] or min(v) < 0):
            raise ValueError("expected [y0, y1, x0, x1] with y0 < y1, x0 < x1, all >= 0")
        return v


class MaskConfig(_Section):
    """The valid region: pixels that are not sample are labelled 0 and left out of every metric.

    Positions in pixels of the slice as written by the microscope (before drift correction).
    """

    auto: bool = Field(True, description="find flat margins (black borders, the fill outside a circular field) and, "
                       "with processing.roi 'auto' and no cap_rows, the protective cap on top of the section")
    exclude_rows: list[list[int]] = Field(default_factory=list, description="row ranges [y0, y1) that are not sample")
    exclude_rectangles: list[list[int]] = Field(
        default_factory=list, description="rectangles [y0, y1, x0, x1] that are not sample (fiducial, label)"
    )
    exclude_polygons: list[list[list[float]]] = Field(
        default_factory=list, description="polygons [[y, x], ...] that are not sample"
    )
    image: Path | None = Field(None, description="mask image of the slice's size: non-zero = sample")

    @field_validator("exclude_rows")
    @classmethod
    def _rows(cls, v):
        for r in v:
            if len(r) != 2 or not 0 <= r[0] < r[1]:
                raise ValueError(f"expected [y0, y1] with 0 <= y0 < y1, got {r}")
        return v

    @field_validator("exclude_rectangles")
    @classmethod
    def _rectangles(cls, v):
        for r in v:
            if len(r) != 4 or not (0 <= r[0] < r[1] and 0 <= r[2] < r[3]):
                raise ValueError(f"expected [y0, y1, x0, x1] with 0 <= y0 < y1, 0 <= x0 < x1, got {r}")
        return v

    @field_validator("exclude_polygons")
    @classmethod
    def _polygons(cls, v):
        for poly in v:
            if len(poly) < 3 or any(len(p) != 2 for p in poly):
                raise ValueError(f"expected at least 3 [y, x] vertices, got {poly}")
        return v


class AnalysisConfig(_Section):
    """Metrics and REV computed with Dask over the volume."""

    # z cannot be the transport axis: the volume grows along z while it is measured.
    transport_axis: Literal["y", "x"] = Field("y", description="current collector to separator direction (in-slice)")
    scheduler: str | None = Field(None, description="dask.distributed address (tcp://host:port); None = in-process threads")
    every_slices: int = Field(4, ge=1, description="refresh the metrics after this many new slices")
    expensive_every_slices: int = Field(32, ge=1, description="refresh tortuosity and local thickness after this many")
    pictures_every_slices: int = Field(
        32, ge=0, description="refresh the pictures beside the volume after this many new slices; 0 = no pictures"
    )
    # The phase of each network metric; None = the reference study's (by role).
    tortuosity_phases: list[str] | None = Field(None, description="geometric tortuosity; None = the electrolyte")
    thickness_phases: list[str] | None = Field(None, description="local thickness; None = electrolyte and active")
    connected_phases: list[str] | None = Field(None, description="share connected to the current collector; "
                                               "None = the active phase")
    interconnected_phases: list[str] | None = Field(None, description="share in the largest cluster; None = the pore")
    coverage_by: str | None = Field(None, description="covering phase of the coverage; None = the electrolyte")
    tortuosity_factor_phases: list[str] = Field(
        default_factory=list, description="tortuosity factor (steady diffusion, TauFactor's) of these phases, "
        "for finished volumes (revwatch metrics); empty = not computed")
    chunk_voxels: int = Field(160_000_000, ge=1, description="chunk of the whole-volume metrics (memory bound)")
    halo_slices: int = Field(16, ge=0, description="margin of a chunk for local thickness and tortuosity")

    def network(self, phases: Phases):
        """The :class:`processing.metrics.NetworkPhases` of this section for `phases`."""
        from processing.metrics import NetworkPhases  # noqa: PLC0415 - keeps config import light

        return NetworkPhases.resolve(phases, tortuosity=self.tortuosity_phases, thickness=self.thickness_phases,
                                     connected=self.connected_phases, interconnected=self.interconnected_phases,
                                     tortuosity_factor=self.tortuosity_factor_phases, coverage_by=self.coverage_by)


class CompositionConfig(_Section):
    """The weighed composition of the sample: gives the targeted volume ratio (omitted when not given)."""

    weight_fractions: dict[str, float] | None = Field(
        None, description="weight fraction (or parts) per component, e.g. {active = 0.7, electrolyte = 0.3}")
    densities_g_cm3: dict[str, float] | None = Field(None, description="density per component, same keys")

    @model_validator(mode="after")
    def _check(self):
        if (self.weight_fractions is None) != (self.densities_g_cm3 is None):
            raise ValueError("give both weight_fractions and densities_g_cm3, or neither")
        if self.weight_fractions is not None:
            from processing.metrics import targeted_volume_ratio  # noqa: PLC0415

            targeted_volume_ratio(self.weight_fractions, self.densities_g_cm3)
        return self

    def as_dict(self) -> dict | None:
        """``{"weight_fractions", "densities_g_cm3"}`` for :func:`processing.metrics.table1`, or None."""
        if self.weight_fractions is None:
            return None
        return {"weight_fractions": dict(self.weight_fractions), "densities_g_cm3": dict(self.densities_g_cm3)}


class RevConfig(_Section):
    """The REV criteria and the stop rule."""

    tolerance: float = Field(0.05, gt=0, lt=1, description="relative tolerance of every tracked metric")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="two-sided confidence of the bound at the planned depth")
    min_depth_um: float | None = Field(
        None, ge=0, description="never representative before this depth; None = only the floor the microstructure "
        "sets (6 batches of 2 correlation lengths along z)",
    )
    trend_false_alarm: float = Field(
        0.05, gt=0, lt=1, description="chance over a whole run of calling a stationary volume not stationary"
    )
    tracked: list[str] | None = Field(
        None, description="tracked metrics; None = the volume fractions, A_active/V_cell, the active coverage "
        "and the geometric tortuosity of the electrolyte",
    )
    exit_when_representative: bool = False
    on_stop_command: str | None = Field(
        None, description="command run once when the stop is latched; the stop document (JSON) is on its standard input"
    )


class PublishConfig(_Section):
    """The ZeroMQ status stream."""

    endpoint: str = Field("tcp://127.0.0.1:5556", description="PUB socket endpoint")
    snapshot_endpoint: str | None = Field(None, description="snapshot socket; None = the PUB port + 1")
    heartbeat_interval_s: float = Field(2.0, gt=0)
    keys_dir: Path | None = Field(None, description="CURVE keys made by `revwatch keys`; required off loopback")
    insecure: bool = Field(False, description="allow a non-loopback bind without CURVE keys")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v):
        if not v.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("expected a ZeroMQ endpoint such as tcp://127.0.0.1:5556")
        return v


class Config(_Section):
    """The whole run configuration (see ``deploy/revwatch.example.toml``)."""

    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    volume: VolumeConfig = Field(default_factory=VolumeConfig)
    phases: PhasesConfig = Field(default_factory=PhasesConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    composition: CompositionConfig = Field(default_factory=CompositionConfig)
    rev: RevConfig = Field(default_factory=RevConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)

    @model_validator(mode="after")
    def _analysis_phases(self):
        try:
            self.analysis.network(self.phases.to_phases())
        except ValueError as exc:
            raise ValueError(f"analysis: {exc}") from None
        return self

    def volume_path(self) -> Path | None:
        """The run's volume: ``volume.path``, else ``<folder>.revwatch.ome.zarr`` beside the folder."""
        if self.volume.path is not None:
            return Path(self.volume.path)
        if self.acquisition.folder is None:
            return None
        folder = Path(self.acquisition.folder).absolute()
        return folder.parent / f"{folder.name}.revwatch.ome.zarr"


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and its [section])"
        lines.append(f"  {key} = {value!r}: {msg}")
    return ConfigError(f"invalid configuration in {source}:\n" + "\n".join(lines))


def _parse_value(text: str) -> Any:
    """A command-line value as TOML would read it, falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as TOML) to raw config data.

    Parameters
    ----------
    data : dict
        Raw configuration, as read from TOML.
    overrides : list of str
        Items like ``"rev.tolerance=0.03"`` or ``'acquisition.folder="D:/ASV"'``.

    Returns
    -------
    dict
        A new dict with the overrides applied.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. rev.tolerance=0.03")
        section, name = parts
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"override {item!r}: {section!r} is not a section")
        out[section][name] = _parse_value(text.strip())
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate the configuration.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file; None uses the built-in defaults.
    overrides : list of str, optional
        ``section.key=value`` items applied after the file (the command line wins).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        The file cannot be read or parsed, or a key or value is invalid; the message names them.
    """
    data: dict = {}
    source = "the built-in defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {source} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {source}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from None
    data = apply_overrides(data, list(overrides))
    if overrides:
        source += " with command-line overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from None

"""``revwatch metrics VOLUME``: Table 1 and the REV report of a finished label volume.

Two inputs:

- a revwatch OME-Zarr volume (its committed slices, spacing and phases);
- a label volume from another tool: a multi-page TIFF of integer labels, with its voxel size
  (``--spacing-um DZ DY DX``) and a label-to-phase mapping (``--phase LABEL=NAME[:ROLE]``).

Mapping rule for a TIFF: each ``LABEL=NAME`` item sends source label ``LABEL`` to phase
``NAME``; several labels may go to the same phase; labels not mapped become unassigned (0,
reported in the ``unassigned`` share and logged). The phases are ordered by the smallest
source label mapped to them, and phase ``i`` of that order becomes revwatch label ``i + 1``.
A phase named ``pore``, ``electrolyte`` or ``active`` plays that role; another name plays a
role only when given as ``NAME:ROLE`` (``--phase 2=cbd:electrolyte``), and plays none otherwise
(then the metrics of that role are absent).

Output: Table 1 (:func:`processing.metrics.table1`, whole volume, no block sampling) as a rich
table in the paper's layout, or with ``--json`` the ``metrics`` document on stdout. The REV
report (:func:`rev_report`) replays the volume slice batch by slice batch through
:class:`processing.rev.RevTracker`, exactly as the live agent would have followed it, and draws
the subvolume curve of every tracked metric on the whole volume (Figure S8 of the reference
paper). In ``--json`` mode it goes under the extra key ``rev_report`` of the metrics document
(the schema allows extra keys; every other field keeps its meaning). Progress goes to stderr so
that stdout stays clean for ``--json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processing.errors import RevwatchError
from processing.phases import ROLES as _ROLES, Phases

__all__ = [
    "MetricsInputError",
    "LabelVolume",
    "parse_phase_map",
    "load_label_tiff",
    "load_volume",
    "rev_report",
    "render_table1",
    "render_rev",
    "plot_rev",
    "metrics_report",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_TIFF_SUFFIXES = (".tif", ".tiff")
# The replay refreshes the REV verdict every this many slices (the agent's default cadence,
# analysis.every_slices), but at most this many times over the volume.
_REPLAY_MAX_UPDATES = 200


class MetricsInputError(RevwatchError, ValueError):
    """The volume, a label mapping or an option of ``revwatch metrics`` is unusable."""


@dataclass(frozen=True, eq=False)
class LabelVolume:
    """A label volume in revwatch's convention, ready for the metrics.

    Attributes
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase ``i`` of `phases` is label ``i + 1``, 0 unassigned.
    spacing_um : tuple of 3 float
        ``(dz, dy, dx)`` in micrometres.
    phases : Phases
    source : str
        What was read (path and kind), for titles.
    """

    labels: np.ndarray
    spacing_um: tuple[float, float, float]
    phases: Phases
    source: str


# --------------------------------------------------------------------------- inputs


def parse_phase_map(items) -> tuple[Phases, dict[int, int]]:
    """Phases and source-label -> revwatch-label map from ``LABEL=NAME[:ROLE]`` items.

    Parameters
    ----------
    items : sequence of str
        E.g. ``["0=pore", "1=active", "2=electrolyte"]`` or ``["2=cbd:electrolyte"]``.

    Returns
    -------
    phases : Phases
        Names ordered by the smallest source label mapped to each.
    lut : dict of int to int
        Source label to revwatch label (``phases.label(name)``).

    Raises
    ------
    MetricsInputError
        An item that does not parse, a label given twice, a bad name or role, a phase given
        two roles, or fewer than 2 / more than 4 phases.
    """
    if not items:
        raise MetricsInputError("--phase: a label TIFF needs its label-to-phase mapping, "
                                "e.g. --phase 0=pore --phase 1=active --phase 2=electrolyte")
    names_of: dict[int, str] = {}
    roles: dict[str, str] = {}
    for item in items:
        label_text, sep, name = str(item).partition("=")
        if not sep:
            raise MetricsInputError(f"--phase {item!r}: expected LABEL=NAME, e.g. 0=pore")
        try:
            label = int(label_text.strip())
        except ValueError:
            raise MetricsInputError(f"--phase {item!r}: label {label_text!r} is not an integer") from None
        if label < 0:
            raise MetricsInputError(f"--phase {item!r}: label {label} is negative")
        if label in names_of:
            raise MetricsInputError(f"--phase {item!r}: label {label} is already mapped to {names_of[label]!r}")
        name, _, role = name.strip().partition(":")
        if not _NAME.match(name) or name == "unassigned":
            raise MetricsInputError(f"--phase {item!r}: phase name {name!r} must start with a letter, hold only "
                                    "letters, digits, '_' or '-', and not be 'unassigned'")
        if role:
            if role not in _ROLES:
                raise MetricsInputError(f"--phase {item!r}: role {role!r} is not one of {', '.join(_ROLES)}")
            if roles.get(role, name) != name:
                raise MetricsInputError(f"--phase {item!r}: role {role!r} is already played by {roles[role]!r}")
            roles[role] = name
        names_of[label] = name
    ordered = list(dict.fromkeys(names_of[label] for label in sorted(names_of)))
    for role, name in roles.items():
        if role in ordered and role != name:
            raise MetricsInputError(f"--phase: role {role!r} is given to {name!r} but a phase is named {role!r}")
    try:
        phases = Phases(tuple(ordered), roles=roles)
    except ValueError as exc:
        raise MetricsInputError(f"--phase: {exc}") from None
    return phases, {label: phases.label(name) for label, name in names_of.items()}


def load_label_tiff(path, *, spacing_um, phase_map) -> LabelVolume:
    """Read a multi-page TIFF of integer labels and relabel it to revwatch's convention.

    Parameters
    ----------
    path : str or os.PathLike
        Multi-page TIFF, one page per z (any integer dtype).
    spacing_um : sequence of 3 float
        ``(dz, dy, dx)`` in micrometres (required: label TIFFs rarely carry it).
    phase_map : sequence of str
        ``LABEL=NAME[:ROLE]`` items (:func:`parse_phase_map`).

    Returns
    -------
    LabelVolume

    Raises
    ------
    MetricsInputError
        Missing spacing, bad mapping, unreadable file, not a 3-D stack of integer labels.
    """
    import tifffile

    path = Path(path)
    spacing = _check_spacing(spacing_um, path)
    phases, lut = parse_phase_map(phase_map)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, source = series.axes, series.asarray()
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for a bad file; all mean the same here
        raise MetricsInputError(f"{path}: cannot read it as a TIFF: {type(exc).__name__}: {exc}") from None
    if "S" in axes and source.shape[axes.index("S")] > 1:
        raise MetricsInputError(f"{path}: holds a colour (RGB) image ({axes} {source.shape}); labels must be one integer "
                                "per voxel, one page per z slice (tifffile: photometric='minisblack')")
    source = np.squeeze(source)
    if source.ndim != 3:
        what = "a single 2-D image" if source.ndim == 2 else f"a {source.ndim}-D array {source.shape} ({axes})"
        raise MetricsInputError(f"{path}: is {what}; expected a multi-page TIFF of labels, one page per z slice")
    if not (np.issubdtype(source.dtype, np.integer) or source.dtype == bool):
        raise MetricsInputError(f"{path}: holds {source.dtype} values; labels must be integers")
    labels = np.zeros(source.shape, dtype=np.uint8)
    for src, dst in lut.items():
        labels[source == src] = dst
    present, counts = np.unique(source, return_counts=True)
    unmapped = {int(v): int(c) for v, c in zip(present, counts) if int(v) not in lut}
    if unmapped:
        share = sum(unmapped.values()) / source.size
        log.warning("%s: labels %s are not mapped by --phase: %.2f%% of the voxels count as unassigned",
                    path, sorted(unmapped), 100 * share)
    missing = sorted(set(lut) - {int(v) for v in present})
    if missing:
        log.warning("%s: mapped labels %s do not occur in the volume", path, missing)
    mapping = ", ".join(f"{src}->{phases.names[dst - 1]}" for src, dst in sorted(lut.items()))
    return LabelVolume(labels, spacing, phases, f"{path.name} (label TIFF, {mapping})")


def _check_spacing(spacing_um, path):
    if spacing_um is None:
        raise MetricsInputError(f"{path}: a label TIFF needs its voxel size: --spacing-um DZ DY DX (micrometres)")
    values = tuple(float(v) for v in spacing_um)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise MetricsInputError(f"--spacing-um {' '.join(map(str, spacing_um))}: expected three positive numbers DZ DY DX")
    return values


def load_volume(path, *, spacing_um=None, phase_map=()) -> LabelVolume:
    """Load a revwatch OME-Zarr volume or a label TIFF (chosen by what `path` is).

    A revwatch volume carries its spacing and phases: `spacing_um` and `phase_map` are refused
    for it rather than silently ignored.

    Raises
    ------
    MetricsInputError, agent.store.StoreError
    """
    path = Path(path)
    if not path.exists():
        raise MetricsInputError(f"{path}: no such file or folder")
    if path.is_dir():
        from agent.store import VolumeStore

        store = VolumeStore.open(path, read_only=True)
        if spacing_um is not None or phase_map:
            raise MetricsInputError(f"{path}: a revwatch volume carries its own spacing and phases; "
                                    "--spacing-um and --phase are for label TIFFs")
        if store.depth == 0:
            raise MetricsInputError(f"{path}: the volume has no committed slice yet")
        labels = np.asarray(store.labels[: store.depth])
        return LabelVolume(labels, tuple(float(s) for s in store.spacing_um), store.phases,
                           f"{path.name} (revwatch volume)")
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        raise MetricsInputError(f"{path}: expected a revwatch volume (an .ome.zarr folder) or a label TIFF (.tif, .tiff)")
    return load_label_tiff(path, spacing_um=spacing_um, phase_map=phase_map)


# --------------------------------------------------------------------------- REV report


def rev_report(labels, *, spacing_um, phases, transport_axis=1, tolerance=0.05, every_slices=None, rng=0,
               on_progress=None) -> dict:
    """REV report of a finished volume: the live verdict replayed, and the subvolume curves.

    The tracked metrics are the live agent's default set
    (:func:`processing.rev.table1_metrics` without the expensive ones: every volume fraction,
    A_active / V_cell and the coverage of the active phase). The volume is replayed through a
    :class:`processing.rev.RevTracker` as it would have grown during the acquisition (a refresh
    every `every_slices` slices, with the exact running values of the first k slices from
    additive counts, as :class:`agent.analysis.VolumeAnalysis` computes them): the final
    ``rev`` document gives the relative error (Kanit, on z-blocks of the whole volume),
    the trend along z and the verdict, and the replay says at which slice a live run would
    have stopped. The subvolume curve of each metric is then drawn on the whole volume and its
    REV edge replaces the tracker's (drawn on an earlier depth).

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
    spacing_um : sequence of 3 float
        ``(dz, dy, dx)`` in micrometres.
    phases : Phases
    transport_axis : int
        0 z, 1 y, 2 x (for the metrics that need one).
    tolerance : float
        Relative tolerance of every metric, in (0, 1).
    every_slices : int, optional
        Slices between two replayed refreshes; default the agent's cadence
        (``analysis.every_slices``), coarsened to at most 200 refreshes.
    rng : None, int or numpy.random.Generator
        Seed of the subvolume positions.
    on_progress : callable, optional
        ``on_progress(done, total)`` after each replayed refresh and each curve.

    Returns
    -------
    dict
        The final ``rev`` document (``representative``, ``depth_slices``, ``tolerance``,
        ``metrics`` {name: {``value``, ``relative_error``, ``converged``, ``rev_edge_um``,
        ``slices_needed``, ``not_stationary``, ``trend_relative_drift``, ``reason``, ...}},
        ``reasons``, ...) plus ``stop_depth_slices`` (where a live run would have latched
        ``stop``, None if never), ``every_slices``, and per metric ``curve`` (``edges_um``,
        ``relative_std``, ``n_samples``, ``kanit_alpha``, ``kanit_relative_error`` of the
        whole volume from the cube variances) and ``running`` (``depth_slices``, ``values``).
    """
    from agent.analysis import rev_values
    from agent.config import AnalysisConfig
    from processing.metrics import count_volume, counts_metrics
    from processing.rev import RevTracker, kanit_from_curve, subvolume_curve, table1_metrics

    depth = labels.shape[0]
    if every_slices is None:
        every_slices = max(AnalysisConfig.model_fields["every_slices"].default, math.ceil(depth / _REPLAY_MAX_UPDATES))
    metrics = table1_metrics(phases, transport_axis=transport_axis, expensive=False)
    rng = np.random.default_rng(rng)
    # The tracker's own subvolume curves only feed its rev_edge_um (not the verdict), which the
    # whole-volume curves below replace: the fewest cubes it accepts keep the replay cheap.
    # A finished volume: the horizon is its depth (what a live run that planned it would have asked).
    tracker = RevTracker(spacing_um=spacing_um, metrics=metrics, tolerance=tolerance, planned_depth_slices=depth,
                         subvolume_samples=2, rng=rng)
    stops = list(range(every_slices, depth, every_slices)) + [depth]
    total = len(stops) + len(metrics)
    counts, done, stop_depth = None, 0, None
    for n, k in enumerate(stops, start=1):
        new = count_volume(labels[done:k], phases=phases, previous_slice=labels[done - 1] if done else None, threads=1)
        counts = new if counts is None else counts + new
        done = k
        running = rev_values(counts_metrics(counts, spacing_um=spacing_um, phases=phases))
        doc = tracker.update(labels[:k], values=running)
        if stop_depth is None and tracker.stop is not None:
            stop_depth = k
        if on_progress is not None:
            on_progress(n, total)
    report = json.loads(json.dumps(doc))
    report.update(stop_depth_slices=stop_depth, every_slices=every_slices)
    volume_um3 = float(np.prod(labels.shape) * np.prod(spacing_um))
    for i, metric in enumerate(metrics):
        curve = subvolume_curve(labels, metric, spacing_um=spacing_um, tolerance=tolerance, rng=rng)
        entry = report["metrics"][metric.name]
        entry["rev_edge_um"] = curve.rev_edge_um
        kanit_alpha = kanit_error = None
        # Edges where some cube has no value (no active surface in a small cube) stay out of the fit.
        usable = np.isfinite(curve.mean) & np.isfinite(curve.std)
        fitted = dataclasses.replace(curve, n_samples=np.where(usable, curve.n_samples, 0))
        if np.count_nonzero((fitted.n_samples >= 2) & (curve.std > 0)) >= 2:
            fit = kanit_from_curve(fitted)
            kanit_alpha, kanit_error = fit.alpha, _finite(fit.relative_error(volume_um3))
        history = tracker.history(metric.name)
        entry["curve"] = {
            "edges_um": curve.edges_um.tolist(),
            "relative_std": [_finite(v) for v in curve.relative_std],
            "n_samples": curve.n_samples.tolist(),
            "kanit_alpha": kanit_alpha,
            "kanit_relative_error": kanit_error,
        }
        entry["running"] = {"depth_slices": history[:, 0].astype(int).tolist(),
                            "values": [_finite(v) for v in history[:, 1]]}
        if on_progress is not None:
            on_progress(len(stops) + i + 1, total)
    return report


def _finite(value):
    return float(value) if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- rendering


def _pct(value, digits=1):
    return "—" if value is None else f"{100 * value:.{digits}f}"


def _num(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _with_error(value, error, digits=2):
    """A value with its sampling error when it was estimated from a sample."""
    if value is None or not error:
        return _num(value, digits)
    return f"{value:.{digits}f} ± {error:.{digits}f}"


def render_table1(doc, phases: Phases, *, title="Table 1", composition=None):
    """Table 1 of a ``metrics`` document (from ``table1(..., details=True)``) in the paper's layout.

    Parameters
    ----------
    doc : dict
    phases : Phases
    title : str
    composition : dict, optional
        ``{"weight_fractions", "densities_g_cm3"}`` the document's ``targeted_volume_ratio``
        came from (shown beside it); the targeted ratio is shown only when the document has it.

    Returns
    -------
    rich.table.Table
        Sections "Volume fraction (%)", "Ionic network", "Electronic network", "Pore
        network" and "Specific surface (um^-1)".
    """
    from rich.table import Table

    roles = phases.roles
    active, electrolyte, pore = roles.get("active"), roles.get("electrolyte"), roles.get("pore")
    table = Table(title=title, show_lines=False)
    table.add_column("Metrics", style="bold")
    table.add_column("", no_wrap=False)
    table.add_column("Value", justify="right")
    rows: list[tuple[str, str, str]] = []

    def section(name, items):
        items = [(label, value) for label, value in items if value is not None]
        for i, (label, value) in enumerate(items):
            rows.append((name if i == 0 else "", label, value))
        if items:
            rows.append(None)

    fractions = doc["volume_fraction"]
    vf = [(name, _pct(fractions.get(name))) for name in phases.names]
    vf.append(("Unassigned (% of all voxels; phases are % of the assigned)", _pct(fractions.get("unassigned"))))
    ratio = doc.get("active_electrolyte_ratio")
    if active and electrolyte and ratio is not None:
        vf.append((f"{active}:{electrolyte} ratio", f"{100 * ratio:.0f}:{100 * (1 - ratio):.0f}"))
    targeted = doc.get("targeted_volume_ratio")
    if targeted:
        label = "targeted volume ratio " + ":".join(targeted)
        if composition:
            weights = ":".join(f"{v:g}" for v in composition["weight_fractions"].values())
            densities = " / ".join(f"{v:g}" for v in composition["densities_g_cm3"].values())
            label += f" ({weights} by weight, {densities} g/cm3)"
        vf.append((label, ":".join(f"{100 * v:.0f}" for v in targeted.values())))
    section("Volume fraction (%)", vf)

    excluded = (doc.get("details") or {}).get("tortuosity_excluded_share", {})
    errors = doc.get("sampling_error") or {}
    ionic = []
    for name, taus in doc.get("tortuosity_geometric", {}).items():
        for direction, tau in taus.items():
            ex = excluded.get(name, {}).get(direction)
            note = "" if ex is None else f" ({_pct(ex)}% of face voxels not percolating)"
            ionic.append((f"τ {direction} tortuosity {name}{note}",
                          _with_error(tau, errors.get("tortuosity_geometric", {}).get(name, {}).get(direction))))
    for name, taus in (doc.get("tortuosity_factor") or {}).items():
        for direction, tau in taus.items():
            ionic.append((f"τ {direction} tortuosity factor {name} (diffusion)", _num(tau)))
    thickness = doc.get("local_thickness_um", {})
    thickness_error = errors.get("local_thickness_um", {})
    thickness_rows = [name for name in thickness if name != active]
    for name in thickness_rows:
        ionic.append((f"Average local thickness {name} (μm)",
                      _with_error(thickness[name]["mean"], thickness_error.get(name, {}).get("mean"))))
        ionic.append((f"Std dev. local thickness {name} (μm)", _num(thickness[name]["std"])))
    section("Ionic network", ionic)

    electronic = [(f"% connected {name}", _pct(share)) for name, share in doc.get("connected_share", {}).items()]
    if doc.get("face_valid_share") is not None and doc["face_valid_share"] < 1:
        electronic.append(("% of the current-collector face assigned", _pct(doc["face_valid_share"])))
    # the covering phase is the one phase without a coverage of its own
    uncovered = [name for name in phases.names if name not in doc.get("coverage_share", {})]
    covering = uncovered[0] if len(uncovered) == 1 else None
    if active:
        electronic.append((f"A_{active}/V_cell (μm⁻¹)", _num(doc.get("surface_area_per_cell_volume_um-1", {}).get(active))))
        if covering:
            electronic.append((f"% coverage {active} by {covering}", _pct(doc.get("coverage_share", {}).get(active))))
        if active in thickness:
            electronic.append((f"Average local thickness {active} (μm)",
                               _with_error(thickness[active]["mean"], thickness_error.get(active, {}).get("mean"))))
            electronic.append((f"Std dev. local thickness {active} (μm)", _num(thickness[active]["std"])))
    section("Electronic network", electronic)

    pores = [(f"% interconnected {name}", _pct(share)) for name, share in doc.get("interconnected_share", {}).items()]
    if pore and active:
        pores.append((f"Inner porosity (% of {pore} enclosed by {active})", _pct(doc.get("inner_porosity_share"), 2)))
    section("Pore network", pores)

    per_phase = doc.get("surface_area_per_phase_volume_um-1", {})
    section("Specific surface (μm⁻¹)", [(f"A_{name}/V_{name}", _num(per_phase.get(name))) for name in phases.names])

    for row in rows[:-1]:
        if row is None:
            table.add_section()
        else:
            table.add_row(*row)
    return table


# Short display names of the REV metric fields (the JSON keeps the full names).
_SHORT = {
    "volume_fraction": "fraction {}",
    "surface_area_per_cell_volume_um-1": "A_{}/V_cell",
    "surface_area_per_phase_volume_um-1": "A_{0}/V_{0}",
    "coverage_share": "coverage {}",
    "local_thickness_um": "thickness {}",
    "connected_share": "connected {}",
    "interconnected_share": "interconnected {}",
    "tortuosity_geometric": "τ {}",
}


_FIELD_LABELS = {
    "volume_fraction": "volume fraction",
    "surface_area_per_cell_volume_um-1": "A/V_cell (μm⁻¹)",
    "surface_area_per_phase_volume_um-1": "A/V_phase (μm⁻¹)",
    "coverage_share": "coverage by electrolyte",
    "local_thickness_um": "local thickness (μm)",
    "connected_share": "connected share",
    "interconnected_share": "interconnected share",
    "tortuosity_geometric": "geometric tortuosity",
}


def _short(name):
    field, _, rest = name.partition(".")
    rest = rest.removesuffix(".mean").replace(".", " ")
    return _SHORT[field].format(rest) if field in _SHORT and rest else name


def _signed_pct(value):
    return "—" if value is None else f"{100 * value:+.1f}%"


def _trend_text(entry):
    drift = entry.get("trend_relative_drift")
    if entry.get("not_stationary"):
        return f"[red]drift {_signed_pct(drift)}[/]"
    return "untested" if drift is None else f"none {_signed_pct(drift)}"


def render_rev(report, *, spacing_um):
    """Terminal table of :func:`rev_report` (one row per tracked metric) with the verdict as caption.

    Columns: value on the whole volume, REV edge of the subvolume curve, relative error
    (Kanit, z-blocks of the whole volume at the tracker's confidence; "(cubes)" when the
    volume is too thin for that and the cube variances of the subvolume curve gave it),
    converged, relative drift along z (and whether it is significant), slices still needed.

    Returns
    -------
    rich.table.Table
    """
    from rich.table import Table

    dz = spacing_um[0]
    tol = report["tolerance"]
    table = Table(title=f"REV report (tolerance {100 * tol:.0f}%, depth {report['depth_slices']} slices "
                        f"= {report['depth_slices'] * dz:.3g} μm)")
    for name, justify in (("Metric", "left"), ("Value", "right"), ("REV edge μm", "right"), ("Rel. error", "right"),
                          ("Conv.", "center"), ("Trend along z", "left"), ("More slices", "right")):
        table.add_column(name, justify=justify, no_wrap=name == "Metric")
    for name, entry in report["metrics"].items():
        edge = entry.get("rev_edge_um")
        error = entry.get("relative_error")
        if error is None:
            error = entry["curve"].get("kanit_relative_error")
            error_text = "—" if error is None else f"{100 * error:.1f}% (cubes)"
        else:
            error_text = f"{100 * error:.1f}%"
        needed = entry.get("slices_needed")
        table.add_row(
            _short(name), _num(entry.get("value"), 4),
            f"> {entry['curve']['edges_um'][-1]:.3g}" if edge is None else f"{edge:.3g}", error_text,
            "[green]yes[/]" if entry["converged"] else "[yellow]no[/]", _trend_text(entry),
            "0" if entry["converged"] else "—" if needed is None else "0, hold" if needed == 0 else str(needed),
        )
    stop = report.get("stop_depth_slices")
    if report["representative"]:
        verdict = f"[green]REPRESENTATIVE[/]: a live run would have stopped at slice {stop} ({stop * dz:.3g} μm)"
    else:
        verdict = "[yellow]NOT REPRESENTATIVE[/]: " + "; ".join(report.get("reasons", [])[:4])
        if stop is not None:
            verdict += f" (a live run would have stopped at slice {stop})"
    table.caption = verdict
    return table


def plot_rev(report, path, *, spacing_um, title=""):
    """Write the REV curves as a PNG: per metric group, relative std vs edge and running value vs depth.

    Groups are the metric fields (``volume_fraction``, ``surface_area_per_cell_volume_um-1``,
    ...), one row of two panels each, like Figure S8 of the reference paper. Uses Matplotlib's
    Agg canvas directly (no pyplot, no display, no global backend change).

    Parameters
    ----------
    report : dict
        From :func:`rev_report`.
    path : str or os.PathLike
        The PNG file.
    spacing_um : sequence of 3 float
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    groups: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in report["metrics"].items():
        field, _, rest = name.partition(".")
        groups.setdefault(field, []).append((rest or field, entry))
    tol = report["tolerance"]
    dz = spacing_um[0]
    fig = Figure(figsize=(11, 3.2 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for (field, members), (ax_edge, ax_depth) in zip(groups.items(), axes):
        for label, entry in members:
            curve, running = entry["curve"], entry["running"]
            rel = np.array([np.nan if v is None else 100 * v for v in curve["relative_std"]])
            line, = ax_edge.plot(curve["edges_um"], rel, "o-", label=label)
            if entry.get("rev_edge_um") is not None:
                ax_edge.axvline(entry["rev_edge_um"], color=line.get_color(), ls=":", lw=1)
            values = np.array([np.nan if v is None else v for v in running["values"]])
            ax_depth.plot(np.asarray(running["depth_slices"]) * dz, values, "-", color=line.get_color(), label=label)
            final = entry.get("value")
            if final is not None:
                ax_depth.axhspan(final * (1 - tol), final * (1 + tol), color=line.get_color(), alpha=0.12, lw=0)
        ax_edge.axhline(100 * tol, color="k", ls="--", lw=1, label=f"tolerance {100 * tol:.0f}%")
        if any(v is not None for _, entry in members for v in entry["curve"]["relative_std"]):
            ax_edge.set_xscale("log")
            ax_edge.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax_edge.xaxis.set_major_formatter(ScalarFormatter())
            ax_edge.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax_edge.text(0.5, 0.5, "volume too small: fewer than 2 subvolumes at every edge",
                         transform=ax_edge.transAxes, ha="center", va="center")
        ax_edge.set_xlabel("subvolume edge (μm)")
        ax_edge.set_ylabel("relative std (%)")
        ax_edge.set_title(f"{_FIELD_LABELS.get(field, field)}: spread over subvolumes", fontsize="medium")
        ax_edge.legend(fontsize="small")
        ax_depth.set_xlabel("depth (μm)")
        ax_depth.set_ylabel(_FIELD_LABELS.get(field, field))
        ax_depth.set_title(f"on the first slices (band: ±{100 * tol:.0f}% of the final value)", fontsize="medium")
        ax_depth.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path


# --------------------------------------------------------------------------- command


def metrics_report(volume, *, json_output=False, spacing_um=None, phase_map=(), transport_axis="y", plot=None,
                   rev=True, tolerance=0.05, network_phases=None, composition=None, scheduler=None,
                   chunk_voxels=None, halo_slices=None, tortuosity_max_voxels=None, pictures=None, console=None,
                   err_console=None) -> int:
    """``revwatch metrics VOLUME``: print Table 1 (and the REV report) of a volume.

    Parameters
    ----------
    volume : str or os.PathLike
        A revwatch OME-Zarr volume or a multi-page label TIFF.
    json_output : bool
        Print the ``metrics`` document as JSON (with ``rev_report`` unless `rev` is False)
        and nothing else on stdout.
    spacing_um : sequence of 3 float, optional
        ``(dz, dy, dx)`` of a label TIFF, micrometres.
    phase_map : sequence of str
        ``LABEL=NAME[:ROLE]`` items for a label TIFF (see the module docstring).
    transport_axis : {"y", "x", "z"}
        Current collector to separator; z is fine for a finished volume.
    plot : str or os.PathLike, optional
        Write the REV curves as a PNG there (needs `rev`).
    rev : bool
        Add the REV report.
    tolerance : float
        REV tolerance, in (0, 1).
    network_phases : dict, optional
        The phase names of the network metrics, keys ``tortuosity``, ``thickness``,
        ``connected``, ``interconnected``, ``tortuosity_factor`` (lists) and
        ``coverage_by``; a key absent or None keeps the reference study's default
        (:class:`processing.metrics.NetworkPhases`).
    composition : dict, optional
        ``{"weight_fractions": {...}, "densities_g_cm3": {...}}``: adds the targeted
        volume ratio (not shown otherwise).
    scheduler : str, optional
        ``tcp://host:port`` of a dask.distributed scheduler; default local threads.
    chunk_voxels, halo_slices, tortuosity_max_voxels : int, optional
        Chunking of the whole-volume metrics (:func:`processing.metrics.table1`).
    pictures : str or os.PathLike, optional
        Write the pictures of the volume into this folder (:func:`agent.pictures.write_volume_pictures`,
        with the REV curves of this report).
    console, err_console : rich.console.Console, optional
        Where the tables and the progress go (default stdout and stderr).

    Returns
    -------
    int
        0.

    Raises
    ------
    MetricsInputError, agent.store.StoreError
        Any unusable input, before anything expensive is computed.
    """
    from rich.console import Console

    from agent.analysis import whole_volume_table1
    from processing.metrics import CHUNK_VOXELS, HALO_SLICES, NetworkPhases

    if transport_axis not in ("z", "y", "x"):
        raise MetricsInputError(f"--transport-axis {transport_axis!r}: expected z, y or x")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise MetricsInputError(f"--tolerance {tolerance!r}: expected a relative tolerance in (0, 1), e.g. 0.05")
    if plot is not None:
        plot = Path(plot)
        if not rev:
            raise MetricsInputError(f"--plot {plot}: the plot shows the REV report, which --no-rev turns off")
        if plot.suffix.lower() != ".png":
            raise MetricsInputError(f"--plot {plot}: expected a .png file name")
        if not plot.parent.is_dir():
            raise MetricsInputError(f"--plot {plot}: folder {plot.parent} does not exist")
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    data = load_volume(volume, spacing_um=spacing_um, phase_map=phase_map)
    try:
        network = NetworkPhases.resolve(data.phases, **(network_phases or {}))
    except (ValueError, TypeError) as exc:
        raise MetricsInputError(f"network metric phases: {exc}") from None
    axis = "zyx".index(transport_axis)
    shape = " x ".join(map(str, data.labels.shape))
    t0 = time.perf_counter()
    with err_console.status(f"Table 1 of {shape} voxels (tortuosity, local thickness, connectivity) ..."):
        doc = whole_volume_table1(
            data.labels, spacing_um=data.spacing_um, phases=data.phases, transport_axis=axis, network=network,
            composition=composition, scheduler=scheduler, details=True,
            chunk_voxels=chunk_voxels or CHUNK_VOXELS, halo_slices=HALO_SLICES if halo_slices is None else halo_slices,
            tortuosity_max_voxels=tortuosity_max_voxels)
    seconds = time.perf_counter() - t0
    log.info("Table 1 of %s (%s voxels) in %.1f s", data.source, shape, seconds)
    report = None
    if rev:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("REV: replaying the acquisition, subvolume curves", total=None)
            report = rev_report(data.labels, spacing_um=data.spacing_um, phases=data.phases, transport_axis=axis,
                                tolerance=tolerance,
                                on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    if pictures is not None:
        from agent.pictures import write_volume_pictures

        try:
            written = write_volume_pictures(data, pictures, volume=volume, rev_report=report, tolerance=tolerance)
            err_console.print("pictures: " + ", ".join(str(p) for p in written.values()))
        except OSError as exc:  # e.g. a read-only data folder: the table is still worth having
            log.warning("pictures not written to %s: %s", pictures, exc)
            err_console.print(f"[yellow]pictures not written to {pictures}: {exc}[/] (--pictures DIR, --no-pictures)")
    if json_output:
        out = dict(doc)
        if report is not None:
            out["rev_report"] = report
        console.file.write(json.dumps(out, allow_nan=False) + "\n")
        return 0
    dz, dy, dx = data.spacing_um
    title = (f"Table 1: {data.source}\n{shape} voxels of {dz:g} x {dy:g} x {dx:g} μm, "
             f"transport along {transport_axis}, computed in {seconds:.1f} s")
    console.print(render_table1(doc, data.phases, title=title, composition=composition))
    if report is not None:
        console.print(render_rev(report, spacing_um=data.spacing_um))
        if plot is not None:
            plot_rev(report, plot, spacing_um=data.spacing_um, title=data.source)
            console.print(f"REV curves written to {plot}")
    return 0

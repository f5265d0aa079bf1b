"""``revwatch compare A B C ...``: volumes side by side in the layout of the paper's Table 1.

Rows are the metrics, columns the samples (named with ``--names``), as in Table 1 of the
reference study. Every value carries its standard uncertainty ``u`` from the REV analysis of
its own volume (:mod:`processing.compare`: the subvolume-cube variances extrapolated to the volume of
the sample with Kanit's law at its asymptotic exponent 1). A value is marked (▲ higher, ▼ lower) when it
differs from the reference column (the first, or ``--reference``) by more than
``k * sqrt(u_ref^2 + u^2)``; ``--json`` and ``--csv`` carry every pair of columns.

Inputs are what ``revwatch metrics`` reads (:func:`agent.report.load_volume`): revwatch
OME-Zarr volumes, or label TIFFs with ``--spacing-um`` and ``--phase`` (the same for every TIFF
of the command). Figures (``--figures DIR``): ``rev_curves.png``, the subvolume curves of every
metric with the samples overlaid (Figure S8 of the paper: relative std against cube edge), and
``local_thickness.png``, the local-thickness distributions overlaid (Figure S10).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path

from agent.report import MetricsInputError, load_volume
from processing.compare import UNCERTAINTY_METHOD, MetricUncertainty, difference, sample_table

__all__ = ["compare_volumes", "table_rows", "render_comparison", "comparison_csv", "plot_rev_curves",
           "plot_thickness_distributions", "compare_report"]

log = logging.getLogger(__name__)

_SECTIONS = ("Volume fraction", "Ionic network", "Electronic network", "Pore network", "Specific surface", "Other")
_FIELDS = {
    "volume_fraction": "{}",
    "active_electrolyte_ratio": "{active} share of {active}+{electrolyte}",
    "tortuosity_geometric": "τ {1} tortuosity {0}",
    "local_thickness_um": "{1} local thickness {0}",
    "connected_share": "% connected {}",
    "interconnected_share": "% interconnected {}",
    "surface_area_per_cell_volume_um-1": "A_{}/V_cell",
    "surface_area_per_phase_volume_um-1": "A_{0}/V_{0}",
    "coverage_share": "% coverage {} by {electrolyte}",
    "inner_porosity_share": "inner porosity (% of pore in active)",
}


def _kind(name):
    """(scale, unit) for display: shares in %, lengths in um, surfaces in um^-1."""
    field = name.split(".")[0]
    if field in ("volume_fraction", "connected_share", "interconnected_share", "coverage_share",
                 "inner_porosity_share", "active_electrolyte_ratio"):
        return 100.0, "%"
    if field == "local_thickness_um":
        return 1.0, "μm"
    if field.endswith("_um-1"):
        return 1.0, "μm⁻¹"
    return 1.0, ""


def _section(name, roles):
    field, _, rest = name.partition(".")
    phase = rest.split(".")[0]
    if field in ("volume_fraction", "active_electrolyte_ratio"):
        return "Volume fraction"
    if field == "tortuosity_geometric" or (field == "local_thickness_um" and phase == roles.get("electrolyte")):
        return "Ionic network"
    if field == "connected_share" or (field == "local_thickness_um" and phase == roles.get("active")) or (
            field in ("surface_area_per_cell_volume_um-1", "coverage_share") and phase == roles.get("active")):
        return "Electronic network"
    if field in ("interconnected_share", "inner_porosity_share"):
        return "Pore network"
    if field.startswith("surface_area") or field == "coverage_share":
        return "Specific surface"
    return "Other"


def _label(name, roles):
    field, _, rest = name.partition(".")
    parts = rest.split(".") if rest else []
    template = _FIELDS.get(field)
    if template is None:
        return name
    if field == "active_electrolyte_ratio":
        return template.format(active=roles.get("active", "active"),
                               electrolyte=roles.get("electrolyte", "electrolyte"))
    if field == "coverage_share":
        return template.format(*parts, electrolyte=roles.get("electrolyte", "electrolyte"))
    if field == "local_thickness_um" and len(parts) == 2:
        return template.format(parts[0], {"mean": "average", "std": "std dev."}.get(parts[1], parts[1]))
    if field == "tortuosity_geometric" and len(parts) == 2:
        return template.format(parts[0], parts[1])
    return template.format(*parts) if parts else template


def table_rows(names, roles) -> list[dict]:
    """Rows of the comparison in the paper's layout.

    Parameters
    ----------
    names : iterable of str
        Flattened metric names (:func:`processing.compare.flatten_metrics`) present in any sample.
    roles : dict
        Role -> phase name (for the sections and the labels).

    Returns
    -------
    list of dict
        ``{"metric", "section", "label", "unit", "scale"}``, sections in Table 1 order, metrics
        in the order given within a section.
    """
    rows = [{"metric": n, "section": _section(n, roles), "label": _label(n, roles), "unit": _kind(n)[1],
             "scale": _kind(n)[0]} for n in dict.fromkeys(names)]
    return sorted(rows, key=lambda r: _SECTIONS.index(r["section"]))


def _entry(u: MetricUncertainty) -> dict:
    return {"value": u.value, "uncertainty": u.uncertainty, "relative_error": u.relative_error,
            "kanit_alpha": u.alpha, "uncertainty_reason": u.reason,
            "curve": {"edges_um": list(u.edges_um),
                      "relative_std": [None if math.isnan(r) else r for r in u.relative_std],
                      "n_samples": list(u.n_samples)}}


def compare_volumes(paths, *, names=None, spacing_um=None, phase_map=(), transport_axis="y", k=2.0, n_samples=16,
                    min_edge_um=1.0, rng=0, on_progress=None) -> dict:
    """Table 1 of several volumes with uncertainties and marked differences, as one JSON-ready dict.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        revwatch OME-Zarr volumes or label TIFFs (at least 2).
    names : sequence of str, optional
        Column names, one per path; default the file names.
    spacing_um, phase_map
        For label TIFFs, as ``revwatch metrics`` (:func:`agent.report.load_volume`).
    transport_axis : {"y", "x", "z"}
    k : float
        Coverage factor of the difference test.
    n_samples : int
        Cubes per edge of the subvolume curves (:func:`processing.compare.sample_table`).
    min_edge_um : float
        Smallest cube edge.
    rng : None, int or numpy.random.Generator
        Seed of the cube positions (the same for every sample).
    on_progress : callable, optional
        ``on_progress(name, seconds)`` after each sample.

    Returns
    -------
    dict
        ``uncertainty`` {``method``, ``k``, ``test``}, ``samples`` [{``name``, ``source``,
        ``shape``, ``spacing_um``, ``volume_um3``, ``seconds``, ``metrics`` (the metrics
        document), ``values`` {metric: {``value``, ``uncertainty``, ``relative_error``,
        ``kanit_alpha``, ``uncertainty_reason``, ``curve``}}}], ``rows`` [{``metric``,
        ``section``, ``label``, ``unit``, ``scale``, ``differences`` [{``a``, ``b``,
        ``difference`` (b - a), ``combined_uncertainty``, ``significant``}]}].

    Raises
    ------
    MetricsInputError
        Fewer than 2 paths, names not matching, a bad option or input (before any computation).
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise MetricsInputError(f"compare: give at least 2 volumes, got {len(paths)}")
    names = [p.name for p in paths] if not names else [str(n) for n in names]
    if len(names) != len(paths):
        raise MetricsInputError(f"--names: {len(names)} names for {len(paths)} volumes")
    if len(set(names)) != len(names):
        raise MetricsInputError(f"--names: names must differ, got {names}")
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        raise MetricsInputError(f"--k {k!r}: expected a positive coverage factor, e.g. 2")
    if int(n_samples) < 2:
        raise MetricsInputError(f"--samples {n_samples!r}: expected at least 2 cubes per edge")
    if transport_axis not in ("z", "y", "x"):
        raise MetricsInputError(f"--transport-axis {transport_axis!r}: expected z, y or x")
    for p in paths:
        if not p.exists():
            raise MetricsInputError(f"{p}: no such file or folder")
    if (spacing_um is not None or phase_map) and all(p.is_dir() for p in paths):
        raise MetricsInputError("--spacing-um and --phase are for label TIFFs; revwatch volumes carry their own")
    axis = "zyx".index(transport_axis)
    samples, tables, roles = [], [], {}
    for name, path in zip(names, paths):
        # one volume in memory at a time; a label TIFF takes the spacing and mapping of the command
        tiff = not path.is_dir()
        data = load_volume(path, spacing_um=spacing_um if tiff else None, phase_map=phase_map if tiff else ())
        t0 = time.perf_counter()
        table = sample_table(data.labels, spacing_um=data.spacing_um, phases=data.phases, transport_axis=axis,
                             n_samples=n_samples, min_edge_um=min_edge_um, rng=rng)
        seconds = time.perf_counter() - t0
        log.info("compare: %s (%s) in %.1f s", name, data.source, seconds)
        if on_progress is not None:
            on_progress(name, seconds)
        for role, phase in data.phases.roles.items():
            roles.setdefault(role, phase)
        tables.append(table)
        samples.append({"name": name, "source": data.source, "shape": list(data.labels.shape),
                        "spacing_um": list(data.spacing_um), "volume_um3": table.volume_um3,
                        "seconds": seconds, "metrics": table.metrics,
                        "values": {m: _entry(u) for m, u in table.uncertainty.items()}})
    rows = table_rows([m for t in tables for m in t.uncertainty], roles)
    missing = MetricUncertainty(None, None, None, None, (), (), ())
    for row in rows:
        row["differences"] = []
        for i in range(len(tables)):
            for j in range(i + 1, len(tables)):
                d = difference(tables[i].uncertainty.get(row["metric"], missing),
                               tables[j].uncertainty.get(row["metric"], missing), k=k)
                row["differences"].append({"a": names[i], "b": names[j], "difference": d.difference,
                                           "combined_uncertainty": d.combined_uncertainty,
                                           "significant": d.significant})
    return {
        "uncertainty": {"method": UNCERTAINTY_METHOD, "k": float(k),
                        "test": f"marked when |b - a| > k * sqrt(u_a^2 + u_b^2), k = {k:g}",
                        "n_samples": int(n_samples), "min_edge_um": float(min_edge_um)},
        "transport_axis": transport_axis,
        "samples": samples,
        "rows": rows,
    }


def _fmt(value, u, scale):
    if value is None:
        return "—"
    v = value * scale
    if u is None:
        return f"{v:.3g} ± ?"
    du = u * scale
    digits = max(0, min(4, 1 - math.floor(math.log10(du)))) if du > 0 else 2
    return f"{v:.{digits}f} ± {du:.{digits}f}"


def _pair(row, a, b):
    for d in row["differences"]:
        if (d["a"], d["b"]) == (a, b):
            return d, 1
        if (d["a"], d["b"]) == (b, a):
            return d, -1
    return None, 1


def render_comparison(doc, *, reference=None):
    """The comparison as a rich table: rows the metrics, columns the samples.

    Parameters
    ----------
    doc : dict
        From :func:`compare_volumes`.
    reference : str, optional
        Column the others are tested against (default the first).

    Returns
    -------
    rich.table.Table
    """
    from rich.table import Table

    names = [s["name"] for s in doc["samples"]]
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise MetricsInputError(f"--reference {reference!r}: not one of the column names {names}")
    k = doc["uncertainty"]["k"]
    table = Table(title="Table 1 side by side (value ± standard uncertainty u)", show_lines=False)
    table.add_column("Metrics", style="bold")
    table.add_column("")
    for name in names:
        table.add_column(name + (" (ref.)" if name == reference else ""), justify="right", no_wrap=True)
    section = None
    for row in doc["rows"]:
        if section is not None and row["section"] != section:
            table.add_section()
        cells = []
        for sample in doc["samples"]:
            entry = sample["values"].get(row["metric"], {})
            text = _fmt(entry.get("value"), entry.get("uncertainty"), row["scale"])
            if sample["name"] != reference:
                d, sign = _pair(row, reference, sample["name"])
                if d and d["significant"]:
                    text = f"[bold]{text} {'▲' if sign * d['difference'] > 0 else '▼'}[/]"
                elif d and d["significant"] is None and d["difference"] is not None:
                    text += " ?"
            cells.append(text)
        unit = f" ({row['unit']})" if row["unit"] else ""
        table.add_row(row["section"] if row["section"] != section else "", row["label"] + unit, *cells)
        section = row["section"]
    table.caption = (f"▲/▼: higher/lower than {reference} by more than k·sqrt(u_{reference}² + u²), k = {k:g}; "
                     f"?: no uncertainty (too few subvolumes). u: {doc['uncertainty']['method']}.")
    return table


def comparison_csv(doc) -> str:
    """The comparison as CSV text: one line per metric.

    Columns: ``section``, ``metric``, ``label``, ``unit`` (of the values; shares are fractions
    in [0, 1] here, as in the JSON), then per sample ``<name> value``, ``<name> uncertainty``,
    ``<name> relative_error``, then per pair ``<b> - <a>``, ``<b> vs <a> combined_uncertainty``,
    ``<b> vs <a> significant`` (true, false or empty when undecidable). Undefined values are empty.
    """
    names = [s["name"] for s in doc["samples"]]
    pairs = [(d["a"], d["b"]) for d in doc["rows"][0]["differences"]] if doc["rows"] else []
    header = ["section", "metric", "label", "unit"]
    for n in names:
        header += [f"{n} value", f"{n} uncertainty", f"{n} relative_error"]
    for a, b in pairs:
        header += [f"{b} - {a}", f"{b} vs {a} combined_uncertainty", f"{b} vs {a} significant"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def cell(v):
        return "" if v is None else str(v).lower() if isinstance(v, bool) else repr(float(v))

    for row in doc["rows"]:
        line = [row["section"], row["metric"], row["label"], "" if row["unit"] == "%" else row["unit"]]
        for s in doc["samples"]:
            e = s["values"].get(row["metric"], {})
            line += [cell(e.get("value")), cell(e.get("uncertainty")), cell(e.get("relative_error"))]
        for d in row["differences"]:
            line += [cell(d["difference"]), cell(d["combined_uncertainty"]), cell(d["significant"])]
        writer.writerow(line)
    return buf.getvalue()


def _figure(n_panels, *, columns=3, size=(4.0, 3.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(n_panels / columns))
    cols = min(columns, max(1, n_panels))
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def plot_rev_curves(doc, path, *, tolerance=0.05):
    """Subvolume curves of every metric, one panel per metric, the samples overlaid (Figure S8).

    Parameters
    ----------
    doc : dict
        From :func:`compare_volumes`.
    path : str or os.PathLike
        The PNG.
    tolerance : float
        Drawn as the REV threshold (5 %, the common default).

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rows = [r for r in doc["rows"] if any(
        any(v is not None for v in s["values"].get(r["metric"], {}).get("curve", {}).get("relative_std", []))
        for s in doc["samples"])]
    fig, axes = _figure(len(rows))
    for row, ax in zip(rows, axes):
        for sample in doc["samples"]:
            curve = sample["values"].get(row["metric"], {}).get("curve")
            if not curve:
                continue
            rel = [math.nan if v is None else 100 * v for v in curve["relative_std"]]
            ax.plot(curve["edges_um"], rel, "o-", ms=3, label=sample["name"])
        ax.axhline(100 * tolerance, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(row["label"], fontsize="medium")
        ax.set_xlabel("subvolume edge (μm)")
        ax.set_ylabel("relative std (%)")
        ax.legend(fontsize="small")
    fig.suptitle(f"REV: relative standard deviation over subvolume cubes (dashed: {100 * tolerance:.0f}%)")
    return _save(fig, path)


def plot_thickness_distributions(doc, path):
    """Local-thickness distributions per phase, the samples overlaid (Figure S10).

    Volume-weighted probability density (share of the phase's voxels per μm of thickness) on
    common bins one voxel wide (the largest voxel edge of the samples): local thickness takes
    voxel-quantised values, and finer bins only show that comb.

    Returns
    -------
    pathlib.Path
    """
    import numpy as np

    phases = list(dict.fromkeys(p for s in doc["samples"]
                                for p in ((s["metrics"].get("details") or {}).get("local_thickness_histogram") or {})))
    width = max(max(s["spacing_um"]) for s in doc["samples"])
    fig, axes = _figure(max(1, len(phases)), columns=2, size=(5.0, 3.5))
    if not phases:
        axes[0].text(0.5, 0.5, "no local thickness measured", ha="center", va="center", transform=axes[0].transAxes)
    for phase, ax in zip(phases, axes):
        for sample in doc["samples"]:
            hist = ((sample["metrics"].get("details") or {}).get("local_thickness_histogram") or {}).get(phase)
            if not hist:
                continue
            edges, share = np.asarray(hist["edges_um"]), np.asarray(hist["share"])
            common = np.arange(0, edges[-1] + width, width)
            share = np.bincount(np.searchsorted(common, 0.5 * (edges[:-1] + edges[1:])) - 1, weights=share,
                                minlength=common.size - 1)[: common.size - 1]
            edges, density = common, share / width
            mean = sample["metrics"]["local_thickness_um"][phase]["mean"]
            line, = ax.step(edges, np.append(density, density[-1]), where="post",
                            label=f"{sample['name']} (mean {mean:.2f} μm)")
            ax.axvline(mean, color=line.get_color(), ls=":", lw=1)
        ax.set_title(f"local thickness of {phase}", fontsize="medium")
        ax.set_xlabel("local thickness (μm)")
        ax.set_ylabel("volume share per μm")
        ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path):
    from agent.pictures import save_figure

    return save_figure(fig, path)


def compare_report(paths, *, names=None, spacing_um=None, phase_map=(), transport_axis="y", k=2.0, n_samples=16,
                   min_edge_um=1.0, reference=None, json_output=False, csv_path=None, figures=None, console=None,
                   err_console=None) -> int:
    """``revwatch compare``: compute, print the table (or the JSON), write the CSV and the figures.

    Returns
    -------
    int
        0.

    Raises
    ------
    MetricsInputError, agent.store.StoreError
        Unusable inputs or options, before anything expensive is computed where possible.
    """
    from rich.console import Console

    console = console or Console()
    err_console = err_console or Console(stderr=True)
    if figures is not None:
        figures = Path(figures)
        if figures.exists() and not figures.is_dir():
            raise MetricsInputError(f"--figures {figures}: exists and is not a folder")
    if csv_path is not None and not Path(csv_path).parent.is_dir():
        raise MetricsInputError(f"--csv {csv_path}: folder {Path(csv_path).parent} does not exist")
    if names and reference is not None and reference not in names:
        raise MetricsInputError(f"--reference {reference!r}: not one of --names {list(names)}")
    with err_console.status("Table 1 and subvolume curves of each volume ..."):
        doc = compare_volumes(paths, names=names, spacing_um=spacing_um, phase_map=phase_map,
                              transport_axis=transport_axis, k=k, n_samples=n_samples, min_edge_um=min_edge_um,
                              on_progress=lambda name, s: err_console.print(f"{name}: {s:.1f} s"))
    if csv_path is not None:
        Path(csv_path).write_text(comparison_csv(doc), encoding="utf-8")
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        plot_rev_curves(doc, figures / "rev_curves.png")
        plot_thickness_distributions(doc, figures / "local_thickness.png")
    if json_output:
        console.file.write(json.dumps(doc, allow_nan=False) + "\n")
        return 0
    console.print(render_comparison(doc, reference=reference))
    for note, target in (("CSV", csv_path), ("figures", figures)):
        if target is not None:
            console.print(f"{note} written to {target}")
    return 0

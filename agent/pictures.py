"""Pictures of what was measured, written beside the volume and refreshed during the run.

Four PNGs in ``<volume>.pictures/`` (:func:`pictures_folder`):

- ``slice.png``: the latest slice, aligned grey beside the same with its phase labels overlaid
  (each phase in its colour, :data:`PHASE_COLOURS`; unassigned voxels not coloured);
- ``orthogonal.png``: the aligned stack seen from the side, xz (through the middle row) and yz
  (through the middle column), grey and labels, in physical proportions;
- ``drift.png``: the shift applied to each slice (dy, dx in pixels) against depth, from the
  provenance; unreliable estimates marked;
- ``rev.png``: the REV curves: relative error (Kanit) and running value of every tracked metric
  against depth, with the tolerance; for a finished volume the running value and the subvolume
  curves (relative std against cube edge, Figure S8 of the reference paper) of the REV report.

Every file is written to a temporary name in the same folder and renamed over the old one
(``os.replace``): a viewer never sees a half-written picture. During a run the pictures are
made by :class:`PictureWorker`, in its own thread, every ``analysis.pictures_every_slices``
slices: the orthogonal sections are grown from the new slices only (each slice is read once),
and a failure is logged and never stops acquisition. ``revwatch metrics`` writes the same for
a finished volume (:func:`write_volume_pictures`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from processing.phases import Phases

__all__ = ["PHASE_COLOURS", "PICTURE_NAMES", "pictures_folder", "save_figure", "overlay", "VolumePictures",
           "PictureWorker", "write_volume_pictures"]

log = logging.getLogger(__name__)

# Colour of label 1, 2, 3, 4 (Matplotlib's tab10 blue, orange, green, red), RGB in [0, 1].
PHASE_COLOURS = ((0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157))
PICTURE_NAMES = ("slice", "orthogonal", "drift", "rev")
_OVERLAY_ALPHA = 0.45
# Slices read at once when the orthogonal sections catch up (bounds the memory of a catch-up).
_READ_BATCH = 16


def pictures_folder(volume) -> Path:
    """The pictures folder of a volume: ``<volume>.pictures`` beside it."""
    volume = Path(volume)
    return volume.with_name(volume.name + ".pictures")


def save_figure(fig, path, *, dpi=100) -> Path:
    """Write a Matplotlib figure as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figure(rows, cols, size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _unit_grey(grey):
    """Grey levels stretched to [0, 1] between the 1st and 99th percentiles of the non-zero pixels."""
    grey = np.asarray(grey, dtype=np.float32)
    inside = grey[grey > 0]
    if inside.size == 0:
        return np.zeros_like(grey)
    lo, hi = np.percentile(inside, (1, 99))
    return np.clip((grey - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def overlay(grey, labels, *, alpha=_OVERLAY_ALPHA):
    """Labels coloured over grey levels.

    Parameters
    ----------
    grey : (H, W) ndarray or None
        Grey levels (any dtype); None: the labels alone on black.
    labels : (H, W) ndarray of int
        0 unassigned (left grey), label i in the colour ``PHASE_COLOURS[i - 1]``.
    alpha : float
        Opacity of the colours over the grey.

    Returns
    -------
    (H, W, 3) ndarray of float32 in [0, 1]
    """
    labels = np.asarray(labels)
    if grey is None:
        rgb, alpha = np.zeros((*labels.shape, 3), np.float32), 1.0
    else:
        rgb = np.repeat(_unit_grey(grey)[..., None], 3, axis=2)
    for label, colour in enumerate(PHASE_COLOURS, start=1):
        where = labels == label
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, np.float32)
    return rgb


def _legend(ax, phases: Phases):
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=PHASE_COLOURS[label - 1], label=name) for name, label in phases.labels.items()],
              loc="upper right", fontsize="small", framealpha=0.8)


def _slice_picture(path, grey, labels, *, phases, spacing_um, title):
    _, dy, dx = spacing_um
    h, w = labels.shape
    extent = (0, w * dx, h * dy, 0)
    panels = 1 if grey is None else 2
    fig, axes = _figure(1, panels, (5.5 * panels, 5.0 * h / max(w, 1) + 0.8))
    if grey is not None:
        axes[0, 0].imshow(_unit_grey(grey), cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        axes[0, 0].set_title("aligned grey", fontsize="medium")
    ax = axes[0, -1]
    ax.imshow(overlay(grey, labels), extent=extent, interpolation="nearest")
    ax.set_title("phase labels", fontsize="medium")
    _legend(ax, phases)
    for a in axes.ravel():
        a.set_xlabel("x (μm)")
        a.set_ylabel("y (μm)")
    fig.suptitle(title)
    return save_figure(fig, path)


def _ortho_picture(path, sections, *, phases, spacing_um, title):
    """`sections`: {"xz": (grey (Z, X) or None, labels (Z, X), row y), "yz": (..., column x)}."""
    dz, dy, dx = spacing_um
    panels = 1 if sections["xz"][0] is None else 2
    depth = sections["xz"][1].shape[0] * dz
    width = max(sections["xz"][1].shape[1] * dx, sections["yz"][1].shape[1] * dy)
    panel_h = float(np.clip(4.5 * depth / max(width, 1e-9), 1.2, 9.0))
    fig, axes = _figure(2, panels, (5.5 * panels, 2 * panel_h + 1.2))
    for row, (view, (grey, labels, at)) in enumerate(sections.items()):
        step = dx if view == "xz" else dy
        extent = (0, labels.shape[1] * step, labels.shape[0] * dz, 0)
        where = f"y = {at * dy:.3g} μm" if view == "xz" else f"x = {at * dx:.3g} μm"
        if grey is not None:
            axes[row, 0].imshow(_unit_grey(grey), cmap="gray", vmin=0, vmax=1, extent=extent, aspect="equal",
                                interpolation="nearest")
            axes[row, 0].set_title(f"{view} grey ({where})", fontsize="medium")
        axes[row, -1].imshow(overlay(grey, labels), extent=extent, aspect="equal", interpolation="nearest")
        axes[row, -1].set_title(f"{view} labels ({where})", fontsize="medium")
        for a in axes[row]:
            a.set_xlabel(f"{view[0]} (μm)")
            a.set_ylabel("depth z (μm)")
    _legend(axes[0, -1], phases)
    fig.suptitle(title)
    return save_figure(fig, path)


def _drift_picture(path, provenance, *, spacing_um, title):
    dz = spacing_um[0]
    fig, axes = _figure(1, 1, (8, 3.6))
    ax = axes[0, 0]
    shifts = np.array([p.get("shift_px") or (np.nan, np.nan) for p in provenance], dtype=float).reshape(-1, 2)
    depth = np.arange(len(shifts)) * dz
    ax.plot(depth, shifts[:, 0], "-", label="dy (rows)")
    ax.plot(depth, shifts[:, 1], "-", label="dx (columns)")
    unreliable = np.array([p.get("drift_reliable") is False for p in provenance], dtype=bool)
    if unreliable.any():
        ax.plot(depth[unreliable], shifts[unreliable, 0], "rx", label="unreliable (previous shift kept)")
        ax.plot(depth[unreliable], shifts[unreliable, 1], "rx")
    ax.set_xlabel("depth z (μm)")
    ax.set_ylabel("shift applied (px)")
    ax.set_title(f"drift against depth, {len(shifts)} slices", fontsize="medium")
    ax.legend(fontsize="small")
    fig.suptitle(title)
    return save_figure(fig, path)


def _rev_picture(path, depth_curves, *, tolerance, spacing_um, curves=None, title=""):
    """`depth_curves`: {metric: (N, 3) ndarray (depth slices, value, relative error)};
    `curves`: {metric: (edges_um, relative_std)} or None."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    dz = spacing_um[0]
    histories = {name: np.asarray(h, dtype=float).reshape(-1, 3) for name, h in depth_curves.items()}
    with_error = any(np.isfinite(h[:, 2]).any() for h in histories.values())
    panels = 1 + with_error + bool(curves)
    fig, axes = _figure(1, panels, (5.2 * panels, 4.0))
    ax_err = axes[0, 0] if with_error else None
    ax_val = axes[0, int(with_error)]
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        if history.size == 0:
            continue
        depth = history[:, 0] * dz
        if with_error:
            ax_err.plot(depth, np.where(np.isfinite(history[:, 2]), 100 * history[:, 2], np.nan), "-", color=colour,
                        label=name)
        final = history[-1, 1]
        if np.isfinite(final) and final != 0:
            ax_val.plot(depth, 100 * (history[:, 1] / final - 1), "-", color=colour, label=name)
        if curves and name in curves:
            edges, rel = curves[name]
            axes[0, -1].plot(edges, 100 * np.asarray(rel, dtype=float), "o-", ms=3, color=colour, label=name)
    if with_error:
        ax_err.axhline(100 * tolerance, color="k", ls="--", lw=1, label=f"tolerance {100 * tolerance:.0f}%")
        ax_err.set_yscale("log")
        ax_err.yaxis.set_major_formatter(ScalarFormatter())
        ax_err.yaxis.set_minor_formatter(NullFormatter())
        ax_err.set_xlabel("depth z (μm)")
        ax_err.set_ylabel("relative error (%)")
        ax_err.set_title("Kanit relative error of the running value", fontsize="medium")
        ax_err.legend(fontsize="x-small")
    elif ax_val.get_legend_handles_labels()[0]:  # no curve yet when no value has a final one
        ax_val.legend(fontsize="x-small")
    ax_val.axhspan(-100 * tolerance, 100 * tolerance, color="k", alpha=0.08, lw=0)
    ax_val.set_xlabel("depth z (μm)")
    ax_val.set_ylabel("running value / latest - 1 (%)")
    ax_val.set_title(f"running value (band: ±{100 * tolerance:.0f}%)", fontsize="medium")
    if curves:
        ax = axes[0, -1]
        ax.axhline(100 * tolerance, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("subvolume edge (μm)")
        ax.set_ylabel("relative std (%)")
        ax.set_title("subvolume curves (Figure S8)", fontsize="medium")
    fig.suptitle(title)
    return save_figure(fig, path)


class VolumePictures:
    """The four pictures of one volume, kept up to date as it grows.

    Parameters
    ----------
    folder : str or os.PathLike
        Where the PNGs go (created).
    phases : Phases
    spacing_um : sequence of 3 float
        ``(dz, dy, dx)`` in micrometres.
    canvas_shape : (int, int)
        ``(Y, X)`` of the slices; the sections go through the middle row and column.
    title : str
        Put above every picture (e.g. the volume's name).
    """

    def __init__(self, folder, *, phases: Phases, spacing_um, canvas_shape, title=""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.phases = phases
        self.spacing_um = tuple(float(s) for s in spacing_um)
        self.row, self.column = (int(n) // 2 for n in canvas_shape)
        self.title = title
        self._read = 0
        self._sections = {"xz_grey": [], "xz_labels": [], "yz_grey": [], "yz_labels": []}

    def _catch_up(self, grey, labels, depth):
        """Append the middle row and column of every slice not read yet."""
        for start in range(self._read, depth, _READ_BATCH):
            stop = min(depth, start + _READ_BATCH)
            # Copies: a view of the row would keep the whole block read alive (every slice of the
            # run, grey and labels, in memory).
            lab = np.asarray(labels[start:stop])
            self._sections["xz_labels"].append(lab[:, self.row, :].copy())
            self._sections["yz_labels"].append(lab[:, :, self.column].copy())
            if grey is not None:
                g = np.asarray(grey[start:stop])
                self._sections["xz_grey"].append(g[:, self.row, :].copy())
                self._sections["yz_grey"].append(g[:, :, self.column].copy())
        self._read = max(self._read, depth)

    def _section(self, name):
        parts = self._sections[name]
        return np.concatenate(parts, axis=0) if parts else None

    def update(self, grey, labels, depth, *, provenance=None, rev_history=None, tolerance=0.05, curves=None,
               cancelled=None):
        """Write the pictures for the first `depth` slices.

        Parameters
        ----------
        grey : (Z, Y, X) array-like or None
            Aligned grey levels (Zarr or NumPy; only new slices and the last one are read);
            None for a label volume without grey.
        labels : (Z, Y, X) array-like of uint8
        depth : int
            Committed slices (>= 1).
        provenance : list of dict, optional
            Per slice, with ``shift_px`` (and ``drift_reliable``); no drift picture without it.
        rev_history : dict, optional
            {metric: (N, 3) array (depth slices, running value, relative error)}; no REV
            picture without it.
        tolerance : float
        curves : dict, optional
            {metric: (edges_um, relative_std)} subvolume curves for the REV picture.
        cancelled : callable, optional
            Checked before each picture: when it returns True, the pictures not drawn yet are
            left as they were.

        Returns
        -------
        dict of str to pathlib.Path
            The pictures written, by name (:data:`PICTURE_NAMES`).
        """
        depth = int(depth)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth!r}")
        self._catch_up(grey, labels, depth)
        dz = self.spacing_um[0]
        title = f"{self.title}  ({depth} slices, {depth * dz:.3g} μm)".strip()
        last_grey = None if grey is None else np.asarray(grey[depth - 1])
        sections = {"xz": (self._section("xz_grey"), self._section("xz_labels"), self.row),
                    "yz": (self._section("yz_grey"), self._section("yz_labels"), self.column)}
        drawings = {
            "slice": lambda: _slice_picture(self.folder / "slice.png", last_grey, np.asarray(labels[depth - 1]),
                                            phases=self.phases, spacing_um=self.spacing_um,
                                            title=f"{title}: slice z = {depth - 1}"),
            "orthogonal": lambda: _ortho_picture(self.folder / "orthogonal.png", sections, phases=self.phases,
                                                 spacing_um=self.spacing_um, title=title),
        }
        if provenance:
            drawings["drift"] = lambda: _drift_picture(self.folder / "drift.png", provenance[:depth],
                                                       spacing_um=self.spacing_um, title=title)
        if rev_history:
            drawings["rev"] = lambda: _rev_picture(self.folder / "rev.png", rev_history, tolerance=tolerance,
                                                   spacing_um=self.spacing_um, curves=curves, title=title)
        out = {}
        for name, draw in drawings.items():
            if cancelled is not None and cancelled():
                break
            out[name] = draw()
        return out


class PictureWorker:
    """Makes the pictures of a growing volume in its own thread (the newest request wins).

    Parameters
    ----------
    store : agent.store.VolumeStore
        The volume being written (read through committed views only).
    phases : Phases
    folder : str or os.PathLike, optional
        Default :func:`pictures_folder` of the store's path.
    """

    def __init__(self, store, *, phases: Phases, folder=None):
        self._store = store
        self._pictures = VolumePictures(folder or pictures_folder(store.path), phases=phases,
                                        spacing_um=store.spacing_um, canvas_shape=store.labels.shape[1:],
                                        title=Path(store.path).name)
        self._cond = threading.Condition()
        self._request = None
        self._busy = False
        self._closing = False
        self._cancelled = False
        self._paths: dict[str, str] = {}
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="revwatch pictures", daemon=True)
        self._thread.start()

    @property
    def paths(self) -> dict[str, str]:
        """{name: path} of the pictures written so far (a copy)."""
        with self._cond:
            return dict(self._paths)

    def request(self, depth: int, *, rev_history=None, tolerance=0.05) -> None:
        """Refresh the pictures for `depth` committed slices (replaces a request not started yet)."""
        with self._cond:
            self._request = (int(depth), rev_history, tolerance)
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no request is pending or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._request is None and not self._busy, timeout_s)

    def close(self, *, finish: bool = True) -> None:
        """Finish the pending request (or, without `finish`, drop it and stop the drawing in
        progress after its current picture: an interrupted agent exits in seconds), then stop
        the thread."""
        with self._cond:
            if not finish:
                self._request, self._cancelled = None, True
        self.wait_idle(timeout_s=60)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from agent.analysis_worker import CommittedView

        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._request is not None)
                if self._request is None:
                    return
                (depth, history, tolerance), self._request = self._request, None
                self._busy = True
            try:
                store = self._store
                written = self._pictures.update(
                    CommittedView(store.grey, depth), CommittedView(store.labels, depth), depth,
                    provenance=store.slices[:depth], rev_history=history, tolerance=tolerance,
                    cancelled=lambda: self._cancelled)
                with self._cond:
                    self._paths.update({name: str(path) for name, path in written.items()})
            except Exception:  # noqa: BLE001 - a picture must never stop acquisition
                self.failures += 1
                log.exception("pictures at depth %d failed (the run goes on)", depth)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def write_volume_pictures(data, folder=None, *, volume=None, rev_report=None, tolerance=0.05) -> dict:
    """The pictures of a finished volume (``revwatch metrics``).

    Parameters
    ----------
    data : agent.report.LabelVolume
        The labels, spacing and phases (:func:`agent.report.load_volume`).
    folder : str or os.PathLike, optional
        Default :func:`pictures_folder` of `volume`.
    volume : str or os.PathLike, optional
        What `data` was read from: a revwatch volume also gives the grey levels and the drift
        (a label TIFF has neither).
    rev_report : dict, optional
        From :func:`agent.report.rev_report`: the REV picture shows its running values against
        depth and its subvolume curves (no REV picture without it).
    tolerance : float
        REV tolerance drawn.

    Returns
    -------
    dict of str to pathlib.Path
    """
    grey, provenance = None, None
    if volume is not None and Path(volume).is_dir():
        from agent.store import VolumeStore

        store = VolumeStore.open(volume, read_only=True)
        grey, provenance = store.grey, store.slices
    if folder is None:
        if volume is None:
            raise ValueError("write_volume_pictures: give the folder or the volume it goes beside")
        folder = pictures_folder(volume)
    history = curves = None
    if rev_report is not None:
        def floats(values):
            return np.array([np.nan if v is None else v for v in values], dtype=float)

        history, curves = {}, {}
        for name, entry in rev_report["metrics"].items():
            running = entry["running"]
            history[name] = np.column_stack([running["depth_slices"], floats(running["values"]),
                                             np.full(len(running["values"]), np.nan)])
            curves[name] = (entry["curve"]["edges_um"], floats(entry["curve"]["relative_std"]))
    pictures = VolumePictures(folder, phases=data.phases, spacing_um=data.spacing_um,
                              canvas_shape=data.labels.shape[1:], title=Path(volume).name if volume else "")
    return pictures.update(grey, data.labels, data.labels.shape[0], provenance=provenance, rev_history=history,
                           tolerance=tolerance, curves=curves)

"""``revwatch calibrate``: show the user the phase model on the first slices, before the run.

The first slices of a folder go through the same :class:`~processing.chain.SliceChain` a run uses
(corrections, alignment, valid region, calibration), so what is shown is what the run will do:
the grey classes the data show (count, levels, shares, separation, BIC), the configured phases
compared with them (every mismatch a warning), a histogram PNG with the fitted classes and
thresholds, and a PNG of a slice with the label overlay.

Also here: the readers of the configuration's files (mask image, training labels), shared by the
run, ``doctor`` and this command.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processing.errors import CalibrationError, RevwatchError, SliceReadError

__all__ = [
    "region_mask_from_config",
    "training_labels_from_config",
    "CalibrationReport",
    "calibrate_slices",
    "calibrate_folder",
    "phase_check_documents",
]

log = logging.getLogger(__name__)

# Label overlay colours (RGB, 0..1): unassigned, then up to four phases dark to bright.
_COLOURS = np.array([[0.0, 0.0, 0.0], [0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16]])


def _read_image(path: Path) -> np.ndarray:
    """A 2-D image (TIFF via tifffile, anything else via Pillow), first channel of RGB."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                image = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise SliceReadError(path, f"cannot read the image: {exc}") from None
    image = np.squeeze(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., 0]
    if image.ndim != 2:
        raise SliceReadError(path, f"expected a 2-D image, got shape {image.shape}")
    return image


def region_mask_from_config(config):
    """The :class:`~processing.mask.RegionMask` of the ``[mask]`` section (reads its image)."""
    from processing.mask import RegionMask

    m = config.mask
    return RegionMask(auto=m.auto, exclude_rows=m.exclude_rows, exclude_rectangles=m.exclude_rectangles,
                      exclude_polygons=m.exclude_polygons,
                      include=None if m.image is None else _read_image(m.image))


def training_labels_from_config(config):
    """``phases.training_labels`` read: a sparse label image, a dict of rectangles per phase, or None.

    Raises
    ------
    RevwatchError
        The file cannot be read, or its rectangles are malformed.
    """
    path = config.phases.training_labels
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in (".toml", ".json"):
        return _read_image(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RevwatchError(f"phases.training_labels: cannot read {path}: {exc}") from None
    names = config.phases.names
    if not isinstance(data, dict) or not data or any(
        k not in names or not isinstance(v, list) or not all(isinstance(r, list) and len(r) == 4 for r in v)
        for k, v in data.items()
    ):
        raise RevwatchError(f"phases.training_labels: {path} must map phase names {names} to lists of "
                            f"[y0, y1, x0, x1] rectangles, got {data!r}")
    return data


def phase_check_documents(check) -> list[dict]:
    """The ``error`` documents (kind ``phase_model``) that tell a mismatch of the phase model."""
    return [{"kind": "phase_model", "source": "segment", "message": w, "critical": False} for w in check.warnings]


@dataclass(frozen=True)
class CalibrationReport:
    """What `revwatch calibrate` found.

    Attributes
    ----------
    check : processing.phases.PhaseCheck
    model : PhaseModel or PixelClassifier
    names : tuple of str
    shares : dict of str to float
        Share of the valid pixels of the calibration slices given each name.
    masked_share : float
        Share of the pixels outside the valid region.
    labels : (Y, X) ndarray of uint8
        Labels of the slice shown in the overlay (the middle calibration slice), on the canvas.
    histogram_png, overlay_png : Path or None
    curtain : str
        What the curtains are measured against, and why when the calibration chose it
        (``processing.curtain_reference = "auto"``); "" with curtaining removal off.
    """

    check: object
    model: object
    names: tuple
    shares: dict
    masked_share: float
    labels: np.ndarray
    histogram_png: Path | None = None
    overlay_png: Path | None = None
    curtain: str = ""

    def describe(self) -> str:
        e = self.check.estimate
        lines = [e.describe(), "", f"outside the valid region: {100 * self.masked_share:.1f} % of the pixels",
                 "phases as the run will label them:"]
        for i, name in enumerate(self.names):
            lines.append(f"  {i + 1} {name:<16} {100 * self.shares.get(name, 0.0):5.1f} %"
                         + ("  (empty: the data show no class for it)" if name in self.check.empty_names else "")
                         + ("  (no class: thin dark lines)" if name == self.check.thin_name else ""))
        if self.check.notes:
            lines += ["notes:"] + [f"  - {n}" for n in self.check.notes]
        lines += ["warnings:"] + [f"  - {w}" for w in self.check.warnings] if self.check.warnings else \
            ["the named phases match the grey classes of the data"]
        if self.curtain:
            lines.append(f"curtains measured against the {self.curtain}")
        for p in (self.histogram_png, self.overlay_png):
            if p is not None:
                lines.append(f"wrote {p}")
        return "\n".join(lines)


def calibrate_slices(images, config, *, out=None):
    """Run the chain's calibration on `images` and draw the report.

    Parameters
    ----------
    images : sequence of processing.io.SliceImage
        The first slices, in index order.
    config : agent.config.Config
    out : Path, optional
        Folder for ``calibration_histogram.png`` and ``calibration_overlay.png``; None = no PNG.

    Returns
    -------
    CalibrationReport
    """
    from processing.chain import SliceChain

    images = list(images)
    if not images:
        raise CalibrationError("no slice to calibrate on")
    phases = config.phases.to_phases()
    chain = SliceChain.from_config(config.processing, phases=phases, region=region_mask_from_config(config),
                                   training_labels=training_labels_from_config(config),
                                   smooth_px=config.phases.smooth_px)
    chain.calibration_slices = len(images)
    done = []
    for image in images:
        done.extend(chain.push(image))
    done.extend(chain.flush())
    labels = np.array([p.labels for p in done])
    valid = labels > 0
    counts = np.bincount(labels[valid].ravel(), minlength=len(phases.names) + 1)
    shares = {name: float(counts[i + 1] / max(valid.sum(), 1)) for i, name in enumerate(phases.names)}
    middle = done[len(done) // 2]
    pngs = {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        pngs = {"histogram_png": _plot_histogram(chain.phase_check, chain.phase_model, phases,
                                                 out / "calibration_histogram.png"),
                "overlay_png": _plot_overlay(middle, phases, out / "calibration_overlay.png")}
    c = chain.correction
    curtain = "" if c is None or c.curtaining is None else (c.curtain_choice or c.curtain_reference)
    return CalibrationReport(check=chain.phase_check, model=chain.phase_model, names=phases.names, shares=shares,
                             masked_share=float(1 - valid.mean()), labels=middle.labels, curtain=curtain, **pngs)


def _plot_histogram(check, model, phases, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = check.estimate
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    width = float(e.centres[1] - e.centres[0])
    ax.bar(e.centres, e.counts, width=width, color="0.75", label="calibration slices (smoothed)")
    dens = e.density(e.centres)
    for i, (c, d) in enumerate(zip(e.classes, dens)):
        style = ":" if c.halo else "-"
        ax.plot(e.centres, d, style, lw=1.5,
                label=f"class {i + 1}: {c.level:.0f}, {100 * c.share:.1f} %" + (" (halo)" if c.halo else ""))
    ax.plot(e.centres, dens.sum(axis=0), "k-", lw=0.8, label="mixture")
    for t in getattr(model, "thresholds", ()):
        ax.axvline(t, color="crimson", lw=1, ls="--")
    ax.set_xlabel("grey level (corrected, smoothed)")
    ax.set_ylabel("pixels per bin")
    ax.set_title(f"{e.n_classes} separable class(es); named: {', '.join(phases.names)}"
                 + ("" if check.ok else "  -- MISMATCH, see warnings"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_overlay(processed, phases, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    grey = processed.grey.astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), dpi=100)
    lo, hi = np.percentile(grey, [0.5, 99.5])
    for ax in axes:
        ax.imshow(grey, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_axis_off()
    rgba = np.zeros(processed.labels.shape + (4,))
    rgba[..., :3] = _COLOURS[np.minimum(processed.labels, len(_COLOURS) - 1)]
    rgba[..., 3] = np.where(processed.labels > 0, 0.45, 0.7)
    axes[1].imshow(rgba, interpolation="nearest")
    axes[0].set_title(f"slice {processed.index}")
    axes[1].set_title("labels (black: not sample / unassigned)")
    handles = [Patch(color=_COLOURS[i + 1], label=f"{i + 1} {n}") for i, n in enumerate(phases.names)]
    axes[1].legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibrate_folder(folder, config, *, slices=None, out=None) -> CalibrationReport:
    """:func:`calibrate_slices` on the first slices of `folder` (``processing.calibration_slices`` by default).

    Raises
    ------
    RevwatchError
        No slice in the folder, or a slice cannot be read.
    """
    from agent.doctor import find_slices
    from processing.io import read_slice

    n = config.processing.calibration_slices if slices is None else int(slices)
    if n < 1:
        raise ValueError(f"slices: expected >= 1, got {slices!r}")
    groups = find_slices(folder)
    if not groups:
        raise RevwatchError(f"no slice files in {folder}")
    directory = max(groups, key=lambda d: len(groups[d]))
    images = [read_slice(p) for p in groups[directory][:n]]
    return calibrate_slices(images, config, out=out)

"""Reading and writing FIB-SEM slice files the way the instruments write them.

Supported metadata (pixel size; z position where the instrument records it):

- Thermo Fisher / FEI Auto Slice & View: ``SEM Image - SliceImage - 001.tif``,
  pixel size in TIFF tag 34682 (FEI_HELIOS INI text, ``[Scan] PixelWidth`` in
  metres); slice spacing in the project's ``EMProject.emxml`` (``ZCutSpacing``,
  metres).
- Zeiss Atlas 3D: ``slice_00100_z=1.0894um.tif``, pixel size in tag 34118
  (CZ_SEM, ``AP_IMAGE_PIXEL_SIZE``), measured z in the file name.
- TESCAN: INI text (``[MAIN] PixelSizeX``, metres) in tag 50431 or in a
  sidecar ``<name>-tif.hdr`` (or ``<name>.hdr``).

- Zeiss Atlas FibicsXML (tag 51023): ``<Scan><Ux>``/``<Vy>`` in um per pixel.

Multi-channel slices are reduced to one channel by a fixed rule, and the
information bar below FEI images is dropped (see :func:`read_slice`).
"""

from __future__ import annotations

import configparser
import logging
import math
import os
import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import tifffile

from processing.errors import SliceReadError

__all__ = [
    "SliceImage",
    "is_slice_file",
    "slice_index_from_name",
    "z_um_from_name",
    "read_slice",
    "write_slice",
    "slice_file_name",
    "read_fei_project_spacing_um",
    "write_fei_project",
    "tescan_sidecars",
    "read_stack_geometry_um",
]

logger = logging.getLogger(__name__)

TIFF_EXTENSIONS = (".tif", ".tiff")
FEI_PROJECT_FILE = "EMProject.emxml"

_FEI_NAME = re.compile(r"SliceImage\s*-\s*(\d+)\s*$", re.IGNORECASE)
_ATLAS_NAME = re.compile(r"^slice_(\d+)_z=", re.IGNORECASE)
_TRAILING_INDEX = re.compile(r"(?:^|\D)(\d+)$")
_Z_IN_NAME = re.compile(r"(?:^|_)z=([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*(nm|um|µm|μm|mm)", re.IGNORECASE)
_UNIT_TO_UM = {"pm": 1e-6, "nm": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "mm": 1e3, "m": 1e6}
# Plausible SEM pixel sizes (m): anything outside is a corrupt or unrelated value.
_PIXEL_SIZE_RANGE_M = (1e-12, 1e-3)
# Rec. 601 luma weights for colour slices whose channels differ.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True, eq=False)
class SliceImage:
    """One slice as read from disk.

    Attributes
    ----------
    pixels : (Y, X) ndarray of uint8 or uint16
        Grey levels, fully decoded.
    index : int
        Slice index from the file name (the acquisition order).
    source : str
        Path of the file.
    pixel_size_um : tuple of 2 float or None
        ``(dy, dx)`` in micrometres from the file's metadata, None when absent.
    z_um : float or None
        z position in micrometres when the instrument records it (Atlas file
        names), else None.
    """

    pixels: np.ndarray
    index: int
    source: str
    pixel_size_um: tuple[float, float] | None = None
    z_um: float | None = None


def is_slice_file(name) -> bool:
    """True when `name` looks like a finished slice image.

    A TIFF (``.tif``/``.tiff``, any case) that is neither hidden (``.x.tif``)
    nor an editor/OS temporary (``~x.tif``, ``~$x.tif``). Partial downloads
    (``.part``, ``.tmp``, ``.crdownload``) and ``Thumbs.db`` fail the
    extension test.
    """
    base = os.path.basename(os.fspath(name))
    return (
        base.lower().endswith(TIFF_EXTENSIONS)
        and not base.startswith((".", "~"))
    )


def slice_index_from_name(name) -> int | None:
    """Slice index encoded in a file name, or None.

    Recognises FEI ``SEM Image - SliceImage - 001.tif``, Zeiss Atlas
    ``slice_00100_z=1.0894um.tif`` and generic names ending in digits
    (``anything_0042.tif``, ``img42.tiff``).

    Examples
    --------
    >>> slice_index_from_name("SEM Image - SliceImage - 012.tif")
    12
    >>> slice_index_from_name("slice_00100_z=1.0894um.tif")
    100
    >>> slice_index_from_name("overview.tif") is None
    True
    """
    stem = os.path.basename(os.fspath(name))
    stem = re.sub(r"\.tiff?$", "", stem, flags=re.IGNORECASE)
    for pattern in (_FEI_NAME, _ATLAS_NAME, _TRAILING_INDEX):
        match = pattern.search(stem)
        if match:
            return int(match.group(1))
    return None


def z_um_from_name(name) -> float | None:
    """z position (um) from an Atlas-style name ``..._z=1.0894um.tif``, or None.

    Examples
    --------
    >>> z_um_from_name("slice_00100_z=1.0894um.tif")
    1.0894
    >>> z_um_from_name("slice_00002_z=25.0nm.tif")
    0.025
    """
    match = _Z_IN_NAME.search(os.path.basename(os.fspath(name)))
    if not match:
        return None
    return float(match.group(1)) * _UNIT_TO_UM[match.group(2).lower().replace("μ", "µ")]


def slice_file_name(index, *, layout="fei", z_um=None) -> str:
    """File name the instrument gives to slice `index` (>= 1 by convention).

    ``"fei"``: ``SEM Image - SliceImage - 001.tif`` (3 digits, more above 999);
    ``"zeiss"``: ``slice_00001_z=0.0200um.tif`` (needs `z_um`);
    ``"tescan"``: ``slice_00001.tif``.
    """
    index = int(index)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index!r}")
    if layout == "fei":
        return f"SEM Image - SliceImage - {index:03d}.tif"
    if layout == "zeiss":
        if z_um is None or not math.isfinite(z_um):
            raise ValueError(f"z_um is required for layout 'zeiss' (it is part of the file name), got {z_um!r}")
        return f"slice_{index:05d}_z={z_um:.4f}um.tif"
    if layout == "tescan":
        return f"slice_{index:05d}.tif"
    raise ValueError(f"layout must be 'fei', 'zeiss' or 'tescan', got {layout!r}")


def _pixel_size_pair(pixel_size_um):
    pair = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (2,))
    if not np.all(np.isfinite(pair)) or np.any(pair <= 0):
        raise ValueError(f"pixel_size_um must be positive (dy, dx) in um, got {pixel_size_um!r}")
    return float(pair[0]), float(pair[1])


def _fei_helios_text(shape, dy_m, dx_m, when):
    """FEI_HELIOS INI text as a Helios 5 writes it (the sections readers use)."""
    height, width = shape
    return (
        "[User]\r\n"
        f"Date={when:%m/%d/%Y}\r\nTime={when:%I:%M:%S %p}\r\nUser=user\r\nUserText=\r\n"
        "\r\n[System]\r\n"
        "Type=DualBeam\r\nSource=FEG\r\nColumn=Elstar\r\nFinalLens=Elstar\r\n"
        "SystemType=Helios 5 UX\r\nSoftware=revwatch synthetic\r\n"
        "\r\n[Beam]\r\nHV=2000\r\nSpot=\r\nBeam=EBeam\r\nScan=EScan\r\n"
        "\r\n[EBeam]\r\nHV=2000\r\nBeamCurrent=1e-10\r\nWD=0.004\r\n"
        f"HFW={width * dx_m:.6e}\r\nVFW={height * dy_m:.6e}\r\n"
        "\r\n[Scan]\r\nInternalScan=true\r\nDwelltime=3e-06\r\n"
        f"PixelWidth={dx_m:.6e}\r\nPixelHeight={dy_m:.6e}\r\n"
        f"HorFieldsize={width * dx_m:.6e}\r\nVerFieldsize={height * dy_m:.6e}\r\n"
        "Average=0\r\nIntegrate=1\r\n"
        "\r\n[EScan]\r\nScanInterlacing=1\r\n"
        f"PixelWidth={dx_m:.6e}\r\nPixelHeight={dy_m:.6e}\r\n"
        f"HorFieldsize={width * dx_m:.6e}\r\nVerFieldsize={height * dy_m:.6e}\r\n"
        "\r\n[Image]\r\nDigitalContrast=1\r\nDigitalBrightness=0\r\n"
        f"ResolutionX={width}\r\nResolutionY={height}\r\n"
        "\r\n[Detectors]\r\nNumber=1\r\nName=TLD\r\nMode=SE\r\n"
    )


def _cz_sem_text(dx_um, shape):
    """CZ_SEM text in the Zeiss layout: an upper-case key line, then ``Label = value unit``."""
    height, width = shape
    entries = [
        ("DP_DETECTOR_CHANNEL", "Signal A = SESI"),
        ("AP_PIXEL_SIZE", f"Pixel Size = {dx_um * 1e3:.4f} nm"),
        ("AP_IMAGE_PIXEL_SIZE", f"Image Pixel Size = {dx_um * 1e3:.4f} nm"),
        ("AP_WIDTH", f"Width = {width * dx_um:.4f} \u00b5m"),
        ("AP_HEIGHT", f"Height = {height * dx_um:.4f} \u00b5m"),
        ("AP_WD", "WD = 5.0 mm"),
        ("AP_MANUALKV", "EHT Target = 2.00 kV"),
        ("SV_USER_NAME", "User Name = user"),
    ]
    return "\r\n".join(["0", "0"] + [f"{key}\r\n{value}" for key, value in entries] + ["END", ""])


def write_slice(folder, index, pixels, *, layout="fei", pixel_size_um, z_um=None) -> Path:
    """Write one slice into `folder` with the instrument's name and metadata.

    Parameters
    ----------
    folder : str or os.PathLike
        Directory of the slice files (created if missing).
    index : int
        Slice index (instruments start at 1).
    pixels : (Y, X) ndarray of uint8 or uint16
    layout : {"fei", "zeiss", "tescan"}, optional
        ``"fei"``: tag 34682 FEI_HELIOS; ``"zeiss"``: tag 34118 CZ_SEM and the
        z in the name (square pixels: the x size is written); ``"tescan"``:
        a ``<name>-tif.hdr`` sidecar.
    pixel_size_um : float or (float, float)
        Pixel size ``(dy, dx)`` in micrometres.
    z_um : float, optional
        z position in micrometres (required for ``"zeiss"``).

    Returns
    -------
    pathlib.Path
        The written TIFF.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    dy_um, dx_um = _pixel_size_pair(pixel_size_um)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / slice_file_name(index, layout=layout, z_um=z_um)
    extratags = []
    if layout == "fei":
        text = _fei_helios_text(pixels.shape, dy_um * 1e-6, dx_um * 1e-6, datetime.now())
        extratags.append((34682, "s", 0, text, True))
    elif layout == "zeiss":
        extratags.append((34118, "B", 0, _cz_sem_text(dx_um, pixels.shape).encode("cp1252"), True))
    tifffile.imwrite(path, pixels, photometric="minisblack", extratags=extratags, metadata=None)
    if layout == "tescan":
        hdr = path.with_name(f"{path.stem}-tif.hdr")
        hdr.write_text(
            "[MAIN]\r\nDevice=TESCAN synthetic\r\n"
            f"PixelSizeX={dx_um * 1e-6:.6e}\r\nPixelSizeY={dy_um * 1e-6:.6e}\r\n",
            encoding="utf-8",
        )
    return path


def _checked_size_um(value_m, what):
    """Pixel size in um from metres, or None (logged) when implausible."""
    try:
        value_m = float(value_m)
    except (TypeError, ValueError):
        logger.warning("ignoring non-numeric %s %r", what, value_m)
        return None
    if not _PIXEL_SIZE_RANGE_M[0] <= value_m <= _PIXEL_SIZE_RANGE_M[1]:
        logger.warning("ignoring implausible %s %r m", what, value_m)
        return None
    # Round away the binary noise of the metre-to-micrometre conversion.
    return float(f"{value_m * 1e6:.12g}")


def _fei_pixel_size_um(fei):
    for section in ("Scan", "EScan", "IScan"):
        values = fei.get(section) or {}
        dx = _checked_size_um(values.get("PixelWidth"), f"FEI [{section}] PixelWidth")
        if dx is None:
            continue
        dy = _checked_size_um(values.get("PixelHeight", values["PixelWidth"]), f"FEI [{section}] PixelHeight")
        return (dy if dy is not None else dx, dx)
    return None


def _zeiss_pixel_size_um(sem):
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = sem.get(key)
        if not entry or len(entry) < 3:
            continue
        _, value, unit = entry[:3]
        unit = str(unit).strip().replace("μ", "µ").replace("Âµ", "µ")
        scale = _UNIT_TO_UM.get(unit) or _UNIT_TO_UM.get(unit.lower())
        if scale is None:
            logger.warning("ignoring Zeiss %s with unknown unit %r", key, unit)
            continue
        size = _checked_size_um(float(value) * scale * 1e-6, f"Zeiss {key}")
        if size is not None:
            return (size, size)
    return None


def _tescan_pixel_size_um(text, what):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        logger.warning("ignoring unreadable TESCAN metadata in %s: %s", what, exc)
        return None
    if not parser.has_option("MAIN", "PixelSizeX"):
        return None
    dx = _checked_size_um(parser.get("MAIN", "PixelSizeX"), f"{what} PixelSizeX")
    if dx is None:
        return None
    dy = _checked_size_um(parser.get("MAIN", "PixelSizeY", fallback=None) or dx * 1e-6, f"{what} PixelSizeY")
    return (dy if dy is not None else dx, dx)


def _fibics_pixel_size_um(value):
    """Pixel size from Atlas FibicsXML ``<Scan><Ux>..</Ux>..<Vy>..</Vy>`` (um per pixel)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        scan = ET.fromstring(text.strip().strip("\x00")).find(".//Scan")
        u = [float(scan.findtext(k)) for k in ("Ux", "Uy")]
        v = [float(scan.findtext(k)) for k in ("Vx", "Vy")]
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        logger.warning("ignoring unreadable FibicsXML (tag 51023): %s", exc)
        return None
    dx = _checked_size_um(math.hypot(*u) * 1e-6, "FibicsXML Ux/Uy")
    dy = _checked_size_um(math.hypot(*v) * 1e-6, "FibicsXML Vx/Vy")
    return (dy, dx) if dx is not None and dy is not None else None


def _fei_scan_rows(tif):
    """Scanned rows ([Image] ResolutionY) of an FEI image, or None.

    Thermo Fisher images may carry an information bar (the "databar") below
    the scanned rows; it is not part of the sample.
    """
    if not tif.pages.first.is_fei:
        return None
    rows = ((tif.fei_metadata or {}).get("Image") or {}).get("ResolutionY")
    return rows if isinstance(rows, int) and rows > 0 else None


def _pixel_size_from(tif, path):
    page = tif.pages.first
    if page.is_fei and tif.fei_metadata:
        size = _fei_pixel_size_um(tif.fei_metadata)
        if size:
            return size
    if page.is_sem and tif.sem_metadata:
        size = _zeiss_pixel_size_um(tif.sem_metadata)
        if size:
            return size
    fibics = page.tags.get(51023)
    if fibics is not None:
        size = _fibics_pixel_size_um(fibics.value)
        if size:
            return size
    tescan = page.tags.get(50431)
    if tescan is not None:
        value = tescan.value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        size = _tescan_pixel_size_um(text, "TESCAN tag 50431")
        if size:
            return size
    for hdr in tescan_sidecars(path):
        if hdr.is_file():
            try:
                text = hdr.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                logger.warning("cannot read sidecar %s: %s", hdr, exc)
                continue
            return _tescan_pixel_size_um(text, hdr.name)
    return None


def tescan_sidecars(path) -> list[Path]:
    """The TESCAN sidecar files of slice `path` that exist: ``<stem>-tif.hdr`` (as TESCAN names
    them), ``<stem>-TIF.hdr``, or ``<stem>.hdr``, in that order of preference."""
    path = Path(path)
    names = (f"{path.stem}-tif.hdr", f"{path.stem}-TIF.hdr", f"{path.stem}.hdr")
    return [path.with_name(name) for name in names if path.with_name(name).is_file()]


# TIFF ResolutionUnit 3 = centimetre; 2 (inch) is a print setting, never a microscope's pixel.
_RESOLUTION_UNIT_UM = {3: 1e4}


def _resolution_um(page, unit_um):
    """(dy, dx) in um from the X/YResolution tags (pixels per unit) and a unit in um, or None."""
    sizes = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.get(tag)
        if value is None:
            return None
        numerator, denominator = value.value
        if not numerator or not denominator:
            return None
        sizes.append(_checked_size_um(unit_um * denominator / numerator * 1e-6, f"TIFF {tag}"))
    return None if None in sizes else tuple(sizes)


def read_stack_geometry_um(path) -> tuple[tuple[float, float] | None, float | None]:
    """Pixel size ``(dy, dx)`` and z spacing (um) of a multi-page TIFF stack, each None when absent.

    The pixel size comes from the instrument tags of the first page (as :func:`read_slice`), else
    from the X/YResolution tags with the ImageJ unit (``micron``, ``nm``, ...) or a centimetre
    resolution unit; a resolution in inches (a print setting) is no pixel size. The z spacing is
    the ImageJ ``spacing`` (in the ImageJ unit).
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        size = _pixel_size_from(tif, path)
        imagej = tif.imagej_metadata or {}
        unit = str(imagej.get("unit", "")).strip().replace("\\u00B5", "µ").replace("micron", "um").replace("μ", "µ")
        unit_um = _UNIT_TO_UM.get(unit) or _UNIT_TO_UM.get(unit.lower())
        resolution_unit = int(getattr(page.tags.get("ResolutionUnit"), "value", 1))
        if size is None:
            if unit_um is not None:
                size = _resolution_um(page, unit_um)
            elif resolution_unit in _RESOLUTION_UNIT_UM:
                size = _resolution_um(page, _RESOLUTION_UNIT_UM[resolution_unit])
        spacing = None
        if unit_um is not None and imagej.get("spacing"):
            spacing = _checked_size_um(float(imagej["spacing"]) * unit_um * 1e-6, "ImageJ spacing")
    return size, spacing


def _one_channel(pixels, axes, path):
    """Reduce a decoded page to (Y, X) by the documented rule."""
    if "S" in axes:
        channels = np.moveaxis(pixels, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
        colour = channels[..., :3]
        # Fewer than 3 samples is grey (+ alpha); grey saved as RGB has equal channels.
        if colour.shape[-1] < 3 or (np.array_equal(colour[..., 0], colour[..., 1])
                                    and np.array_equal(colour[..., 0], colour[..., 2])):
            pixels = channels[..., 0]
        else:
            pixels = np.rint(colour.astype(np.float64) @ _LUMA).astype(channels.dtype)
        axes = axes[:-1]
    pixels = np.squeeze(pixels)
    if pixels.ndim != 2:
        raise SliceReadError(path, f"expected a 2-D image, got shape {pixels.shape} (axes {axes!r})")
    return pixels


def _as_grey_dtype(pixels, path):
    if pixels.dtype in (np.uint8, np.uint16):
        return pixels
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255
    if np.issubdtype(pixels.dtype, np.integer) and pixels.size and pixels.min() >= 0 and pixels.max() <= 65535:
        return pixels.astype(np.uint16)
    raise SliceReadError(path, f"unsupported pixel type {pixels.dtype}: expected 8- or 16-bit unsigned grey levels")


def read_slice(path, *, index=None) -> SliceImage:
    """Read one slice file completely: pixels, index, pixel size, z.

    Colour slices: when all colour channels are equal (grey saved as RGB)
    the first channel is taken; otherwise the Rec. 601 luminance
    ``0.299 R + 0.587 G + 0.114 B``, rounded to the input dtype. Alpha is
    dropped; two samples are grey + alpha (first taken). Reduced-resolution
    pages (thumbnails) are ignored. FEI images taller than their scan
    (``[Image] ResolutionY``) lose the information bar below it.

    Parameters
    ----------
    path : str or os.PathLike
    index : int, optional
        Slice index; default: from the file name.

    Returns
    -------
    SliceImage

    Raises
    ------
    SliceReadError
        The file is missing, empty, not a TIFF, truncated (still being
        written), holds several images, has no index in its name, or has an
        unsupported pixel type. The message names the file and the reason.
    """
    path = Path(path)
    if index is None:
        index = slice_index_from_name(path.name)
        if index is None:
            raise SliceReadError(path, "no slice index in the file name (expected e.g. '..._0042.tif')")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SliceReadError(path, "file does not exist") from None
    except OSError as exc:
        raise SliceReadError(path, f"cannot access file: {exc.strerror or exc}") from None
    if size == 0:
        raise SliceReadError(path, "file is empty (0 bytes): probably still being written")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4:
                raise SliceReadError(path, f"file too short to be a TIFF ({size} bytes): probably still being written")
            if head == bytes(4):
                raise SliceReadError(path, "file starts with zero bytes: space reserved, content still being written")
            if head[:2] not in (b"II", b"MM"):
                raise SliceReadError(path, f"not a TIFF file (starts with {head!r})")
            fh.seek(0)
            with tifffile.TiffFile(fh, name=path.name) as tif:
                pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
                if not pages:
                    raise SliceReadError(path, "no image in the file: truncated or still being written")
                if len(pages) > 1:
                    raise SliceReadError(
                        path, f"multi-page TIFF with {len(pages)} images: expected one slice per file"
                    )
                page = pages[0]
                needed = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
                if needed > size:
                    raise SliceReadError(
                        path, f"file is truncated: pixel data needs {needed} bytes, file has {size} (still being written?)"
                    )
                pixels = page.asarray()
                pixel_size = _pixel_size_from(tif, path)
                scan_rows = _fei_scan_rows(tif)
                axes = page.axes
    except SliceReadError:
        raise
    except PermissionError as exc:
        raise SliceReadError(path, f"permission denied: {exc.strerror or exc}") from None
    except (tifffile.TiffFileError, ValueError, KeyError, IndexError, EOFError, OSError, RuntimeError, struct.error) as exc:
        # tifffile raises many types on a partial or corrupt file; to the user
        # they all mean the same thing.
        if "imagecodecs" in str(exc):
            raise SliceReadError(
                path, f"compressed in a way that needs the 'imagecodecs' package (pip install imagecodecs): {exc}"
            ) from None
        raise SliceReadError(path, f"corrupt or truncated TIFF ({type(exc).__name__}: {exc})") from None
    pixels = _as_grey_dtype(_one_channel(pixels, axes, path), path)
    if scan_rows is not None and pixels.shape[0] > scan_rows:
        logger.debug("%s: dropping the %d-row information bar below the scan", path.name, pixels.shape[0] - scan_rows)
        pixels = pixels[:scan_rows]
    return SliceImage(
        pixels=pixels,
        index=int(index),
        source=str(path),
        pixel_size_um=pixel_size,
        z_um=z_um_from_name(path.name),
    )


def write_fei_project(project_dir, *, slice_spacing_um) -> Path:
    """Write a minimal Auto Slice & View ``EMProject.emxml`` holding the slice spacing.

    Parameters
    ----------
    project_dir : str or os.PathLike
        Project root (the folder holding ``Images/``).
    slice_spacing_um : float
        Slice thickness in micrometres (stored as ``ZCutSpacing`` in metres).
    """
    if not (math.isfinite(slice_spacing_um) and slice_spacing_um > 0):
        raise ValueError(f"slice_spacing_um must be > 0, got {slice_spacing_um!r}")
    project_dir = Path(project_dir)
    project_dir.mkdir(parents=True, exist_ok=True)
    path = project_dir / FEI_PROJECT_FILE
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        "<EMProject>\n"
        "  <ProjectName>revwatch synthetic</ProjectName>\n"
        "  <Application>Auto Slice and View</Application>\n"
        "  <SliceAndView>\n"
        f"    <ZCutSpacing>{slice_spacing_um * 1e-6:.6e}</ZCutSpacing>\n"
        "  </SliceAndView>\n"
        "</EMProject>\n",
        encoding="utf-8",
    )
    return path


def read_fei_project_spacing_um(project_dir) -> float | None:
    """Slice spacing (um) from an Auto Slice & View ``EMProject.emxml``, or None.

    The file is looked for in `project_dir` and its two parents, so the
    project root or the ``Images/SEM Image`` folder may be given. The first
    ``ZCutSpacing`` element (any namespace, metres) is used.
    """
    start = Path(project_dir)
    for folder in [start, *start.parents][:3]:
        candidate = folder / FEI_PROJECT_FILE
        if not candidate.is_file():
            continue
        try:
            root = ET.parse(candidate).getroot()
        except (ET.ParseError, OSError) as exc:
            logger.warning("cannot parse %s: %s", candidate, exc)
            return None
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] == "ZCutSpacing" and element.text:
                try:
                    spacing_m = float(element.text.strip())
                except ValueError:
                    logger.warning("non-numeric ZCutSpacing %r in %s", element.text, candidate)
                    return None
                if spacing_m <= 0 or not math.isfinite(spacing_m):
                    logger.warning("ignoring ZCutSpacing %r m in %s", spacing_m, candidate)
                    return None
                return spacing_m * 1e6
        return None
    return None

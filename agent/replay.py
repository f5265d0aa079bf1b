"""Replay an existing stack into a folder at the microscope's cadence, to simulate an acquisition.

A source is either a folder of slice files (copied byte for byte with their layout, their TESCAN
sidecars ``<stem>-tif.hdr`` and the Auto Slice & View ``EMProject.emxml``, in slice-index order) or
a multi-page TIFF (each page written as a Thermo Fisher Auto Slice & View slice). A stack's pixel
size comes from its own metadata (instrument tags, or the ImageJ/TIFF resolution in micrometres)
or from the caller, never from a default: a stack without one is refused with what to give. An
ImageJ z spacing is written as the project's ``EMProject.emxml``. Files are written the way
instruments write them: straight to their final name, in pieces, so that a watcher sees them
while they grow.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from processing.errors import RevwatchError
from processing.io import (
    is_slice_file,
    read_stack_geometry_um,
    slice_index_from_name,
    tescan_sidecars,
    write_fei_project,
    write_slice,
)

__all__ = ["ReplayError", "replay", "slice_files"]

log = logging.getLogger(__name__)

_PIECE_BYTES = 1 << 20


class ReplayError(RevwatchError, ValueError):
    """The replay source cannot be used; the message names it and says why."""


def slice_files(folder: Path) -> list[Path]:
    """Slice files below `folder` (recursive), in slice-index order.

    Raises
    ------
    ReplayError
        No slice file with an index in its name is found.
    """
    found = [p for p in Path(folder).rglob("*") if p.is_file() and is_slice_file(p.name)]
    indexed = [(slice_index_from_name(p.name), p) for p in found]
    indexed = [(i, p) for i, p in indexed if i is not None]
    if not indexed:
        raise ReplayError(f"replay source {folder}: no slice files (TIFF with an index in the name) found")
    return [p for _, p in sorted(indexed, key=lambda ip: (ip[0], str(ip[1])))]


def _copy_in_pieces(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _PIECE_BYTES)


def _folder_jobs(source: Path, dest: Path) -> Iterator[Callable[[], Path]]:
    files = slice_files(source)
    # The Auto Slice & View project file holds the slice spacing: it exists before the first slice.
    for project in source.rglob("*.emxml"):
        target = dest / project.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(project, target)
    for src in files:
        dst = dest / src.relative_to(source)

        def job(src=src, dst=dst):
            # TESCAN writes a sidecar with the pixel size (<stem>-tif.hdr): it must arrive first.
            for sidecar in tescan_sidecars(src):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sidecar, dst.with_name(sidecar.name))
            _copy_in_pieces(src, dst)
            return dst

        yield job


def _stack_pixel_size_um(source: Path, metadata_um, given_um: float | None) -> tuple[float, float]:
    """The stack's pixel size: its metadata's, else the caller's; both must agree within 1 %."""
    if metadata_um is None:
        if given_um is None:
            raise ReplayError(f"replay source {source}: the stack carries no pixel size; give it with --pixel-size-nm "
                              "(replay never invents one: the agent would trust it)")
        return (given_um, given_um)
    if given_um is not None and abs(given_um - metadata_um[1]) > 0.01 * metadata_um[1]:
        raise ReplayError(f"replay source {source}: --pixel-size-nm {given_um * 1000:g} differs from the stack's "
                          f"metadata ({metadata_um[1] * 1000:.4g} nm); leave it out to keep the metadata's")
    return tuple(metadata_um)


def _stack_jobs(source: Path, dest: Path, pixel_size_um: float | None) -> Iterator[Callable[[], Path]]:
    """Check the stack's geometry now; the returned jobs write its pages as FEI slices."""
    with tifffile.TiffFile(source) as tif:
        n_pages = len(tif.pages)
    if n_pages < 2:
        raise ReplayError(f"replay source {source}: a single-page TIFF is not a stack")
    metadata_um, spacing_um = read_stack_geometry_um(source)
    size_um = _stack_pixel_size_um(source, metadata_um, pixel_size_um)
    log.info("replaying %s: %d slices, pixel %.4g x %.4g nm (%s), slice spacing %s", source, n_pages,
             size_um[0] * 1000, size_um[1] * 1000, "metadata" if metadata_um else "given",
             f"{spacing_um * 1000:.4g} nm (metadata, written as EMProject.emxml)" if spacing_um else "unknown")

    def jobs():
        if spacing_um is not None:
            dest.mkdir(parents=True, exist_ok=True)
            write_fei_project(dest, slice_spacing_um=spacing_um)
        for page in range(n_pages):

            def job(page=page):
                pixels = np.asarray(tifffile.imread(source, key=page))
                if pixels.dtype not in (np.uint8, np.uint16):
                    raise ReplayError(
                        f"replay source {source}: page {page} has dtype {pixels.dtype}; "
                        "slices must be 8- or 16-bit grey levels"
                    )
                return write_slice(dest, page + 1, pixels, layout="fei", pixel_size_um=size_um)

            yield job

    return jobs()  # the checks above run now, before anything is written


def replay(
    source: str | Path,
    dest: str | Path,
    *,
    interval_s: float = 1.0,
    pixel_size_um: float | None = None,
    limit: int | None = None,
    stop: threading.Event | None = None,
    on_slice: Callable[[int, Path], None] | None = None,
) -> int:
    """Copy a stack into `dest`, one slice every `interval_s` seconds.

    Parameters
    ----------
    source : str or Path
        A folder of slice files, or a multi-page TIFF.
    dest : str or Path
        The folder to write into (created if needed); the agent watches it.
    interval_s : float, optional
        Seconds between two slices (0 = as fast as the disk goes).
    pixel_size_um : float, optional
        Pixel size of a multi-page TIFF without one in its metadata, in micrometres (required
        then; when the metadata has one, it must agree within 1 %). Unused for a folder.
    limit : int, optional
        Replay at most this many slices.
    stop : threading.Event, optional
        Set it to end the replay early.
    on_slice : callable, optional
        Called as ``on_slice(count, path)`` after each slice is written.

    Returns
    -------
    int
        Number of slices written.

    Raises
    ------
    ReplayError
        The source is missing, empty or not a stack, or a stack has no pixel size to write.
    """
    source, dest = Path(source), Path(dest)
    if interval_s < 0:
        raise ReplayError(f"interval_s must be >= 0, got {interval_s}")
    if not source.exists():
        raise ReplayError(f"replay source {source} does not exist")
    if source.resolve() == dest.resolve():
        raise ReplayError(f"replay source and destination are the same folder: {source}")
    if source.is_dir():
        jobs = _folder_jobs(source, dest)
    elif source.suffix.lower() in (".tif", ".tiff"):
        jobs = _stack_jobs(source, dest, pixel_size_um)
    else:
        raise ReplayError(f"replay source {source}: expected a folder of slices or a multi-page TIFF")
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    next_time = time.monotonic()
    for job in jobs:
        if limit is not None and count >= limit:
            break
        if stop is not None and stop.wait(max(0.0, next_time - time.monotonic())):
            break
        if stop is None:
            time.sleep(max(0.0, next_time - time.monotonic()))
        path = job()
        count += 1
        log.debug("replayed slice %d -> %s", count, path)
        if on_slice is not None:
            on_slice(count, path)
        next_time += interval_s
    return count

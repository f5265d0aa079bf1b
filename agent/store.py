"""The run's volume: one OME-Zarr image (NGFF 0.4 on Zarr format 2), appended slice by slice.

Layout (readable by ome-zarr-py and napari)::

    run.ome.zarr/
      .zgroup  .zattrs            multiscales (axes z, y, x in micrometer, scale [dz, dy, dx]),
                                  revwatch (run attributes, slices, skipped)
      0/                          aligned grey (Z, Y, X) uint8 | uint16
      labels/.zattrs              {"labels": ["phases"]}
      labels/phases/.zattrs       multiscales + image-label (colors, properties = phase names)
      labels/phases/0/            labels (Z, Y, X) uint8, 0 = unassigned
    run.ome.zarr.provenance.jsonl commit log beside the volume: one JSON line per slice or skipped input

The commit log lives beside the volume, not inside it: zarr (and so ome-zarr and napari) warns
about every file in a group that is not part of the hierarchy.

Chunking: ``(cz, Y, X)``: whole slices, ``cz`` slices per chunk with ``cz`` chosen so that a
grey chunk holds about 1 MiB (1 for 8-bit slices of 1 Mpx and more, at most 32). Appending a
slice then writes one chunk per array whatever the depth (a read-modify-write of at most 1 MiB
when ``cz > 1``; with ``cz = 1`` an append costs about a third of what it costs with 4 slices
per chunk); analysis reads whole-slice blocks (group several chunks per Dask block, e.g.
``dask.array.from_zarr(store.labels, chunks=(16, -1, -1))``), which is what z-slab metrics and
subvolume REV sampling need, and small slices are not scattered over thousands of tiny files.

Crash safety (SIGKILL at any instant, then :meth:`VolumeStore.open`):

1. the pixels are written first: arrays grown by one slice (``resize``) and the slice written;
   zarr's ``LocalStore`` writes every key to a temporary file and renames it over the old one,
   so a chunk or a ``.zarray`` is either old or new, never torn;
2. the slice is committed last, by appending one line to the commit log. That
   log is the source of truth: ``depth`` is the number of committed slices. On open, a torn last
   line is cut, arrays longer than the committed depth are trimmed and leftover temporary files
   are removed, so every committed slice is there exactly once and nothing else is.

The log keeps the append cost independent of the depth (one short line per slice). Every
``compact_every`` appends, and on :meth:`~VolumeStore.flush` / :meth:`~VolumeStore.close`, the
log is copied into the root attributes ``revwatch.slices`` / ``revwatch.skipped`` (one atomic
rewrite of ``.zattrs``), so a finished volume carries its provenance in its attributes; a volume
whose log is missing (copied by a tool that skips unknown files) is resumed from the attributes.
Durability is against process death, not power loss (nothing is fsynced).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

from processing.errors import RevwatchError, SliceShapeError
from processing.phases import Phases

__all__ = ["StoreError", "VolumeStore", "PROVENANCE_LOG_SUFFIX", "NGFF_VERSION", "provenance_log_path"]

logger = logging.getLogger(__name__)

NGFF_VERSION = "0.4"
PROVENANCE_LOG_SUFFIX = ".provenance.jsonl"
LABEL_NAME = "phases"
_CHUNK_TARGET_BYTES = 1 << 20
_MAX_SLICES_PER_CHUNK = 32
# Noisy grey levels barely compress (ratio 1.0 with zstd at any shuffle on 1024^2 slices): lz4,
# the cheapest Blosc codec (0.5 ms per Mpx against 2.6 for zstd 1); byte shuffle is free and lets
# the high bytes of 16-bit slices with fewer significant bits compress. Labels compress 20x with zstd 1
# (2 ms per Mpx); level 3 and bit shuffle gain 2 % in size for twice the time.
_GREY_COMPRESSOR = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE)
_LABEL_COMPRESSOR = Blosc(cname="zstd", clevel=1, shuffle=Blosc.NOSHUFFLE)
# Temporary files of zarr's atomic writes (``<key>.<uuid hex>.partial``) left by a killed process.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")
# Distinct colours for up to four phases (napari shows labels with these).
_PHASE_RGBA = ([230, 60, 60, 255], [60, 120, 230, 255], [240, 200, 40, 255], [60, 200, 90, 255])
_RESERVED_RUN_KEYS = frozenset({"slices", "skipped"})


class StoreError(RevwatchError):
    """The volume cannot be written or read (disk full, permission, corrupt volume).

    Parameters
    ----------
    path : str or os.PathLike
        The volume.
    reason : str
        What failed, including the operating-system error when there is one.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"volume {self.path}: {reason}")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__} {value!r}")


def _to_json(value) -> dict:
    """`value` as plain JSON types (numpy scalars and arrays, paths converted)."""
    return json.loads(json.dumps(value, default=_json_default, allow_nan=False))


def provenance_log_path(volume) -> Path:
    """The commit log of the volume at `volume`: ``<volume>.provenance.jsonl`` beside it."""
    volume = Path(volume)
    return volume.with_name(volume.name + PROVENANCE_LOG_SUFFIX)


def _slices_per_chunk(canvas_shape, dtype) -> int:
    slice_bytes = canvas_shape[0] * canvas_shape[1] * np.dtype(dtype).itemsize
    return int(min(_MAX_SLICES_PER_CHUNK, max(1, _CHUNK_TARGET_BYTES // slice_bytes)))


def _multiscales(name, spacing_um):
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": [{"name": axis, "type": "space", "unit": "micrometer"} for axis in "zyx"],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(spacing_um)}]}
            ],
        }
    ]


class VolumeStore:
    """One run's OME-Zarr volume: aligned grey + phase labels + per-slice provenance.

    Create with :meth:`create`, resume with :meth:`open`. Not meant for several writers; one
    writer and any number of readers (threads or processes) are fine: readers should use
    :attr:`depth`, not the arrays' shape, which is one slice longer during an append (and
    after a writer was killed mid-append, until the volume is next opened for writing).

    Attributes
    ----------
    path : pathlib.Path
    grey : zarr.Array
        ``(Z, Y, X)`` uint8 or uint16, aligned grey levels (array ``0``).
    labels : zarr.Array
        ``(Z, Y, X)`` uint8, phase labels (``labels/phases/0``); 0 = unassigned.
    """

    def __init__(self, path, root, *, read_only, compact_every):
        self.path = Path(path)
        self._root = root
        # A whole-slice chunk is never all fill value in practice: skip zarr's check of that on
        # every write (a full comparison of the chunk, a fifth of the append time).
        self.grey = root["0"].with_config({"write_empty_chunks": True})
        self.labels = root["labels"][LABEL_NAME]["0"].with_config({"write_empty_chunks": True})
        self._read_only = read_only
        self._compact_every = int(compact_every)
        self._lock = threading.Lock()
        self._log_path = provenance_log_path(self.path)
        attrs = dict(root.attrs.get("revwatch") or {})
        self._slices = list(attrs.pop("slices", []))
        self._skipped = list(attrs.pop("skipped", []))
        attrs.pop("provenance_log", None)
        self._run = attrs
        self._indices = {r["index"] for r in self._slices}
        self._since_compact = 0
        self._uncompacted = False
        self._labels_scale_stale = False

    # -- creation and resume ---------------------------------------------------------------

    @classmethod
    def create(cls, path, *, canvas_shape, dtype, spacing_um, phases=None, run_attrs=None, compact_every=64):
        """Create an empty volume at `path` (must not exist, or be an empty directory).

        Parameters
        ----------
        path : str or os.PathLike
            The ``.ome.zarr`` directory.
        canvas_shape : (int, int)
            ``(Y, X)`` of every slice (the aligned canvas).
        dtype : {numpy.uint8, numpy.uint16}
            Grey-level type.
        spacing_um : (float, float, float)
            ``(dz, dy, dx)`` in micrometres.
        phases : processing.phases.Phases, optional
            Phase names (label i+1 = names[i]); default the three default phases.
        run_attrs : dict, optional
            Run attributes kept under ``revwatch`` (``run_id``, the phase model, ...); JSON.
        compact_every : int, optional
            Copy the provenance log into the attributes every this many appends.

        Raises
        ------
        StoreError
            `path` exists and is not empty, or cannot be written.
        """
        path = Path(path)
        canvas_shape = tuple(int(n) for n in canvas_shape)
        if len(canvas_shape) != 2 or min(canvas_shape) < 1:
            raise ValueError(f"canvas_shape must be (Y, X) with Y, X >= 1, got {canvas_shape!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.uint8, np.uint16):
            raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")
        spacing_um = [float(s) for s in spacing_um]
        if len(spacing_um) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_um):
            raise ValueError(f"spacing_um must be 3 positive (dz, dy, dx) in um, got {spacing_um!r}")
        if int(compact_every) < 1:
            raise ValueError(f"compact_every must be >= 1, got {compact_every!r}")
        phases = phases if phases is not None else Phases()
        run = _to_json(dict(run_attrs or {}))
        clash = _RESERVED_RUN_KEYS & run.keys()
        if clash:
            raise ValueError(f"run_attrs must not contain {sorted(clash)}: the store owns them")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(path, "already exists and is not empty: open it with VolumeStore.open to resume")
        run.update(
            {
                "format": 1,
                "canvas_shape": list(canvas_shape),
                "spacing_um": spacing_um,
                "phases": list(phases.names),
                "created_unix_s": time.time(),
            }
        )
        chunks = (_slices_per_chunk(canvas_shape, dtype), *canvas_shape)
        # Built beside the target and renamed into place: a kill during creation leaves no
        # half-made volume at `path` (only a hidden staging folder).
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
        try:
            root = zarr.open_group(staging, mode="w-", zarr_format=2)
            label_group = root.create_group("labels").create_group(LABEL_NAME)
            for group, array_dtype, compressor in ((root, dtype, _GREY_COMPRESSOR), (label_group, np.uint8, _LABEL_COMPRESSOR)):
                group.create_array(
                    "0",
                    shape=(0, *canvas_shape),
                    chunks=chunks,
                    dtype=array_dtype,
                    fill_value=0,
                    compressor=compressor,
                    chunk_key_encoding={"name": "v2", "separator": "/"},
                )
            root["labels"].attrs.put({"labels": [LABEL_NAME]})
            label_group.attrs.put(
                {
                    "multiscales": _multiscales(LABEL_NAME, spacing_um),
                    "image-label": {
                        "version": NGFF_VERSION,
                        "colors": [
                            {"label-value": label, "rgba": _PHASE_RGBA[label - 1]}
                            for label in phases.labels.values()
                        ],
                        "properties": [
                            {"label-value": label, "name": name} for name, label in phases.labels.items()
                        ],
                        "source": {"image": "../../"},
                    },
                }
            )
            staged = cls(staging, root, read_only=False, compact_every=compact_every)
            staged._log_path = provenance_log_path(path)
            staged._run = run
            staged._write_attrs()
            # A log left beside by a volume deleted since belongs to no volume: start empty.
            provenance_log_path(path).write_bytes(b"")
            if path.is_dir():
                path.rmdir()  # empty, checked above
            os.rename(staging, path)
        except (OSError, StoreError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(path, f"cannot create the volume: {exc}") from exc
        logger.info("created volume %s: canvas %s %s, chunks %s, spacing %s um", path, canvas_shape, dtype, chunks, spacing_um)
        return cls.open(path, compact_every=compact_every)

    @classmethod
    def open(cls, path, *, read_only=False, compact_every=64):
        """Open an existing volume to resume it (or, with `read_only`, to read it).

        Writable opening repairs what a killed writer left: a torn last log line, arrays longer
        than the committed depth, temporary files.

        Raises
        ------
        StoreError
            Not a revwatch volume, or inconsistent beyond repair (an array shorter than the
            committed depth).
        """
        path = Path(path)
        if not (path / ".zgroup").is_file():
            raise StoreError(path, "not a Zarr v2 group (no .zgroup): not a revwatch volume")
        try:
            root = zarr.open_group(path, mode="r" if read_only else "r+", zarr_format=2)
            if "revwatch" not in root.attrs or "0" not in root:
                raise StoreError(path, "no 'revwatch' attributes or no image '0': not a revwatch volume")
            store = cls(path, root, read_only=read_only, compact_every=compact_every)
            store._recover()
        except StoreError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(path, f"cannot open the volume: {exc}") from exc
        logger.info("opened volume %s: %d slices, %d skipped", path, store.depth, len(store._skipped))
        return store

    def _recover(self):
        """Rebuild the committed state from the log (or the attributes) and repair the arrays."""
        if self._log_path.is_file():
            slices, skipped = self._read_log()
            self._slices, self._skipped = slices, skipped
            self._indices = {r["index"] for r in slices}
            self._uncompacted = True
        elif not self._read_only:
            # Resumed from the attributes: start a log holding them.
            self._write_log_from_state()
        depth = len(self._slices)
        for z, record in enumerate(self._slices):
            if record.get("z") != z:
                raise StoreError(self.path, f"provenance entry {z} has z={record.get('z')!r}, expected {z}")
        for array in (self.grey, self.labels):
            if array.shape[0] < depth:
                raise StoreError(
                    self.path,
                    f"array {array.path!r} has {array.shape[0]} slices but {depth} are committed: the volume is corrupt",
                )
        if not self._read_only:
            self._trim_arrays(depth)
            for partial in self.path.rglob("*.partial"):
                if _PARTIAL.search(partial.name):
                    partial.unlink(missing_ok=True)
            self._write_attrs()

    def _read_log(self):
        slices, skipped = [], []
        raw = self._log_path.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no line end")
                record = json.loads(line)
                kind = record.pop("kind")
            except (ValueError, KeyError) as exc:
                # Only the last line can be torn (killed during its write): cut it.
                if good + len(line) != len(raw):
                    raise StoreError(self.path, f"{self._log_path.name} is corrupt at byte {good}: {exc}") from None
                logger.warning("volume %s: dropping a torn provenance line (%d bytes)", self.path, len(line))
                if not self._read_only:
                    with open(self._log_path, "r+b") as fh:
                        fh.truncate(good)
                break
            (slices if kind == "slice" else skipped).append(record)
            good += len(line)
        return slices, skipped

    def _write_log_from_state(self):
        lines = [{"kind": "slice", **r} for r in self._slices] + [{"kind": "skipped", **r} for r in self._skipped]
        tmp = self._log_path.with_name(self._log_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
        os.replace(tmp, self._log_path)

    # -- state -----------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Number of committed slices (the readable z extent)."""
        return len(self._slices)

    @property
    def indices(self) -> set[int]:
        """Slice indices stored in the volume."""
        return set(self._indices)

    @property
    def done(self) -> dict[int, str | None]:
        """Indices handled so far, for resuming a watcher (``SliceWatcher(done=store.done)``).

        Stored slices map to their ``source`` file; skipped indices map to None.
        """
        done = {r["index"]: None for r in self._skipped if "index" in r}
        done.update({r["index"]: r.get("source") for r in self._slices})
        return done

    @property
    def slices(self) -> list[dict]:
        """Per-slice provenance, in z order (copies)."""
        return [dict(r) for r in self._slices]

    @property
    def skipped(self) -> list[dict]:
        """Skipped inputs ``{index or file, reason, ...}`` (copies)."""
        return [dict(r) for r in self._skipped]

    @property
    def run_attrs(self) -> dict:
        """Run attributes (``run_id``, ``phases``, ``spacing_um``, ``canvas_shape``, ...)."""
        return json.loads(json.dumps(self._run))

    @property
    def spacing_um(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)`` in micrometres."""
        return tuple(self._run["spacing_um"])

    @property
    def canvas_shape(self) -> tuple[int, int]:
        """``(Y, X)`` of every slice."""
        return tuple(self.grey.shape[1:])

    @property
    def phases(self) -> Phases:
        return Phases(tuple(self._run["phases"]))

    # -- writing ---------------------------------------------------------------------------

    def append(self, index, grey, labels, provenance=None) -> int:
        """Append one slice at z = :attr:`depth` and commit its provenance.

        Parameters
        ----------
        index : int
            Slice index (from the file name); must not be in the volume yet.
        grey : (Y, X) ndarray
            Aligned grey levels, of the volume's dtype and canvas shape.
        labels : (Y, X) ndarray of uint8
            Phase labels, 0 = unassigned.
        provenance : dict, optional
            JSON-able facts about the slice (``source``, ``arrival_time_unix_s``, ``shift_px``,
            ``z_um``, ``confidence``, ...); the store adds ``index`` and ``z``.

        Returns
        -------
        int
            The z position of the slice.

        Raises
        ------
        SliceShapeError
            `grey` or `labels` has another shape or dtype than the volume.
        ValueError
            `index` is already in the volume.
        StoreError
            The write failed (disk full, permission, ...): nothing is committed and the volume
            still reads up to the previous slice.
        """
        self._check_writable()
        index = int(index)
        grey = np.asarray(grey)
        labels = np.asarray(labels)
        canvas = self.canvas_shape
        if grey.shape != canvas or grey.dtype != self.grey.dtype:
            raise SliceShapeError(
                f"slice {index}: grey is {grey.dtype} {grey.shape}, the volume {self.path} holds {self.grey.dtype} {canvas}"
            )
        if labels.shape != canvas or labels.dtype != np.uint8:
            raise SliceShapeError(f"slice {index}: labels are {labels.dtype} {labels.shape}, expected uint8 {canvas}")
        record = _to_json(dict(provenance or {}))
        if record.get("index", index) != index:
            raise ValueError(f"provenance index {record['index']!r} differs from index {index}")
        with self._lock:
            if index in self._indices:
                raise ValueError(f"slice index {index} is already in the volume {self.path}")
            z = len(self._slices)
            record.update(index=index, z=z)
            try:
                for array, data in ((self.grey, grey), (self.labels, labels)):
                    if array.shape[0] != z + 1:
                        array.resize((z + 1, *canvas))
                    array[z] = data
            except OSError as exc:
                self._trim_arrays(z)
                raise StoreError(self.path, f"cannot write slice {index} at z={z}: {exc}") from exc
            try:
                self._commit("slice", record)
            except StoreError:
                self._trim_arrays(z)
                raise
            self._slices.append(record)
            self._indices.add(index)
            self._count_append()
        return z

    def record_skipped(self, *, reason, index=None, file=None, **details):
        """Record a skipped input (a gap, a rejected file, a duplicate) in the volume.

        Parameters
        ----------
        reason : str
            Why it was skipped, in words.
        index : int, optional
        file : str or os.PathLike, optional
            At least one of `index` and `file`.
        **details
            Extra JSON-able facts (``time_unix_s``, ...).
        """
        self._check_writable()
        if index is None and file is None:
            raise ValueError("record_skipped needs an index or a file")
        record = {"reason": str(reason), **details}
        if index is not None:
            record["index"] = int(index)
        if file is not None:
            record["file"] = os.fspath(file)
        record = _to_json(record)
        with self._lock:
            self._commit("skipped", record)
            self._skipped.append(record)
            self._count_append()

    def update_run_attrs(self, attrs):
        """Merge `attrs` (JSON-able, e.g. the calibrated phase model) into the run attributes."""
        self._check_writable()
        attrs = _to_json(dict(attrs))
        clash = _RESERVED_RUN_KEYS & attrs.keys()
        if clash:
            raise ValueError(f"run attributes must not contain {sorted(clash)}: the store owns them")
        with self._lock:
            self._run.update(attrs)
            self._write_attrs()

    def set_z_spacing(self, dz_um, *, how=None):
        """Change the volume's z step (``multiscales`` scale and ``revwatch.spacing_um``).

        The true slice positions arrive slice by slice, so the step the volume states follows
        them. Kept in memory at once (:attr:`spacing_um`), written with the next compaction,
        :meth:`flush` or :meth:`close` (not on every append: the attributes grow with the depth).

        Parameters
        ----------
        dz_um : float
            z step in micrometres, > 0.
        how : dict, optional
            JSON-able statement of how the step was chosen, kept as ``revwatch.z_spacing``.
        """
        self._check_writable()
        dz_um = float(dz_um)
        if not (math.isfinite(dz_um) and dz_um > 0):
            raise ValueError(f"dz_um must be a positive step in um, got {dz_um!r}")
        with self._lock:
            self._run["spacing_um"] = [dz_um, *self._run["spacing_um"][1:]]
            if how is not None:
                self._run["z_spacing"] = _to_json(dict(how))
            self._uncompacted = True
            self._labels_scale_stale = True

    def flush(self):
        """Copy the provenance log into the volume's attributes (``revwatch.slices``/``skipped``)."""
        if self._read_only:
            return
        with self._lock:
            if self._uncompacted:
                self._write_attrs()

    def close(self):
        """Flush; the store must not be written afterwards."""
        self.flush()
        self._read_only = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"VolumeStore({str(self.path)!r}, depth={self.depth}, canvas={self.canvas_shape}, dtype={self.grey.dtype})"

    # -- internals -------------------------------------------------------------------------

    def _check_writable(self):
        if self._read_only:
            raise StoreError(self.path, "opened read-only (or closed)")

    def _trim_arrays(self, depth):
        """Cut the arrays to the committed `depth` (after an interrupted or failed append)."""
        for array in (self.grey, self.labels):
            if array.shape[0] > depth:
                logger.warning("volume %s: trimming %s from %d to %d committed slices", self.path, array.path, array.shape[0], depth)
                try:
                    array.resize((depth, *array.shape[1:]))
                except OSError as exc:
                    logger.warning("volume %s: cannot trim %s now (%s); it is trimmed when the volume is next opened", self.path, array.path, exc)

    def _commit(self, kind, record):
        """Append one line to the log: the step that makes the slice part of the volume."""
        line = (json.dumps({"kind": kind, **record}, allow_nan=False) + "\n").encode("utf-8")
        size = self._log_path.stat().st_size if self._log_path.exists() else 0
        try:
            with open(self._log_path, "ab") as fh:
                fh.write(line)
        except OSError as exc:
            # Undo a partial line so that the log stays a sequence of whole records.
            try:
                with open(self._log_path, "r+b") as fh:
                    fh.truncate(size)
            except OSError:
                logger.warning("volume %s: could not cut a partial provenance line; it is dropped on open", self.path)
            raise StoreError(self.path, f"cannot commit {kind} {record.get('index', record.get('file'))}: {exc}") from exc

    def _count_append(self):
        self._uncompacted = True
        self._since_compact += 1
        if self._since_compact >= self._compact_every:
            try:
                self._write_attrs()
            except StoreError as exc:
                # The log holds the committed state; the attributes catch up at the next flush.
                logger.warning("%s", exc)

    def _write_attrs(self):
        attrs = {
            "multiscales": _multiscales(self.path.name, self._run["spacing_um"]),
            "revwatch": {**self._run, "slices": self._slices, "skipped": self._skipped, "provenance_log": self._log_path.name},
        }
        try:
            self._root.attrs.put(attrs)
        except OSError as exc:
            raise StoreError(self.path, f"cannot write the attributes: {exc}") from exc
        if self._labels_scale_stale:
            labels = self._root["labels"][LABEL_NAME]
            try:
                labels.attrs.update({"multiscales": _multiscales(LABEL_NAME, self._run["spacing_um"])})
            except OSError as exc:
                raise StoreError(self.path, f"cannot write the labels' attributes: {exc}") from exc
            self._labels_scale_stale = False
        self._since_compact = 0
        self._uncompacted = False

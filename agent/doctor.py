"""``revwatch doctor``: check a configuration and this machine before a run, and say what to fix.

Each check is a small function returning a :class:`Check` (name, status, detail, fix), so it can
be called and tested on its own; :func:`doctor_checks` runs them all for a :class:`Config` and
:func:`run_doctor` prints them as a table. Checks only look: the one file they write (to prove
the volume's folder is writable) is deleted at once, and the sockets they bind are closed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import zmq
from rich.console import Console
from rich.table import Table

from agent.config import Config
from agent.watch import detector_matches
from processing.errors import RevwatchError
from processing.io import (
    is_slice_file,
    read_fei_project_spacing_um,
    read_slice,
    slice_index_from_name,
    z_um_from_name,
)

__all__ = [
    "Check",
    "OK",
    "WARN",
    "FAIL",
    "check_folder",
    "find_slices",
    "check_detector",
    "check_slices",
    "pixel_size_mismatch",
    "start_checks",
    "check_spacing",
    "check_volume_writable",
    "check_volume_resume",
    "expected_volume_bytes",
    "check_disk",
    "check_publish_security",
    "check_port",
    "check_scheduler",
    "check_packages",
    "check_machine",
    "check_phase_model",
    "doctor_checks",
    "render",
    "run_doctor",
]

log = logging.getLogger(__name__)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}
# Distributions whose presence and version matter to a run (import name, distribution name).
PACKAGES = (
    ("numpy", "numpy"),
    ("zarr", "zarr"),
    ("dask", "dask"),
    ("distributed", "distributed"),
    ("zmq", "pyzmq"),
    ("watchdog", "watchdog"),
    ("skimage", "scikit-image"),
    ("tifffile", "tifffile"),
    ("imagecodecs", "imagecodecs"),
)
# Below this much available memory a run on full-size slices is likely to swap.
_LOW_MEMORY_BYTES = 2 << 30
# Free space asked for beyond the estimate: compressed chunks are smaller, but the
# provenance log, temporary chunk files and the OS need room too.
_DISK_MARGIN = 1.2
# A directory walk on a slow share stops after this many entries (the check stays quick).
_MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        What was checked ("acquisition folder", "publish port", ...).
    status : str
        :data:`OK`, :data:`WARN` (works, but look at it) or :data:`FAIL` (must be fixed).
    detail : str
        What was found.
    fix : str
        What to do; empty when nothing is needed.
    """

    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self):
        if self.status not in _STYLE:
            raise ValueError(f"status must be one of {tuple(_STYLE)}, got {self.status!r}")


def _gib(n_bytes: float) -> str:
    if n_bytes < 1 << 30:
        return f"{n_bytes / (1 << 20):.1f} MiB"
    return f"{n_bytes / (1 << 30):.1f} GiB"


def _existing_ancestor(path: Path) -> Path:
    """`path` itself or its nearest existing parent (what will hold it once created)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


# -- acquisition ---------------------------------------------------------------------------


def check_folder(folder) -> Check:
    """The acquisition folder is set, exists, is a directory and can be listed."""
    name = "acquisition folder"
    if folder is None:
        return Check(name, FAIL, "not set",
                     'set acquisition.folder in the config or give it: `revwatch run "D:/ASV/project"`')
    folder = Path(folder)
    if not folder.exists():
        fix = "check the path and that the share is mounted (mapped) for the user running revwatch"
        if os.name != "nt" and PureWindowsPath(str(folder)).drive:
            fix = "this is a Windows path: on this machine give the folder where the share is mounted"
        return Check(name, FAIL, f"{folder} does not exist (nearest existing: {_existing_ancestor(folder)})", fix)
    if not folder.is_dir():
        return Check(name, FAIL, f"{folder} is a file, not a folder", "point acquisition.folder at the folder holding the slices")
    try:
        with os.scandir(folder) as entries:
            count = sum(1 for _ in entries)
    except PermissionError as exc:
        return Check(name, FAIL, f"{folder} cannot be listed: {exc.strerror}",
                     "give the user running revwatch read and list permission on the folder and its subfolders")
    except OSError as exc:
        return Check(name, FAIL, f"{folder} cannot be listed: {exc.strerror or exc}", "check the share or disk")
    if not os.access(folder, os.R_OK | os.X_OK):
        return Check(name, FAIL, f"{folder} is not readable by this user",
                     "give the user running revwatch read permission")
    return Check(name, OK, f"{folder} ({count} entries at the top level)")


def find_slices(folder, *, max_entries: int = _MAX_ENTRIES) -> dict[Path, list[Path]]:
    """Slice files under `folder`, grouped by the directory that holds them.

    Parameters
    ----------
    folder : str or os.PathLike
    max_entries : int
        Stop walking after this many directory entries (slow shares).

    Returns
    -------
    dict of Path to list of Path
        Directory -> its slice files (as :func:`processing.io.is_slice_file` and
        :func:`processing.io.slice_index_from_name` accept them), sorted by slice index.
        Unreadable subfolders are skipped.
    """
    groups: dict[Path, list[Path]] = {}
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.endswith(".ome.zarr")]
        seen += len(dirs) + len(files)
        found = [Path(root, f) for f in files if is_slice_file(f) and slice_index_from_name(f) is not None]
        if found:
            groups[Path(root)] = sorted(found, key=lambda p: slice_index_from_name(p.name))
        if seen >= max_entries:
            log.warning("stopped listing %s after %d entries", folder, seen)
            break
    return groups


def _relative(folder: Path, path: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def check_detector(folder, groups: dict[Path, list[Path]], *, detector: str | None = None):
    """One detector per volume: the one slice folder the run will use.

    Parameters
    ----------
    folder : str or os.PathLike
        The acquisition folder.
    groups : dict of Path to list of Path
        From :func:`find_slices`.
    detector : str, optional
        ``acquisition.detector``: the folder name or relative path to use.

    Returns
    -------
    check : Check
    groups : dict of Path to list of Path
        Only the chosen folder's slices (all of `groups` when the check fails).
    """
    name = "detector"
    folder = Path(folder)
    found = ", ".join(f"'{_relative(folder, d)}' ({len(v)} slices)" for d, v in groups.items())
    example = f'acquisition.detector = "{next(iter(groups)).name}"' if groups else ""
    if detector is not None:
        chosen = {d: v for d, v in groups.items() if detector_matches(_relative(folder, d), detector)}
        if len(chosen) == 1:
            (d, files), = chosen.items()
            return Check(name, OK, f"{detector!r}: '{_relative(folder, d)}' ({len(files)} slices)"), chosen
        if not groups:
            return Check(name, OK, f"{detector!r} (no slices yet; other folders' slices will be ignored)"), {}
        if not chosen:
            return Check(name, FAIL, f"acquisition.detector = {detector!r}: no slice folder of that name; found {found}",
                         "set acquisition.detector to one of the folders found"), groups
        return Check(name, FAIL, f"acquisition.detector = {detector!r} matches several folders: "
                     + ", ".join(f"'{_relative(folder, d)}'" for d in chosen),
                     "give the folder's relative path, e.g. " + example), groups
    if len(groups) > 1:
        return Check(name, FAIL, f"slices of several detectors would mix into one volume: {found}",
                     f"set acquisition.detector (revwatch run --detector) to the one to use, e.g. {example}"), groups
    if groups:
        (d, files), = groups.items()
        return Check(name, OK, f"one slice folder: '{_relative(folder, d)}'"), groups
    return Check(name, OK, "no slices yet: the run takes the first slice's folder (set acquisition.detector if "
                 "the project will hold several detectors)"), groups


def pixel_size_mismatch(configured_nm: float, metadata_um) -> str | None:
    """Why a configured pixel size does not fit the metadata's (more than 1 % apart), or None."""
    if metadata_um is None:
        return None
    metadata_nm = 1000.0 * float(metadata_um[1])
    if abs(metadata_nm - configured_nm) <= 0.01 * metadata_nm:
        return None
    return (f"acquisition.pixel_size_nm = {configured_nm:g} nm but the slice metadata says {metadata_nm:.4g} nm "
            f"({1000 * metadata_um[0]:.4g} x {metadata_nm:.4g} nm)")


def check_slices(groups: dict[Path, list[Path]], *, pixel_size_nm: float | None = None, force_pixel_size: bool = False):
    """Slices found, the first one readable, its pixel size known.

    Parameters
    ----------
    groups : dict of Path to list of Path
        From :func:`find_slices`.
    pixel_size_nm : float, optional
        ``acquisition.pixel_size_nm``; None means the metadata must carry it.
    force_pixel_size : bool, optional
        ``acquisition.force_pixel_size``: a configured size that differs from the metadata is a
        warning, not a failure.

    Returns
    -------
    check : Check
    first : SliceImage or None
        The first slice read (for the volume size estimate), None when none could be read.
    """
    name = "slices"
    if not groups:
        fix = "" if pixel_size_nm else "none needed now; if the slices carry no pixel size, set acquisition.pixel_size_nm"
        return Check(name, WARN, "no slice files yet (fine before the acquisition starts): nothing to check the "
                     "pixel size and volume size against", fix), None
    total = sum(len(v) for v in groups.values())
    folders = ", ".join(f"{d.name or d} ({len(v)})" for d, v in groups.items())
    path = next(iter(groups.values()))[0]
    try:
        first = read_slice(path)
    except RevwatchError as exc:
        return Check(name, WARN, f"{total} slice files in {folders}; the first, {path.name}, cannot be read: {exc}",
                     "check that the instrument writes uncompressed or LZW TIFFs, and the file permissions"), None
    y, x = first.pixels.shape
    detail = f"{total} slice files in {folders}; {path.name}: {y} x {x} px {first.pixels.dtype}"
    if pixel_size_nm is not None:
        detail += f", pixel {pixel_size_nm:g} nm (configured)"
        mismatch = pixel_size_mismatch(pixel_size_nm, first.pixel_size_um)
        if mismatch and not force_pixel_size:
            return Check(name, FAIL, f"{detail}: {mismatch}",
                         "remove acquisition.pixel_size_nm to use the metadata, or set acquisition.force_pixel_size "
                         "= true to use the configured value"), first
        if mismatch:
            return Check(name, WARN, f"{detail}: {mismatch}; the configured value is used (force_pixel_size)"), first
    elif first.pixel_size_um is not None:
        detail += f", pixel {first.pixel_size_um[1] * 1000:.4g} nm (metadata)"
    else:
        return Check(name, FAIL, detail + ", no pixel size in the metadata",
                     "set acquisition.pixel_size_nm"), first
    return Check(name, OK, detail), first


def check_spacing(folder, groups: dict[Path, list[Path]], *, slice_spacing_nm: float | None = None) -> Check:
    """The slice spacing is known: configured, Auto Slice & View ``EMProject.emxml``, or Atlas z in names."""
    name = "slice spacing"
    if slice_spacing_nm is not None:
        return Check(name, OK, f"{slice_spacing_nm:g} nm (configured)")
    if folder is not None and Path(folder).is_dir():
        spacing_um = read_fei_project_spacing_um(folder)
        if spacing_um is not None:
            return Check(name, OK, f"{spacing_um * 1000:.4g} nm (EMProject.emxml, Auto Slice & View)")
    names = [p.name for files in groups.values() for p in files[:2]]
    if names and all(z_um_from_name(n) is not None for n in names):
        return Check(name, OK, "measured z in the file names (Atlas 3D)")
    fix = "set acquisition.slice_spacing_nm (or point acquisition.folder inside the Auto Slice & View project)"
    if not names:
        return Check(name, WARN, "no EMProject.emxml and no slices yet to read z from", fix)
    return Check(name, FAIL, "no EMProject.emxml near the folder and no z in the file names", fix)


# -- volume ----------------------------------------------------------------------------------


def check_volume_writable(path) -> Check:
    """A file can be created (and deleted) in the volume's folder (it also holds the events log)."""
    name = "volume location"
    path = Path(path)
    where = _existing_ancestor(path.parent)
    if not where.is_dir():
        return Check(name, FAIL, f"{where} is not a folder", "set volume.path to a path inside a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".revwatch-doctor-", dir=where)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return Check(name, FAIL, f"cannot create a file in {where}: {exc.strerror or exc}",
                     "give the user running revwatch write permission there, or set volume.path elsewhere")
    made = "" if where == path.parent.absolute() else f" ({path.parent} will be created)"
    return Check(name, OK, f"{where} is writable{made}")


def check_volume_resume(path, *, phase_names=None):
    """An existing volume at `path` opens for resume; a missing one will be created.

    Returns
    -------
    check : Check
    store : VolumeStore or None
        The volume opened read-only (it holds no open file), None when absent or unreadable.
    """
    from agent.store import StoreError, VolumeStore

    name = "volume resume"
    path = Path(path)
    if not path.exists():
        return Check(name, OK, f"{path} does not exist yet: a new volume will be created"), None
    try:
        store = VolumeStore.open(path, read_only=True)
    except StoreError as exc:
        return Check(name, FAIL, f"{path} exists but cannot be resumed: {exc}",
                     "move it away, or set volume.path to a new path"), None
    y, x = store.canvas_shape
    detail = (f"resumes {path.name}: {store.depth} slices of {y} x {x} {store.grey.dtype}, "
              f"{len(store.skipped)} skipped")
    if phase_names is not None and tuple(store.phases.names) != tuple(phase_names):
        return Check(name, FAIL, detail + f"; its phases {list(store.phases.names)} differ from the config's "
                     f"{list(phase_names)}", "use the same phases.names as the volume, or a new volume.path"), store
    return Check(name, OK, detail), store


def expected_volume_bytes(slice_shape, dtype, slices: int) -> int:
    """Uncompressed size of a volume: grey (`dtype`) plus uint8 labels for `slices` slices.

    Parameters
    ----------
    slice_shape : (int, int)
        ``(Y, X)`` of one slice, in pixels.
    dtype : numpy dtype or str
        Grey-level type of the slices (uint8 or uint16).
    slices : int
        Number of slices (>= 0).

    Returns
    -------
    int
        Bytes. Compressed chunks take less; this is the bound to plan the disk for.

    Examples
    --------
    >>> expected_volume_bytes((1024, 1536), "uint16", 2000)
    9437184000
    """
    if len(slice_shape) != 2 or min(int(n) for n in slice_shape) < 1:
        raise ValueError(f"slice_shape must be (Y, X) with Y, X >= 1, got {slice_shape!r}")
    if int(slices) < 0:
        raise ValueError(f"slices must be >= 0, got {slices!r}")
    per_pixel = np.dtype(dtype).itemsize + np.dtype(np.uint8).itemsize
    return int(slice_shape[0]) * int(slice_shape[1]) * per_pixel * int(slices)


def check_disk(path, *, slice_shape=None, dtype=None, expected_slices: int = 2000, done_slices: int = 0) -> Check:
    """Free space on the volume's drive against the size of the slices still to come.

    Parameters
    ----------
    path : str or os.PathLike
        The volume path (need not exist).
    slice_shape : (int, int), optional
        ``(Y, X)`` of a slice (or the volume's canvas); None when no slice is known yet.
    dtype : numpy dtype, optional
    expected_slices : int
        Slices the acquisition is expected to reach.
    done_slices : int
        Slices already in the volume (resume).
    """
    name = "free disk"
    where = _existing_ancestor(Path(path))
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check(name, FAIL, f"cannot read the free space of {where}: {exc.strerror or exc}", "check the drive")
    if slice_shape is None:
        return Check(name, WARN, f"{_gib(free)} free on {where}; no slice yet to size the volume from",
                     "run doctor again once the first slice is written")
    remaining = max(int(expected_slices) - int(done_slices), 0)
    need = expected_volume_bytes(slice_shape, dtype, remaining) * _DISK_MARGIN
    detail = (f"{_gib(free)} free on {where}; {remaining} more slices of {slice_shape[0]} x {slice_shape[1]} "
              f"{np.dtype(dtype)} need up to {_gib(need)} (uncompressed, +{_DISK_MARGIN - 1:.0%})")
    if free < need:
        slices_fit = int(free / (need / remaining)) if remaining else 0
        return Check(name, FAIL, detail + f": room for about {slices_fit} slices",
                     "free space, or set volume.path on a larger drive")
    return Check(name, OK, detail)


# -- publishing ------------------------------------------------------------------------------


def _snapshot_endpoint(publish) -> str:
    from agent.publish import default_snapshot_endpoint

    return publish.snapshot_endpoint or default_snapshot_endpoint(publish.endpoint)


def check_publish_security(publish) -> Check:
    """The endpoints are valid, and either loopback, or CURVE keys are present, or `insecure` is chosen."""
    from agent.keys import load_server_keys
    from agent.publish import PublishError, is_loopback

    name = "publish security"
    try:
        endpoints = [publish.endpoint, _snapshot_endpoint(publish)]
        exposed = [e for e in endpoints if not is_loopback(e)]
    except PublishError as exc:
        return Check(name, FAIL, str(exc), "use publish.endpoint = \"tcp://HOST:PORT\"")
    if publish.keys_dir is not None:
        try:
            keys = load_server_keys(publish.keys_dir)
        except (RevwatchError, OSError, ValueError) as exc:
            return Check(name, FAIL, f"keys in {publish.keys_dir} cannot be used: {exc}",
                         f"create them with `revwatch keys {publish.keys_dir}`")
        clients = sum(1 for _ in keys.clients_dir.glob("*.key"))
        return Check(name, OK, f"{', '.join(endpoints)}: CURVE, {clients} client key(s) in {keys.clients_dir}")
    if not exposed:
        return Check(name, OK, f"{', '.join(endpoints)}: loopback only (clients on this PC)")
    if publish.insecure:
        return Check(name, WARN, f"{', '.join(exposed)} is reachable from the network WITHOUT encryption (insecure = true)",
                     "on an untrusted network create keys with `revwatch keys DIR` and set publish.keys_dir")
    return Check(name, FAIL, f"{', '.join(exposed)} is not loopback and no CURVE keys are configured: the agent "
                 "will refuse to start", "create keys with `revwatch keys DIR` and set publish.keys_dir, bind "
                 "tcp://127.0.0.1, or set publish.insecure = true on a trusted network")


def check_port(endpoint: str, *, name: str = "publish port") -> Check:
    """`endpoint` can be bound now (bound with a ZeroMQ socket, then released)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(endpoint)
        sock.unbind(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            return Check(name, FAIL, f"{endpoint} is already in use",
                         "stop the other program (another revwatch agent?) or choose another port in publish.endpoint")
        return Check(name, FAIL, f"cannot bind {endpoint}: {exc.strerror}",
                     "use an address of this machine, e.g. tcp://127.0.0.1:5556 or tcp://*:5556")
    finally:
        sock.close(linger=0)
        ctx.term()
    return Check(name, OK, f"{endpoint} is free")


# -- compute ---------------------------------------------------------------------------------


def check_scheduler(address: str | None, *, timeout_s: float = 5.0, volume=None) -> Check:
    """The Dask scheduler is reachable and has workers that can run the metrics of `volume`.

    Parameters
    ----------
    address : str or None
        ``analysis.scheduler``; None means in-process threads (always fine).
    timeout_s : float
        How long to try to connect.
    volume : str or os.PathLike, optional
        The volume path: every worker must see it (or, before it exists, its folder) at the same
        path, since the metrics tasks open the Zarr store by path.
    """
    name = "dask scheduler"
    if address is None:
        return Check(name, OK, f"in-process threads ({os.cpu_count()} logical CPUs)")
    from distributed import Client
    from distributed.versions import VersionMismatchWarning

    try:
        with warnings.catch_warnings():
            # distributed warns about every differing package; the relevant ones are reported below.
            warnings.simplefilter("ignore", VersionMismatchWarning)
            client = Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        return Check(name, FAIL, f"{address} not reachable within {timeout_s:g} s: {exc}",
                     "start the scheduler (`dask scheduler`), check the address, the firewall (port 8786) "
                     "or remove analysis.scheduler to run the metrics on in-process threads")
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        if not workers:
            return Check(name, WARN, f"{address} reachable but has no workers: the metrics would wait",
                         "start workers: `dask worker " + address + "`")
        detail = f"{address}: {len(workers)} worker(s), {sum(w.get('nthreads', 0) for w in workers.values())} threads"
        theirs = client.run(importlib.metadata.version, "revwatch", on_error="return")
        missing = sorted(w for w, v in theirs.items() if not isinstance(v, str))
        if missing:
            return Check(name, FAIL, f"{detail}; revwatch is not installed on {len(missing)} worker(s): {missing[0]}",
                         "install the same revwatch on every worker (see deploy/Containerfile)")
        if volume is not None:
            blind = _workers_without(client, Path(volume))
            if blind:
                return Check(name, FAIL, f"{detail}; {blind}", "mount the volume's storage at the same path on "
                             "every worker, or put volume.path on storage they share (deploy/dask-cluster.md)")
        mismatch = _version_mismatches(client)
        mine = _revwatch_version()
        if set(theirs.values()) - {mine}:
            mismatch.append(f"revwatch {mine} here, {', '.join(sorted(set(theirs.values())))} on workers")
        if mismatch:
            return Check(name, WARN, detail + "; version mismatch: " + "; ".join(mismatch),
                         "install the same versions on the agent PC and the workers")
        seen = "" if volume is None else ", all see the volume's folder"
        return Check(name, OK, f"{detail}, versions match{seen}")
    finally:
        client.close()


def _revwatch_version() -> str:
    try:
        return importlib.metadata.version("revwatch")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _workers_without(client, volume: Path) -> str:
    """Which workers do not see the volume (or its folder), as a sentence; empty when all do."""
    folder = next((p for p in (volume, volume.parent) if p.is_dir()), None)
    if folder is None:
        return ""  # nothing to look for yet: the folder is created by the agent
    seen = client.run(os.path.isdir, str(folder.absolute()), on_error="return")
    blind = sorted(w for w, ok in seen.items() if ok is not True)
    return f"{len(blind)} worker(s) do not see {folder.absolute()}: {blind[0]}" if blind else ""


def _version_mismatches(client) -> list[str]:
    versions = client.get_versions(check=False)
    here = versions["client"]["packages"]
    out = []
    for package in ("python", "dask", "distributed", "numpy", "zarr"):
        theirs = {v["packages"].get(package) for v in [versions["scheduler"], *versions["workers"].values()]}
        theirs.discard(None)
        if theirs - {here.get(package)}:
            out.append(f"{package} {here.get(package)} here, {', '.join(sorted(theirs))} there")
    return out


def check_packages() -> Check:
    """The packages a run needs import, with their versions."""
    name = "python packages"
    found, missing = [], []
    for module, dist in PACKAGES:
        try:
            importlib.import_module(module)
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
            missing.append(f"{dist} ({exc})")
    detail = f"python {platform.python_version()}, libzmq {zmq.zmq_version()}; " + ", ".join(found)
    if missing:
        return Check(name, FAIL, detail + "; missing: " + ", ".join(missing),
                     "reinstall revwatch into its environment: pip install revwatch (or pip install . from the source)")
    return Check(name, OK, detail)


def check_machine() -> Check:
    """CPU count and memory."""
    import psutil

    memory = psutil.virtual_memory()
    physical = psutil.cpu_count(logical=False)
    detail = (f"{os.cpu_count()} logical CPUs ({physical or '?'} cores), "
              f"{_gib(memory.available)} of {_gib(memory.total)} memory available")
    if memory.available < _LOW_MEMORY_BYTES:
        return Check("machine", WARN, detail, "close other programs or use analysis.scheduler to run the metrics elsewhere")
    return Check("machine", OK, detail)


# -- all together ----------------------------------------------------------------------------


def _acquisition_checks(acq):
    """Detector, first slice (pixel size) and slice spacing of an existing acquisition folder; also
    returns the first slice and the slice groups of the chosen detector."""
    groups = find_slices(acq.folder)
    detector_check, groups = check_detector(acq.folder, groups, detector=acq.detector)
    slices_check, first = check_slices(groups, pixel_size_nm=acq.pixel_size_nm, force_pixel_size=acq.force_pixel_size)
    spacing_check = check_spacing(acq.folder, groups, slice_spacing_nm=acq.slice_spacing_nm)
    return [detector_check, slices_check, spacing_check], first, groups


def start_checks(config: Config) -> list[Check]:
    """What ``revwatch run`` checks before it starts: the folder, its detectors, the pixel size and
    slice spacing of the slices already there, and the volume to resume. Only looks (no file written,
    no socket bound)."""
    acq = config.acquisition
    checks = [check_folder(acq.folder)]
    if checks[0].status != FAIL:
        checks += _acquisition_checks(acq)[0]
    volume = config.volume_path()
    if volume is not None:
        checks.append(check_volume_resume(volume, phase_names=config.phases.names)[0])
    return checks


def check_phase_model(config: Config, groups: dict[Path, list[Path]]) -> Check:
    """The named phases against the grey classes of the first slices (as ``revwatch calibrate``).

    Parameters
    ----------
    config : Config
    groups : dict of Path to list of Path
        From :func:`find_slices`.
    """
    from agent.calibrate import calibrate_slices

    name = "phase model"
    named = ", ".join(config.phases.names)
    if not groups:
        return Check(name, WARN, f"no slices yet: the named phases ({named}) cannot be checked against the data",
                     "once the first slices are in, run `revwatch calibrate FOLDER`")
    paths = max(groups.values(), key=len)[: config.processing.calibration_slices]
    try:
        report = calibrate_slices([read_slice(p) for p in paths], config)
    except RevwatchError as exc:
        return Check(name, WARN, f"the first {len(paths)} slices cannot be calibrated: {exc}",
                     "look at them with `revwatch calibrate FOLDER`")
    found = report.check.estimate
    detail = (f"{found.n_classes} separable grey class(es) in the first {len(paths)} slices (levels "
              + ", ".join(f"{c.level:.0f}" for c in found.phase_classes) + f"); named: {named}")
    if report.check.notes:
        detail += ". Notes: " + " ".join(report.check.notes)
    if report.check.ok:
        return Check(name, OK, detail)
    return Check(name, WARN, detail + ". " + " ".join(report.check.warnings),
                 "name the phases the data show (phases.names, dark to bright; phases.roles), state the cap "
                 "(processing.cap_rows) or mask what is not sample ([mask]); see `revwatch calibrate FOLDER`")


def doctor_checks(config: Config, *, expected_slices: int = 2000, scheduler_timeout_s: float = 5.0) -> list[Check]:
    """Run every check for `config`.

    Parameters
    ----------
    config : Config
    expected_slices : int
        Slices the acquisition is expected to reach (sizes the free-disk check).
    scheduler_timeout_s : float
        How long to try to reach ``analysis.scheduler``.

    Returns
    -------
    list of Check
    """
    if expected_slices < 1:
        raise ValueError(f"expected_slices must be >= 1, got {expected_slices!r}")
    acq = config.acquisition
    checks = [check_folder(acq.folder)]
    first = None
    if checks[0].status != FAIL:
        acquisition_checks, first, groups = _acquisition_checks(acq)
        checks += acquisition_checks
        if acquisition_checks[1].status != FAIL:
            checks.append(check_phase_model(config, groups))
    volume = config.volume_path()
    if volume is None:
        checks.append(Check("volume location", FAIL, "no volume.path and no acquisition folder to put it beside",
                            "set acquisition.folder or volume.path"))
    else:
        checks.append(check_volume_writable(volume))
        resume, store = check_volume_resume(volume, phase_names=config.phases.names)
        checks.append(resume)
        if store is not None:
            shape, dtype, done = store.canvas_shape, store.grey.dtype, store.depth
        elif first is not None:
            shape, dtype, done = first.pixels.shape, first.pixels.dtype, 0
        else:
            shape, dtype, done = None, None, 0
        checks.append(check_disk(volume, slice_shape=shape, dtype=dtype, expected_slices=expected_slices,
                                 done_slices=done))
    checks.append(check_publish_security(config.publish))
    try:
        snapshot = _snapshot_endpoint(config.publish)
    except RevwatchError:
        snapshot = None  # an invalid endpoint: already reported by the security check
    if snapshot is not None:
        checks += [check_port(config.publish.endpoint), check_port(snapshot, name="snapshot port")]
    checks += [
        check_scheduler(config.analysis.scheduler, timeout_s=scheduler_timeout_s, volume=volume),
        check_packages(),
        check_machine(),
    ]
    return checks


def render(checks: list[Check]) -> Table:
    """The checks as a table: check / status / detail / what to do."""
    table = Table(title="revwatch doctor", show_lines=True, expand=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", ratio=3)
    table.add_column("what to do", ratio=2)
    for c in checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.fix)
    return table


def run_doctor(config: Config, *, console: Console | None = None, expected_slices: int = 2000) -> int:
    """Check `config` and this machine, print the table, and return the exit code.

    Returns
    -------
    int
        0 when nothing must be fixed (warnings allowed), 1 when a check failed.
    """
    console = console or Console()
    checks = doctor_checks(config, expected_slices=expected_slices)
    console.print(render(checks))
    failed = [c.name for c in checks if c.status == FAIL]
    warned = [c.name for c in checks if c.status == WARN]
    if failed:
        console.print(f"[bold red]{len(failed)} to fix:[/] {', '.join(failed)}")
        return 1
    console.print("[green]ready[/]" + (f" ({len(warned)} warning(s): {', '.join(warned)})" if warned else ""))
    return 0

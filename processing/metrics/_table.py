"""Table 1 of the reference paper as one JSON-ready document, on the whole volume, in chunks.

Chunks
------
The volume is cut into consecutive chunks of whole slices along the *chunk axis* (z, or
y when z is the transport axis); every chunk is measured by :func:`chunk_partial` (pure,
one task, memory set by the chunk and not by the volume) and the partial results are
added in order by :class:`PartialsMerger`:

* voxel and interface counts are additive (exact);
* connectivity (connected to the current collector, interconnected share, inner
  porosity) labels the components of each chunk with cc3d and joins the components that
  touch across consecutive chunk faces (union-find on the boundary slices): exact on the
  whole volume;
* local thickness and geometric tortuosity are computed on the chunk plus ``halo``
  slices on both sides (balls and paths may leave the chunk into its margin) and
  averaged over the chunk's own voxels; exact for a single chunk, and within the bias
  of a path confined to chunk + halo otherwise. Local thickness is evaluated on a
  systematic row sample (``thickness_max_samples``), tortuosity optionally on a
  systematic sample of chunks (``tortuosity_max_voxels``): their *sampling error*
  (standard error of the mean, from replicate groups of the sample, with the finite
  population correction; 0 when nothing is sampled) is published in ``sampling_error``.
  A phase filling a whole chunk and its halo has no wall there: its local thickness is
  unbounded (larger than the block); those voxels are left out of the statistics and their
  share is ``details.local_thickness_unbounded_share``.

Valid region: label 0 (unassigned) is outside the domain everywhere; fractions and
densities are over the assigned voxels; the transport faces are the first and last
assigned voxel of each line (:mod:`._network`), and the share of the face lines that hold
an assigned voxel is ``face_valid_share``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cc3d
import edt
import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from processing.phases import UNASSIGNED, Phases

from ._common import check_axis, check_labels, check_spacing, n_label_values
from ._counts import SlabCounts, slab_counts
from ._network import geometric_tortuosity, transport_lines
from ._thickness import local_thickness

__all__ = [
    "volume_fractions",
    "active_electrolyte_ratio",
    "targeted_volume_ratio",
    "central_block",
    "count_volume",
    "counts_metrics",
    "NetworkPhases",
    "chunk_plan",
    "chunk_partial",
    "PartialsMerger",
    "expensive_metrics",
    "table1",
    "DIRECTION_KEYS",
    "THICKNESS_ROLES",
]

DIRECTION_KEYS = {0: ("z+", "z-"), 1: ("y+", "y-"), 2: ("x+", "x-")}
# Roles whose local thickness is measured by default.
THICKNESS_ROLES = ("electrolyte", "active")
# Slices per counting task: small enough to spread over threads, large enough that
# the boundary slice read twice costs little.
_SLAB = 16
# Default chunk: a volume up to this many voxels is one chunk (exact, no halo). Every chunk
# but the first and last marches and measures 2 x HALO_SLICES extra slices: on 1000 x 1024^2,
# 8 chunks of 131 M (an even number, see chunk_plan) cost 1.22x the volume (17 chunks of 64 M
# cost 1.51x); a task peaks at about 8 bytes per voxel of chunk + halo.
CHUNK_VOXELS = 160_000_000
# Margin (slices) around a chunk for the local thickness and the tortuosity.
HALO_SLICES = 16
# Replicate groups of the local-thickness row sample, per chunk (sampling error).
_GROUPS = 8
# Fine histogram bins of the local thickness, per finest voxel size.
_BINS_PER_VOXEL = 4
_CONNECTIVITY = 6


def _share(num, den):
    return float(num / den) if den else None


def volume_fractions(labels, *, phases=Phases()):
    """Volume fraction of each phase (of the assigned voxels) and the unassigned share.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase labels (phase i of `phases` is label i + 1, 0 unassigned).
    phases : Phases

    Returns
    -------
    dict
        ``{phase: share of the assigned voxels, "unassigned": share of all voxels}``; the
        phase shares sum to 1 (None without any assigned voxel).
    """
    labels = check_labels(labels)
    counts = np.bincount(labels.ravel(), minlength=n_label_values(phases))
    if counts.size > n_label_values(phases):
        raise ValueError(f"labels hold value {counts.size - 1}, but phases {phases.names!r} use 0..{len(phases.names)}")
    return _fractions_from_counts(counts, phases)


def _fractions_from_counts(voxels, phases):
    total = int(voxels.sum())
    assigned = total - int(voxels[UNASSIGNED])
    out = {name: _share(int(voxels[label]), assigned) for name, label in phases.labels.items()}
    out["unassigned"] = _share(int(voxels[UNASSIGNED]), total)
    return out


def active_electrolyte_ratio(fractions, *, phases=Phases()):
    """Active:electrolyte volume ratio as the active share of the two, e.g. 0.58 for 58:42.

    Parameters
    ----------
    fractions : dict
        From :func:`volume_fractions`.
    phases : Phases

    Returns
    -------
    float or None
        None without an active or electrolyte phase, or when both are empty.
    """
    active, electrolyte = phases.roles.get("active"), phases.roles.get("electrolyte")
    if active is None or electrolyte is None:
        return None
    a, e = fractions.get(active) or 0.0, fractions.get(electrolyte) or 0.0
    return _share(a, a + e)


def targeted_volume_ratio(weight_fractions, densities_g_cm3):
    """Volume shares targeted by a weighed composition.

    Parameters
    ----------
    weight_fractions : dict of str to float
        Weight fraction (or parts by weight) of each component, e.g. ``{"active": 0.7,
        "electrolyte": 0.3}`` (the reference study's 70:30).
    densities_g_cm3 : dict of str to float
        Density of each component in g/cm^3 (same keys), e.g. ``{"active": 4.6,
        "electrolyte": 1.88}`` (NMC622 and Li3PS4).

    Returns
    -------
    dict of str to float
        Volume share of each component, summing to 1: ``{"active": 0.488, "electrolyte":
        0.512}`` for the example (the paper's Table 1 prints 51:49, these two swapped).
    """
    if not isinstance(weight_fractions, dict) or not weight_fractions:
        raise ValueError(f"weight_fractions must be a non-empty {{component: fraction}} dict, got {weight_fractions!r}")
    if not isinstance(densities_g_cm3, dict) or set(densities_g_cm3) != set(weight_fractions):
        raise ValueError(f"densities_g_cm3 must give a density for each of {sorted(weight_fractions)}, "
                         f"got {densities_g_cm3!r}")
    w = {k: float(v) for k, v in weight_fractions.items()}
    rho = {k: float(v) for k, v in densities_g_cm3.items()}
    if any(not math.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ValueError(f"weight_fractions must be non-negative with a positive sum, got {weight_fractions!r}")
    if any(not math.isfinite(v) or v <= 0 for v in rho.values()):
        raise ValueError(f"densities_g_cm3 must be positive numbers, got {densities_g_cm3!r}")
    volumes = {k: w[k] / rho[k] for k in w}
    total = sum(volumes.values())
    return {k: v / total for k, v in volumes.items()}


def count_volume(labels, *, phases=Phases(), previous_slice=None, slab_slices=_SLAB, threads=None):
    """:class:`SlabCounts` of a stack, counted in slabs over threads (exactly additive).

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
    phases : Phases
    previous_slice : (Y, X) ndarray of uint8, optional
        Slice before the stack (see :func:`slab_counts`).
    slab_slices : int
        Slices per task.
    threads : int, optional
        Worker threads (default: CPU count).

    Returns
    -------
    SlabCounts
    """
    labels = check_labels(labels)
    n_values = n_label_values(phases)
    starts = range(0, labels.shape[0], slab_slices)

    def one(z0):
        prev = previous_slice if z0 == 0 else labels[z0 - 1]
        return slab_counts(labels[z0:z0 + slab_slices], previous_slice=prev, n_values=n_values)

    if (threads or os.cpu_count() or 1) == 1 or len(starts) == 1:
        parts = [one(z0) for z0 in starts]
    else:
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            parts = list(pool.map(one, starts))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def counts_metrics(counts: SlabCounts, *, spacing_um, phases=Phases(), coverage_by=None):
    """The cheap Table 1 metrics from additive counts.

    Unassigned voxels are outside the domain: fractions are shares of the assigned
    voxels, the cell volume ``V_cell`` is the volume of the assigned voxels, and
    interfaces with unassigned voxels are not counted in any phase's surface.

    Parameters
    ----------
    counts : SlabCounts
        Of the whole volume (sum of the slabs).
    spacing_um : sequence of 3 float
        (dz, dy, dx) in um.
    phases : Phases
    coverage_by : str, optional
        The covering phase of ``coverage_share``; default the electrolyte (the paper's
        coverage of the active material by the electrolyte).

    Returns
    -------
    dict
        ``volume_fraction``, ``surface_area_per_cell_volume_um-1``,
        ``surface_area_per_phase_volume_um-1``, ``coverage_share`` (for each phase but
        the covering one: the share of its surface in contact with the covering phase).
    """
    spacing = check_spacing(spacing_um)
    voxel_um3 = float(np.prod(spacing))
    areas = counts.interface_areas_um2(spacing)
    areas[UNASSIGNED, :] = 0
    areas[:, UNASSIGNED] = 0
    phase_area = areas.sum(axis=1)
    cell_um3 = (int(counts.voxels.sum()) - int(counts.voxels[UNASSIGNED])) * voxel_um3
    if coverage_by is None:
        covering = phases.label_of_role("electrolyte")
    else:
        covering = phases.label(coverage_by)
    per_cell, per_phase, coverage = {}, {}, {}
    for name, label in phases.labels.items():
        per_cell[name] = _share(phase_area[label], cell_um3)
        per_phase[name] = _share(phase_area[label], int(counts.voxels[label]) * voxel_um3)
        if covering is not None and label != covering:
            coverage[name] = _share(areas[label, covering], phase_area[label])
    return {
        "volume_fraction": _fractions_from_counts(counts.voxels, phases),
        "surface_area_per_cell_volume_um-1": per_cell,
        "surface_area_per_phase_volume_um-1": per_phase,
        "coverage_share": coverage,
    }


# --------------------------------------------------------------------------- phase selection


@dataclass(frozen=True)
class NetworkPhases:
    """The phase(s) each network metric measures.

    Attributes
    ----------
    tortuosity, thickness, connected, interconnected, tortuosity_factor : tuple of str
        Phase names. :meth:`resolve` fills the reference study's defaults: tortuosity
        of the electrolyte; local thickness of the electrolyte and the active phase;
        connected share of the active phase; interconnected share of the pore; no
        tortuosity factor (optional, costly).
    coverage_by : str or None
        Covering phase of the coverage (default the electrolyte).
    """

    tortuosity: tuple[str, ...] = ()
    thickness: tuple[str, ...] = ()
    connected: tuple[str, ...] = ()
    interconnected: tuple[str, ...] = ()
    tortuosity_factor: tuple[str, ...] = ()
    coverage_by: str | None = None

    @classmethod
    def resolve(cls, phases, *, tortuosity=None, thickness=None, connected=None, interconnected=None,
                tortuosity_factor=None, coverage_by=None):
        """Names given (None: the default roles), checked against `phases`."""
        def names(requested, roles, what):
            if requested is None:
                return tuple(phases.roles[r] for r in roles if r in phases.roles)
            if isinstance(requested, str):
                requested = (requested,)
            unknown = [n for n in requested if n not in phases.names]
            if unknown:
                raise ValueError(f"{what}: unknown phase names {unknown!r}; phases are {phases.names!r}")
            return tuple(requested)

        if coverage_by is not None and coverage_by not in phases.names:
            raise ValueError(f"coverage_by: unknown phase {coverage_by!r}; phases are {phases.names!r}")
        return cls(names(tortuosity, ("electrolyte",), "tortuosity_phases"),
                   names(thickness, THICKNESS_ROLES, "thickness_phases"),
                   names(connected, ("active",), "connected_phases"),
                   names(interconnected, ("pore",), "interconnected_phases"),
                   names(tortuosity_factor, (), "tortuosity_factor_phases"),
                   coverage_by)


# --------------------------------------------------------------------------- chunks


def chunk_plan(shape, *, chunk_axis=0, chunk_voxels=CHUNK_VOXELS):
    """Consecutive chunks of whole slices along `chunk_axis`.

    Parameters
    ----------
    shape : tuple of 3 int
    chunk_axis : int
    chunk_voxels : int
        Voxel budget of a chunk (without its halo); at least one slice per chunk.

    Returns
    -------
    list of (int, int)
        ``[start, stop)`` of every chunk, equal sizes within one slice. More than one
        chunk are an even number (when the slices allow): two or four workers then finish
        together instead of one working alone on the last chunk, and the chunking (hence
        the numbers) does not depend on the machine.
    """
    if isinstance(chunk_voxels, bool) or not isinstance(chunk_voxels, (int, np.integer)) or chunk_voxels < 1:
        raise ValueError(f"chunk_voxels must be a positive integer, got {chunk_voxels!r}")
    n = shape[chunk_axis]
    per_slice = int(np.prod(shape)) // max(n, 1)
    n_chunks = max(1, math.ceil(n / max(1, chunk_voxels // max(per_slice, 1))))
    if n_chunks > 1:
        n_chunks = min(n_chunks + n_chunks % 2, n)
    bounds = np.linspace(0, n, n_chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@dataclass(frozen=True, eq=False)
class _Components:
    """Components of one chunk: sizes and flags per component id (0 = background) and the
    ids on the chunk's first and last slice (to join them with the neighbours)."""

    sizes: np.ndarray
    flags: np.ndarray
    extra: np.ndarray
    first: np.ndarray
    last: np.ndarray


@numba.njit(cache=True, nogil=True)
def _count_ids(ids, n, where):
    """Voxels of each id 0..n (where `where` holds, unless it is empty), with no int64 copy of the ids."""
    counts = np.zeros(n + 1, np.int64)
    if where.size:
        for k in range(ids.size):
            if where[k]:
                counts[ids[k]] += 1
    else:
        for k in range(ids.size):
            counts[ids[k]] += 1
    return counts


def _component_sizes(comp, n, where=None):
    """Voxels of each component id 0..n of `comp` (within `where`, a bool array of its shape)."""
    where = np.zeros(0, bool) if where is None else np.ascontiguousarray(where).ravel()
    return _count_ids(np.ascontiguousarray(comp).ravel(), n, where)


def _components(mask, flags_of=None, extra_of=None):
    comp, n = cc3d.connected_components(mask, connectivity=_CONNECTIVITY, return_N=True)
    sizes = _component_sizes(comp, n)
    flags = np.zeros(n + 1, bool) if flags_of is None else flags_of(comp, n)
    extra = np.zeros(n + 1, np.int64) if extra_of is None else extra_of(comp, n)
    dtype = np.uint16 if n < 2**16 else np.uint32
    return _Components(sizes, flags, extra, comp[0].astype(dtype), comp[-1].astype(dtype))


def _line_ids(comp, index, has, axis):
    ids = np.take_along_axis(comp, np.expand_dims(index, axis), axis=axis).squeeze(axis)[has]
    return ids


def _thickness_partial(block, core, label, spacing, samples, threads, all_valid=False, distance=None):
    """Local-thickness sums over the core rows of one chunk (halo around it).

    The row step keeps about `samples` phase voxels in the core; the kept rows are
    split into replicate groups along the chunk axis (sampling error). `distance`: the
    block's multi-label distance map, if shared by several phases (all-valid blocks)."""
    c0, c1 = core
    valid = None if all_valid else block != UNASSIGNED
    mask = block == label
    n_phase = int(np.count_nonzero(mask[c0:c1]))
    bin_um = min(spacing) / _BINS_PER_VOXEL
    if n_phase == 0:
        return {"groups": np.zeros((0, 3)), "hist": np.zeros(0, np.int64), "bin_um": bin_um, "step": 1,
                "unbounded": 0}
    step = max(1, math.ceil(math.sqrt(n_phase / samples)))
    thickness = local_thickness(mask, spacing_um=spacing, step=step, threads=threads, valid=valid,
                                distance_um=distance)
    rows = np.arange(thickness.shape[0]) * step
    keep = np.nonzero((rows >= c0) & (rows < c1))[0]
    groups = []
    hist = np.zeros(0, np.int64)
    unbounded = 0
    for part in np.array_split(keep, min(_GROUPS, len(keep))) if len(keep) else ():
        values = thickness[part][mask[::step, ::step][part]].astype(np.float64)
        # a phase filling the whole block (chunk + halo) has no wall in it: its thickness is
        # unbounded there (larger than the block), left out of the statistics and counted
        finite = np.isfinite(values)
        if not finite.all():
            unbounded += int(values.size - np.count_nonzero(finite))
            values = values[finite]
        groups.append((values.size, values.sum(), (values * values).sum()))
        if values.size:
            counts = np.bincount((values / bin_um).astype(np.int64))
            if counts.size > hist.size:
                counts[:hist.size] += hist
                hist = counts
            else:
                hist[:counts.size] += counts
    return {"groups": np.asarray(groups, dtype=float).reshape(-1, 3), "hist": hist, "bin_um": bin_um, "step": step,
            "unbounded": unbounded}


def chunk_partial(block, *, core, spacing_um, phases=Phases(), network=None, transport_axis=1, cc_face=0,
                  first=True, last=True, with_previous=False, thickness_samples=500_000, tortuosity=True,
                  threads=1, tortuosity_threads=None):
    """Partial Table 1 of one chunk, to be added in order by :class:`PartialsMerger`.

    Parameters
    ----------
    block : (Z, Y, X) ndarray of uint8
        The chunk with its margin along axis 0 (the chunk axis): ``block[core[0]:core[1]]``
        is the chunk itself, the rest its halo (and the slice before it).
    core : (int, int)
        The chunk's slices inside `block`.
    spacing_um : sequence of 3 float
    phases : Phases
    network : NetworkPhases, optional
        Resolved phase selection (default :meth:`NetworkPhases.resolve`).
    transport_axis : int
        1 or 2 (not the chunk axis).
    cc_face : int
        0 or -1: the current collector's face along `transport_axis`.
    first, last : bool
        Whether the chunk is the first / last of the volume along the chunk axis (its
        end slices are then the volume border).
    with_previous : bool
        ``block[core[0] - 1]`` is the slice before the chunk (counts of the pairs across
        the chunk boundary belong to this chunk).
    thickness_samples : int
        Target number of sampled phase voxels of the local thickness, per phase.
    tortuosity : bool
        Compute the geometric tortuosity of this chunk (False: a chunk left out of the
        tortuosity sample).
    threads : int
        Threads of the distance transforms and painting. The distance transform (edt) and
        the component labelling (cc3d) hold the GIL: tasks running side by side in threads
        should each give them every CPU, or they wait for each other.
    tortuosity_threads : int, optional
        2 or more marches the two directions of the tortuosity at once (a second distance
        map in memory); default `threads`.

    Returns
    -------
    dict
        Picklable partial sums (counts, components, thickness and tortuosity sums).
    """
    block = check_labels(block, name="block")
    spacing = check_spacing(spacing_um)
    axis = check_axis(transport_axis)
    if axis == 0:
        raise ValueError("transport_axis must not be the chunk axis 0; transpose the volume (see table1)")
    network = network or NetworkPhases.resolve(phases)
    c0, c1 = core
    if not 0 <= c0 < c1 <= block.shape[0]:
        raise ValueError(f"core must be a non-empty slice range inside the block's {block.shape[0]} slices, got {core}")
    chunk = block[c0:c1]
    n_values = n_label_values(phases)
    previous = block[c0 - 1] if with_previous else None
    out = {"counts": slab_counts(chunk, previous_slice=previous, n_values=n_values)}
    # an all-assigned block (the common case) needs no valid mask at all
    all_valid = int(block.min()) > UNASSIGNED
    if all_valid:
        lines = chunk.shape[:axis] + chunk.shape[axis + 1:]
        f_first = np.zeros(lines, np.int64)
        f_last = np.full(lines, chunk.shape[axis] - 1, np.int64)
        has = np.ones(lines, bool)
    else:
        f_first, f_last, has = transport_lines(chunk != UNASSIGNED, axis)
    out["face_lines"] = (int(np.count_nonzero(has)), int(has.size))
    cc_index = f_first if cc_face == 0 else f_last

    def touches_face(comp, n):
        flags = np.zeros(n + 1, bool)
        flags[_line_ids(comp, cc_index, has, axis)] = True
        flags[0] = False
        return flags

    components = {}
    for name in network.connected:
        components[("connected", name)] = _components(chunk == phases.label(name), touches_face)
    for name in network.interconnected:
        components[("interconnected", name)] = _components(chunk == phases.label(name))
    pore, active = phases.label_of_role("pore"), phases.label_of_role("active")
    if pore is not None and active is not None:
        is_pore = chunk == pore

        def on_border(comp, n):
            flags = np.zeros(n + 1, bool)
            for ax in (1, 2):
                for index in (0, -1):
                    flags[np.take(comp, index, axis=ax)] = True
            if first:
                flags[comp[0]] = True
            if last:
                flags[comp[-1]] = True
            return flags

        components[("inner",)] = _components(chunk != active, on_border,
                                              lambda comp, n: _component_sizes(comp, n, is_pore))
    out["components"] = components
    # one multi-label distance map serves every phase of an all-assigned block (1.3x the
    # cost of one phase's instead of 2x for two)
    distance = None
    if all_valid and len(network.thickness) > 1:
        distance = np.ascontiguousarray(edt.edt(block, anisotropy=spacing, black_border=False, parallel=threads),
                                        dtype=np.float32)
    out["thickness"] = {name: _thickness_partial(block, core, phases.label(name), spacing, thickness_samples, threads,
                                                 all_valid, distance)
                        for name in network.thickness}
    del distance
    out["tortuosity"] = {}
    if tortuosity:
        lines = np.zeros(block.shape[:axis] + block.shape[axis + 1:], bool)
        lines[c0:c1] = True
        block_valid = None if all_valid else block != UNASSIGNED
        for name in network.tortuosity:
            out["tortuosity"][name] = geometric_tortuosity(block == phases.label(name), spacing_um=spacing, axis=axis,
                                                           valid=block_valid, lines=lines,
                                                           threads=threads if tortuosity_threads is None
                                                           else tortuosity_threads)
    out["voxels_core"] = int(chunk.size)
    return out


def _standard_error(groups, population_share):
    """Standard error of a ratio mean sum(s)/sum(n) from replicate groups (n, s).

    `population_share` is the sampled share of the population (finite population
    correction); None when fewer than two groups hold data."""
    groups = np.asarray(groups, dtype=float).reshape(-1, 2)
    groups = groups[groups[:, 0] > 0]
    if len(groups) < 2:
        return None
    n, s = groups[:, 0], groups[:, 1]
    mean = s.sum() / n.sum()
    k = len(groups)
    var = k / (k - 1) * np.sum((s - mean * n) ** 2) / n.sum() ** 2
    return float(math.sqrt(max(var, 0.0) * max(0.0, 1.0 - population_share)))


class PartialsMerger:
    """Adds chunk partials (in chunk order) into the Table 1 document.

    Parameters
    ----------
    spacing_um : sequence of 3 float
    phases : Phases
    network : NetworkPhases
    transport_axis : int
        Axis of the tortuosity keys (the caller's axis, before any transposition).
    """

    def __init__(self, *, spacing_um, phases=Phases(), network=None, transport_axis=1):
        self.spacing = check_spacing(spacing_um)
        self.phases = phases
        self.network = network or NetworkPhases.resolve(phases)
        self.axis = check_axis(transport_axis)
        self.counts: SlabCounts | None = None
        self.face_lines = np.zeros(2, np.int64)
        self._comp: dict = {}
        self._thick: dict = {}
        self._tort: dict = {}
        self.chunks = 0
        self.tortuosity_chunks = 0

    def add(self, partial):
        """Add the next chunk's partial (chunks must come in order along the chunk axis)."""
        self.counts = partial["counts"] if self.counts is None else self.counts + partial["counts"]
        self.face_lines += partial["face_lines"]
        for key, comp in partial["components"].items():
            state = self._comp.setdefault(key, {"sizes": [], "flags": [], "extra": [], "edges": [], "offset": 0,
                                                "last": None})
            offset = state["offset"]
            if state["last"] is not None:
                both = (state["last"] > 0) & (comp.first > 0)
                # unique (last, first) pairs, as one int64 key each (ids < 2^32): 1-D np.unique is
                # several times faster than np.unique(axis=1) on the ~10^6 boundary voxels
                joined = np.unique((state["last"][both].astype(np.int64) << 32) | comp.first[both].astype(np.int64))
                pairs = np.stack([(joined >> 32) + state["prev_offset"], (joined & 0xFFFFFFFF) + offset])
                state["edges"].append(pairs)
            state["sizes"].append(comp.sizes)
            state["flags"].append(comp.flags)
            state["extra"].append(comp.extra)
            state["prev_offset"], state["offset"], state["last"] = offset, offset + comp.sizes.size, comp.last
        for name, part in partial["thickness"].items():
            state = self._thick.setdefault(name, {"groups": [], "hist": np.zeros(0, np.int64), "step": 1,
                                                  "unbounded": 0})
            state["groups"].append(part["groups"])
            state["unbounded"] += part["unbounded"]
            hist = part["hist"]
            if hist.size > state["hist"].size:
                hist = hist.copy()
                hist[:state["hist"].size] += state["hist"]
                state["hist"] = hist
            else:
                state["hist"][:hist.size] += hist
            state["bin_um"] = part["bin_um"]
            state["step"] = max(state["step"], part["step"])
        for name, tau in partial["tortuosity"].items():
            self._tort.setdefault(name, []).append(tau)
        self.chunks += 1
        self.tortuosity_chunks += bool(partial["tortuosity"])

    def _merged(self, key):
        """(sizes, flags, extra) of the components joined across chunks."""
        state = self._comp[key]
        sizes = np.concatenate(state["sizes"])
        flags = np.concatenate(state["flags"])
        extra = np.concatenate(state["extra"])
        edges = np.concatenate(state["edges"], axis=1) if state["edges"] else np.zeros((2, 0), np.int64)
        graph = coo_matrix((np.ones(edges.shape[1], np.int8), (edges[0], edges[1])), shape=(sizes.size,) * 2)
        _, root = connected_components(graph, directed=False)
        # background ids (0 of each chunk) never carry size: drop them
        starts = np.cumsum([0] + [s.size for s in state["sizes"][:-1]])
        fg = np.ones(sizes.size, bool)
        fg[starts] = False
        n = int(root.max()) + 1
        return (np.bincount(root[fg], weights=sizes[fg], minlength=n),
                np.bincount(root[fg], weights=flags[fg], minlength=n) > 0,
                np.bincount(root[fg], weights=extra[fg], minlength=n))

    def document(self, *, depth_slices, details=False):
        """The Table 1 document of the chunks added so far."""
        if self.counts is None:
            raise ValueError("no chunk was added")
        plus, minus = DIRECTION_KEYS[self.axis]
        doc = {"depth_slices": int(depth_slices), "spacing_um": list(self.spacing)}
        doc.update(counts_metrics(self.counts, spacing_um=self.spacing, phases=self.phases,
                                  coverage_by=self.network.coverage_by))
        tort, tort_err, excluded = {}, {}, {}
        for name, results in self._tort.items():
            entry, err, ex = {}, {}, {}
            for key, sfx in ((plus, "forward"), (minus, "backward")):
                path = sum(getattr(r, f"path_um_{sfx}") for r in results)
                straight = sum(getattr(r, f"straight_um_{sfx}") for r in results)
                n_paths = sum(getattr(r, f"paths_{sfx}") for r in results)
                n_face = sum(getattr(r, f"face_voxels_{sfx}") for r in results)
                entry[key] = _share(path, straight)
                ex[key] = None if n_face == 0 else 1.0 - n_paths / n_face
                groups = [(getattr(r, f"straight_um_{sfx}"), getattr(r, f"path_um_{sfx}")) for r in results]
                err[key] = (0.0 if self.tortuosity_chunks == self.chunks and entry[key] is not None
                            else _standard_error(groups, self.tortuosity_chunks / self.chunks))
            tort[name], tort_err[name], excluded[name] = entry, err, ex
        thick, thick_err, hists, unbounded = {}, {}, {}, {}
        for name, state in self._thick.items():
            groups = np.concatenate(state["groups"]) if state["groups"] else np.zeros((0, 3))
            n, s, s2 = groups.sum(axis=0) if len(groups) else (0, 0.0, 0.0)
            mean = _share(s, n)
            std = None if mean is None else math.sqrt(max(s2 / n - mean * mean, 0.0))
            thick[name] = {"mean": mean, "std": std}
            step = state["step"]
            thick_err[name] = {"mean": 0.0 if step == 1 and mean is not None else
                               _standard_error(groups[:, :2], 1.0 / step**2)}
            hists[name] = _histogram(state["hist"], state.get("bin_um", 1.0), int(n))
            unbounded[name] = _share(state["unbounded"], int(n) + state["unbounded"])
        doc["tortuosity_geometric"] = tort
        doc["local_thickness_um"] = thick
        doc["connected_share"] = {}
        for name in self.network.connected:
            sizes, touching, _ = self._merged(("connected", name))
            doc["connected_share"][name] = _share(sizes[touching].sum(), sizes.sum())
        doc["interconnected_share"] = {}
        for name in self.network.interconnected:
            sizes, _, _ = self._merged(("interconnected", name))
            doc["interconnected_share"][name] = _share(sizes.max(initial=0), sizes.sum())
        doc["inner_porosity_share"] = None
        if ("inner",) in self._comp:
            sizes, border, pores = self._merged(("inner",))
            enclosed = (pores == sizes) & ~border
            doc["inner_porosity_share"] = _share(pores[enclosed].sum(), pores.sum())
        doc["face_valid_share"] = _share(int(self.face_lines[0]), int(self.face_lines[1]))
        doc["sampling_error"] = {"tortuosity_geometric": tort_err, "local_thickness_um": thick_err}
        if details:
            doc["details"] = {"tortuosity_excluded_share": excluded, "local_thickness_histogram": hists,
                              "local_thickness_unbounded_share": unbounded,
                              "chunks": self.chunks, "tortuosity_chunks": self.tortuosity_chunks}
        return doc


def _histogram(fine, bin_um, n, bins=32):
    """Volume-weighted histogram (``edges_um``, ``share``) from fine bin counts."""
    if n == 0 or fine.size == 0:
        return None
    centres = (np.arange(fine.size) + 0.5) * bin_um
    counts, edges = np.histogram(centres, bins=bins, range=(0.0, fine.size * bin_um), weights=fine)
    return {"edges_um": edges.tolist(), "share": (counts / n).tolist()}


def _pick_tortuosity_chunks(n_chunks, chunk_voxels_each, max_voxels):
    """Systematic sample of chunk indices within a voxel budget (all when None)."""
    if max_voxels is None or n_chunks * chunk_voxels_each <= max_voxels:
        return set(range(n_chunks))
    k = max(1, int(max_voxels // max(chunk_voxels_each, 1)))
    return set(np.linspace(0, n_chunks - 1, k).round().astype(int).tolist())


def chunk_tasks(shape, *, transport_axis, chunk_voxels=CHUNK_VOXELS, halo_slices=HALO_SLICES,
                tortuosity_max_voxels=None):
    """The chunks of a volume and how to read each one.

    Returns
    -------
    chunk_axis : int
        0, or 1 when `transport_axis` is 0 (the volume is then read transposed).
    tasks : list of dict
        Per chunk: ``lo``, ``hi`` (slices to read along the chunk axis, halo included),
        ``core`` (the chunk inside them), ``first``, ``last``, ``with_previous``,
        ``tortuosity`` (in the tortuosity sample).
    """
    axis = check_axis(transport_axis)
    if isinstance(halo_slices, bool) or not isinstance(halo_slices, (int, np.integer)) or halo_slices < 0:
        raise ValueError(f"halo_slices must be an integer >= 0, got {halo_slices!r}")
    chunk_axis = 1 if axis == 0 else 0
    plan = chunk_plan(shape, chunk_axis=chunk_axis, chunk_voxels=chunk_voxels)
    n = shape[chunk_axis]
    per_slice = int(np.prod(shape)) // n
    sample = _pick_tortuosity_chunks(len(plan), max(b - a for a, b in plan) * per_slice, tortuosity_max_voxels)
    tasks = []
    for k, (a, b) in enumerate(plan):
        lo, hi = max(a - max(halo_slices, 1), 0), min(b + halo_slices, n)
        tasks.append({"lo": lo, "hi": hi, "core": (a - lo, b - lo), "first": k == 0, "last": k == len(plan) - 1,
                      "with_previous": a > 0, "tortuosity": k in sample})
    return chunk_axis, tasks


def oriented(block, chunk_axis):
    """`block` with the chunk axis first (a transposed copy when it is y)."""
    return block if chunk_axis == 0 else np.ascontiguousarray(np.swapaxes(block, 0, 1))


def oriented_geometry(spacing, transport_axis, chunk_axis):
    """Spacing and transport axis in the chunk-axis-first orientation."""
    if chunk_axis == 0:
        return tuple(spacing), transport_axis
    dz, dy, dx = spacing
    return (dy, dz, dx), 1


def expensive_metrics(labels, *, spacing_um, phases=Phases(), transport_axis=1, cc_face=0,
                      tortuosity_phases=None, thickness_phases=None, connected_phases=None,
                      interconnected_phases=None, thickness_max_samples=500_000, thickness_range_um=None,
                      details=False, threads=None):
    """The Table 1 metrics that need the whole 3-D neighbourhood, on the volume as one chunk.

    Parameters are those of :func:`table1`; ``thickness_range_um`` is accepted for
    compatibility and ignored (the histogram spans 0 to the largest value).

    Returns
    -------
    dict
        ``tortuosity_geometric``, ``local_thickness_um``, ``connected_share``,
        ``interconnected_share``, ``inner_porosity_share`` (and ``details`` if asked).
    """
    doc = table1(labels, spacing_um=spacing_um, phases=phases, transport_axis=transport_axis, cc_face=cc_face,
                 tortuosity_phases=tortuosity_phases, thickness_phases=thickness_phases,
                 connected_phases=connected_phases, interconnected_phases=interconnected_phases,
                 thickness_max_samples=thickness_max_samples, chunk_voxels=max(int(np.prod(np.shape(labels))), 1),
                 details=details, threads=threads)
    keys = ["tortuosity_geometric", "local_thickness_um", "connected_share", "interconnected_share",
            "inner_porosity_share"] + (["details"] if details else [])
    return {k: doc[k] for k in keys}


def central_block(shape, max_voxels, *, keep_axis):
    """Slices of a centred block of at most `max_voxels` voxels spanning `keep_axis` entirely.

    The two other axes are shrunk by the same factor (never below one voxel).
    """
    if max_voxels is None or int(np.prod(shape)) <= max_voxels:
        return (slice(None),) * 3
    others = [a for a in range(3) if a != keep_axis]
    scale = math.sqrt(max_voxels / np.prod(shape))
    out = [slice(None)] * 3
    for a in others:
        n = max(1, int(shape[a] * scale))
        start = (shape[a] - n) // 2
        out[a] = slice(start, start + n)
    return tuple(out)


def table1(labels, *, spacing_um, phases=Phases(), transport_axis=1, cc_face=0, tortuosity_phases=None,
           thickness_phases=None, connected_phases=None, interconnected_phases=None, coverage_by=None,
           tortuosity_factor_phases=None, composition=None, thickness_max_samples=500_000,
           chunk_voxels=CHUNK_VOXELS, halo_slices=HALO_SLICES, tortuosity_max_voxels=None,
           expensive_max_voxels=None, details=False, threads=None):
    """Every Table 1 metric of a label volume, as the ``metrics`` document body.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase labels (phase i of `phases` is label i + 1, 0 unassigned: outside the domain).
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um.
    phases : Phases
    transport_axis : int
        Axis from current collector to separator: 0 z, 1 y (default, the paper's), 2 x.
    cc_face : int
        The current collector's face along `transport_axis`: 0 (start, default) or -1.
    tortuosity_phases, thickness_phases, connected_phases, interconnected_phases : sequence of str, optional
        The phases of each network metric (default :meth:`NetworkPhases.resolve`: the
        electrolyte; the electrolyte and the active phase; the active phase; the pore).
    coverage_by : str, optional
        Covering phase of ``coverage_share`` (default the electrolyte).
    tortuosity_factor_phases : sequence of str, optional
        Phases whose tortuosity factor (steady diffusion, :func:`tortuosity_factor`) is
        computed on the whole volume; default none (it is costly).
    composition : dict, optional
        ``{"weight_fractions": {...}, "densities_g_cm3": {...}}`` keyed by phase names:
        adds ``targeted_volume_ratio`` (the volume shares it targets).
    thickness_max_samples : int
        Sampled phase voxels of the local thickness over the volume (row sample).
    chunk_voxels : int
        Voxel budget of a chunk (memory bound); a volume within it is one chunk.
    halo_slices : int
        Margin of a chunk for the local thickness and the tortuosity.
    tortuosity_max_voxels : int, optional
        Compute the geometric tortuosity on a systematic sample of chunks within this
        budget (its sampling error is published); default all chunks.
    expensive_max_voxels : int, optional
        Deprecated bound of the earlier versions: the expensive metrics on the centred
        block of at most this many voxels spanning the transport axis
        (:func:`central_block`). Default None: the whole volume.
    details : bool
        Add ``active_electrolyte_ratio`` and ``details`` (excluded shares, histograms,
        chunk counts).
    threads : int, optional
        Threads (default CPU count).

    Returns
    -------
    dict
        ``depth_slices``, ``spacing_um``, ``volume_fraction``, ``tortuosity_geometric``,
        ``local_thickness_um``, ``connected_share``, ``interconnected_share``,
        ``surface_area_per_cell_volume_um-1``, ``surface_area_per_phase_volume_um-1``,
        ``coverage_share``, ``inner_porosity_share``, ``face_valid_share``,
        ``sampling_error`` (and ``tortuosity_factor``, ``targeted_volume_ratio`` when
        asked): plain floats (None where undefined).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.ones((4, 6, 6), np.uint8); labels[:, :, 3:] = 3
    >>> table1(labels, spacing_um=(1, 1, 1))["volume_fraction"]["active"]
    0.5
    """
    labels = check_labels(labels)
    spacing = check_spacing(spacing_um)
    axis = check_axis(transport_axis)
    if cc_face not in (0, -1):
        raise ValueError(f"cc_face must be 0 or -1, got {cc_face!r}")
    network = NetworkPhases.resolve(phases, tortuosity=tortuosity_phases, thickness=thickness_phases,
                                    connected=connected_phases, interconnected=interconnected_phases,
                                    tortuosity_factor=tortuosity_factor_phases, coverage_by=coverage_by)
    if expensive_max_voxels is not None:
        if expensive_max_voxels < 1:
            raise ValueError(f"expensive_max_voxels must be None or >= 1, got {expensive_max_voxels!r}")
        block = central_block(labels.shape, expensive_max_voxels, keep_axis=axis)
        if block != (slice(None),) * 3:
            cheap = counts_metrics(count_volume(labels, phases=phases, threads=threads), spacing_um=spacing,
                                   phases=phases, coverage_by=coverage_by)
            doc = table1(np.ascontiguousarray(labels[block]), spacing_um=spacing, phases=phases,
                         transport_axis=axis, cc_face=cc_face, tortuosity_phases=network.tortuosity,
                         thickness_phases=network.thickness, connected_phases=network.connected,
                         interconnected_phases=network.interconnected, coverage_by=coverage_by,
                         tortuosity_factor_phases=network.tortuosity_factor, composition=composition,
                         thickness_max_samples=thickness_max_samples, chunk_voxels=chunk_voxels,
                         halo_slices=halo_slices, tortuosity_max_voxels=tortuosity_max_voxels, details=details,
                         threads=threads)
            doc.update(cheap)
            doc["depth_slices"] = int(labels.shape[0])
            return doc
    chunk_axis, tasks = chunk_tasks(labels.shape, transport_axis=axis, chunk_voxels=chunk_voxels,
                                    halo_slices=halo_slices, tortuosity_max_voxels=tortuosity_max_voxels)
    o_spacing, o_axis = oriented_geometry(spacing, axis, chunk_axis)
    n_threads = threads or os.cpu_count() or 1
    workers = max(1, min(n_threads, len(tasks)))
    per_task = max(1, n_threads // workers)
    samples = max(1, round(thickness_max_samples / len(tasks)))

    def run(task):
        index = [slice(None)] * 3
        index[chunk_axis] = slice(task["lo"], task["hi"])
        block = oriented(np.ascontiguousarray(labels[tuple(index)]), chunk_axis)
        return chunk_partial(block, core=task["core"], spacing_um=o_spacing, phases=phases, network=network,
                             transport_axis=o_axis, cc_face=cc_face, first=task["first"], last=task["last"],
                             with_previous=task["with_previous"], thickness_samples=samples,
                             tortuosity=task["tortuosity"], threads=n_threads, tortuosity_threads=per_task)

    merger = PartialsMerger(spacing_um=spacing, phases=phases, network=network, transport_axis=axis)
    if workers == 1:
        for task in tasks:
            merger.add(run(task))
    else:
        with ThreadPoolExecutor(workers) as pool:
            for partial in pool.map(run, tasks):
                merger.add(partial)
    doc = merger.document(depth_slices=labels.shape[0], details=details)
    finish_document(doc, labels, spacing_um=spacing, phases=phases, network=network, transport_axis=axis,
                    composition=composition, details=details, threads=n_threads)
    return doc


def finish_document(doc, labels, *, spacing_um, phases, network, transport_axis, composition=None, details=False,
                    threads=None):
    """Add the whole-volume extras to a merged document: tortuosity factor, targeted ratio."""
    if network.tortuosity_factor:
        from ._diffusion import tortuosity_factor  # noqa: PLC0415 - only when asked for

        plus, _ = DIRECTION_KEYS[transport_axis]
        valid = labels != UNASSIGNED
        doc["tortuosity_factor"] = {}
        for name in network.tortuosity_factor:
            result = tortuosity_factor(labels == phases.label(name), spacing_um=spacing_um, axis=transport_axis,
                                       valid=valid, threads=threads)
            doc["tortuosity_factor"][name] = {plus: result.tau}
            if details:
                doc["details"].setdefault("tortuosity_factor", {})[name] = result.as_dict()
    if composition:
        doc["targeted_volume_ratio"] = targeted_volume_ratio(composition["weight_fractions"],
                                                             composition["densities_g_cm3"])
    if details:
        doc["active_electrolyte_ratio"] = active_electrolyte_ratio(doc["volume_fraction"], phases=phases)
    return doc

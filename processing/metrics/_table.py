"""Table 1 of the reference paper as one JSON-ready document."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from processing.phases import UNASSIGNED, Phases

from ._common import check_axis, check_labels, check_spacing, n_label_values
from ._counts import SlabCounts, slab_counts
from ._network import (
    connected_share,
    geometric_tortuosity,
    inner_porosity_share,
    interconnected_share,
)
from ._thickness import local_thickness_summary

__all__ = [
    "volume_fractions",
    "active_electrolyte_ratio",
    "targeted_volume_ratio",
    "central_block",
    "count_volume",
    "counts_metrics",
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


def _share(num, den):
    return float(num / den) if den else None


def volume_fractions(labels, *, phases=Phases()):
    """Volume fraction of each phase and of the unassigned voxels.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase labels (phase i of `phases` is label i + 1, 0 unassigned).
    phases : Phases

    Returns
    -------
    dict
        ``{phase: share, "unassigned": share}``, shares of all voxels, summing to 1.
    """
    labels = check_labels(labels)
    counts = np.bincount(labels.ravel(), minlength=n_label_values(phases))
    if counts.size > n_label_values(phases):
        raise ValueError(f"labels hold value {counts.size - 1}, but phases {phases.names!r} use 0..{len(phases.names)}")
    return _fractions_from_counts(counts, phases)


def _fractions_from_counts(voxels, phases):
    total = int(voxels.sum())
    out = {name: _share(int(voxels[label]), total) for name, label in phases.labels.items()}
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


def targeted_volume_ratio(*, weight_fractions=(0.70, 0.30), densities_g_cm3=(4.6, 1.88)):
    """Volume shares (active, electrolyte) targeted by a weighed composition.

    Parameters
    ----------
    weight_fractions : (float, float)
        Weight fractions of active material and electrolyte (default 70:30, the paper's).
    densities_g_cm3 : (float, float)
        Their densities (default NMC622 4.6 and Li3PS4 1.88 g/cm^3).

    Returns
    -------
    (float, float)
        Volume shares summing to 1: (0.488, 0.512) for the defaults. (The paper's Table 1
        prints 51:49, i.e. these two numbers swapped.)
    """
    w = np.asarray(weight_fractions, dtype=float)
    rho = np.asarray(densities_g_cm3, dtype=float)
    if w.shape != (2,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weight_fractions must be two non-negative numbers, got {weight_fractions!r}")
    if rho.shape != (2,) or np.any(rho <= 0):
        raise ValueError(f"densities_g_cm3 must be two positive numbers, got {densities_g_cm3!r}")
    v = w / rho
    return float(v[0] / v.sum()), float(v[1] / v.sum())


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

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        parts = list(pool.map(one, starts))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def counts_metrics(counts: SlabCounts, *, spacing_um, phases=Phases()):
    """The cheap Table 1 metrics from additive counts.

    Unassigned voxels are unknown material: the cell volume ``V_cell`` is the volume of
    the assigned voxels and interfaces with unassigned voxels are not counted in any
    phase's surface.

    Parameters
    ----------
    counts : SlabCounts
        Of the whole volume (sum of the slabs).
    spacing_um : sequence of 3 float
        (dz, dy, dx) in um.
    phases : Phases

    Returns
    -------
    dict
        ``volume_fraction``, ``surface_area_per_cell_volume_um-1``,
        ``surface_area_per_phase_volume_um-1``, ``coverage_share`` (for each phase but
        the electrolyte: the share of its surface in contact with the electrolyte; the
        paper's %coverage is the active phase's).
    """
    spacing = check_spacing(spacing_um)
    voxel_um3 = float(np.prod(spacing))
    areas = counts.interface_areas_um2(spacing)
    areas[UNASSIGNED, :] = 0
    areas[:, UNASSIGNED] = 0
    phase_area = areas.sum(axis=1)
    cell_um3 = (int(counts.voxels.sum()) - int(counts.voxels[UNASSIGNED])) * voxel_um3
    electrolyte = phases.label_of_role("electrolyte")
    per_cell, per_phase, coverage = {}, {}, {}
    for name, label in phases.labels.items():
        per_cell[name] = _share(phase_area[label], cell_um3)
        per_phase[name] = _share(phase_area[label], int(counts.voxels[label]) * voxel_um3)
        if electrolyte is not None and label != electrolyte:
            coverage[name] = _share(areas[label, electrolyte], phase_area[label])
    return {
        "volume_fraction": _fractions_from_counts(counts.voxels, phases),
        "surface_area_per_cell_volume_um-1": per_cell,
        "surface_area_per_phase_volume_um-1": per_phase,
        "coverage_share": coverage,
    }


def _names_for(phases, requested, default_roles):
    if requested is None:
        return [phases.roles[r] for r in default_roles if r in phases.roles]
    unknown = [n for n in requested if n not in phases.names]
    if unknown:
        raise ValueError(f"unknown phase names {unknown!r}; phases are {phases.names!r}")
    return list(requested)


def expensive_metrics(labels, *, spacing_um, phases=Phases(), transport_axis=1, cc_face=0,
                      tortuosity_phases=None, thickness_phases=None, connected_phases=None,
                      interconnected_phases=None, thickness_max_samples=500_000, thickness_range_um=None,
                      details=False, threads=None):
    """The Table 1 metrics that need the whole 3-D neighbourhood.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
    spacing_um : sequence of 3 float
        (dz, dy, dx) in um.
    phases : Phases
    transport_axis : int
        Axis from current collector to separator: 0 z, 1 y (default, the paper's), 2 x.
    cc_face : int
        Index of the current-collector face along `transport_axis`: 0 (default) or -1.
    tortuosity_phases : sequence of str, optional
        Phases whose tortuosity is measured; default the electrolyte (the paper's ionic
        network).
    thickness_phases : sequence of str, optional
        Phases whose local thickness is measured; default the electrolyte (the paper's)
        and the active phase (particle size, followed for the REV).
    connected_phases : sequence of str, optional
        Phases whose share connected to the current collector is measured; default the
        active phase (electronic percolation).
    interconnected_phases : sequence of str, optional
        Phases whose interconnected share (largest cluster) is measured; default the pore.
    thickness_max_samples : int
        See :func:`local_thickness_summary`.
    thickness_range_um : (float, float), optional
        Histogram range of the local thickness.
    details : bool
        Also return the excluded (non-percolating) shares and the thickness histograms.
    threads : int, optional

    Returns
    -------
    dict
        ``tortuosity_geometric``, ``local_thickness_um``, ``connected_share``,
        ``interconnected_share``, ``inner_porosity_share`` (and ``details`` if asked).
    """
    labels = check_labels(labels)
    spacing = check_spacing(spacing_um)
    axis = check_axis(transport_axis)
    plus, minus = DIRECTION_KEYS[axis]
    out = {"tortuosity_geometric": {}, "local_thickness_um": {}, "connected_share": {},
           "interconnected_share": {}}
    extra = {"tortuosity_excluded_share": {}, "local_thickness_histogram": {}}
    for name in _names_for(phases, tortuosity_phases, ("electrolyte",)):
        tau = geometric_tortuosity(labels == phases.label(name), spacing_um=spacing, axis=axis)
        out["tortuosity_geometric"][name] = {plus: tau.forward, minus: tau.backward}
        extra["tortuosity_excluded_share"][name] = {plus: tau.excluded_share_forward,
                                                    minus: tau.excluded_share_backward}
    for name in _names_for(phases, thickness_phases, THICKNESS_ROLES):
        stats = local_thickness_summary(labels == phases.label(name), spacing_um=spacing,
                                        max_samples=thickness_max_samples, range_um=thickness_range_um,
                                        threads=threads)
        out["local_thickness_um"][name] = {"mean": stats["mean"], "std": stats["std"]}
        extra["local_thickness_histogram"][name] = stats["histogram"]
    for name in _names_for(phases, connected_phases, ("active",)):
        out["connected_share"][name] = connected_share(labels == phases.label(name), axis=axis, face=cc_face)
    for name in _names_for(phases, interconnected_phases, ("pore",)):
        out["interconnected_share"][name] = interconnected_share(labels == phases.label(name))
    pore, active = phases.label_of_role("pore"), phases.label_of_role("active")
    out["inner_porosity_share"] = (
        None if pore is None or active is None
        else inner_porosity_share(labels, pore_label=pore, active_label=active)
    )
    if details:
        out["details"] = extra
    return out


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
           thickness_phases=None, connected_phases=None, interconnected_phases=None,
           thickness_max_samples=500_000, expensive_max_voxels=None, details=False, threads=None):
    """Every Table 1 metric of a label volume, as the ``metrics`` document body.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of uint8
        Phase labels (phase i of `phases` is label i + 1, 0 unassigned).
    spacing_um : sequence of 3 float
        Voxel size (dz, dy, dx) in um.
    phases : Phases
    transport_axis, cc_face, tortuosity_phases, thickness_phases, connected_phases, \
interconnected_phases, thickness_max_samples, threads
        See :func:`expensive_metrics`.
    expensive_max_voxels : int, optional
        Compute the expensive metrics (tortuosity, local thickness, connectivity, inner
        porosity) on the centred block of at most this many voxels that spans the whole
        transport axis (:func:`central_block`); the cheap ones always use the whole
        volume. Default None: the whole volume (fast marching costs ~1 us per voxel).
    details : bool
        Add ``active_electrolyte_ratio``, ``targeted_volume_ratio`` (defaults of
        :func:`targeted_volume_ratio`) and ``details`` (excluded shares, histograms).

    Returns
    -------
    dict
        ``depth_slices``, ``spacing_um``, ``volume_fraction``, ``tortuosity_geometric``,
        ``local_thickness_um``, ``connected_share``, ``interconnected_share``,
        ``surface_area_per_cell_volume_um-1``, ``surface_area_per_phase_volume_um-1``,
        ``coverage_share``, ``inner_porosity_share``: plain floats (None where undefined).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.ones((4, 6, 6), np.uint8); labels[:, :, 3:] = 3
    >>> table1(labels, spacing_um=(1, 1, 1))["volume_fraction"]["active"]
    0.5
    """
    labels = check_labels(labels)
    spacing = check_spacing(spacing_um)
    doc = {"depth_slices": int(labels.shape[0]), "spacing_um": list(spacing)}
    cheap = counts_metrics(count_volume(labels, phases=phases, threads=threads), spacing_um=spacing, phases=phases)
    doc.update(cheap)
    if expensive_max_voxels is not None and expensive_max_voxels < 1:
        raise ValueError(f"expensive_max_voxels must be None or >= 1, got {expensive_max_voxels!r}")
    sub = labels[central_block(labels.shape, expensive_max_voxels, keep_axis=check_axis(transport_axis))]
    doc.update(expensive_metrics(
        np.ascontiguousarray(sub), spacing_um=spacing, phases=phases, transport_axis=transport_axis, cc_face=cc_face,
        tortuosity_phases=tortuosity_phases, thickness_phases=thickness_phases,
        connected_phases=connected_phases, interconnected_phases=interconnected_phases,
        thickness_max_samples=thickness_max_samples, details=details, threads=threads,
    ))
    if details:
        doc["active_electrolyte_ratio"] = active_electrolyte_ratio(doc["volume_fraction"], phases=phases)
        doc["targeted_volume_ratio"] = list(targeted_volume_ratio())
    return doc

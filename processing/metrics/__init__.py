"""Table 1 of the reference paper (Perrenot et al. 2023) as pure functions.

Every function takes phase labels ``(Z, Y, X) uint8`` or a phase mask ``(Z, Y, X) bool``
and the voxel size ``spacing_um = (dz, dy, dx)`` in micrometres, and returns plain numbers
in physical units. :func:`table1` returns the ``metrics`` document body.

Cheap metrics (volume fractions, surface areas, coverage) come from additive counts
(:class:`SlabCounts`): count new slabs with :func:`slab_counts` (passing the slice before
them), add, and call :func:`counts_metrics`; the result equals a full recount exactly.
Expensive metrics are computed per chunk of slices (:func:`chunk_partial`) and added in
order (:class:`PartialsMerger`), so the whole volume is measured with memory bounded by
the chunk; :func:`table1` does both on threads, :mod:`agent.analysis` on Dask.
Label 0 (unassigned) is outside the domain for every metric.
"""

from ._counts import DIRECTIONS, SlabCounts, crofton_weights, slab_counts
from ._diffusion import TortuosityFactorResult, tortuosity_factor
from ._network import (
    TortuosityResult,
    connected_share,
    face_valid_share,
    geometric_tortuosity,
    inner_porosity_share,
    interconnected_share,
    percolating_mask,
    transport_lines,
)
from ._table import (
    CHUNK_VOXELS,
    DIRECTION_KEYS,
    HALO_SLICES,
    THICKNESS_ROLES,
    NetworkPhases,
    PartialsMerger,
    active_electrolyte_ratio,
    central_block,
    chunk_partial,
    chunk_plan,
    chunk_tasks,
    count_volume,
    counts_metrics,
    expensive_metrics,
    finish_document,
    oriented,
    oriented_geometry,
    table1,
    targeted_volume_ratio,
    volume_fractions,
)
from ._thickness import local_thickness, local_thickness_summary, thickness_statistics

__all__ = [
    "CHUNK_VOXELS",
    "DIRECTIONS",
    "DIRECTION_KEYS",
    "HALO_SLICES",
    "NetworkPhases",
    "PartialsMerger",
    "SlabCounts",
    "THICKNESS_ROLES",
    "TortuosityFactorResult",
    "TortuosityResult",
    "chunk_partial",
    "chunk_plan",
    "chunk_tasks",
    "face_valid_share",
    "finish_document",
    "oriented",
    "oriented_geometry",
    "tortuosity_factor",
    "transport_lines",
    "active_electrolyte_ratio",
    "central_block",
    "connected_share",
    "count_volume",
    "counts_metrics",
    "crofton_weights",
    "expensive_metrics",
    "geometric_tortuosity",
    "inner_porosity_share",
    "interconnected_share",
    "local_thickness",
    "local_thickness_summary",
    "percolating_mask",
    "slab_counts",
    "table1",
    "targeted_volume_ratio",
    "thickness_statistics",
    "volume_fractions",
]

"""Table 1 of the reference paper (Perrenot et al. 2023) as pure functions.

Every function takes phase labels ``(Z, Y, X) uint8`` or a phase mask ``(Z, Y, X) bool``
and the voxel size ``spacing_um = (dz, dy, dx)`` in micrometres, and returns plain numbers
in physical units. :func:`table1` returns the ``metrics`` document body.

Cheap metrics (volume fractions, surface areas, coverage) come from additive counts
(:class:`SlabCounts`): count new slabs with :func:`slab_counts` (passing the slice before
them), add, and call :func:`counts_metrics`; the result equals a full recount exactly.
"""

from ._counts import DIRECTIONS, SlabCounts, crofton_weights, slab_counts
from ._network import (
    TortuosityResult,
    connected_share,
    geometric_tortuosity,
    inner_porosity_share,
    interconnected_share,
    percolating_mask,
)
from ._table import (
    DIRECTION_KEYS,
    THICKNESS_ROLES,
    active_electrolyte_ratio,
    central_block,
    count_volume,
    counts_metrics,
    expensive_metrics,
    table1,
    targeted_volume_ratio,
    volume_fractions,
)
from ._thickness import local_thickness, local_thickness_summary, thickness_statistics

__all__ = [
    "DIRECTIONS",
    "DIRECTION_KEYS",
    "SlabCounts",
    "THICKNESS_ROLES",
    "TortuosityResult",
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

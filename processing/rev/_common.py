"""Argument checks shared by the REV modules."""

from __future__ import annotations

import numpy as np


def check_spacing(spacing_um) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in micrometres from one or three positive finite values."""
    arr = np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,))
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing_um must be 3 positive finite values (dz, dy, dx), got {spacing_um!r}")
    return tuple(float(v) for v in arr)


def check_tolerance(tolerance, name="tolerance") -> float:
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"{name} must be a relative error in (0, 1), got {tolerance!r}")
    return float(tolerance)


def check_volume(labels):
    if len(getattr(labels, "shape", ())) != 3:
        raise ValueError(f"labels must be a (Z, Y, X) array, got shape {getattr(labels, 'shape', None)!r}")
    return labels

"""Validation and phase lookup shared by the metric modules."""

from __future__ import annotations

import math

import numpy as np

from processing.phases import Phases

__all__ = ["check_labels", "check_mask", "check_spacing", "check_axis", "n_label_values"]


def check_labels(labels, *, name="labels"):
    """Return `labels` as a C-contiguous (Z, Y, X) uint8 array, or raise naming it."""
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a (Z, Y, X) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 phase labels, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def check_mask(mask, *, name="mask"):
    """Return `mask` as a C-contiguous (Z, Y, X) bool array, or raise naming it."""
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a (Z, Y, X) array, got shape {arr.shape}")
    if arr.dtype != bool:
        raise TypeError(f"{name} must be a boolean mask, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def check_spacing(spacing_um):
    """Return `spacing_um` as a tuple of three positive floats (dz, dy, dx) in um."""
    try:
        values = tuple(float(v) for v in spacing_um)
    except TypeError:
        raise ValueError(f"spacing_um must be (dz, dy, dx) in um, got {spacing_um!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing_um must be three positive finite numbers (dz, dy, dx), got {spacing_um!r}")
    return values


def check_axis(axis, *, name="transport_axis"):
    """Return `axis` (0 z, 1 y, 2 x) as an int, or raise naming the parameter."""
    if axis not in (0, 1, 2):
        raise ValueError(f"{name} must be 0 (z), 1 (y) or 2 (x), got {axis!r}")
    return int(axis)


def n_label_values(phases: Phases) -> int:
    """Number of label values of `phases`: the phases plus 0 (unassigned)."""
    return len(phases.names) + 1


"""True z of every slice, and what the volume's z step should say about them.

Where z comes from (see :mod:`processing.io`):

- Zeiss Atlas 3D writes the measured z of each slice in its file name (``slice_00101_z=1.0200um.tif``);
- Auto Slice & View states a nominal cut spacing (``EMProject.emxml`` ``ZCutSpacing``); a slice's
  z is then ``index x spacing`` (a missing index leaves a hole of one step in z);
- or the configured ``acquisition.slice_spacing_nm``, used the same way.

The volume stores one slice per plane, so a non-uniform z cannot be a uniform grid. The step it
states is the mean true step ``(z_last - z_first) / (n - 1)`` of its slices (:func:`mean_step_um`):
the depth ``n x dz`` then equals the true span plus one step, and each slice's true z is kept in
its provenance. A change of the step is reported (:class:`ZPositions`), never silently absorbed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SlicePosition", "ZPositions", "mean_step_um"]

# A per-slice step this far from the current one is a change of step (Atlas measured z
# scatters by a few per cent from slice to slice).
_STEP_TOLERANCE = 0.25


@dataclass(frozen=True)
class SlicePosition:
    """Where one slice sits along z.

    Attributes
    ----------
    index : int
        Slice index from the file name.
    z_um : float
        True z in micrometres.
    step_um : float or None
        z step from the previous slice placed (None for the first).
    change : str or None
        A change of step (or z going backwards), in words; None when the step is as before.
    """

    index: int
    z_um: float
    step_um: float | None
    change: str | None = None


def mean_step_um(z_first_um: float, z_last_um: float, n_slices: int) -> float | None:
    """Mean true z step of `n_slices` slices from `z_first_um` to `z_last_um`, or None below 2 slices.

    Examples
    --------
    >>> mean_step_um(0.0, 1.0, 11)
    0.1
    """
    if n_slices < 2:
        return None
    step = (float(z_last_um) - float(z_first_um)) / (int(n_slices) - 1)
    return step if math.isfinite(step) and step > 0 else None


class ZPositions:
    """Place slices along z in index order and say when the step changes.

    Parameters
    ----------
    nominal_step_um : float, optional
        Step per slice index for slices without a z of their own (``index x step``); None when
        every slice must carry its z (Atlas names).
    tolerance : float, optional
        Relative deviation of the step per index from the current step that counts as a change.
    """

    def __init__(self, *, nominal_step_um: float | None = None, tolerance: float = _STEP_TOLERANCE):
        if nominal_step_um is not None and not (math.isfinite(nominal_step_um) and nominal_step_um > 0):
            raise ValueError(f"nominal_step_um must be a positive step in um, got {nominal_step_um!r}")
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
        self.nominal_step_um = nominal_step_um
        self.tolerance = float(tolerance)
        self._last: tuple[int, float] | None = None
        self._step: float | None = None  # current step per index
        self._first_z: float | None = None
        self._count = 0

    @property
    def count(self) -> int:
        """Slices placed so far."""
        return self._count

    @property
    def mean_step_um(self) -> float | None:
        """Mean step over the slices placed so far (None before two), else the nominal step."""
        if self._last is None:
            return self.nominal_step_um
        return mean_step_um(self._first_z, self._last[1], self._count) or self.nominal_step_um

    def z_of(self, index: int, z_um: float | None = None) -> float | None:
        """The z of slice `index`: its own `z_um`, else ``index x nominal step``, else None."""
        if z_um is not None:
            return float(z_um)
        return None if self.nominal_step_um is None else int(index) * self.nominal_step_um

    def place(self, index: int, z_um: float | None = None) -> SlicePosition:
        """Place slice `index` (after every lower index placed) at its true z.

        Parameters
        ----------
        index : int
            Slice index; larger than the previous one.
        z_um : float, optional
            The slice's own z (file name); default ``index x nominal_step_um``.

        Raises
        ------
        ValueError
            No z for the slice (no own z and no nominal step), or `index` not increasing.
        """
        index = int(index)
        z = self.z_of(index, z_um)
        if z is None or not math.isfinite(z):
            raise ValueError(f"slice {index}: no z (none in the file name, no nominal slice spacing)")
        if self._last is not None and index <= self._last[0]:
            raise ValueError(f"slice {index}: placed after slice {self._last[0]}; indices must increase")
        change = step = None
        if self._last is None:
            self._first_z = z
        else:
            last_index, last_z = self._last
            step = z - last_z
            per_index = step / (index - last_index)
            if per_index <= 0:
                change = (f"z goes from {last_z:.4f} um (slice {last_index}) to {z:.4f} um (slice {index}): "
                          "not increasing")
            elif self._step is None:
                self._step = per_index
            elif abs(per_index - self._step) > self.tolerance * self._step:
                change = (f"z step changed from {self._step * 1e3:.4g} nm to {per_index * 1e3:.4g} nm per slice "
                          f"at slice {index} (z {z:.4f} um)")
                self._step = per_index
        self._last = (index, z)
        self._count += 1
        return SlicePosition(index=index, z_um=z, step_um=step, change=change)

"""Typed errors shared by the whole of revwatch.

Every error names what was wrong (the file, the parameter, the value) so that a
user reading a log line at 3 a.m. knows what to fix. :func:`check_slice` is the one check of a
2-D slice that raises them.
"""

import numpy as np

__all__ = [
    "check_slice",
    "RevwatchError",
    "SliceReadError",
    "SliceShapeError",
    "CalibrationError",
]


class RevwatchError(Exception):
    """Base class of every error raised on purpose by revwatch."""


class SliceReadError(RevwatchError, ValueError):
    """A slice file cannot be read: unreadable, truncated, not a TIFF, no pixels.

    Parameters
    ----------
    path : str or os.PathLike
        The file that failed.
    reason : str
        What is wrong with it, in words.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read slice {self.path!s}: {reason}")


class SliceShapeError(RevwatchError, ValueError):
    """A slice does not fit the run: another size, dtype or number of channels."""


def check_slice(array, name="pixels", *, shape=None):
    """`array` as a non-empty 2-D ndarray, or :class:`SliceShapeError` naming `name`.

    Parameters
    ----------
    array : array-like
    name : str
        How the caller calls it (``"pixels"``, ``"slices[3]"``), for the message.
    shape : tuple of int, optional
        The (Y, X) it must have, e.g. the slice it goes with.

    Returns
    -------
    (Y, X) ndarray
        ``np.asarray(array)`` (no copy).
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.size == 0:
        raise SliceShapeError(f"{name}: expected a non-empty 2-D slice, got shape {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise SliceShapeError(f"{name}: shape {array.shape} differs from the slice's {tuple(shape)}")
    return array


class CalibrationError(RevwatchError):
    """A model (phase thresholds, classifier) cannot be fitted from the data given."""

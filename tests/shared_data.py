"""Where the shared data sets live: ``../shared/data`` beside the repository root, never an absolute path.

Tests call :func:`require_shared_data` (skips with the reason when the file is absent); benchmarks,
which run as scripts, call :func:`shared_data` and say themselves what they skip.
"""

from __future__ import annotations

from pathlib import Path

# Not resolved: the repository may be a worktree whose ``../shared`` is a symlink.
SHARED_DATA = Path(__file__).absolute().parents[1].parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """The path of `relative` (e.g. ``"nmc_cathode_xct_labels/x.tif"``) under ``../shared/data``."""
    return SHARED_DATA / relative


def require_shared_data(relative: str) -> Path:
    """:func:`shared_data`, or skip the calling test with the reason when the file is absent."""
    import pytest

    path = shared_data(relative)
    if not path.exists():
        pytest.skip(f"shared data {relative} is not in {SHARED_DATA} (../shared/data beside the repository)")
    return path

"""Shared fixtures: small synthetic acquisitions with known truth (generator-based only)."""

import numpy as np
import pytest

from processing.synthetic import generate_microstructure, render_acquisition, write_acquisition

SMALL_SPACING_UM = (0.05, 0.02, 0.02)


@pytest.fixture(scope="session")
def small_labels():
    """(16, 176, 176) uint8 labels, default fractions, particles of 0.4 um radius (seed 0)."""
    return generate_microstructure((16, 176, 176), spacing_um=SMALL_SPACING_UM, particle_radius_um=0.4, rng=0)


@pytest.fixture(scope="session")
def small_acquisition(small_labels):
    """16 raw 8-bit slices of 128 x 128 px with the default artefacts and their truth.

    Drift is a random walk of 1.2 px per slice with jumps (probability 0.05, 6 px);
    treat the arrays as read-only (the fixture is shared by the whole session).
    """
    acq = render_acquisition(small_labels, field_shape=(128, 128), jump_probability=0.05, jump_px=6.0, rng=1)
    for array in (acq.slices, acq.labels, acq.drift_px):
        array.setflags(write=False)
    return acq


@pytest.fixture(scope="session")
def small_fei_project(small_acquisition, tmp_path_factory):
    """`small_acquisition` written as an Auto Slice & View project; returns the project folder.

    Slices are in ``<project>/Images/SEM Image/``, 0.02 um pixels, 0.05 um slice spacing.
    Read-only by convention: copy it before modifying.
    """
    root = tmp_path_factory.mktemp("fei_project")
    write_acquisition(small_acquisition, root, layout="fei", pixel_size_um=SMALL_SPACING_UM[1],
                      slice_spacing_um=SMALL_SPACING_UM[0])
    return root


@pytest.fixture
def make_acquisition():
    """Factory: ``make_acquisition(shape=(Z, Y, X), *, rng=0, microstructure={}, **render_kwargs)``.

    Builds labels with :func:`generate_microstructure` (``microstructure`` kwargs)
    and renders them with :func:`render_acquisition` (remaining kwargs).
    """

    def make(shape=(12, 160, 160), *, rng=0, microstructure=None, **render_kwargs):
        gen = np.random.default_rng(rng)
        labels = generate_microstructure(shape, rng=gen, **{"spacing_um": SMALL_SPACING_UM, **(microstructure or {})})
        return render_acquisition(labels, rng=gen, **render_kwargs)

    return make

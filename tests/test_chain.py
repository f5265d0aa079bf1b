"""The per-slice chain: calibration on the first slices, alignment region, cap rows, resume state."""

import numpy as np
import pytest

from processing.chain import SliceChain
from processing.errors import SliceShapeError
from processing.io import SliceImage
from processing.phases import Phases


def push_all(chain, slices, start=1):
    out = []
    for k, pixels in enumerate(slices):
        out.extend(chain.push(SliceImage(pixels, start + k, f"s{start + k}.tif", (0.02, 0.02), None)))
    return out


@pytest.fixture(scope="module")
def capped(request):
    from processing.synthetic import generate_microstructure, render_acquisition

    labels = generate_microstructure((14, 320, 320), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.4, rng=2)
    drift = np.cumsum(np.random.default_rng(3).normal(0, 0.8, (14, 2)), axis=0)
    drift[:, 0] = -np.abs(drift[:, 0])  # keep the cap in view
    drift[0] = 0
    return render_acquisition(labels, field_shape=(256, 256), cap_px=40, drift_px=drift, rng=4)


def test_auto_region_is_the_cap_and_calibration_holds_slices_back(capped):
    chain = SliceChain(phases=Phases(), calibration_slices=10, roi="auto")
    first = push_all(chain, capped.slices[:9])
    assert first == [] and chain.calibrating
    done = push_all(chain, capped.slices[9:], start=10)
    # the last slice waits for its following slice (3-D context) until the run ends
    assert [p.index for p in done] == list(range(1, 14)) and chain.label_delay_slices == 1
    done += chain.flush()
    assert [p.index for p in done] == list(range(1, 15)) and chain.label_delay_slices == 0
    y0, y1, x0, x1 = chain.roi
    assert y1 <= 42 and y1 - y0 >= 16 and (x0, x1) == (0, 256)
    shifts = np.array([p.drift.shift_px for p in done])
    assert np.sqrt(np.mean((shifts - capped.drift_px) ** 2)) < 0.3
    assert chain.state()["roi"] == list(chain.roi)


def test_cap_rows_are_unassigned_and_align_on_the_cap(capped):
    chain = SliceChain(phases=Phases(), calibration_slices=4, roi="auto", cap_rows=40)
    done = push_all(chain, capped.slices) + chain.flush()
    assert chain.roi == (0, 40, 0, 256)
    labels = np.array([p.labels for p in done])
    assert not labels[:, :40].any()
    sample = (capped.labels > 0) & (labels > 0)
    assert np.mean(labels[sample] == capped.labels[sample]) > 0.9


def test_a_slice_of_another_shape_is_refused_without_changing_the_chain(capped):
    chain = SliceChain(phases=Phases(), calibration_slices=2)
    push_all(chain, capped.slices[:3])
    with pytest.raises(SliceShapeError, match=r"\(128, 128\)"):
        chain.push(SliceImage(capped.slices[3][:128, :128].copy(), 4, "odd.tif", None, None))
    assert len(push_all(chain, capped.slices[3:5], start=4)) == 2

"""The agent labels what the chain labels: one acquisition written as the vendor writes it, run
through `Agent` with the user's configuration, and through `SliceChain` both on the files the
agent reads and on the rendered slices in memory (as ``bench_label_chain.py`` feeds it).

The chain-only benchmark and the agent benchmark must measure the same thing on the same
acquisition; a difference between the two paths (reading, dtype, configuration defaults, the
valid region, the calibration's timing) shows here as a label that differs.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.calibrate import region_mask_from_config
from agent.config import Config, load_config
from agent.pipeline import Agent
from agent.publish import free_loopback_endpoint
from agent.store import VolumeStore
from processing.chain import SliceChain
from processing.io import SliceImage, read_slice, slice_index_from_name
from processing.scenarios import random_scenario, render_scenario, write_scenario

# A short run with a cap and a fiducial (found by the chain, then registered on) above three
# phases, stage drift, a black margin, 16-bit slices and a brightness drop after the calibration.
SCENARIO = dict(
    n_slices=14, shape=(128, 128), layout="fei", dtype="uint16", phase_names=("pore", "electrolyte", "active"),
    fractions=(0.2, 0.4, 0.4), levels=(40.0, 100.0, 170.0), particle_shape="sphere", particle_radius_px=10.0,
    fractured=False, pore_model="field", noise_share=0.1, blur_px=1.0, cap_px=30, fiducial=True,
    margins_px=(0, 0, 0, 10), circle_share=None, drift_px_per_slice=0.6, jump_probability=0.0, drop_slices=(11,),
    drop_factor=0.5, charging_slices=(), curtaining=0.1, curtain_angle_deg=0.0, pore_back=0.0,
    brightness_ramp=0.05, brightness_walk=0.0, z_step_change=None, dropped_slices=(), magnification_change=None,
)


def _run_chain(chain, images):
    out = []
    for image in images:
        out += chain.push(image)
    return out + chain.flush()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rendered = render_scenario(random_scenario(1, **SCENARIO))
    root = tmp_path_factory.mktemp("scenario")
    write_scenario(rendered, root)
    return rendered, root


def test_the_agent_labels_what_the_chain_labels_and_both_register_on_the_cap(written, tmp_path):
    rendered, root = written
    files = sorted((p for p in (root / "acquisition").rglob("*.tif")), key=lambda p: slice_index_from_name(p.name))
    images = [read_slice(p) for p in files]
    # the files hold exactly the rendered slices
    assert len(images) == len(rendered.slices)
    assert all(im.pixels.dtype == rendered.slices.dtype and np.array_equal(im.pixels, s)
               for im, s in zip(images, rendered.slices))

    # the chain on the agent's files, set up from the user's configuration as the agent does it
    user = load_config(root / "revwatch.toml")
    on_files = SliceChain.from_config(user.processing, phases=user.phases.to_phases(),
                                      region=region_mask_from_config(user), smooth_px=user.phases.smooth_px)
    from_files = _run_chain(on_files, images)
    # the chain in memory, as bench_label_chain sets it up: a configuration naming the phases only
    names = Config.model_validate({"phases": {"names": list(rendered.scenario.phase_names)}})
    in_memory = SliceChain.from_config(names.processing, phases=names.phases.to_phases(), smooth_px=names.phases.smooth_px)
    from_memory = _run_chain(in_memory, [SliceImage(pixels=p, index=i + 1, source=f"s{i + 1}", pixel_size_um=None,
                                                    z_um=None) for i, p in enumerate(rendered.slices)])

    # the agent, as `revwatch run FOLDER --config revwatch.toml` runs it
    volume = tmp_path / "v.zarr"
    config = load_config(root / "revwatch.toml", overrides=[
        f'acquisition.folder="{root / "acquisition"}"', f'volume.path="{volume}"',
        f'publish.endpoint="{free_loopback_endpoint()}"', "acquisition.settle_s=0.05",
        # the metrics and pictures read the labels, never change them: off, to keep the test short
        "analysis.pictures_every_slices=0", "analysis.expensive_every_slices=1000"])
    Agent(config).run(idle_exit_s=1.5)
    store = VolumeStore.open(volume, read_only=True)
    try:
        records = store.slices
        agent_labels = np.asarray(store.labels[:store.depth])
        agent_shifts = np.array([r["shift_px"] for r in records])
        agent_flags = [r.get("flag") for r in records]
        agent_cap = store.run_attrs.get("nonsample_rows")
    finally:
        store.close()

    # the cap is found down to the sample's first row, and registered on, in every path
    top = int(np.argmax((rendered.truth.labels[0] > 0).any(axis=1)))
    for chain in (on_files, in_memory):
        y0, y1 = chain.state()["nonsample_rows"]
        assert y0 == 0 and abs(y1 - top) <= 2
        assert chain.tracker._cap is not None and chain.tracker._cap.interface_row == y1  # cap-mode registration
    assert agent_cap == on_files.state()["nonsample_rows"]
    truth = rendered.truth.drift_px
    assert np.sqrt(np.mean(np.sum((agent_shifts - truth) ** 2, axis=1))) < 0.5

    # every slice, in order, with the same labels, shifts and flags
    assert [r["index"] for r in records] == [p.index for p in from_files] == list(range(1, len(images) + 1))
    for done in (from_files, from_memory):
        assert np.array_equal(agent_labels, np.array([p.labels for p in done]))
        assert np.allclose(agent_shifts, np.array([p.drift.shift_px for p in done]))
        assert agent_flags == [p.flag for p in done]
    assert agent_flags[11] is not None  # the drop (file index 12) flagged the same way everywhere

"""System tests: the real agent on a real folder fed by replay, heard through a real ZeroMQ socket.

Everything is real: files written to disk while watchdog watches, the OME-Zarr volume on disk,
Dask in threads, ZeroMQ on free loopback ports.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from agent.config import Config
from agent.pipeline import Agent
from agent.publish import free_loopback_endpoint
from agent.replay import replay
from agent.store import VolumeStore
from processing.synthetic import write_acquisition

SPACING_UM = (0.05, 0.02, 0.02)
CAP_PX = 28  # rows of protective cap above the sample: the z-invariant band the drift is measured on


def agent_config(folder, volume, endpoint, **sections) -> Config:
    data = {
        "acquisition": {"folder": str(folder), "settle_s": 0.05, "gap_timeout_s": 5.0},
        "volume": {"path": str(volume)},
        "processing": {"calibration_slices": 4},
        "analysis": {"every_slices": 4, "expensive_every_slices": 8},
        "publish": {"endpoint": endpoint, "heartbeat_interval_s": 0.5},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.model_validate(data)


class Listener:
    """A real SUB socket collecting every document in a background thread."""

    def __init__(self, endpoint: str):
        self.docs: list[dict] = []
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(100):
                topic, payload = self._sub.recv_multipart()
                doc = json.loads(payload)
                assert doc["topic"] == topic.decode()
                self.docs.append(doc)

    def wait_for(self, predicate, timeout_s: float, result: dict | None = None) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if result and "error" in result:
                raise AssertionError("the agent stopped with an error") from result["error"]
            for doc in list(self.docs):
                if predicate(doc):
                    return doc
            time.sleep(0.05)
        raise AssertionError(f"no matching document within {timeout_s} s; last: {self.docs[-3:]}")

    def close(self):
        self._stop.set()
        self._thread.join()
        self._sub.close(linger=0)
        self._ctx.term()


def start_agent(config: Config):
    agent = Agent(config)
    stop = threading.Event()
    result = {}

    def target():
        try:
            result["summary"] = agent.run(stop_event=stop)
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return agent, stop, thread, result


@pytest.fixture
def acquisition(make_acquisition):
    """24 slices of 128 x 128 px with all artefacts, drift with jumps, a protective cap on top."""
    return make_acquisition((24, 176, 176), rng=5, field_shape=(128, 128), jump_probability=0.05, jump_px=6.0,
                            cap_px=CAP_PX)


def test_agent_end_to_end_replay_zarr_and_zeromq(tmp_path, acquisition):
    n = acquisition.slices.shape[0]
    source, incoming, volume = tmp_path / "source", tmp_path / "incoming", tmp_path / "run.ome.zarr"
    write_acquisition(acquisition, source, layout="fei", pixel_size_um=SPACING_UM[1], slice_spacing_um=SPACING_UM[0])
    incoming.mkdir()
    endpoint = free_loopback_endpoint()
    listener = Listener(endpoint)
    # the operator says how many rows of cap the slices show, as at the microscope
    config = agent_config(incoming, volume, endpoint, processing={"cap_rows": CAP_PX})
    agent, stop, thread, result = start_agent(config)
    try:
        listener.wait_for(lambda d: d["topic"] == "heartbeat", 20)  # subscribed before slices flow
        assert replay(source, incoming, interval_s=0.02) == n
        listener.wait_for(lambda d: d["topic"] == "status" and d["slices_processed"] == n, 120, result)
        stop.set()
        thread.join(120)
        assert not thread.is_alive() and "error" not in result, result.get("error")
        listener.wait_for(lambda d: d["topic"] == "status" and d["state"] == "stopped", 10)
    finally:
        stop.set()
        listener.close()

    docs = listener.docs
    # seq: gapless and increasing over everything heard, all from one run
    seqs = [d["seq"] for d in docs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert {d["run_id"] for d in docs} == {agent.events.run_id}
    assert all(d["protocol"] == "revwatch/1" for d in docs)
    assert {"status", "metrics", "rev", "heartbeat"} <= {d["topic"] for d in docs}

    # every slice exactly once, in index order, with its provenance
    store = VolumeStore.open(volume, read_only=True)
    assert store.depth == n
    assert [s["index"] for s in store.slices] == list(range(1, n + 1))
    assert [s["z"] for s in store.slices] == list(range(n))
    assert all(s["source"].endswith(f"SliceImage - {s['index']:03d}.tif") for s in store.slices)
    np.testing.assert_allclose(store.spacing_um, SPACING_UM)

    # drift applied matches the truth (registered on the cap)
    shifts = np.array([s["shift_px"] for s in store.slices])
    assert np.sqrt(np.mean((shifts - acquisition.drift_px) ** 2)) < 0.3
    assert store.run_attrs["roi"] == [0, CAP_PX, 0, 128]

    # the cap is not sample: unassigned
    labels = np.asarray(store.labels[:])
    assert not labels[:, :CAP_PX].any()
    # the published fractions are exactly those of the stored labels (Dask, incremental) ...
    metrics = [d for d in docs if d["topic"] == "metrics"][-1]
    assert metrics["depth_slices"] == n
    # (phase fractions are shares of the assigned voxels; the unassigned share is of all voxels)
    assert metrics["volume_fraction"]["unassigned"] == pytest.approx(np.mean(labels == 0), abs=1e-9)
    for name, label in {"pore": 1, "electrolyte": 2, "active": 3}.items():
        assert metrics["volume_fraction"][name] == pytest.approx(np.mean(labels[labels > 0] == label), abs=1e-9)
    # ... and match the generator's truth of the sample within 2 points
    for name, label in {"pore": 1, "electrolyte": 2, "active": 3}.items():
        measured = metrics["volume_fraction"][name]
        truth = np.mean(acquisition.labels[acquisition.labels > 0] == label)
        assert abs(measured - truth) < 0.02, (name, measured, truth)

    # the volume opens with ome-zarr's reader, with the right physical scale and the labels
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(volume)))())
    image = nodes[0]
    transforms = image.metadata["coordinateTransformations"][0]
    scale = next(t["scale"] for t in transforms if t["type"] == "scale")
    np.testing.assert_allclose(scale, SPACING_UM)
    assert [a["unit"] for a in image.metadata["axes"]] == ["micrometer"] * 3
    assert image.data[0].shape == (n, 128, 128)
    assert any("phases" in str(node.zarr) for node in nodes[1:])


def test_agent_waits_for_a_slice_written_in_two_halves(tmp_path, acquisition):
    source, incoming, volume = tmp_path / "source", tmp_path / "incoming", tmp_path / "run.ome.zarr"
    files = write_acquisition(acquisition, source, layout="zeiss", pixel_size_um=SPACING_UM[1],
                              slice_spacing_um=SPACING_UM[0])[:6]
    incoming.mkdir()
    endpoint = free_loopback_endpoint()
    # the cap is stated (else the calibration rightly reports it as a fourth grey class: a phase_model error)
    config = agent_config(incoming, volume, endpoint, acquisition={"settle_s": 0.3}, processing={"cap_rows": CAP_PX})
    agent, stop, thread, result = start_agent(config)
    seen = []
    agent.events.subscribe(lambda name, doc: seen.append((name, doc)), name="test")
    try:
        for path in files[:-1]:
            (incoming / path.name).write_bytes(path.read_bytes())
        last = files[-1].read_bytes()
        target = incoming / files[-1].name
        with open(target, "wb") as f:
            f.write(last[: len(last) // 2])
            f.flush()
            time.sleep(1.5)  # five settle intervals with half a file on disk
            f.write(last[len(last) // 2 :])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            n == "status" and d["slices_processed"] == len(files) for n, d in seen
        ):
            time.sleep(0.05)
        stop.set()
        thread.join(60)
    finally:
        stop.set()
    assert "error" not in result, result.get("error")
    errors = [d for n, d in seen if n == "error"]
    assert not errors, errors
    store = VolumeStore.open(volume, read_only=True)
    assert [s["index"] for s in store.slices] == list(range(1, len(files) + 1))
    # the half-written slice was stored whole: its second half is not zero-padded
    grey = np.asarray(store.grey[len(files) - 1], dtype=float)
    half = grey.shape[0] // 2
    assert grey[half:].mean() > 0.5 * grey[:half].mean()
    # Atlas z positions were taken from the file names
    np.testing.assert_allclose([s["z_um"] for s in store.slices], np.arange(len(files)) * SPACING_UM[0], atol=1e-6)


def test_run_resumes_into_the_same_volume_with_every_slice_once(tmp_path, acquisition):
    n = acquisition.slices.shape[0]
    source, incoming, volume = tmp_path / "source", tmp_path / "incoming", tmp_path / "run.ome.zarr"
    files = write_acquisition(acquisition, source, layout="fei", pixel_size_um=SPACING_UM[1],
                              slice_spacing_um=SPACING_UM[0])
    incoming.mkdir()
    (incoming / "EMProject.emxml").write_bytes((source / "EMProject.emxml").read_bytes())
    target = incoming / files[0].relative_to(source).parent
    target.mkdir(parents=True)

    def run_until(count):
        agent, stop, thread, result = start_agent(agent_config(incoming, volume, free_loopback_endpoint()))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "error" not in result:
            status = agent.events.latest("status")
            if status and status["depth_slices"] == count:
                break
            time.sleep(0.05)
        stop.set()
        thread.join(60)
        assert "error" not in result, result.get("error")
        return result["summary"]

    half = n // 2
    for path in files[:half]:
        (target / path.name).write_bytes(path.read_bytes())
    first = run_until(half)
    assert first.depth_slices == half
    for path in files[half:]:
        (target / path.name).write_bytes(path.read_bytes())
    second = run_until(n)
    assert second.slices_processed == n - half  # the first half was not processed again
    store = VolumeStore.open(volume, read_only=True)
    assert [s["index"] for s in store.slices] == list(range(1, n + 1))
    assert store.run_attrs["phase_model"] is not None  # the calibration was kept, not refitted
    # the resumed drift continues from the stored shift instead of restarting at zero
    shifts = np.array([s["shift_px"] for s in store.slices])
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1)
    true_steps = np.linalg.norm(np.diff(acquisition.drift_px, axis=0), axis=1)
    assert steps[half - 1] < true_steps.max() + 2.0

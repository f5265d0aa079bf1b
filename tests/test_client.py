"""agent.client against a real Publisher on free ports."""

import sys
import threading

import pytest

from agent.client import Subscription, subscribe, wait_until_representative
from agent.events import EventStream, validate_document
from agent.publish import Publisher

ANY_PORT = "tcp://127.0.0.1:*"
QUIET = 3600.0  # s: no heartbeat and no stop repeat during the test


def publisher(stream, endpoint=ANY_PORT, snapshot_endpoint=ANY_PORT, **kw):
    kw.setdefault("heartbeat_s", QUIET)
    kw.setdefault("stop_repeat_s", QUIET)
    return Publisher(stream, endpoint, snapshot_endpoint=snapshot_endpoint, **kw)


REV = {"representative": True, "tolerance": 0.05, "metrics": {
    "volume_fraction.active": {"value": 0.45, "relative_error": 0.03, "converged": True,
                               "rev_edge_um": 6.0, "slices_needed": 0}}}


def test_subscribe_yields_snapshot_then_live_each_once_in_order():
    stream = EventStream()
    with publisher(stream, heartbeat_s=0.05) as pub:
        for i in range(5):
            stream.emit("status", {"slices_seen": i})
        docs = subscribe(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint, topics=["status"],
                         timeout_s=10)
        first = next(docs)[1]  # from the snapshot: the latest status, at once
        assert first["slices_seen"] == 4
        for i in range(5, 10):
            stream.emit("status", {"slices_seen": i})
        live = []
        while not live or live[-1]["slices_seen"] < 9:
            live.append(next(docs)[1])
        docs.close()
    seqs = [d["seq"] for d in [first, *live]]
    assert seqs == sorted(set(seqs))  # increasing, each once
    # documents lost to the slow join are replaced by the snapshot's latest status
    assert live[-1]["seq"] == stream.latest("status")["seq"]


def test_wait_until_representative_returns_the_stop_document():
    stream = EventStream()
    with publisher(stream) as pub:
        stop_body = {"reason": "representative", "depth_slices": 120, "rev": REV}
        emitted = []
        timer = threading.Timer(0.3, lambda: emitted.append(stream.emit("stop", stop_body)))
        timer.start()
        stop = wait_until_representative(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint,
                                         timeout_s=30)
        timer.join()
    assert stop == emitted[0]
    validate_document(stop)
    assert stop["rev"]["representative"] is True


def test_wait_until_representative_late_caller_gets_the_latched_stop_from_the_snapshot():
    stream = EventStream()
    with publisher(stream) as pub:  # no repeats, no heartbeats: only the snapshot can answer
        stop = stream.emit("stop", {"reason": "representative", "depth_slices": 80, "rev": REV})
        stream.emit("status", {"slices_seen": 81})
        got = wait_until_representative(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint,
                                        timeout_s=30)
    assert got == stop


def test_wait_until_representative_times_out():
    stream = EventStream()
    with publisher(stream, heartbeat_s=0.05) as pub:  # alive, but never stops
        with pytest.raises(TimeoutError, match="stop"):
            wait_until_representative(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint,
                                      timeout_s=0.5)


def test_subscription_follows_an_agent_restart():
    first = EventStream("run-1")
    pub = publisher(first, heartbeat_s=0.05)
    endpoint, snapshot_endpoint = pub.endpoint, pub.snapshot_endpoint
    with Subscription(endpoint, snapshot_endpoint=snapshot_endpoint) as sub:
        while not any(d["run_id"] == "run-1" for _, d in sub.receive(10)):
            pass
        pub.close()
        second = EventStream("run-2")
        second.emit("metrics", {"depth_slices": 3, "spacing_um": [0.02, 0.01, 0.01],
                                "volume_fraction": {"pore": 0.2}})
        with publisher(second, endpoint, snapshot_endpoint, heartbeat_s=0.05):
            docs = []
            while not any(d["topic"] == "metrics" for _, d in docs):
                batch = sub.receive(10)
                assert batch, "nothing from the restarted agent"
                docs += batch
    # the metrics doc was emitted before anyone could hear it: only the resync snapshot has it
    assert {d["run_id"] for _, d in docs} == {"run-2"}
    assert sub.run_id == "run-2"


def test_slow_subscriber_recovers_the_state_after_drops():
    """Documents dropped by the high-water mark are replaced by a snapshot of the state."""
    stream = EventStream()
    n, pad = 3000, "x" * 5000
    with publisher(stream, sndhwm=5, heartbeat_s=0.05) as pub:
        with Subscription(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint) as sub:
            while not sub.receive(10):
                pass
            for i in range(n):
                stream.emit("status", {"slices_seen": i, "pad": pad})
                if i == n // 2:
                    metrics = stream.emit("metrics", {"depth_slices": i, "spacing_um": [1, 1, 1],
                                                      "volume_fraction": {"active": 0.4}})
            last = stream.emit("rev", REV)
            got = []
            while not any(d["seq"] >= last["seq"] for _, d in got):
                got += sub.receive(10)
    seqs = [d["seq"] for _, d in got]
    assert seqs == sorted(set(seqs))
    assert len(got) < n  # documents were dropped on the way...
    assert any(d == metrics for _, d in got)  # ...but the state (latest metrics) is complete
    assert any(d["topic"] == "status" and d["slices_seen"] == n - 1 for _, d in got)


def test_acquisition_loop_example_stops_on_the_agents_word(tmp_path):
    """deploy/acquisition_loop_example.py: fake microscope, real sockets, a stand-in agent."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "deploy" / "acquisition_loop_example.py"
    spec = importlib.util.spec_from_file_location("acquisition_loop_example", path)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up
    spec.loader.exec_module(example)

    stream = EventStream()
    with publisher(stream, heartbeat_s=0.05) as pub:
        watcher = example.StopWatcher(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint)
        microscope = example.FakeMicroscope(slices=30, field_px=48, seed=3)
        mill, image, save = example.fake_hooks(tmp_path)
        verdict_at = 12

        def save_and_judge(img, index):
            save(img, index)
            if index == verdict_at:  # the stand-in agent decides after this slice
                stream.emit("stop", {"reason": "test", "depth_slices": index, "rev": REV})
                for _ in range(600):
                    if watcher.representative:
                        break
                    threading.Event().wait(0.05)

        done = example.slice_and_view(microscope, mill=mill, image=image, save=save_and_judge,
                                      watcher=watcher, max_slices=30)
    files = sorted((tmp_path / "Images" / "SEM Image").glob("*.tif"))
    assert done == verdict_at == microscope.face == len(files)
    assert files[-1].name == "SEM Image - SliceImage - 012.tif"
    assert watcher.stop["depth_slices"] == verdict_at

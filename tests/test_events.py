"""EventStream: stamping, gapless seq under threads, critical vs non-critical, latch, log sink."""

import json
import logging
import threading

import numpy as np
import pytest

from agent.events import PROTOCOL, EventStream, JsonLinesSink, validate_document


def test_emit_stamps_common_fields_and_plain_json():
    stream = EventStream("run-a")
    doc = stream.emit("status", {"drift_px": np.array([0.5, np.nan]), "slices_seen": np.int64(3)})
    assert doc["protocol"] == PROTOCOL == "revwatch/1"
    assert (doc["run_id"], doc["seq"], doc["topic"]) == ("run-a", 1, "status")
    assert isinstance(doc["time_unix_s"], float)
    assert doc["drift_px"] == [0.5, None]
    assert type(doc["slices_seen"]) is int
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_body_may_not_override_common_fields():
    with pytest.raises(ValueError, match="seq"):
        EventStream().emit("status", {"seq": 7})


def test_seq_gapless_and_ordered_per_subscriber_with_many_threads():
    stream = EventStream()
    seen_a, seen_b = [], []
    stream.subscribe(lambda n, d: seen_a.append(d["seq"]), name="a")
    stream.subscribe(lambda n, d: seen_b.append(d["seq"]), name="b")
    n_threads, per_thread = 4, 250

    def work():
        for i in range(per_thread):
            stream.emit("status", {"i": i})

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = list(range(1, n_threads * per_thread + 1))
    assert seen_a == expected
    assert seen_b == expected
    assert stream.seq == n_threads * per_thread


def test_critical_failure_propagates_non_critical_is_logged_and_kept(caplog):
    stream = EventStream()
    calls = []

    def flaky(name, doc):
        calls.append(doc["seq"])
        raise OSError("monitor went away")

    stream.subscribe(flaky, critical=False, name="monitor")
    with caplog.at_level(logging.ERROR, logger="agent.events"):
        for _ in range(5):
            stream.emit("status", {})
    assert calls == [1, 2, 3, 4, 5]  # kept subscribed after failing
    # rate-limited: one record for five failures
    assert sum("monitor" in r.getMessage() for r in caplog.records) == 1

    def store(name, doc):
        raise OSError("disk full")

    stream.subscribe(store, critical=True, name="zarr")
    with pytest.raises(OSError, match="disk full"):
        stream.emit("status", {})


def test_snapshot_keeps_latest_per_topic_and_latches_first_stop():
    stream = EventStream()
    stream.emit("status", {"slices_processed": 1})
    stream.emit("status", {"slices_processed": 2})
    first_stop = stream.emit("stop", {"reason": "representative"})
    stream.emit("stop", {"reason": "later"})
    snap = stream.snapshot()
    assert snap["seq"] == 4
    assert snap["docs"]["status"]["slices_processed"] == 2
    assert snap["docs"]["stop"] == first_stop
    assert stream.stopped


def test_unsubscribe():
    stream = EventStream()
    got = []
    cb = stream.subscribe(lambda n, d: got.append(d["seq"]))
    stream.emit("status", {})
    stream.unsubscribe(cb)
    stream.emit("status", {})
    assert got == [1]


def test_json_lines_sink_writes_one_doc_per_line_and_skips_heartbeats(tmp_path):
    path = tmp_path / "vol" / "events.jsonl"
    stream = EventStream()
    with JsonLinesSink(path) as sink:
        stream.subscribe(sink, critical=False, name="jsonl")
        stream.emit("status", {"slices_processed": 1})
        stream.emit("heartbeat", {"uptime_s": 1.0, "state": "running"})
        stream.emit("metrics", {"depth_slices": 1})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["topic"], d["seq"]) for d in lines] == [("status", 1), ("metrics", 3)]


def test_documents_of_the_real_rev_tracker_validate_against_the_schemas():
    from processing.rev import RevTracker
    from processing.synthetic import generate_microstructure

    labels = generate_microstructure((24, 64, 64), spacing_um=(0.05, 0.05, 0.05), particle_radius_um=0.3, rng=0)
    tracker = RevTracker(spacing_um=(0.05, 0.05, 0.05), rng=0)
    stream = EventStream()
    for depth in (8, 16, 24):
        rev = stream.emit("rev", tracker.update(labels[:depth]))
        validate_document(rev)
    assert set(rev["metrics"]) == {"volume_fraction.pore", "volume_fraction.electrolyte", "volume_fraction.active"}
    validate_document(stream.emit("stop", {"reason": "end of acquisition", "depth_slices": 24, "rev": rev}))
    validate_document(stream.snapshot(history=True), topic="snapshot")


def test_schema_rejects_a_renamed_field():
    stream = EventStream()
    doc = stream.emit("status", {"slices_seen": 1, "processed": 1, "last_index": 1, "drift_px": None,
                                 "rate_slices_per_s": None})
    with pytest.raises(Exception, match="slices_processed"):
        validate_document(doc)
    with pytest.raises(KeyError, match="no schema"):
        validate_document({"topic": "gossip"})

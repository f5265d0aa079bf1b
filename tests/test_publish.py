"""Publisher over real ZeroMQ sockets on free ports: frames, seq, snapshot, flow control, security."""

import json
import threading

import psutil
import pytest
import zmq

from agent.client import get_snapshot, subscribe
from agent.events import EventStream, validate_document
from agent.keys import CurveClientKeys, create_keys, load_client_keys
from agent.publish import PublishError, Publisher, default_snapshot_endpoint, is_loopback

ANY_PORT = "tcp://127.0.0.1:*"
QUIET = 3600.0  # seconds: no heartbeat / stop repeat during the test unless wanted


def publisher(stream, endpoint=ANY_PORT, **kw):
    kw.setdefault("heartbeat_s", QUIET)
    return Publisher(stream, endpoint, snapshot_endpoint=endpoint, **kw)


def raw_sub(pub, ctx, **opts):
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for opt, value in opts.items():
        sock.setsockopt(getattr(zmq, opt), value)
    sock.connect(pub.endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


def recv_doc(sock, timeout_s=10.0):
    assert sock.poll(int(timeout_s * 1000)), "nothing received"
    topic, payload = sock.recv_multipart()
    doc = json.loads(payload)
    assert doc["topic"] == topic.decode()
    return doc


def status_body(i):
    return {"slices_seen": i, "slices_processed": i, "last_index": i, "drift_px": [0.1 * i, -0.2 * i],
            "rate_slices_per_s": 0.5}


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def non_loopback_address():
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return "0.0.0.0"


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp://127.0.0.1:5556", True), ("tcp://127.3.2.1:5556", True), ("tcp://localhost:5556", True),
    ("tcp://[::1]:5556", True), ("ipc:///tmp/revwatch", True), ("tcp://0.0.0.0:5556", False),
    ("tcp://*:5556", False), ("tcp://192.168.1.20:5556", False), ("tcp://eth0:5556", False),
    ("tcp://microscope-pc:5556", False),
])
def test_is_loopback(endpoint, expected):
    assert is_loopback(endpoint) is expected


def test_default_snapshot_endpoint_is_next_port():
    assert default_snapshot_endpoint("tcp://127.0.0.1:5556") == "tcp://127.0.0.1:5557"
    assert default_snapshot_endpoint("tcp://[::1]:7000") == "tcp://[::1]:7001"
    assert default_snapshot_endpoint("tcp://127.0.0.1:*") == "tcp://127.0.0.1:*"


def test_two_frames_json_gapless_seq_and_schema_valid(ctx):
    stream = EventStream()
    with publisher(stream, heartbeat_s=0.05) as pub:
        sub = raw_sub(pub, ctx)
        first = recv_doc(sub)  # a heartbeat: the subscription is in place from now on
        n = 300
        for i in range(n):
            stream.emit("status", status_body(i))
        docs = [first]
        while docs[-1]["seq"] < first["seq"] + n:
            docs.append(recv_doc(sub))
    seqs = [d["seq"] for d in docs]
    assert seqs == list(range(first["seq"], first["seq"] + len(docs)))
    statuses = [d for d in docs if d["topic"] == "status"]
    assert [d["slices_seen"] for d in statuses] == list(range(n))
    for doc in docs:
        validate_document(doc)


def test_late_joiner_gets_the_state_from_the_snapshot():
    stream = EventStream()
    with publisher(stream) as pub:
        stream.emit("status", status_body(1))
        stream.emit("status", status_body(2))
        metrics = stream.emit("metrics", {"depth_slices": 2, "spacing_um": [0.02, 0.01, 0.01],
                                          "volume_fraction": {"pore": 0.2, "electrolyte": 0.35,
                                                              "active": 0.45, "unassigned": 0.0}})
        # heartbeat_s is an hour: nothing else is published, only the snapshot can answer
        snap = get_snapshot(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint, timeout_s=10)
        only_status = get_snapshot(snapshot_endpoint=pub.snapshot_endpoint, topics=["status"],
                                   history=True)
    validate_document(snap, topic="snapshot")
    validate_document(only_status, topic="snapshot")
    assert "history" not in snap  # only on request: replies stay small
    assert [d["slices_seen"] for d in only_status["history"]["status"]] == [1, 2]
    assert set(only_status["history"]) == {"status"}
    assert snap["run_id"] == stream.run_id and snap["seq"] == stream.seq == 4  # 1 heartbeat + 3
    assert snap["docs"]["status"]["slices_seen"] == 2
    assert snap["docs"]["metrics"] == metrics
    assert set(only_status["docs"]) == {"status"}


def test_heartbeat_arrives_with_no_other_traffic(ctx):
    stream = EventStream()
    with publisher(stream, heartbeat_s=0.05) as pub:
        sub = raw_sub(pub, ctx)
        beats = [recv_doc(sub) for _ in range(4)]
    assert {d["topic"] for d in beats} == {"heartbeat"}
    assert [d["seq"] for d in beats] == list(range(beats[0]["seq"], beats[0]["seq"] + 4))
    uptimes = [d["uptime_s"] for d in beats]
    assert uptimes == sorted(uptimes) and uptimes[0] >= 0
    for d in beats:
        validate_document(d)
        assert d["interval_s"] == 0.05 and d["state"] == "running"


def test_stop_is_latched_and_repeated_with_the_same_seq(ctx):
    stream = EventStream()
    with publisher(stream, stop_repeat_s=0.05) as pub:
        sub = raw_sub(pub, ctx)
        stop = stream.emit("stop", {"reason": "representative", "depth_slices": 10, "rev": None})
        # the first may be lost to the slow join; the publisher's first heartbeat may come before
        # (it is sent at start, and a SUB that joins fast on a busy machine gets it)
        repeats = []
        while len(repeats) < 2:
            doc = recv_doc(sub)
            if doc["topic"] != "heartbeat":
                repeats.append(doc)
    assert all(d == stop for d in repeats)
    validate_document(stop)


def test_stuck_subscriber_never_blocks_emit_and_gets_messages_dropped(ctx):
    """A SUB that never reads (RCVHWM 1) while 20 MB are published: emit never waits."""
    stream = EventStream()
    n, pad = 4000, "x" * 5000
    with publisher(stream, sndhwm=10, heartbeat_s=0.05) as pub:
        stuck = raw_sub(pub, ctx, RCVHWM=1, RCVBUF=4096)
        recv_doc(stuck)  # connected and subscribed; from now on it reads nothing
        emitted = []
        worker = threading.Thread(
            target=lambda: emitted.extend(stream.emit("status", {**status_body(i), "pad": pad})
                                          for i in range(n)))
        worker.start()
        worker.join(timeout=120)  # generous: a blocked emit would never finish at all
        assert not worker.is_alive(), "emit blocked behind a subscriber that does not read"
        assert len(emitted) == n
        # the publisher still serves others: a late client gets the latest state
        snap = get_snapshot(snapshot_endpoint=pub.snapshot_endpoint)
        assert snap["docs"]["status"]["slices_seen"] == n - 1
        # now read: everything up to the first heartbeat after the flood was delivered or dropped
        last_seq, statuses = emitted[-1]["seq"], 0
        while (doc := recv_doc(stuck))["seq"] <= last_seq:
            statuses += doc["topic"] == "status"
    print(f"stuck subscriber received {statuses} of {n} status documents")
    assert statuses < n  # the high-water marks dropped what the stuck subscriber could not take


def test_non_loopback_bind_without_keys_is_refused():
    stream = EventStream()
    endpoint = f"tcp://{non_loopback_address()}:*"
    with pytest.raises(PublishError) as err:
        publisher(stream, endpoint)
    message = str(err.value)
    assert endpoint in message and "revwatch keys" in message and "--insecure" in message
    with publisher(stream, endpoint, insecure=True) as pub:  # explicit opt-out binds
        assert not is_loopback(pub.endpoint)


def test_port_in_use_names_the_endpoint():
    stream = EventStream()
    with publisher(stream) as first:
        with pytest.raises(PublishError, match=first.endpoint.replace(".", r"\.") + ".*in use"):
            Publisher(stream, first.endpoint, snapshot_endpoint=ANY_PORT)


def test_curve_right_key_receives_wrong_key_and_plain_receive_nothing(tmp_path, ctx):
    keys = tmp_path / "keys"
    written = create_keys(keys)
    assert sorted(p.name for p in written) == ["client.key", "client.key_secret", "server.key",
                                                "server.key_secret"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in written if p.suffix == ".key_secret")
    create_keys(tmp_path / "other")
    stranger = load_client_keys(tmp_path / "other")
    right = load_client_keys(keys)
    wrong = CurveClientKeys(stranger.public, stranger.secret, right.server_public)
    stream = EventStream()
    with publisher(stream, f"tcp://{non_loopback_address()}:*", curve_keys=keys,
                   heartbeat_s=0.05) as pub:
        plain = raw_sub(pub, ctx)
        bad = ctx.socket(zmq.SUB)
        bad.curve_secretkey, bad.curve_publickey, bad.curve_serverkey = (
            wrong.secret, wrong.public, wrong.server_public)
        bad.connect(pub.endpoint)
        bad.setsockopt(zmq.SUBSCRIBE, b"")
        good = subscribe(pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint, curve=keys,
                         timeout_s=10)
        # while the right client receives 10 heartbeats, the others get nothing
        got = [next(good) for _ in range(10)]
        good.close()
        with pytest.raises(TimeoutError):
            get_snapshot(snapshot_endpoint=pub.snapshot_endpoint, curve=wrong, timeout_s=0.5)
        assert plain.poll(0) == 0 and bad.poll(0) == 0
    assert {t for t, _ in got} == {"heartbeat"} and all(d["run_id"] == stream.run_id for _, d in got)


def test_create_keys_refuses_to_overwrite(tmp_path):
    create_keys(tmp_path)
    with pytest.raises(Exception, match="already exist"):
        create_keys(tmp_path)
    create_keys(tmp_path, overwrite=True)


def test_bad_snapshot_requests_get_an_error_reply_and_the_server_keeps_serving(ctx):
    stream = EventStream()
    with publisher(stream) as pub:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(pub.snapshot_endpoint)
        replies = []
        for request in (b"\xff not json", b'{"request": "delete everything"}', b'{"topics": "status"}', b""):
            req.send(request)
            assert req.poll(10000)
            kind, payload = req.recv_multipart()
            replies.append(json.loads(payload))
    assert all("bad snapshot request" in r["error"] for r in replies[:3])
    assert replies[3]["run_id"] == stream.run_id  # an empty request is a snapshot request

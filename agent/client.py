"""Python client of the revwatch protocol (``revwatch/1``, see docs/protocol.md).

For acquisition scripts and dashboards::

    from agent.client import wait_until_representative
    stop = wait_until_representative("tcp://127.0.0.1:5556", timeout_s=3600)
    if stop["rev"] and stop["rev"]["representative"]:
        print("representative at", stop["depth_slices"], "slices:", stop["reason"])

or, to follow everything::

    for topic, doc in subscribe("tcp://127.0.0.1:5556"):
        ...

A subscriber first receives the current state (the snapshot: the latest document
of each topic), then the live documents, each once, in ``seq`` order. When it
notices missing documents (``seq`` jumps: dropped while it was slow, or the agent
restarted with a new ``run_id``) it fetches the snapshot again, so its view of the
state is never stale.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import zmq

from agent.keys import CurveClientKeys, load_client_keys
from agent.publish import DEFAULT_ENDPOINT, SNAPSHOT_REPLY, default_snapshot_endpoint

__all__ = ["DEFAULT_ENDPOINT", "Subscription", "subscribe", "get_snapshot", "snapshot_documents",
           "wait_until_representative"]

logger = logging.getLogger(__name__)

_RESYNC_TIMEOUT_S = 1.0


def _client_keys(curve) -> CurveClientKeys | None:
    if curve is None or isinstance(curve, CurveClientKeys):
        return curve
    return load_client_keys(Path(curve))


def _secure(sock: zmq.Socket, keys: CurveClientKeys | None) -> None:
    if keys is not None:
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_serverkey = keys.server_public


def get_snapshot(endpoint: str = DEFAULT_ENDPOINT, *, snapshot_endpoint: str | None = None,
                 topics: Iterable[str] | None = None, history: bool = False, timeout_s: float = 5.0,
                 curve=None, context: zmq.Context | None = None) -> dict:
    """Ask the agent for its current state.

    Parameters
    ----------
    endpoint : str
        The agent's PUB endpoint (used to derive the snapshot endpoint: port + 1).
    snapshot_endpoint : str, optional
        The snapshot endpoint, when not port + 1.
    topics : iterable of str, optional
        Only these topics in ``docs``; default all.
    history : bool
        Also the recent ``status`` and ``metrics`` documents (``history``), for
        traces and trends.
    timeout_s : float
        Seconds to wait for the reply.
    curve : str, os.PathLike or CurveClientKeys, optional
        Key folder (``server.key`` + ``clients/client.key_secret``) or loaded keys,
        for an agent publishing with CURVE.

    Returns
    -------
    dict
        ``{"protocol", "run_id", "seq", "time_unix_s", "docs": {topic: doc}}``;
        documents with ``seq`` above ``seq`` are newer than the snapshot.

    Raises
    ------
    TimeoutError
        No reply within ``timeout_s`` (agent not running, wrong endpoint, or a
        CURVE key the agent does not accept).
    """
    snapshot_endpoint = snapshot_endpoint or default_snapshot_endpoint(endpoint)
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        _secure(sock, _client_keys(curve))
        sock.connect(snapshot_endpoint)
        request = {"request": "snapshot"}
        if topics is not None:
            request["topics"] = list(topics)
        if history:
            request["history"] = True
        sock.send(json.dumps(request).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no snapshot from {snapshot_endpoint} within {timeout_s:g} s: "
                               "is the agent running, and are the endpoint and keys right?")
        kind, *payload = sock.recv_multipart()
    finally:
        sock.close()
    reply = json.loads(payload[0]) if kind == SNAPSHOT_REPLY and payload else {}
    if "docs" not in reply:
        raise ValueError(f"bad snapshot reply from {snapshot_endpoint}: {reply or kind!r}")
    return reply


def snapshot_documents(snap: dict) -> list[dict]:
    """Every document of a snapshot reply (latest and history), each once, in ``seq`` order."""
    every = [*snap["docs"].values(), *(d for h in snap.get("history", {}).values() for d in h)]
    unique = {d["seq"]: d for d in every}
    return [unique[seq] for seq in sorted(unique)]


class Subscription:
    """A live connection to an agent, yielding each document once in ``seq`` order.

    Parameters are those of :func:`subscribe`, plus `history`: start with the
    recent ``status`` and ``metrics`` documents too (for traces and trends).
    Use :meth:`receive` in a loop and :meth:`close` (or ``with``) at the end.
    Reconnection after an agent restart is automatic (ZeroMQ reconnects; the
    new ``run_id`` triggers a snapshot).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, snapshot: bool = True,
                 snapshot_endpoint: str | None = None, curve=None, history: bool = False):
        self.endpoint = endpoint
        self.history = history
        self.snapshot_endpoint = snapshot_endpoint or default_snapshot_endpoint(endpoint)
        self._keys = _client_keys(curve)
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        _secure(self._sub, self._keys)
        self._sub.connect(endpoint)
        # every topic, so that a seq jump always means lost documents
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.last_seq: dict[str, int] = {}
        self.run_id: str | None = None
        self._pending: list[tuple[str, dict]] = []
        if snapshot:
            self._resync(None, timeout_s=_RESYNC_TIMEOUT_S)

    def _resync(self, upto: dict | None, *, timeout_s: float) -> None:
        """Queue the snapshot's documents that are newer than what was delivered."""
        try:
            snap = get_snapshot(snapshot_endpoint=self.snapshot_endpoint, timeout_s=timeout_s,
                                history=self.history, curve=self._keys, context=self._ctx)
        except (TimeoutError, ValueError) as exc:
            logger.debug("no snapshot: %s", exc)
            return
        run = snap["run_id"]
        if upto is not None and upto.get("run_id") != run:
            return  # the agent restarted again meanwhile; the next document resyncs
        done = self.last_seq.get(run, 0)
        limit = upto["seq"] if upto is not None else snap["seq"] + 1
        docs = [d for d in snapshot_documents(snap) if done < d["seq"] < limit]
        self._pending.extend((d["topic"], d) for d in docs)
        self.run_id = run
        if upto is None:
            self.last_seq[run] = max(done, snap["seq"])

    def receive(self, timeout_s: float | None) -> list[tuple[str, dict]]:
        """Documents available within ``timeout_s`` seconds (None: wait for one).

        Returns an empty list on timeout; several documents when a snapshot filled
        a gap.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._pending:
            wait = None if deadline is None else max(0, deadline - time.monotonic())
            if not self._sub.poll(None if wait is None else int(wait * 1000)):
                return []
            while True:  # take everything already there (repeats are skipped)
                self._accept(self._sub.recv_multipart())
                if not self._sub.poll(0):
                    break
        out, self._pending = self._pending, []
        return out

    def _accept(self, frames: list[bytes]) -> None:
        try:
            topic, payload = frames
            doc = json.loads(payload)
            run, seq = doc["run_id"], int(doc["seq"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed message (%d frames)", len(frames))
            return
        done = self.last_seq.get(run, 0)
        if seq <= done:
            return  # already delivered (from the snapshot, or a repeated stop)
        if seq > done + 1:
            self._resync(doc, timeout_s=_RESYNC_TIMEOUT_S)
        self._pending.append((topic.decode(errors="replace"), doc))
        self.run_id = run
        self.last_seq[run] = seq

    def close(self) -> None:
        self._sub.close()
        self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def subscribe(endpoint: str = DEFAULT_ENDPOINT, *, topics: Iterable[str] | None = None,
              snapshot: bool = True, timeout_s: float | None = None,
              snapshot_endpoint: str | None = None, curve=None) -> Iterator[tuple[str, dict]]:
    """Iterate ``(topic, doc)`` from an agent: the current state first, then live.

    Parameters
    ----------
    endpoint : str
        The agent's PUB endpoint.
    topics : iterable of str, optional
        Only these topics; default all.
    snapshot : bool
        Start with the latest document of each topic (so a late joiner has the
        state at once).
    timeout_s : float, optional
        Raise ``TimeoutError`` when no wanted document arrives for this long.
    snapshot_endpoint : str, optional
        When not the PUB port + 1.
    curve : str, os.PathLike or CurveClientKeys, optional
        Keys for an agent publishing with CURVE (see :func:`get_snapshot`).
    """
    wanted = None if topics is None else frozenset(topics)
    with Subscription(endpoint, snapshot=snapshot, snapshot_endpoint=snapshot_endpoint,
                      curve=curve) as sub:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            docs = [(t, d) for t, d in sub.receive(wait) if wanted is None or t in wanted]
            if docs:
                yield from docs
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
            elif deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no {'/'.join(sorted(wanted)) if wanted else 'document'} "
                                   f"from {endpoint} within {timeout_s:g} s")


def wait_until_representative(endpoint: str = DEFAULT_ENDPOINT, *, timeout_s: float | None = None,
                              snapshot_endpoint: str | None = None, curve=None) -> dict:
    """Block until the agent latches ``stop``; return that document.

    Returns at once when the agent has already stopped (the snapshot holds the
    latched ``stop``). ``doc["rev"]["representative"]`` is the verdict (true:
    you can stop); ``doc["reason"]`` says why in words. An agent that stopped
    for another reason (an error) has no representative ``rev``.

    Raises
    ------
    TimeoutError
        No ``stop`` within ``timeout_s`` seconds.
    """
    stops = subscribe(endpoint, topics=("stop",), timeout_s=timeout_s,
                      snapshot_endpoint=snapshot_endpoint, curve=curve)
    try:
        return next(stops)[1]
    finally:
        stops.close()

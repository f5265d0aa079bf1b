"""ZeroMQ publisher of the event stream: protocol ``revwatch/1`` (see docs/protocol.md).

Three threads, each owning its socket (ZeroMQ sockets are not thread-safe):

- the *PUB thread* drains a bounded queue filled by the stream subscriber and
  sends two-frame messages ``[topic, JSON]``; once ``stop`` is latched it
  re-sends it every ``stop_repeat_s``;
- the *heartbeat thread* emits a ``heartbeat`` document through the stream every
  ``heartbeat_s``, whether or not anything else happens;
- the *snapshot thread* answers requests on a ROUTER socket with the latest
  document of each topic (the "clone" pattern of the ZeroMQ guide).

Nothing here can block or slow the agent: the subscriber only does a
``put_nowait`` (dropping when the queue is full), and the PUB socket drops
messages for a subscriber whose high-water mark is reached.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import queue
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

from agent.events import EventStream
from agent.keys import CurveServerKeys, load_server_keys
from processing.errors import RevwatchError

__all__ = [
    "DEFAULT_ENDPOINT",
    "PublishError",
    "Publisher",
    "is_loopback",
    "default_snapshot_endpoint",
    "encode",
]

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
SNAPSHOT_REPLY = b"snapshot"
_CLOSE = object()


class PublishError(RevwatchError):
    """The publisher cannot start: unsafe bind, address in use, bad endpoint or keys."""


def encode(doc: dict) -> bytes:
    """A document as strict JSON bytes (UTF-8, no NaN)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()


def _tcp_host_port(endpoint: str) -> tuple[str, str]:
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or not parts.netloc or ":" not in parts.netloc:
        raise PublishError(f"endpoint must look like tcp://HOST:PORT, got {endpoint!r}")
    host, _, port = parts.netloc.rpartition(":")
    return host.strip("[]"), port


def is_loopback(endpoint: str) -> bool:
    """True if binding ``endpoint`` exposes nothing beyond this machine.

    ``tcp://`` on 127.0.0.0/8, ``::1`` or ``localhost``, and the local transports
    ``ipc://`` and ``inproc://``. ``*``, ``0.0.0.0``, interface names and other
    host names count as network-facing.
    """
    scheme = endpoint.partition("://")[0]
    if scheme in ("ipc", "inproc"):
        return True
    host, _ = _tcp_host_port(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_loopback_endpoint() -> str:
    """A loopback PUB endpoint whose port and port + 1 (its default snapshot socket) are both free.

    For the demo and tests; a later bind can still race with another process.
    """
    for _ in range(50):
        with socket.socket() as pub:
            pub.bind(("127.0.0.1", 0))
            port = pub.getsockname()[1]
            with socket.socket() as snapshot:
                try:
                    snapshot.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return f"tcp://127.0.0.1:{port}"
    raise PublishError("no free pair of loopback ports found")


def default_snapshot_endpoint(endpoint: str) -> str:
    """The snapshot endpoint paired with a PUB endpoint: same host, port + 1.

    A wildcard port (``*`` or ``0``) stays a wildcard.
    """
    if not endpoint.startswith("tcp://"):
        raise PublishError(f"no default snapshot endpoint for {endpoint!r}: give one explicitly")
    host, port = _tcp_host_port(endpoint)
    if port in ("*", "0"):
        new_port = "*"
    elif port.isdigit():
        new_port = str(int(port) + 1)
    else:
        raise PublishError(f"port of endpoint {endpoint!r} must be a number or '*'")
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{new_port}"


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    # zmq spells "any free port" as "*"; accept the usual ":0" too.
    bind_to = endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") else endpoint
    try:
        sock.bind(bind_to)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PublishError(
                f"cannot bind {endpoint}: address already in use (is another revwatch agent "
                "running? choose another port with --endpoint)") from exc
        raise PublishError(f"cannot bind {endpoint}: {exc.strerror}") from exc
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class Publisher:
    """Publish an :class:`~agent.events.EventStream` over ZeroMQ.

    Parameters
    ----------
    stream : EventStream
        Subscribed to, non-critically, for the lifetime of the publisher.
    endpoint : str
        PUB endpoint, ``tcp://HOST:PORT`` (``PORT`` may be ``*`` or ``0`` for any
        free port; read the result in :attr:`endpoint`).
    snapshot_endpoint : str, optional
        Snapshot ROUTER endpoint; default the same host with port + 1.
    curve_keys : str, os.PathLike or CurveServerKeys, optional
        Key folder made by ``revwatch keys`` (:func:`agent.keys.create_keys`):
        encrypt both sockets with CURVE and accept only the client public keys
        in ``KEYS/clients/``.
    insecure : bool
        Allow a non-loopback bind without keys (trusted networks only).
    heartbeat_s : float
        Interval between heartbeat documents, in seconds.
    stop_repeat_s : float
        Interval at which the latched ``stop`` document is sent again, in seconds.
    sndhwm : int
        High-water mark (messages) per subscriber; beyond it the PUB socket drops
        messages for that subscriber instead of waiting.
    queue_size : int
        Documents waiting for the PUB thread; beyond it documents are dropped
        (counted in :attr:`dropped`) rather than blocking ``emit``.

    Raises
    ------
    PublishError
        Non-loopback bind without keys or ``insecure``, address in use, bad
        endpoint, unreadable keys.
    """

    def __init__(self, stream: EventStream, endpoint: str = DEFAULT_ENDPOINT, *,
                 snapshot_endpoint: str | None = None, curve_keys=None, insecure: bool = False,
                 heartbeat_s: float = 2.0, stop_repeat_s: float = 5.0, sndhwm: int = 1000,
                 queue_size: int = 10000):
        if not isinstance(stream, EventStream):
            raise TypeError(f"stream must be an EventStream, got {type(stream).__name__}")
        for label, value in (("heartbeat_s", heartbeat_s), ("stop_repeat_s", stop_repeat_s)):
            if not value > 0:
                raise ValueError(f"{label} must be > 0 s, got {value!r}")
        if sndhwm < 1 or queue_size < 1:
            raise ValueError(f"sndhwm and queue_size must be >= 1, got {sndhwm!r}, {queue_size!r}")
        snapshot_endpoint = snapshot_endpoint or default_snapshot_endpoint(endpoint)
        keys = self._server_keys(curve_keys)
        exposed = list(dict.fromkeys(e for e in (endpoint, snapshot_endpoint) if not is_loopback(e)))
        if exposed and keys is None and not insecure:
            raise PublishError(
                f"refusing to publish on {', '.join(exposed)}: it is not a loopback address, so "
                "anyone who can reach this machine could read the run. Create keys with "
                "`revwatch keys KEYS_DIR` and pass --keys-dir KEYS_DIR (clients need "
                "KEYS_DIR/server.key and their clients/NAME.key_secret), or pass --insecure "
                "on a trusted network.")
        if exposed and keys is None:
            logger.warning("publishing WITHOUT encryption on %s (--insecure)", ", ".join(exposed))

        self.stream = stream
        self.heartbeat_s = float(heartbeat_s)
        self.stop_repeat_s = float(stop_repeat_s)
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._ctx = zmq.Context()
        self._auth = None
        socks = []
        try:
            if keys is not None:
                self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(__name__ + ".auth"))
                self._auth.start()
                self._auth.configure_curve(domain="*", location=str(keys.clients_dir))
            self._pub = self._socket(zmq.PUB, keys, sndhwm, socks)
            self._pub.setsockopt(zmq.LINGER, 500)  # a moment to flush the last docs on close
            self._router = self._socket(zmq.ROUTER, keys, sndhwm, socks)
            self.endpoint = _bind(self._pub, endpoint)
            self.snapshot_endpoint = _bind(self._router, snapshot_endpoint)
        except BaseException:
            for sock in socks:
                sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()
            raise
        # The sockets were created here; from now on each is used only by its thread
        # (Thread.start is the memory barrier ZeroMQ asks for when a socket changes thread).
        self._threads = [
            threading.Thread(target=self._pub_loop, name="revwatch-pub", daemon=True),
            threading.Thread(target=self._snapshot_loop, name="revwatch-snapshot", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="revwatch-heartbeat", daemon=True),
        ]
        stream.subscribe(self, critical=False, name="zmq-publisher")
        for thread in self._threads:
            thread.start()
        logger.info("publishing %s on %s (snapshots on %s, %s)", stream.run_id, self.endpoint,
                    self.snapshot_endpoint, "CURVE" if keys else "plain")

    @staticmethod
    def _server_keys(curve_keys) -> CurveServerKeys | None:
        if curve_keys is None or isinstance(curve_keys, CurveServerKeys):
            return curve_keys
        if not zmq.has("curve"):
            raise PublishError("this libzmq has no CURVE support; cannot use --keys-dir")
        try:
            return load_server_keys(Path(curve_keys))
        except RevwatchError as exc:
            raise PublishError(f"cannot use keys from {curve_keys}: {exc}") from exc

    def _socket(self, kind, keys, sndhwm, socks):
        sock = self._ctx.socket(kind)
        socks.append(sock)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.curve_server = True
        return sock

    # -- stream subscriber (runs in the emitting thread: must never block) ---
    def __call__(self, name: str, doc: dict) -> None:
        try:
            self._queue.put_nowait((name, doc))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("publisher queue full: %d documents dropped so far", self.dropped)

    # -- threads -------------------------------------------------------------
    def _pub_loop(self) -> None:
        stop_frames = None
        next_stop = float("inf")
        try:
            while True:
                timeout = max(0.0, next_stop - time.monotonic()) if stop_frames else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _CLOSE:
                    break
                # PUB never blocks: past a subscriber's high-water mark it drops for that one
                if item is not None:
                    name, doc = item
                    self._pub.send_multipart([name.encode(), encode(doc)], flags=zmq.NOBLOCK)
                if stop_frames is None and self._queue.empty() and self.stream.stopped:
                    # latch from the stream once the queue is drained (documents stay in seq
                    # order), so that a stop dropped by a full queue is still repeated
                    stop_frames = [b"stop", encode(self.stream.latest("stop"))]
                    next_stop = time.monotonic() + (self.stop_repeat_s if item and item[0] == "stop" else 0)
                if stop_frames and time.monotonic() >= next_stop:
                    # same document, same seq: clients de-duplicate
                    self._pub.send_multipart(stop_frames, flags=zmq.NOBLOCK)
                    next_stop = time.monotonic() + self.stop_repeat_s
        finally:
            self._pub.close()

    def _heartbeat_loop(self) -> None:
        while True:
            status = self.stream.latest("status") or {}
            state = "stopped" if self.stream.stopped else status.get("state", "running")
            try:
                self.stream.emit("heartbeat", {
                    "uptime_s": time.time() - self.stream.started_unix_s,
                    "state": state,
                    "interval_s": self.heartbeat_s,
                })
            except Exception:
                # a critical subscriber failed on a heartbeat: the pipeline sees it on its
                # own next emit; the heartbeat must go on telling clients we are alive.
                logger.exception("heartbeat emit failed")
            if self._closing.wait(self.heartbeat_s):
                return

    def _snapshot_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        try:
            while not self._closing.is_set():
                if not poller.poll(100):
                    continue
                frames = self._router.recv_multipart()
                # envelope = identity (+ empty delimiter from a REQ client)
                split = frames.index(b"", 1) + 1 if b"" in frames[1:] else 1
                envelope, request = frames[:split], frames[split:]
                # ROUTER drops a reply to a client that is gone or not reading; never blocks
                self._router.send_multipart([*envelope, SNAPSHOT_REPLY, encode(self._answer(request))],
                                            flags=zmq.NOBLOCK)
        finally:
            self._router.close()

    def _answer(self, request: list[bytes]) -> dict:
        try:
            req = json.loads(request[0]) if request and request[0] else {}
            if not isinstance(req, dict) or req.get("request", "snapshot") != "snapshot":
                raise ValueError(f"unknown request {req!r}")
            if not isinstance(req.get("topics") or [], list):
                raise ValueError(f"topics must be a list, got {req['topics']!r}")
        except ValueError as exc:
            return {"protocol": self.stream.protocol, "error": f"bad snapshot request: {exc}"}
        snap = self.stream.snapshot(history=bool(req.get("history")))
        topics = req.get("topics")
        if topics:
            snap["docs"] = {t: d for t, d in snap["docs"].items() if t in topics}
            if "history" in snap:
                snap["history"] = {t: d for t, d in snap["history"].items() if t in topics}
        return snap

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Stop the threads, flush what is queued (briefly) and release the ports."""
        if self._closing.is_set():
            return
        self.stream.unsubscribe(self)
        self._closing.set()
        self._queue.put(_CLOSE)
        for thread in self._threads:
            thread.join()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

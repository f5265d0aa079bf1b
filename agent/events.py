"""One stream of typed documents inside the agent (the bluesky pattern).

Everything the agent says goes through :class:`EventStream.emit`: a topic name
(``status``, ``metrics``, ``rev``, ``stop``, ``error``, ``heartbeat``) and a body.
The stream stamps the common fields (``protocol``, ``run_id``, ``seq``,
``time_unix_s``, ``topic``), keeps the latest document of each topic (the state a
late joiner needs) and hands the document to every subscriber, a callback
``callback(name, doc)``.

A *critical* subscriber (the Zarr store) stops the pipeline when it fails: its
exception propagates out of ``emit``. A *non-critical* one (publisher, log,
monitor) is logged, rate-limited, and kept: a broken dashboard must never stop
acquisition processing.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["PROTOCOL", "TOPICS", "EventStream", "JsonLinesSink", "jsonable", "validate_document"]

logger = logging.getLogger(__name__)

PROTOCOL = "revwatch/1"
TOPICS = ("status", "metrics", "rev", "stop", "error", "heartbeat")
HISTORY_TOPICS = ("status", "metrics")  # kept for late joiners' traces and trends
_FAILURE_LOG_EVERY_S = 60.0
SCHEMA_DIR = Path(__file__).with_name("schemas")

Subscriber = Callable[[str, dict], Any]


def jsonable(value):
    """Return ``value`` as plain JSON types (dict, list, str, int, float, bool, None).

    numpy scalars and arrays become Python numbers and lists, tuples become lists,
    paths become strings, and non-finite floats become ``None`` (strict JSON has no
    NaN, and scripts in other languages must parse every document).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} value {value!r} in a document")


@functools.cache
def _validators() -> dict:
    # jsonschema is imported lazily: only tests and `revwatch doctor` validate.
    import jsonschema
    from referencing import Registry, Resource

    schemas = {p.stem: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values())
    return {name: jsonschema.Draft202012Validator(s, registry=registry)
            for name, s in schemas.items()}


def validate_document(doc: dict, *, topic: str | None = None) -> None:
    """Check a document against the JSON Schema of its topic (agent/schemas/TOPIC.json).

    Parameters
    ----------
    doc : dict
        A document, or a snapshot reply with ``topic="snapshot"``.
    topic : str, optional
        Default ``doc["topic"]``.

    Raises
    ------
    jsonschema.ValidationError
        Naming the offending field.
    KeyError
        No schema for the topic.
    """
    topic = topic or doc.get("topic")
    validators = _validators()
    if topic not in validators or topic == "common":
        raise KeyError(f"no schema for topic {topic!r}; known: {sorted(set(validators) - {'common'})}")
    validators[topic].validate(doc)


@dataclass
class _Subscription:
    callback: Subscriber
    critical: bool
    name: str
    failures: int = 0
    suppressed: int = 0
    last_logged: float = field(default=-math.inf)


class EventStream:
    """The agent's single stream of documents.

    Parameters
    ----------
    run_id : str, optional
        Identifies this run of the agent; a restarted agent gets a new one, which
        is how clients notice the restart. Default: a random hex string.
    protocol : str
        Version string stamped on every document.
    history : int
        Recent documents of each of ``HISTORY_TOPICS`` kept for snapshots, so
        that a dashboard joining late can draw the drift trace and trends.

    Notes
    -----
    ``emit`` may be called from several threads. Documents are numbered and
    delivered under one lock, so ``seq`` is gapless and every subscriber sees the
    documents in ``seq`` order. Subscribers must therefore be quick (hand the
    document to a queue when the work is slow) and must not mutate the document.
    """

    def __init__(self, run_id: str | None = None, *, protocol: str = PROTOCOL, history: int = 500):
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.protocol = protocol
        self.started_unix_s = time.time()
        self._seq = 0
        if not (isinstance(history, int) and history >= 0):
            raise ValueError(f"history must be an int >= 0, got {history!r}")
        self._latest: dict[str, dict] = {}
        self._history = {t: collections.deque(maxlen=history) for t in HISTORY_TOPICS}
        self._subscribers: list[_Subscription] = []
        self._emit_lock = threading.RLock()
        self._state_lock = threading.Lock()

    # -- subscribers ---------------------------------------------------------
    def subscribe(self, callback: Subscriber, *, critical: bool = False, name: str | None = None):
        """Add a subscriber; returns ``callback`` so that it can be unsubscribed.

        Parameters
        ----------
        callback : callable
            Called as ``callback(name, doc)`` for every document emitted afterwards.
        critical : bool
            If true, an exception raised by ``callback`` propagates out of ``emit``
            (and so stops the pipeline). If false, it is logged and ignored.
        name : str, optional
            Name used in log messages; default the callback's repr.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        sub = _Subscription(callback, bool(critical), name or repr(callback))
        with self._emit_lock:
            self._subscribers = [*self._subscribers, sub]
        return callback

    def unsubscribe(self, callback: Subscriber) -> None:
        """Remove every subscription of ``callback`` (no error if absent)."""
        with self._emit_lock:
            self._subscribers = [s for s in self._subscribers if s.callback is not callback]

    # -- documents -----------------------------------------------------------
    def emit(self, name: str, body: dict | None = None) -> dict:
        """Stamp ``body`` into a document of topic ``name`` and deliver it.

        Parameters
        ----------
        name : str
            The topic, one of ``TOPICS`` (other names are allowed for extensions).
        body : dict, optional
            Topic-specific fields; must not use the common field names.

        Returns
        -------
        dict
            The document as delivered (plain JSON types).

        Raises
        ------
        Exception
            Whatever a critical subscriber raised.
        """
        if not isinstance(name, str) or not name or " " in name:
            raise ValueError(f"topic name must be a non-empty word, got {name!r}")
        body = jsonable(dict(body or {}))
        clash = {"protocol", "run_id", "seq", "time_unix_s", "topic"} & body.keys()
        if clash:
            raise ValueError(f"body of {name!r} must not set the common fields {sorted(clash)}")
        with self._emit_lock:
            with self._state_lock:
                self._seq += 1
                doc = {
                    "protocol": self.protocol,
                    "topic": name,
                    "run_id": self.run_id,
                    "seq": self._seq,
                    "time_unix_s": time.time(),
                    **body,
                }
                # `stop` is latched: the first one stays the run's verdict.
                if name != "stop" or "stop" not in self._latest:
                    self._latest[name] = doc
                if name in self._history:
                    self._history[name].append(doc)
            for sub in self._subscribers:
                self._deliver(sub, name, doc)
        return doc

    def _deliver(self, sub: _Subscription, name: str, doc: dict) -> None:
        try:
            sub.callback(name, doc)
        except Exception:
            if sub.critical:
                raise
            sub.failures += 1
            now = time.monotonic()
            if now - sub.last_logged >= _FAILURE_LOG_EVERY_S:
                logger.exception(
                    "non-critical subscriber %s failed on %s seq %d (%d failures so far, "
                    "%d not logged); it stays subscribed",
                    sub.name, name, doc["seq"], sub.failures, sub.suppressed,
                )
                sub.last_logged = now
                sub.suppressed = 0
            else:
                sub.suppressed += 1

    # -- state ---------------------------------------------------------------
    def snapshot(self, *, history: bool = False) -> dict:
        """The current state: ``{"protocol", "run_id", "seq", "time_unix_s", "docs"}``.

        ``docs`` maps each topic to its latest document (the first ``stop``, which
        is latched); ``seq`` is the last number given out, so any document with a
        larger ``seq`` is newer than the snapshot. With `history`, ``history``
        maps each of ``HISTORY_TOPICS`` to its recent documents, oldest first.
        """
        with self._state_lock:
            snap = {
                "protocol": self.protocol,
                "run_id": self.run_id,
                "seq": self._seq,
                "time_unix_s": time.time(),
                "docs": dict(self._latest),
            }
            if history:
                snap["history"] = {t: list(d) for t, d in self._history.items()}
            return snap

    def latest(self, topic: str) -> dict | None:
        """The latest document of ``topic`` (the latched one for ``stop``), or None."""
        with self._state_lock:
            return self._latest.get(topic)

    @property
    def stopped(self) -> bool:
        """True once a ``stop`` document has been emitted."""
        return self.latest("stop") is not None

    @property
    def seq(self) -> int:
        """The ``seq`` of the last document emitted (0 before the first)."""
        with self._state_lock:
            return self._seq


class JsonLinesSink:
    """Non-critical subscriber writing one JSON document per line.

    Parameters
    ----------
    path : str or os.PathLike
        The log file, opened for appending (a resumed run adds to it).
    skip : iterable of str
        Topics not written; heartbeats by default (they carry no information
        once the run is over).

    Use ``stream.subscribe(sink, critical=False, name="jsonl")`` and ``close()``
    at the end (or use it as a context manager).
    """

    def __init__(self, path, *, skip=("heartbeat",)):
        self.path = Path(path)
        self.skip = frozenset(skip)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, name: str, doc: dict) -> None:
        if name in self.skip:
            return
        line = json.dumps(doc, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

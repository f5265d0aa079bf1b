"""CURVE keys for publishing beyond loopback (``revwatch keys``).

Layout of a key folder (plain-text ZeroMQ certificates, as ``zmq.auth`` writes them)::

    KEYS/server.key                 public key of the agent: give it to every client
    KEYS/server.key_secret          secret key of the agent: never leaves the agent PC
    KEYS/clients/NAME.key           public key of an allowed client (the agent accepts
                                    every *.key in this folder)
    KEYS/clients/NAME.key_secret    secret key of that client: copy it, with server.key,
                                    to the client's machine

To allow another client, put its public ``.key`` file into ``KEYS/clients/`` and
restart the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from processing.errors import RevwatchError

__all__ = ["CurveKeyError", "CurveServerKeys", "CurveClientKeys", "create_keys",
           "load_server_keys", "load_client_keys"]

SERVER = "server"
CLIENTS_DIR = "clients"


class CurveKeyError(RevwatchError):
    """A key folder is missing, incomplete or would be overwritten."""


@dataclass(frozen=True)
class CurveServerKeys:
    """What the agent needs: its key pair and the folder of allowed client public keys."""

    public: bytes
    secret: bytes
    clients_dir: Path


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs: its key pair and the agent's public key."""

    public: bytes
    secret: bytes
    server_public: bytes


def create_keys(folder, *, clients=("client",), overwrite: bool = False) -> Path:
    """Create the agent's key pair and one key pair per client name in ``folder``.

    Parameters
    ----------
    folder : str or os.PathLike
        Created if absent.
    clients : iterable of str
        Names of the client key pairs to create (file names, no path separators).
    overwrite : bool
        Replace existing keys; otherwise refuse, since replacing the server key
        locks out every client that has the old one.

    Returns
    -------
    list of Path
        The files written: server public and secret key, then each client's.
    """
    if not zmq.has("curve"):
        raise CurveKeyError("this libzmq was built without CURVE support; install pyzmq wheels")
    folder = Path(folder)
    names = list(clients)
    for name in names:
        if not name or Path(name).name != name or name == SERVER:
            raise ValueError(f"clients must be plain file names other than {SERVER!r}, got {name!r}")
    existing = [p for p in [folder / f"{SERVER}.key_secret",
                            *(folder / CLIENTS_DIR / f"{n}.key_secret" for n in names)] if p.exists()]
    if existing and not overwrite:
        raise CurveKeyError(f"keys already exist ({', '.join(map(str, existing))}); "
                        "pass overwrite=True (--force) to replace them")
    (folder / CLIENTS_DIR).mkdir(parents=True, exist_ok=True)
    written = [*zmq.auth.create_certificates(folder, SERVER)]
    for name in names:
        written += zmq.auth.create_certificates(folder / CLIENTS_DIR, name)
    written = [Path(p) for p in written]
    for path in written:
        if path.suffix == ".key_secret":
            path.chmod(0o600)
    return written


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveKeyError(f"key file {path} not found (create keys with `revwatch keys FOLDER`)")
    public, secret_key = zmq.auth.load_certificate(path)
    if not public or (secret and not secret_key):
        raise CurveKeyError(f"key file {path} holds no {'secret' if secret else 'public'} key")
    return public, secret_key


def load_server_keys(folder) -> CurveServerKeys:
    """Load the agent's keys from a folder made by :func:`create_keys`."""
    folder = Path(folder)
    public, secret = _load(folder / f"{SERVER}.key_secret", secret=True)
    clients_dir = folder / CLIENTS_DIR
    if not any(clients_dir.glob("*.key")):
        raise CurveKeyError(f"no client public keys (*.key) in {clients_dir}: no client could connect")
    return CurveServerKeys(public, secret, clients_dir)


def load_client_keys(folder, *, name: str = "client") -> CurveClientKeys:
    """Load client ``name``'s keys and the agent's public key from a key folder.

    The folder needs ``server.key`` and ``clients/NAME.key_secret`` (or
    ``NAME.key_secret`` directly in it, for a folder copied to a client machine).
    """
    folder = Path(folder)
    server_public, _ = _load(folder / f"{SERVER}.key", secret=False)
    candidates = [folder / CLIENTS_DIR / f"{name}.key_secret", folder / f"{name}.key_secret"]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    public, secret = _load(path, secret=True)
    return CurveClientKeys(public, secret, server_public)

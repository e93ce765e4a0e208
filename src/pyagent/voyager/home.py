"""A node's home folder: its CurveZMQ key pair, its id and the public keys it trusts.

Layout (default ``~/.pyagent/node/``, or ``--home DIR``)::

    node.key          the node's public key (Z85, 40 characters)
    node.key_secret   the node's secret key (Z85), file mode 0600
    node.id           a stable random node id
    trusted_keys      one trusted public key (Z85) per line, then an optional label;
                      other lines (comments) are ignored (Z85 itself may contain ``#``)

Trust is explicit and per key (``pyagent trust KEY``) rather than a shared swarm secret: a
leaked secret would let anyone on the LAN join, while a key list lets a node see who may submit
work and revoke one peer without touching the others.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import blake3

from pyagent.state.fsutil import atomic_write

_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
DEFAULT_HOME = Path("~/.pyagent/node")


class HomeError(Exception):
    """The home folder or a key in it is unusable; the message says how to fix it."""


def fingerprint(public_key: bytes) -> str:
    """A short, stable fingerprint of a Z85 public key, small enough for an mDNS TXT entry."""
    return blake3.blake3(public_key).hexdigest()[:32]


def validate_key(key: str) -> bytes:
    """Return a Z85 public key as bytes, or raise HomeError if it is not one."""
    key = key.strip()
    if not _Z85_KEY.match(key):
        raise HomeError(
            f"{key!r} is not a CurveZMQ public key (40 Z85 characters, as printed by `pyagent node --show-key`)"
        )
    return key.encode("ascii")


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


class NodeHome:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path if path is not None else DEFAULT_HOME).expanduser()
        self._trusted_cache: tuple[tuple[int, int, int], set[bytes]] | None = None

    @property
    def public_file(self) -> Path:
        return self.path / "node.key"

    @property
    def secret_file(self) -> Path:
        return self.path / "node.key_secret"

    @property
    def trusted_file(self) -> Path:
        return self.path / "trusted_keys"

    def _ensure_dir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise HomeError(f"cannot create node home {self.path}: {exc.strerror}") from None

    def keypair(self) -> KeyPair:
        """Load the node's key pair, making it on first start."""
        import zmq

        self._ensure_dir()
        if self.secret_file.exists() and self.public_file.exists():
            public = validate_key(self.public_file.read_text(encoding="ascii"))
            secret = validate_key(self.secret_file.read_text(encoding="ascii"))
            if zmq.curve_public(secret) != public:
                raise HomeError(f"{self.public_file} does not match {self.secret_file}; remove both to make new keys")
            return KeyPair(public, secret)
        public, secret = zmq.curve_keypair()
        _write_private(self.secret_file, secret + b"\n")
        atomic_write(self.public_file, public + b"\n", mode=0o644)
        return KeyPair(public, secret)

    def node_id(self) -> str:
        self._ensure_dir()
        path = self.path / "node.id"
        try:
            value = path.read_text(encoding="ascii").strip()
            if re.fullmatch(r"[0-9a-f]{32}", value):
                return value
        except FileNotFoundError:
            pass
        value = uuid.uuid4().hex
        atomic_write(path, value.encode() + b"\n", mode=0o644)
        return value

    def trusted_keys(self) -> set[bytes]:
        """The trusted public keys, re-read only when the file changes (ZAP asks on every handshake)."""
        try:
            st = self.trusted_file.stat()
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            return set()
        if self._trusted_cache is not None and self._trusted_cache[0] == stamp:
            return self._trusted_cache[1]
        try:
            text = self.trusted_file.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return set()
        keys: set[bytes] = set()
        for line in text.splitlines():
            parts = line.split()
            if parts:  # a comment line never validates as a key, so it is skipped like garbage
                try:
                    keys.add(validate_key(parts[0]))
                except HomeError:
                    continue  # a corrupted line must not lock out the others
        self._trusted_cache = (stamp, keys)
        return keys

    def trust(self, key: str) -> bool:
        """Add a key to the trusted list; False if it was already there."""
        raw = validate_key(key)
        keys = self.trusted_keys()
        if raw in keys:
            return False
        self._ensure_dir()
        lines = [k.decode() for k in sorted(keys | {raw})]
        atomic_write(self.trusted_file, ("\n".join(lines) + "\n").encode(), mode=0o644)
        self._trusted_cache = None
        return True

    def trusted_by_fingerprint(self) -> dict[str, bytes]:
        """Trusted keys indexed by the fingerprint peers advertise over mDNS."""
        return {fingerprint(k): k for k in self.trusted_keys()}


def _write_private(path: Path, data: bytes) -> None:
    # atomic_write creates the temp file no more permissive than 0o600: the secret is never readable by others.
    atomic_write(path, data, mode=0o600)

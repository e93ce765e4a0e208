"""Sending a secret over TCP to a real listener on 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path

from pyagent.shell import Confinement
from tests.security.helpers import active, attack

CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
    s.sendall(b"SECRET-over-tcp")
    s.close()
    print("SENT")
except OSError as exc:
    print("REFUSED", exc.errno, exc)
"""


def _listen() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(2.0)
    return srv


def _received(srv: socket.socket) -> bytes:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        return b""
    with conn:
        conn.settimeout(2.0)
        return conn.recv(100)


def test_no_network_reaches_a_loopback_listener_network_namespace(tmp_path: Path) -> None:
    """Protection: network namespace (only a private loopback inside): the command's own one, or the
    empty one PyAgent keeps for its later commands (both are tried: three runs in a row)."""
    details = []
    for _ in range(3):
        with _listen() as srv:
            port = srv.getsockname()[1]
            res = attack(f"import sys; sys.argv[1:] = ['{port}']\n" + CONNECT, tmp_path)
            got = _received(srv)
        assert active(res, "network namespace")
        assert "REFUSED" in res.stdout, res.stdout
        assert got == b""
        details.append(next(p.detail for p in res.protections if p.name == "network namespace"))
    assert any("joined" in d for d in details), details


def test_allow_network_opt_in_reaches_the_listener(tmp_path: Path) -> None:
    """Control: with the per-task opt-in the same connect succeeds (so the refusal above is the sandbox)."""
    with _listen() as srv:
        port = srv.getsockname()[1]
        res = attack(f"import sys; sys.argv[1:] = ['{port}']\n" + CONNECT, tmp_path,
                     confine=Confinement(allow_network=True))
        got = _received(srv)
    assert "SENT" in res.stdout, res.stdout + res.stderr
    assert got == b"SECRET-over-tcp"
    assert not active(res, "network namespace")


def test_a_test_suite_may_still_serve_on_its_own_loopback(tmp_path: Path) -> None:
    """Projects' tests that start a local server keep working: lo is up inside the namespace."""
    code = (
        "import socket\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
        "c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()\n"
        "c.sendall(b'ping'); print(a.recv(4).decode())\n"
    )
    res = attack(code, tmp_path)
    assert res.stdout.strip() == "ping", res.stderr

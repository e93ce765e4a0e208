"""Reaching the user's UNIX sockets (an ssh-agent, docker.sock): a path socket outside the copy and an
abstract one, both real listeners created by the test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pyagent.shell import Confinement
from tests.security.helpers import Listener, active, attack

CONNECT = r"""
import socket, sys
for label, addr in (("path", sys.argv[1]), ("abstract", "\0" + sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(3)
        s.connect(addr)
        s.sendall(b"SECRET-over-unix")
        print(label, "SENT")
    except OSError as exc:
        print(label, "REFUSED", exc.errno)
    finally:
        s.close()
# a socket of the command's own, inside its copy, keeps working
srv = socket.socket(socket.AF_UNIX)
srv.bind("own.sock")
srv.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect("own.sock")
print("own", "OK" if srv.accept() else "NO")
# the host's file system under the private root: covered, and the cover cannot be removed
import ctypes, os
try:
    print("oldroot", os.listdir("/.oldroot"))
except OSError as exc:
    print("oldroot refused", exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
print("umount", libc.umount2(b"/.oldroot", 2), ctypes.get_errno())
"""


def _run(tmp_path: Path, confine: Confinement | None) -> tuple[str, bytes, bytes, bool, bool]:
    outside = tmp_path / "agent"  # beside the copy, like ~/.ssh/agent.sock or /run/docker.sock
    outside.mkdir(exist_ok=True)
    path = outside / f"s{os.getpid()}.sock"
    path.unlink(missing_ok=True)
    name = f"pyagent-test-{os.getpid()}-{id(tmp_path)}"
    copy = tmp_path / "copy"
    copy.mkdir(exist_ok=True)
    (copy / "own.sock").unlink(missing_ok=True)
    path_l, abstract_l = Listener(socket.AF_UNIX, str(path)), Listener(socket.AF_UNIX, "\0" + name)
    try:
        res = attack(f"import sys; sys.argv[1:] = [{str(path)!r}, {name!r}]\n" + CONNECT, copy, confine=confine)
    finally:
        got_path, got_abstract = path_l.close(), abstract_l.close()
    root = confine is None and active(res, "private root")
    scoped = confine is None and active(res, "network namespace") and active(res, "landlock")
    return res.stdout, got_path, got_abstract, root, scoped


def test_no_unix_socket_outside_the_copy_is_reachable_private_root_and_namespaces(tmp_path: Path) -> None:
    """Protection: private root (the path socket does not exist in the command's file system view);
    network namespace + Landlock scoping (abstract sockets belong to a network namespace, and Landlock
    ABI 6 scopes them to the sandbox)."""
    out, got_path, got_abstract, root, scoped = _run(tmp_path, None)
    assert root and scoped
    assert "path REFUSED" in out and "abstract REFUSED" in out, out
    assert got_path == b"" and got_abstract == b""
    assert "own OK" in out, out
    assert "oldroot refused 13" in out and "umount -1 1" in out, out  # EPERM: no capability to uncover it


def test_control_unconfined_the_same_connects_succeed(tmp_path: Path) -> None:
    """Control: without confinement both listeners receive the secret (the attack is real here)."""
    out, got_path, got_abstract, _, _ = _run(tmp_path, Confinement.off())
    assert "path SENT" in out and "abstract SENT" in out, out
    assert got_path == b"SECRET-over-unix" and got_abstract == b"SECRET-over-unix"

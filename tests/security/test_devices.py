"""What of /dev a confined command sees: only the nodes programs need, its own ptys, a private /dev/shm.

The attacks: read the kernel log or a disk, talk to syslog (/dev/log), write into the host's terminals
through the host's devpts, leave a file in the host's shared /dev/shm. Protection: private root (a
/dev holding only null, zero, full, random, urandom, tty, a new devpts instance and a private shm);
without a private root, the mount namespace still gives the command a devpts instance of its own.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from pyagent.shell import Confinement
from pyagent.shell._sandbox import DEV_LINKS, DEV_NODES
from tests.security.helpers import active, attack

PROBE = r"""
import json, multiprocessing, os, pty, sys
names = sys.argv[1:]
seen = {name: os.path.lexists("/dev/" + name) for name in names}
pts_before = sorted(os.listdir("/dev/pts"))
master, slave = pty.openpty()
os.write(slave, b"ping")
echoed = os.read(master, 4).decode()
with open("/dev/null", "w") as f:
    f.write("x")
random_bytes = len(open("/dev/urandom", "rb").read(16))
zeros = open("/dev/zero", "rb").read(4)
multiprocessing.Lock()  # a POSIX semaphore: a file in /dev/shm
shm_file = "/dev/shm/" + sys.argv[0]
open(shm_file, "w").write("x")
print(json.dumps({"seen": seen, "pts_before": pts_before, "echoed": echoed, "tty": os.ttyname(slave),
                  "random": random_bytes, "zeros": zeros.hex(), "shm_written": os.path.exists(shm_file)}))
"""


def test_dev_holds_only_what_programs_need_private_root(tmp_path: Path) -> None:
    """Protection: private root. Every other entry of the host's /dev (here: disks, /dev/kmsg, /dev/kvm,
    the virtual consoles...) and /dev/log are absent; the command's ptys come from its own devpts (no
    host terminal listed), /dev/shm is a private tmpfs that semaphores work in and nothing leaks from."""
    others = sorted(set(os.listdir("/dev")) - set(DEV_NODES) - {name for name, _ in DEV_LINKS} - {"pts", "shm"})
    names = [*others, "log", *DEV_NODES]
    shm_name = f"pyagent-dev-test-{uuid.uuid4().hex}"
    host_pty = os.openpty()  # a host terminal the command must not see
    try:
        res = attack(f"import sys; sys.argv[:] = {[shm_name, *names]!r}\n" + PROBE, tmp_path)
    finally:
        for fd in host_pty:
            os.close(fd)
    assert active(res, "private root") and active(res, "private tmp"), res.protections
    assert res.ok, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [n for n in [*others, "log"] if out["seen"][n]] == [], out["seen"]
    assert all(out["seen"][n] for n in DEV_NODES if os.path.exists("/dev/" + n)), out["seen"]
    assert out["pts_before"] == ["ptmx"], "the host's ptys are not in the command's devpts"
    assert out["echoed"] == "ping" and out["tty"].startswith("/dev/pts/")
    assert out["random"] == 16 and out["zeros"] == "00000000" and out["shm_written"]
    assert not os.path.exists(f"/dev/shm/{shm_name}"), "the private /dev/shm is not the host's"


def test_without_a_private_root_the_host_terminals_stay_out_of_reach_mount_namespace(tmp_path: Path) -> None:
    """Protection: mount namespace (a new devpts instance over the host's /dev/pts). A policy granting
    "/" leaves no private root (the table says why); the command still lists no host terminal, and the
    pty it opens comes from its own instance."""
    host_pty = os.openpty()
    try:
        host_name = os.ttyname(host_pty[1])
        res = attack("import os, pty; print(sorted(os.listdir('/dev/pts'))); m, s = pty.openpty(); "
                     "print(os.ttyname(s), sorted(os.listdir('/dev/pts')))", tmp_path,
                     confine=Confinement(read_paths=("/",)))
    finally:
        for fd in host_pty:
            os.close(fd)
    rows = {p.name: p for p in res.protections}
    assert not rows["private root"].active and "whole file system" in rows["private root"].detail, rows
    assert active(res, "mount namespace") and res.ok, res.stderr
    before, after = res.stdout.strip().splitlines()
    assert before == "['ptmx']", f"{host_name} (the host's) is not listed: {before}"
    assert after.startswith("/dev/pts/"), after

"""uid 0 with capabilities: what a root child could do on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyagent.shell import Confinement
from tests.security.helpers import active, attack

CAPS = r"""
import os
caps = {l.split(':')[0]: int(l.split(':')[1], 16) for l in open('/proc/self/status') if l.startswith('Cap')}
print("CAPEFF", caps["CapEff"], "CAPBND", caps["CapBnd"])
try:
    print("READ", open("locked.txt").read())
except OSError as exc:
    print("DENIED read", exc.errno)
try:
    os.chown("mine.txt", 4242, 4242)
    print("CHOWNED")
except OSError as exc:
    print("DENIED chown", exc.errno)
"""


def _locked_files(tmp_path: Path) -> None:
    locked = tmp_path / "locked.txt"
    locked.write_text("only uid 4242 may read this")
    (tmp_path / "mine.txt").write_text("x")
    if os.geteuid() == 0:
        os.chown(locked, 4242, 4242)
    locked.chmod(0o600)


def test_root_child_has_no_host_capabilities_user_namespace(tmp_path: Path) -> None:
    """Protection: user namespace + capabilities dropped (empty bounding set)."""
    _locked_files(tmp_path)
    res = attack(CAPS, tmp_path)
    assert active(res, "user namespace") and active(res, "capabilities dropped")
    assert "CAPEFF 0 CAPBND 0" in res.stdout, res.stdout
    assert "DENIED read 13" in res.stdout and "DENIED chown" in res.stdout, res.stdout
    # the product says the layer is on for this command (the row --explain prints)
    rows = {p.name: p.detail for p in res.protections}
    assert rows["capabilities dropped"] == "empty bounding set, no host capability", rows


@pytest.mark.skipif(os.geteuid() != 0, reason="the control needs root: only root's CAP_DAC_OVERRIDE/CAP_CHOWN "
                                              "make the attack real")
def test_the_same_attack_unconfined_succeeds_as_root(tmp_path: Path) -> None:
    """The control: without confinement root's capabilities read and chown the locked file."""
    _locked_files(tmp_path)
    plain = attack(CAPS, tmp_path, confine=Confinement.off())
    assert "READ only uid 4242" in plain.stdout and "CHOWNED" in plain.stdout, plain.stdout

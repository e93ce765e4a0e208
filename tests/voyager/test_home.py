"""Node home folder: keys made once with safe modes, the trusted list, bad keys rejected."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq

from pyagent.voyager.home import HomeError, NodeHome, fingerprint, validate_key


def test_keys_made_on_first_start_and_kept(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "node")
    first = home.keypair()
    assert stat.S_IMODE(home.secret_file.stat().st_mode) == 0o600
    assert zmq.curve_public(first.secret) == first.public
    assert NodeHome(tmp_path / "node").keypair() == first
    assert home.node_id() == NodeHome(tmp_path / "node").node_id()


def test_mismatched_key_files_are_an_error(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    home.keypair()
    other_public, _ = zmq.curve_keypair()
    home.public_file.write_bytes(other_public + b"\n")
    with pytest.raises(HomeError, match="does not match"):
        home.keypair()


def test_trust_adds_once_and_survives_reload(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    key = zmq.curve_keypair()[0].decode()
    assert home.trust(key) is True
    assert home.trust(key) is False
    assert NodeHome(tmp_path).trusted_keys() == {key.encode()}
    assert NodeHome(tmp_path).trusted_by_fingerprint() == {fingerprint(key.encode()): key.encode()}


@pytest.mark.parametrize("bad", ["", "short", "x" * 41, "ü" * 40, "a b" + "c" * 37])
def test_invalid_keys_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(HomeError, match="not a CurveZMQ public key"):
        validate_key(bad)
    with pytest.raises(HomeError):
        NodeHome(tmp_path).trust(bad)
    assert not (tmp_path / "trusted_keys").exists()


def test_corrupt_line_does_not_lock_out_the_others(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    good = zmq.curve_keypair()[0]
    (tmp_path / "trusted_keys").write_text(f"garbage line\n# a comment\n{good.decode()}  laptop\n")
    assert home.trusted_keys() == {good}


def test_trusted_list_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    assert home.trusted_keys() == set()
    key = zmq.curve_keypair()[0]
    NodeHome(tmp_path).trust(key.decode())  # another process, e.g. `pyagent trust`
    assert home.trusted_keys() == {key}


def test_key_containing_hash_is_not_cut_as_a_comment(tmp_path: Path) -> None:
    key = next(k for k in (zmq.curve_keypair()[0] for _ in range(2000)) if b"#" in k[1:])
    NodeHome(tmp_path).trust(key.decode())
    assert NodeHome(tmp_path).trusted_keys() == {key}

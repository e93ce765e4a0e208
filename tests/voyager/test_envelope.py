"""The wire envelope: round trips, and every kind of bad frame is a clean EnvelopeError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent.voyager.envelope import PROTOCOL_VERSION, Envelope, EnvelopeError, OversizedError


def test_round_trip_keeps_every_field() -> None:
    env = Envelope("task.run", {"files": {"a.py": b"x = 1\n"}, "n": [1, 2.5, None]})
    back = Envelope.decode(env.encode())
    assert back == env
    assert back.version == PROTOCOL_VERSION


def test_message_ids_differ() -> None:
    assert Envelope("k").msg_id != Envelope("k").msg_id


@pytest.mark.parametrize(
    "obj",
    [
        {"not": "a list"},
        [1, "kind", b"id"],  # truncated envelope
        [2, "kind", b"id", None],  # future version
        [True, "kind", b"id", None],  # bool is not a version
        [1, "", b"id", None],
        [1, "k" * 65, b"id", None],
        [1, 7, b"id", None],
        [1, "kind", "not-bytes", None],
        [1, "kind", b"", None],
    ],
)
def test_wrong_shapes_are_rejected(obj: object) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.decode(msgpack.packb(obj, use_bin_type=True))


def test_truncated_bytes_are_rejected() -> None:
    data = Envelope("kind", {"x": b"y" * 100}).encode()
    for cut in (1, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(EnvelopeError):
            Envelope.decode(data[:cut])


def test_size_limit_on_both_sides() -> None:
    big = Envelope("kind", b"x" * 2000)
    with pytest.raises(OversizedError):
        big.encode(max_bytes=1000)
    data = big.encode()
    with pytest.raises(OversizedError):
        Envelope.decode(data, max_bytes=1000)
    assert Envelope.decode(data, max_bytes=4000).payload == b"x" * 2000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        env = Envelope.decode(data)
    except EnvelopeError:
        return
    assert env.version == PROTOCOL_VERSION  # the rare random valid envelope is still well formed

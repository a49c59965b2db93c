"""Hostile peers of a batch link (issue 17, holes 4, 5 and 8), without Ray: a fake actor that
does not hold the token, bytes that are no value of the wire format (a hypothesis fuzz of the
decoder), peers without the token that try to hold every slot, and admitted peers that
announce huge frames and go silent."""

from __future__ import annotations

import asyncio
import os
import pickle
import secrets
import socket
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samplerd.sampling import SamplingParams, SequenceState, sample
from samplerd.workers.batch import WIRE_TYPES, BatchOutput, GroupResult, stack_group, to_numpy
from samplerd.workers.config import LinkLimits
from samplerd.workers.socket_link import (
    _FRAME,
    _OK,
    LinkAddress,
    LinkRefusedError,
    LinkServer,
    SocketLink,
    _proof,
)
from samplerd.workers.wire import DTYPES, Codec, WireError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="batch links need Linux")

CODEC = Codec(WIRE_TYPES)


def echo(batch):
    return batch


# -- hole 4: the front end authenticates the actor ------------------------------------------------


class FakeActor:
    """A listener posing as a link server: it sends a challenge, reads the answer, and answers
    with 32 bytes of its own, as the old protocol let any listener do."""

    def __init__(self, family: socket.AddressFamily, address) -> None:
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(4)
        self.address = self.listener.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.sendall(os.urandom(32))
            connection.recv(64)
            connection.sendall(os.urandom(32))  # a guess at the proof
            time.sleep(2)


@pytest.mark.asyncio
async def test_a_tcp_listener_without_the_token_is_no_link_server() -> None:
    fake = FakeActor(socket.AF_INET, ("127.0.0.1", 0))
    address = LinkAddress("other", b"", secrets.token_bytes(32), "127.0.0.1", fake.address[1])
    with pytest.raises(LinkRefusedError, match="did not prove"):
        await SocketLink.open_remote(address, timeout_s=10.0, types=WIRE_TYPES)


@pytest.mark.asyncio
async def test_a_unix_listener_without_the_token_is_no_link_server() -> None:
    name = b"\0samplerd-test-fake-" + secrets.token_hex(8).encode()
    FakeActor(socket.AF_UNIX, name)
    address = LinkAddress("this", name, secrets.token_bytes(32))
    with pytest.raises(LinkRefusedError, match="did not prove"):
        await SocketLink.open(address, timeout_s=10.0, types=WIRE_TYPES, arena_bytes=1 << 20)


# -- hole 4: the wire format cannot build objects ----------------------------------------------


def real_batch() -> list:
    params = [SamplingParams(top_p=0.9, seed=7), SamplingParams(temperature=0.5, dry_multiplier=0.8, seed=2**63 + 5)]
    states = [SequenceState((1, 2, 3), 1.5), None]
    return [stack_group([torch.randn(2, 16)], params, [0, 4], states)]


def real_answer() -> BatchOutput:
    out = sample(torch.randn(3, 16), [SamplingParams(top_logprobs=2, seed=1)] * 3, 0)
    return BatchOutput([GroupResult(to_numpy(out), None, 0.01)], "cpu", {"top_k": 0.01})


def test_a_batch_and_an_answer_come_back_equal() -> None:
    batch = real_batch()
    meta, buffers = CODEC.encode(batch)
    group = CODEC.decode(meta, [bytearray(b) for b in buffers])[0]
    assert group.params == batch[0].params and group.states == batch[0].states and group.steps == [0, 4]
    assert group.params[1].seed == 2**63 + 5 and group.params[0].strategy_label() == batch[0].params[0].strategy_label()
    assert np.array_equal(group.logits[0], batch[0].logits[0])

    answer = real_answer()
    meta, buffers = CODEC.encode(answer)
    back = CODEC.decode(meta, buffers)
    assert back.device == "cpu" and back.kernel_seconds_by_strategy == {"top_k": 0.01}
    assert back.groups[0].output.strategies == answer.groups[0].output.strategies
    assert np.array_equal(back.groups[0].output.token_ids, answer.groups[0].output.token_ids)
    assert np.array_equal(back.groups[0].output.top_logprobs[1], answer.groups[0].output.top_logprobs[1])


def test_a_pickle_is_no_value() -> None:
    """The old format's bytes, even of a harmless value, are refused (unknown tag 0x80)."""
    with pytest.raises(WireError, match="unknown tag"):
        CODEC.decode(pickle.dumps(np.zeros(3), protocol=5), [])


def test_only_the_closed_list_of_dtypes_travels() -> None:
    with pytest.raises(WireError, match="dtype object"):
        CODEC.encode(np.array([object()], dtype=object))
    with pytest.raises(WireError, match="dtype"):
        CODEC.encode(np.zeros(2, dtype=[("a", "<i4"), ("b", "O")]))
    bad = bytes([12, len(DTYPES), 1]) + (1).to_bytes(8, "little") + (0).to_bytes(4, "little")
    with pytest.raises(WireError, match="unknown dtype code"):
        CODEC.decode(bad, [bytearray(8)])


def test_an_array_must_fill_its_buffer_exactly() -> None:
    meta, buffers = CODEC.encode(np.arange(4, dtype=np.int64))
    with pytest.raises(WireError, match="needs 32 bytes"):
        CODEC.decode(meta, [bytearray(31)])
    huge = bytes([12, 3, 2]) + (2**40).to_bytes(8, "little") * 2 + (0).to_bytes(4, "little")
    with pytest.raises(WireError):  # shape product overflowing 64 bits does not wrap around
        CODEC.decode(huge, [bytearray(0)])


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.integers(-5, 5) | st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(PLAIN)
def test_plain_values_come_back_equal(value) -> None:
    meta, buffers = CODEC.encode(value)
    assert CODEC.decode(meta, buffers) == value


def decode_or_refuse(meta: bytes, buffers: list) -> None:
    """Decoding hostile bytes returns a value or raises WireError: nothing else, no crash."""
    try:
        value = CODEC.decode(meta, buffers)
    except WireError:
        return
    repr(value)  # what segfaulted with the forged pickle: the value must be sound to look at


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.binary(max_size=64).map(bytearray), max_size=3))
def test_fuzz_random_bytes_never_crash_the_decoder(meta, buffers) -> None:
    decode_or_refuse(meta, buffers)


VALID = [CODEC.encode(real_batch()), CODEC.encode(real_answer())]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(VALID))), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                    min_size=1, max_size=6), st.integers(0, 10**6))
def test_fuzz_mutated_real_values_never_crash_the_decoder(which, edits, cut) -> None:
    meta, buffers = VALID[which]
    mutated = bytearray(meta)
    for position, byte in edits:
        mutated[position % len(mutated)] = byte
    decode_or_refuse(bytes(mutated[:len(mutated) - cut % 8]), [bytearray(b) for b in buffers])


# -- hole 5: peers without the token cannot hold the slots ---------------------------------------


def trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Keep each connection's handshake alive by one byte a second, as the review's attack did."""
    while not stop.wait(1.0):
        for sock in sockets:
            try:
                sock.send(b"x")
            except OSError:
                pass


@pytest.mark.asyncio
async def test_tricklers_without_the_token_cannot_keep_a_front_end_out() -> None:
    limits = LinkLimits(admit_timeout_s=2.0, max_pending=16, max_connections=4)
    server = LinkServer(echo, WIRE_TYPES, limits)
    tricklers = []
    for _ in range(40):  # more than every slot
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server.name)
        tricklers.append(sock)
    stop = threading.Event()
    threading.Thread(target=trickle, args=(tricklers, stop), daemon=True).start()
    try:
        started = time.monotonic()
        link = await SocketLink.open(server.address("n"), 10.0, WIRE_TYPES, arena_bytes=1 << 20)
        assert await link.call([1, "two"]) == [1, "two"]
        assert time.monotonic() - started < 2.0
        link.close()
        await asyncio.sleep(limits.admit_timeout_s + 1.0)  # a deadline for the whole handshake, not per read
        closed = 0
        for sock in tricklers:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(100) == b"" or not sock.recv(100)
            except (TimeoutError, OSError):
                pass
        assert closed == len(tricklers)
    finally:
        stop.set()
        for sock in tricklers:
            sock.close()


@pytest.mark.asyncio
async def test_connections_beyond_the_cap_are_refused_before_the_servers_proof() -> None:
    server = LinkServer(echo, WIRE_TYPES, LinkLimits(max_connections=2))
    links = [await SocketLink.open(server.address("n"), 10.0, WIRE_TYPES, arena_bytes=1 << 20) for _ in range(2)]
    with pytest.raises(LinkRefusedError, match="closed the connection"):
        await SocketLink.open(server.address("n"), 10.0, WIRE_TYPES, arena_bytes=1 << 20)
    links[0].close()
    await asyncio.sleep(0.2)  # the server notices the close
    again = await SocketLink.open(server.address("n"), 10.0, WIRE_TYPES, arena_bytes=1 << 20)
    assert await again.call("in") == "in"
    for link in (again, links[1]):
        link.close()


# -- hole 8: frames are bounded and silent peers time out ----------------------------------------


def admitted_raw(server: LinkServer) -> socket.socket:
    """A hand-made front end over TCP that completes the handshake."""
    sock = socket.create_connection((server.host, server.port), timeout=10.0)
    theirs = sock.recv(32)
    mine = os.urandom(32)
    sock.sendall(mine + _proof(server.token, b"front", theirs, mine))
    assert sock.recv(32) == _proof(server.token, b"actor", theirs, mine)
    return sock


def test_a_frame_over_the_limit_ends_the_connection_at_its_header() -> None:
    server = LinkServer(echo, WIRE_TYPES, LinkLimits(max_frame_bytes=1 << 20))
    server.listen_tcp("127.0.0.1")
    with admitted_raw(server) as sock:
        sock.sendall(_FRAME.pack(0, _OK, 2 << 30, 0))  # 2 GiB announced
        assert sock.recv(16) == b""


def test_an_announced_frame_costs_no_memory_and_a_silent_peer_is_dropped() -> None:
    timeout_s = 1.0
    server = LinkServer(echo, WIRE_TYPES, LinkLimits(frame_timeout_s=timeout_s))
    server.listen_tcp("127.0.0.1")
    tracemalloc.start()
    try:
        with admitted_raw(server) as sock:
            started = time.monotonic()
            sock.sendall(_FRAME.pack(0, _OK, 512 << 20, 0) + b"x" * 1000)  # 512 MiB announced, 1 KB sent
            assert sock.recv(16) == b""
            took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert timeout_s * 0.9 <= took < timeout_s + 5.0, took

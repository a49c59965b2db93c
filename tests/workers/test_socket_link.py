"""Batch links (samplerd.workers.socket_link) on their own, without Ray: a LinkServer in this process
(its thread) or in a child process, and the SocketLink on the test's event loop.

A link carries batches whose arrays travel out of band (through its arena when they fit, else
in the stream), answers each call with its own result whatever the order and size of the
calls, and never leaves a call waiting: a handler error fails that call only, a peer without
the token or a sealed arena is refused, a frame pointing outside the arena ends only that
connection, and a dead server fails every waiting call at once.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from samplerd.workers.socket_link import (
    _ARENA_SEALS,
    _BUFFER,
    _FRAME,
    _IOV_MAX,
    _OK,
    LinkAddress,
    LinkCallError,
    LinkLostError,
    LinkRefusedError,
    LinkServer,
    SocketLink,
    _after,
    _Arena,
    _proof,
)
from samplerd.workers.wire import WireError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="batch links need Linux")


def checksum(batch: dict[str, Any]) -> dict[str, Any]:
    """The handler of most tests: each array's bytes and dtype back, with the batch's tag."""
    if batch.get("fail"):
        raise ValueError(f"batch {batch['tag']} asked to fail")
    return {"tag": batch["tag"], "arrays": [(a.dtype.str, a.shape, a.tobytes()) for a in batch["arrays"]]}


def arrays_for(seed: int) -> list[np.ndarray]:
    """Arrays of one call: small to 24 MB (several times a socket's buffer), three dtypes."""
    rng = np.random.default_rng(seed)
    size = [3, 4096, 32000, 6 * 1024 * 1024][seed % 4]
    dtype = [np.float32, np.float16, np.int16][seed % 3]
    return [(rng.standard_normal(size) * 100).astype(dtype) for _ in range(1 + seed % 3)]


def same(answer: dict[str, Any], tag: int, arrays: list[np.ndarray]) -> bool:
    return answer["tag"] == tag and answer["arrays"] == [(a.dtype.str, a.shape, a.tobytes()) for a in arrays]


async def open_link(server: LinkServer, token: bytes | None = None, **options: Any) -> SocketLink:
    address = server.address("this-node")
    if token is not None:
        address = LinkAddress(address.node_id, address.name, token)
    return await SocketLink.open(address, timeout_s=10.0, **options)


def where_and_what(batch: list[np.ndarray]) -> list[tuple[bool, bytes]]:
    """Per array: whether it views the arena (read-only memory) rather than the stream, and its bytes."""
    return [(not a.flags.writeable, a.tobytes()) for a in batch]


@pytest.mark.asyncio
async def test_concurrent_calls_each_get_their_own_answer() -> None:
    link = await open_link(LinkServer(checksum))
    calls = {tag: arrays_for(tag) for tag in range(24)}

    answers = await asyncio.gather(*(link.call({"tag": tag, "arrays": arrays}) for tag, arrays in calls.items()))

    assert [same(answer, tag, arrays) for answer, (tag, arrays) in zip(answers, calls.items(), strict=True)] == [
        True
    ] * len(calls)
    link.close()


@pytest.mark.asyncio
async def test_arrays_travel_through_the_arena_when_they_fit_and_in_the_stream_when_not() -> None:
    link = await open_link(LinkServer(where_and_what), arena_bytes=1 << 20)
    small, large = np.arange(100_000, dtype=np.float32), np.arange(300_000, dtype=np.float32)  # 0.4 and 1.2 MB

    assert await link.call([small]) == [(True, small.tobytes())]
    assert await link.call([large]) == [(False, large.tobytes())]
    assert await link.call([small, large]) == [(False, small.tobytes()), (False, large.tobytes())]
    link.close()


@pytest.mark.asyncio
async def test_overlapping_calls_share_the_arena_and_each_gets_its_own_bytes() -> None:
    # 2 MB of arena, 24 overlapping calls of 0.4-0.8 MB: some wait in the stream, space wraps around.
    link = await open_link(LinkServer(where_and_what), arena_bytes=2 << 20)
    calls = [[np.full(100_000 * (1 + i % 2), i, dtype=np.float32)] for i in range(24)]

    answers = await asyncio.gather(*(link.call(arrays) for arrays in calls))

    assert [answer[0][1] for answer in answers] == [arrays[0].tobytes() for arrays in calls]
    in_arena = [answer[0][0] for answer in answers]
    assert True in in_arena and False in in_arena
    assert (await link.call(calls[0]))[0][0] is True  # all answered: the arena is free again
    link.close()


def test_the_arena_hands_out_free_space_in_ring_order_and_frees_it_by_answer() -> None:
    arena = _Arena(1000)
    chunk = [memoryview(bytes(256))]
    try:
        assert [arena.place(i, chunk) for i in range(3)] == [[0], [256], [512]]
        assert arena.place(3, chunk) is None  # 232 bytes left at the end, none at the front
        arena.release(0)
        assert arena.place(4, chunk) == [0]  # wraps around into the answered call's space
        assert arena.place(5, chunk) is None  # the front is full up to call 1's space
        arena.release(2)  # answers come in order: calls 1 and 2 are done
        assert arena.place(6, chunk) == [256]
        arena.release(6)
        assert arena.place(7, [memoryview(bytes(960))]) == [0]  # nothing in flight: from the front
        assert arena.place(8, [memoryview(bytes(1))]) is None
    finally:
        arena.close()
        os.close(arena.fd)


@pytest.mark.asyncio
async def test_answers_arrive_writable() -> None:
    link = await open_link(LinkServer(lambda batch: [np.arange(5.0), np.zeros((3, 2), dtype=np.int64)]))

    answer = await link.call("anything")

    assert [a.flags.writeable for a in answer] == [True, True]
    assert answer[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    link.close()


def connect_raw(server: LinkServer, token: bytes, fds: list[int]) -> socket.socket:
    """A hand-made front end: connects, reads the server's challenge and answers it with its
    own and the proof under ``token``, with descriptors ``fds`` (the server's proof is left
    unread)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.name)
    sock.settimeout(10.0)
    theirs = sock.recv(32)
    mine = os.urandom(32)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([mine + _proof(token, b"front", theirs, mine)], ancillary)
    return sock


def sealed_arena(size: int, seals: int = _ARENA_SEALS) -> int:
    fd = os.memfd_create("test-arena", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.asyncio
@pytest.mark.parametrize("arena", ["none", "unsealed", "empty"])
async def test_a_peer_without_a_sealed_arena_is_refused(arena) -> None:
    server = LinkServer(checksum)
    fd = {"none": None, "unsealed": sealed_arena(4096, seals=0), "empty": sealed_arena(0)}[arena]
    sock = connect_raw(server, server.token, [] if fd is None else [fd])
    try:
        assert sock.recv(16) == b""  # closed without a word
    finally:
        sock.close()
        if fd is not None:
            os.close(fd)

    link = await open_link(server)
    assert same(await link.call({"tag": 1, "arrays": arrays_for(1)}), 1, arrays_for(1))
    link.close()


@pytest.mark.asyncio
async def test_a_frame_pointing_outside_the_arena_ends_that_connection_only() -> None:
    handled = []
    server = LinkServer(handled.append)
    fd = sealed_arena(4096)
    sock = connect_raw(server, server.token, [fd])
    try:
        assert len(sock.recv(32)) == 32  # admitted: the server's proof
        meta = bytes([12, 3, 1]) + (8).to_bytes(8, "little") + (0).to_bytes(4, "little")  # an 8-byte int8 array
        sock.sendall(_FRAME.pack(0, _OK, len(meta), 1) + _BUFFER.pack(4092, 8) + meta)
        assert sock.recv(16) == b""
    finally:
        sock.close()
        os.close(fd)

    assert handled == []
    link = await open_link(server)
    await link.call("after the bad peer")
    assert handled == ["after the bad peer"]
    link.close()


def tcp_server(handler: Any) -> LinkServer:
    """A link server also listening on TCP, on loopback."""
    server = LinkServer(handler)
    server.listen_tcp("127.0.0.1")
    return server


async def open_tcp_link(server: LinkServer, token: bytes | None = None) -> SocketLink:
    address = server.address("other-node")
    if token is not None:
        address = LinkAddress(address.node_id, address.name, token, address.host, address.port)
    return await SocketLink.open_remote(address, timeout_s=10.0)


@pytest.mark.asyncio
async def test_a_tcp_link_carries_overlapping_calls_in_the_stream() -> None:
    server = tcp_server(checksum)
    link = await open_tcp_link(server)
    calls = {tag: arrays_for(tag) for tag in range(12)}

    answers = await asyncio.gather(*(link.call({"tag": tag, "arrays": arrays}) for tag, arrays in calls.items()))

    assert all(same(answer, tag, arrays) for answer, (tag, arrays) in zip(answers, calls.items(), strict=True))
    link.close()
    where = await open_tcp_link(tcp_server(where_and_what))
    small = np.arange(1000, dtype=np.float32)
    assert await where.call([small]) == [(False, small.tobytes())]  # no arena across nodes
    where.close()


@pytest.mark.asyncio
async def test_a_tcp_peer_without_the_token_is_refused_and_the_next_one_served() -> None:
    server = tcp_server(checksum)
    with pytest.raises(LinkRefusedError):
        await open_tcp_link(server, token=b"\0" * len(server.token))

    with socket.create_connection((server.host, server.port), timeout=10.0) as replayer:
        challenge = replayer.recv(64)
        replayer.sendall(server.token * 2)  # the token itself is no answer to the challenge
        assert len(challenge) == 32 and replayer.recv(16) == b""

    link = await open_tcp_link(server)
    assert same(await link.call({"tag": 2, "arrays": arrays_for(0)}), 2, arrays_for(0))
    link.close()


def test_a_link_server_has_no_tcp_listener_until_asked() -> None:
    server = LinkServer(checksum)
    address = server.address("n")
    assert (address.host, address.port) == (None, None)

    server.listen_tcp("127.0.0.1")
    port = server.address("n").port
    server.listen_tcp("127.0.0.1")  # once only
    assert server.address("n").host == "127.0.0.1" and port is not None and server.address("n").port == port


@pytest.mark.asyncio
async def test_several_front_ends_are_served_at_once() -> None:
    release = threading.Event()

    def hold_first(batch: Any) -> Any:
        if batch == "hold":
            release.wait(10.0)
        return batch

    server = tcp_server(hold_first)
    first = await open_link(server)
    held = asyncio.ensure_future(first.call("hold"))
    others = [await open_link(server), await open_tcp_link(server)]
    try:
        answers = await asyncio.wait_for(asyncio.gather(*(link.call(i) for i, link in enumerate(others))), 5.0)
        assert answers == [0, 1] and not held.done()
    finally:
        release.set()
    assert await held == "hold"
    for link in (first, *others):
        link.close()


@pytest.mark.asyncio
async def test_a_batch_of_more_arrays_than_one_sendmsg_takes_arrives_whole() -> None:
    link = await open_link(LinkServer(checksum))
    arrays = [np.full(5, i, dtype=np.float32) for i in range(_IOV_MAX * 2 + 7)]

    answer = await link.call({"tag": 1, "arrays": arrays})

    assert same(answer, 1, arrays)
    link.close()


@pytest.mark.asyncio
async def test_a_handler_error_fails_that_call_only() -> None:
    link = await open_link(LinkServer(checksum))
    arrays = arrays_for(1)

    with pytest.raises(LinkCallError, match="ValueError: batch 7 asked to fail"):
        await link.call({"tag": 7, "arrays": arrays, "fail": True})

    assert same(await link.call({"tag": 8, "arrays": arrays}), 8, arrays)
    assert link.is_open
    link.close()


@pytest.mark.asyncio
async def test_a_cancelled_call_leaves_the_link_in_step() -> None:
    link = await open_link(LinkServer(checksum))
    big = arrays_for(3)  # 24 MB: still being written when cancelled
    call = asyncio.ensure_future(link.call({"tag": 1, "arrays": big}))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    small = arrays_for(2)
    assert same(await link.call({"tag": 2, "arrays": small}), 2, small)
    link.close()


@pytest.mark.asyncio
async def test_a_peer_without_the_token_is_refused_and_the_next_one_served() -> None:
    server = LinkServer(checksum)
    with pytest.raises(LinkRefusedError):
        await open_link(server, token=b"\0" * len(server.token))

    link = await open_link(server)
    assert same(await link.call({"tag": 2, "arrays": arrays_for(0)}), 2, arrays_for(0))
    link.close()


@pytest.mark.asyncio
async def test_closing_the_link_fails_its_waiting_calls() -> None:
    release = threading.Event()

    def slow(batch: Any) -> Any:
        release.wait(10.0)
        return batch

    link = await open_link(LinkServer(slow))
    waiting = asyncio.ensure_future(link.call("anything"))
    await asyncio.sleep(0.05)

    link.close()

    with pytest.raises(LinkLostError, match="closed"):
        await asyncio.wait_for(waiting, 5.0)
    with pytest.raises(LinkLostError):
        await link.call("after the close")
    release.set()


class Exploit:
    """Loading this as a pickle would create the file ``path``: it names ``open`` (``io.open``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Outsider:
    """A harmless class, but not one of the link's types."""


@pytest.mark.asyncio
async def test_a_batch_holding_an_object_beyond_the_links_types_is_refused_unsent(tmp_path) -> None:
    handled = []
    link = await open_link(LinkServer(handled.append, types=(LinkAddress,)), types=(LinkAddress,))
    marker = tmp_path / "created"

    with pytest.raises(WireError, match="Exploit may not travel over a batch link"):
        await link.call([LinkAddress("n", b"x", b"t"), Exploit(str(marker))])
    with pytest.raises(WireError, match="Outsider may not travel"):  # a class not among the types
        await link.call(Outsider())

    assert not marker.exists()
    assert handled == []
    await link.call([LinkAddress("n", b"x", b"t"), np.zeros(3)])  # the link's types and arrays do travel
    assert handled[0][0] == LinkAddress("n", b"x", b"t")
    link.close()


@pytest.mark.asyncio
async def test_an_answer_holding_an_object_beyond_the_links_types_fails_that_call(tmp_path) -> None:
    marker = tmp_path / "created"
    link = await open_link(LinkServer(lambda batch: Exploit(str(marker)) if batch == "exploit" else batch))

    with pytest.raises(LinkCallError, match="Exploit may not travel"):
        await link.call("exploit")

    assert not marker.exists()
    assert await link.call("after") == "after"
    link.close()


SERVER_SCRIPT = """
import pickle, sys, threading
from samplerd.workers.socket_link import LinkServer
server = LinkServer(lambda batch: threading.Event().wait())  # never answers
sys.stdout.buffer.write(pickle.dumps(server.address("child")).hex().encode() + b"\\n")
sys.stdout.flush()
threading.Event().wait()
"""


@pytest.mark.asyncio
async def test_a_server_that_dies_fails_every_waiting_call_at_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], stdout=subprocess.PIPE)
    try:
        address = pickle.loads(bytes.fromhex(child.stdout.readline().decode()))
        link = await SocketLink.open(address, timeout_s=10.0)
        waiting = [asyncio.ensure_future(link.call({"tag": i, "arrays": arrays_for(i)})) for i in range(3)]
        await asyncio.sleep(0.2)
        assert not any(call.done() for call in waiting)
        started = time.monotonic()

        child.kill()

        results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10.0)
        assert [type(result) for result in results] == [LinkLostError] * 3
        assert time.monotonic() - started < 5.0
        assert not link.is_open
    finally:
        child.kill()
        child.wait()


def test_after_drops_exactly_the_sent_bytes() -> None:
    views = [memoryview(b"abc"), memoryview(b""), memoryview(b"defg"), memoryview(b"h")]

    assert [bytes(v) for v in _after(views, 0)] == [b"abc", b"", b"defg", b"h"]
    assert [bytes(v) for v in _after(views, 2)] == [b"c", b"", b"defg", b"h"]
    assert [bytes(v) for v in _after(views, 3)] == [b"defg", b"h"]
    assert [bytes(v) for v in _after(views, 5)] == [b"fg", b"h"]
    assert _after(views, 8) == []

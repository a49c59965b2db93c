"""Batch links (workers.socket_link) on their own, without Ray: a LinkServer in this process
(its thread) or in a child process, and the SocketLink on the test's event loop.

A link carries batches whose arrays travel out of band, answers each call with its own
result whatever the order and size of the calls, and never leaves a call waiting: a handler
error fails that call only, a peer without the token is refused, and a dead server fails
every waiting call at once.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from workers.socket_link import (
    _IOV_MAX,
    LinkAddress,
    LinkCallError,
    LinkLostError,
    LinkServer,
    SocketLink,
    _after,
)

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


async def open_link(server: LinkServer, token: bytes | None = None) -> SocketLink:
    address = server.address("this-node")
    if token is not None:
        address = LinkAddress(address.node_id, address.name, token)
    return await SocketLink.open(address, timeout_s=10.0)


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
    intruder = await open_link(server, token=b"\0" * len(server.token))

    with pytest.raises(LinkLostError):
        await asyncio.wait_for(intruder.call({"tag": 1, "arrays": []}), 10.0)
    assert not intruder.is_open

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
    """Loading this pickle would create the file ``path``: it names ``open`` (``io.open``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Outsider:
    """A harmless class, but not one of the link's types."""


@pytest.mark.asyncio
async def test_a_batch_naming_a_global_beyond_the_links_types_is_refused_unrun(tmp_path) -> None:
    handled = []
    link = await open_link(LinkServer(handled.append, types=(LinkAddress,)))
    marker = tmp_path / "created"

    with pytest.raises(LinkCallError, match=r"io\.open may not travel over a batch link"):
        await link.call([LinkAddress("n", b"x", b"t"), Exploit(str(marker))])
    with pytest.raises(LinkCallError, match="Outsider may not travel"):  # a class not among the types
        await link.call(Outsider())

    assert not marker.exists()
    assert handled == []
    await link.call([LinkAddress("n", b"x", b"t"), np.zeros(3)])  # the link's types and arrays do travel
    assert handled[0][0] == LinkAddress("n", b"x", b"t")
    link.close()


@pytest.mark.asyncio
async def test_an_answer_naming_a_global_beyond_the_links_types_breaks_the_link_unrun(tmp_path) -> None:
    marker = tmp_path / "created"
    link = await open_link(LinkServer(lambda batch: Exploit(str(marker))))

    with pytest.raises(LinkLostError, match=r"io\.open may not travel"):
        await link.call("anything")

    assert not marker.exists()
    assert not link.is_open


SERVER_SCRIPT = """
import pickle, sys, threading
from workers.socket_link import LinkServer
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

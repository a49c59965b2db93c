"""Batch links: a Unix socket from the front end to each sampler actor on the same node.

A Ray actor call costs the same whatever it carries: with Ray 2.60 on 2 cores, sampling one
row through a call (its batch in a shared-memory channel) took ~1.6 ms of the front end's CPU
and ~4 ms of the node's (front end, raylet, the actor's core worker), for 3.5 ms of wall time;
the same batch over a Unix socket to a thread in the actor took ~0.25 ms of the front end's
CPU, ~1 ms of the node's and 1 ms of wall time (7 rows: 2.0 / 5.7 / 5.2 ms against
0.8 / 3.0 / 2.7 ms). So Ray places, starts, watches and replaces the sampler actors, and a
front end sends the batches of the actors on its own node over a link; batches for actors on
other nodes, and from a front end connected through the Ray client, still go by Ray
(:mod:`workers.pool`).

Frames. A call is a :data:`_CALL` header (call id, pickle length, buffer count), the buffers'
lengths, a pickle (protocol 5) of the batch and the buffers: the numpy arrays of the batch
travel out of band, so the request's logits bytes go to ``sendmsg`` as they are and land in
one buffer each in the actor, copied only by the kernel. An answer is an :data:`_ANSWER`
header (call id, ok or failed, length) and a pickle of the handler's result, or the text of
its error. Calls may overlap; the actor answers them in order, the front end matches answers
to calls by id.

Trust. A pickle may name any function to call when loaded, so both ends load pickles that name
only the classes the link was made for (``types``: a batch's and its answer's) and numpy's array
reconstructors; anything else is refused before it runs. And only the front end that opened the
link through Ray reaches the actor: its socket has a random name in Linux's abstract namespace,
admits only peers of its own user (``SO_PEERCRED``), and a peer must first send the random token
that the actor handed the front end through Ray. Without Linux (no abstract namespace, no
``SO_PEERCRED``) there is no link and batches go by Ray.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import itertools
import logging
import os
import pickle
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger(__name__)

#: call id, pickle length, buffer count.
_CALL = struct.Struct("<QQI")
#: call id, status (:data:`_OK` / :data:`_FAILED`), payload length.
_ANSWER = struct.Struct("<QBQ")
_OK, _FAILED = 0, 1
_TOKEN_BYTES = 32
#: How long a new connection may take to present its token.
_ADMIT_TIMEOUT_S = 5.0
#: Pause before accepting again after ``accept`` failed.
_ACCEPT_RETRY_S = 1.0
#: Most buffers one ``sendmsg`` takes (Linux's IOV_MAX).
_IOV_MAX = 1024
#: Most bytes one read of answers takes.
_READ_BYTES = 1 << 18
#: The front end's send buffer (the kernel caps it at ``net.core.wmem_max``): a batch of 8 rows
#: of a 32k vocabulary (1 MB) takes one ``sendmsg`` rather than five or more, each after a wait
#: for the socket to drain (measured: 25% less of the front end's CPU per batch of 7 rows).
_SEND_BUFFER_BYTES = 4 << 20

#: Whether this platform can have links (see the module).
SUPPORTED = sys.platform == "linux"

#: numpy's array and dtype reconstructors (numpy 2 names, then numpy 1), which a pickle of
#: arrays names besides the link's own types.
_NUMPY_GLOBALS = frozenset(
    (f"{package}.{module}", name)
    for package in ("numpy._core", "numpy.core")
    for module, name in (("numeric", "_frombuffer"), ("multiarray", "_reconstruct"), ("multiarray", "scalar"))
) | {("numpy", "dtype"), ("numpy", "ndarray")}


class LinkLostError(ConnectionError):
    """The link is closed or broke (the actor died, or closed its end); no answer will come."""


class LinkCallError(RuntimeError):
    """The actor's handler raised; the message is its error's text."""


@dataclass(frozen=True)
class LinkAddress:
    """Where and how to open a link: the actor's node, its socket's name and its token."""

    node_id: str
    name: bytes
    token: bytes


class _Unpickler(pickle.Unpickler):
    """Loads only instances of ``types``, numpy arrays and plain containers: a pickle that names
    any other global (a function to call, say) is refused before anything runs."""

    def __init__(self, data: bytes | bytearray, buffers: list[bytearray], types: frozenset[tuple[str, str]]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._types = types

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._types or (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} may not travel over a batch link")


def _type_names(types: Iterable[type]) -> frozenset[tuple[str, str]]:
    return frozenset((t.__module__, t.__qualname__) for t in types)


class LinkServer:
    """The actor's end: a listening socket and a daemon thread that answers each call of the
    connected front end with ``handler(batch)``, one call at a time, in arrival order. Batches
    and answers may hold instances of ``types``, numpy arrays and plain containers."""

    def __init__(self, handler: Callable[[Any], Any], types: Iterable[type] = ()) -> None:
        if not SUPPORTED:
            raise OSError("batch links need Linux (abstract Unix sockets, SO_PEERCRED)")
        self._handler = handler
        self._types = _type_names(types)
        self.token = secrets.token_bytes(_TOKEN_BYTES)
        self.name = b"\0samplerd-link-" + secrets.token_hex(16).encode()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.name)
        self._listener.listen(4)
        threading.Thread(target=self._accept_forever, name="samplerd-link", daemon=True).start()

    def address(self, node_id: str) -> LinkAddress:
        """This server's address, labelled with ``node_id``, the node it runs on."""
        return LinkAddress(node_id, self.name, self.token)

    def _accept_forever(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError as error:  # out of descriptors, say: try again shortly
                _log.warning("batch link cannot accept: %s", error)
                time.sleep(_ACCEPT_RETRY_S)
                continue
            with connection:
                try:
                    if self._admit(connection):
                        self._serve(connection)
                except (OSError, EOFError) as error:  # the front end went away: wait for the next one
                    _log.info("batch link connection ended: %s", error)

    def _admit(self, connection: socket.socket) -> bool:
        """The peer runs as this user and presented the token."""
        _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            _log.warning("batch link refused a peer of user %d", uid)
            return False
        connection.settimeout(_ADMIT_TIMEOUT_S)
        try:
            token = _receive(connection, _TOKEN_BYTES)
        except (EOFError, TimeoutError):
            return False
        connection.settimeout(None)
        if not hmac.compare_digest(bytes(token), self.token):
            _log.warning("batch link refused a peer without the token")
            return False
        return True

    def _serve(self, connection: socket.socket) -> None:
        while True:
            try:
                call_id, pickle_bytes, count = _CALL.unpack(_receive(connection, _CALL.size))
            except EOFError:
                return
            lengths = struct.unpack(f"<{count}Q", _receive(connection, 8 * count))
            meta = _receive(connection, pickle_bytes)
            buffers = [_receive(connection, length) for length in lengths]
            try:
                batch = _Unpickler(meta, buffers, self._types).load()
                payload, status = pickle.dumps(self._handler(batch), protocol=5), _OK
            except Exception as error:  # the front end's call fails with this text, the link lives on
                payload, status = f"{type(error).__name__}: {error}".encode(), _FAILED
            connection.sendall(_ANSWER.pack(call_id, status, len(payload)) + payload)


def _receive(connection: socket.socket, size: int) -> bytearray:
    """Exactly ``size`` bytes from a blocking socket; EOFError if it closes first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = connection.recv_into(view[got:])
        if n == 0:
            raise EOFError("the peer closed the batch link")
        got += n
    return buffer


class SocketLink:
    """The front end's end of a link, driven by its event loop's reader and writer callbacks (no
    task per call): :meth:`call` may be awaited by many tasks at once; whole frames queue up in
    order and are written as the socket takes them. When the link breaks every waiting call
    raises :class:`LinkLostError`."""

    def __init__(self, sock: socket.socket, types: Iterable[type] = ()) -> None:
        self._sock = sock
        self._types = _type_names(types)
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._outbox: list[memoryview] = []
        self._inbox = bytearray()
        self._lost: LinkLostError | None = None
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def open(cls, address: LinkAddress, timeout_s: float, types: Iterable[type] = ()) -> SocketLink:
        """Connect to a :class:`LinkServer` and present its token; answers may hold instances
        of ``types``, numpy arrays and plain containers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, address.name), timeout_s)
            await asyncio.wait_for(loop.sock_sendall(sock, address.token), timeout_s)
        except BaseException:
            sock.close()
            raise
        return cls(sock, types)

    @property
    def is_open(self) -> bool:
        """False once the link broke or was closed."""
        return self._lost is None

    async def call(self, batch: Any) -> Any:
        """Send ``batch`` and await the handler's answer; :class:`LinkLostError` when the link
        breaks first, :class:`LinkCallError` when the handler raised. A cancelled call's frame
        is still sent whole (the stream stays in step); its answer is dropped."""
        if self._lost is not None:
            raise self._lost
        buffers: list[pickle.PickleBuffer] = []
        meta = pickle.dumps(batch, protocol=5, buffer_callback=buffers.append)
        raws = [buffer.raw() for buffer in buffers]
        call_id = next(self._ids)
        answer = self._loop.create_future()
        self._calls[call_id] = answer
        try:
            self._write([_CALL.pack(call_id, len(meta), len(raws)),
                         struct.pack(f"<{len(raws)}Q", *(raw.nbytes for raw in raws)), meta, *raws])
            return await answer
        finally:
            self._calls.pop(call_id, None)

    def close(self) -> None:
        """Close the link; waiting calls raise :class:`LinkLostError`."""
        self._lose(LinkLostError("the batch link was closed"))

    def _write(self, parts: list[Any]) -> None:
        """Queue one whole frame; write what the socket takes now, the rest when it is writable."""
        waiting = bool(self._outbox)
        self._outbox.extend(memoryview(part).cast("B") for part in parts)
        if not waiting:
            self._on_writable()
            if self._outbox and self._lost is None:
                self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        while self._outbox:
            try:
                sent = self._sock.sendmsg(self._outbox[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._lose(LinkLostError(f"the batch link broke: {error}"))
                return
            self._outbox = _after(self._outbox, sent)
        self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lose(LinkLostError(f"the batch link broke: {error}"))
            return
        if not data:
            self._lose(LinkLostError("the sampler actor closed the batch link"))
            return
        self._inbox += data
        while len(self._inbox) >= _ANSWER.size:
            call_id, status, length = _ANSWER.unpack_from(self._inbox)
            end = _ANSWER.size + length
            if len(self._inbox) < end:
                return
            payload = bytes(self._inbox[_ANSWER.size:end])
            del self._inbox[:end]
            self._answer(call_id, status, payload)

    def _answer(self, call_id: int, status: int, payload: bytes) -> None:
        answer = self._calls.get(call_id)
        if answer is None or answer.done():  # its caller was cancelled
            return
        if status != _OK:
            answer.set_exception(LinkCallError(payload.decode(errors="replace")))
            return
        try:
            answer.set_result(_Unpickler(payload, [], self._types).load())
        except Exception as error:  # the stream cannot be trusted any more
            _log.exception("batch link answer unreadable")
            self._lose(LinkLostError(f"the batch link sent an unreadable answer: {error}"))

    def _lose(self, error: LinkLostError) -> None:
        """Fail every waiting call with ``error``; unregister and close the socket."""
        if self._lost is not None:
            return
        self._lost = error
        self._outbox = []
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(error)
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()


def _after(views: list[memoryview], sent: int) -> list[memoryview]:
    """What remains of ``views`` once their first ``sent`` bytes went out."""
    for i, view in enumerate(views):
        if sent < view.nbytes:
            return [view[sent:], *views[i + 1:]]
        sent -= view.nbytes
    return []

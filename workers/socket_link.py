"""Batch links: a socket from the front end to each sampler actor, beside Ray.

A Ray actor call costs the same whatever it carries: with Ray 2.60 on 2 cores, sampling one
row through a call (its batch in a shared-memory channel) took ~1.6 ms of the front end's CPU
and ~4 ms of the node's (front end, raylet, the actor's core worker), for 3.5 ms of wall time;
the same batch over a Unix socket to a thread in the actor took ~0.25 ms of the front end's
CPU, ~1 ms of the node's and 1 ms of wall time (7 rows: 2.0 / 5.7 / 5.2 ms against
0.8 / 3.0 / 2.7 ms). Through the Ray client (``ray://``) a call costs more again. So Ray
places, starts, watches and replaces the sampler actors, and a front end sends its batches
over a link: a Unix socket with an arena (below) to an actor on its own node
(:meth:`SocketLink.open`), TCP to an actor on another node (:meth:`SocketLink.open_remote`),
which is also how a front end joined through the Ray client reaches the actors
(:mod:`workers.pool` picks).

Frames. Calls and answers are frames of one layout: a :data:`_FRAME` header (call id, status,
pickle length, buffer count), a :data:`_BUFFER` entry per out-of-band buffer (where it is, its
length), a pickle (protocol 5) and the buffers that follow in the stream. The numpy arrays of a
batch travel out of band: the front end copies them into its arena (below) and the frame says
where, or, when the arena has no room, they follow the pickle and go to ``sendmsg`` as they are.
An answer's arrays follow in the stream and arrive writable. A failed call's answer carries the
text of its error instead of a pickle. Calls may overlap; the actor answers them in order, the
front end matches answers to calls by id.

The arena. Pushing a batch's logits through the socket cost the front end more than anything
else it does per batch (~50 us of its CPU per 128 KB row: a fifth of its time per request).
So each link on the node has an arena: a memory file (``memfd``, sealed against shrinking so that the actor
never faults on a page that went away) that the front end creates, maps, and hands to the actor
with its token; the actor maps it read-only. The front end copies each call's arrays into the
arena, front to back as in a ring, and frees a call's space when its answer comes: the actor
answers in order and has copied the rows out of the arena (``unpack_logits``) before it answers.
A call that does not fit sends its arrays in the stream instead, as every call over TCP does.

Trust. A pickle may name any function to call when loaded, so both ends load pickles that name
only the classes the link was made for (``types``: a batch's and its answer's) and numpy's array
reconstructors; anything else is refused before it runs. And only the front end that opened the
link through Ray reaches the actor. The Unix socket has a random name in Linux's abstract
namespace, admits only peers of its own user (``SO_PEERCRED``), and a peer must first send the
random token that the actor handed the front end through Ray, with a sealed arena. On TCP the
actor sends a random challenge and the peer must answer with its HMAC under the token, so the
token never crosses the network and an answer seen once opens nothing. TCP links are not
encrypted, like Ray's own traffic without TLS; a front end whose Ray runs with TLS opens none
(:mod:`workers.pool`). An actor serves each connected front end on a thread of its own, and at
most :data:`_MAX_CONNECTIONS` at once. Without Linux (no abstract namespace, ``SO_PEERCRED`` or
``memfd``) there is no link and batches go by Ray.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import hmac
import io
import itertools
import logging
import mmap
import os
import pickle
import secrets
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger(__name__)

#: call id, status (:data:`_OK` / :data:`_FAILED`; a call's is :data:`_OK`), pickle (or error text)
#: length, buffer count.
_FRAME = struct.Struct("<QBQI")
#: Per out-of-band buffer: its offset in the arena, or :data:`_IN_STREAM`; its length.
_BUFFER = struct.Struct("<qQ")
_IN_STREAM = -1
_OK, _FAILED = 0, 1
#: Each front end's arena per link. Its pages are the front end's memory once written to, and
#: batches start at the front whenever none is in flight, so a quiet link touches little of it.
_ARENA_BYTES = 64 << 20
#: Arrays start on cache-line boundaries in the arena.
_ALIGN = 64
#: The seals an arena must carry before the actor maps it.
_ARENA_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL if hasattr(fcntl, "F_SEAL_SHRINK") else 0
_TOKEN_BYTES = 32
#: How long a new connection may take to present its token.
_ADMIT_TIMEOUT_S = 5.0
#: Connections an actor serves at once (one per front end; refused beyond).
_MAX_CONNECTIONS = 64
_BACKLOG = 16
#: A TCP peer's answer to the challenge: HMAC-SHA256 of it under the token.
_PROOF_BYTES = 32
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
SUPPORTED = sys.platform == "linux" and hasattr(os, "memfd_create") and _ARENA_SEALS != 0

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
    """Where and how to open a link: the actor's node, its Unix socket's name, its token, and
    the host and port of its TCP listener (None: it has none)."""

    node_id: str
    name: bytes
    token: bytes
    host: str | None = None
    port: int | None = None


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
    """The actor's end: listening sockets (a Unix one, and a TCP one once :meth:`listen_tcp` was
    called), and a daemon thread per connected front end that answers each of its calls with
    ``handler(batch)``, one at a time, in arrival order. Batches and answers may hold instances
    of ``types``, numpy arrays and plain containers."""

    def __init__(self, handler: Callable[[Any], Any], types: Iterable[type] = ()) -> None:
        if not SUPPORTED:
            raise OSError("batch links need Linux (abstract Unix sockets, SO_PEERCRED, memfd)")
        self._handler = handler
        self._types = _type_names(types)
        self._connections = threading.BoundedSemaphore(_MAX_CONNECTIONS)
        self.token = secrets.token_bytes(_TOKEN_BYTES)
        self.name = b"\0samplerd-link-" + secrets.token_hex(16).encode()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.name)
        listener.listen(_BACKLOG)
        self._listen(listener)
        self.host: str | None = None
        self.port: int | None = None

    def listen_tcp(self, host: str) -> None:
        """Also listen on TCP, on ``host`` (this node's address) and a free port, unless already."""
        if self.host is not None:
            return
        listener = socket.create_server((host, 0), family=_tcp_family(host), backlog=_BACKLOG)
        self.host, self.port = host, listener.getsockname()[1]
        self._listen(listener)

    def _listen(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept_forever, args=(listener,), name="samplerd-link", daemon=True).start()

    def address(self, node_id: str) -> LinkAddress:
        """This server's address, labelled with ``node_id``, the node it runs on."""
        return LinkAddress(node_id, self.name, self.token, self.host, self.port)

    def _accept_forever(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError as error:  # out of descriptors, say: try again shortly
                _log.warning("batch link cannot accept: %s", error)
                time.sleep(_ACCEPT_RETRY_S)
                continue
            if not self._connections.acquire(blocking=False):
                _log.warning("batch link refused a connection: %d are open", _MAX_CONNECTIONS)
                connection.close()
                continue
            peer = threading.Thread(target=self._connection, args=(connection,), name="samplerd-link-peer", daemon=True)
            try:
                peer.start()
            except RuntimeError as error:  # no thread to be had: refuse this one, keep accepting
                _log.warning("batch link refused a connection: %s", error)
                self._connections.release()
                connection.close()

    def _connection(self, connection: socket.socket) -> None:
        try:
            with connection:
                if connection.family == socket.AF_UNIX:
                    arena = self._admit_local(connection)
                    view = None if arena is None else memoryview(arena)
                else:
                    view = memoryview(b"") if self._admit_remote(connection) else None  # no arena across nodes
                if view is not None:
                    self._serve(connection, view)
        except (OSError, EOFError, _ProtocolError) as error:  # the front end went away, or broke the protocol
            _log.info("batch link connection ended: %s", error)
        except Exception:
            _log.exception("batch link connection failed")
        finally:
            self._connections.release()

    def _admit_remote(self, connection: socket.socket) -> bool:
        """The TCP peer proved it holds the token: it answered a fresh challenge with its HMAC
        (the token itself never crosses the network)."""
        connection.settimeout(_ADMIT_TIMEOUT_S)
        challenge = secrets.token_bytes(_TOKEN_BYTES)
        try:
            connection.sendall(challenge)
            proof = _receive(connection, _PROOF_BYTES)
        except (EOFError, TimeoutError):
            return False
        connection.settimeout(None)
        if not hmac.compare_digest(bytes(proof), _proof(self.token, challenge)):
            _log.warning("batch link refused a peer without the token")
            return False
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True

    def _admit_local(self, connection: socket.socket) -> mmap.mmap | None:
        """The peer's arena, mapped read-only, when the peer runs as this user and presented
        the token with a sealed arena; else None."""
        _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            _log.warning("batch link refused a peer of user %d", uid)
            return None
        connection.settimeout(_ADMIT_TIMEOUT_S)
        try:
            token, fds, _flags, _address = socket.recv_fds(connection, _TOKEN_BYTES, 1)
        except TimeoutError:
            return None
        try:
            if len(token) < _TOKEN_BYTES:  # a stream may split the token (never its descriptor)
                token += _receive(connection, _TOKEN_BYTES - len(token))
            connection.settimeout(None)
            if not hmac.compare_digest(bytes(token), self.token):
                _log.warning("batch link refused a peer without the token")
                return None
            if len(fds) != 1 or fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & _ARENA_SEALS != _ARENA_SEALS:
                _log.warning("batch link refused a peer without a sealed arena")
                return None
            return mmap.mmap(fds[0], os.fstat(fds[0]).st_size, prot=mmap.PROT_READ)
        except (EOFError, TimeoutError, ValueError):  # ValueError: an empty arena cannot be mapped
            return None
        finally:
            for fd in fds:
                os.close(fd)

    def _serve(self, connection: socket.socket, arena: memoryview) -> None:
        while True:
            try:
                call_id, _status, pickle_bytes, count = _FRAME.unpack(_receive(connection, _FRAME.size))
            except EOFError:
                return
            table = _receive(connection, _BUFFER.size * count)
            meta = _receive(connection, pickle_bytes)
            buffers = [
                _receive(connection, length) if offset == _IN_STREAM else _arena_slice(arena, offset, length)
                for offset, length in _BUFFER.iter_unpack(table)
            ]
            try:
                answer = _frame(call_id, _OK, self._handler(_Unpickler(meta, buffers, self._types).load()))
            except Exception as error:  # the front end's call fails with this text, the link lives on
                text = f"{type(error).__name__}: {error}".encode()
                answer = [_FRAME.pack(call_id, _FAILED, len(text), 0), text]
            del buffers  # views of the arena, which the front end reuses once it has the answer
            connection.sendall(b"".join(answer))


class _ProtocolError(Exception):
    """A frame that breaks the protocol: the connection is closed."""


def _arena_slice(arena: memoryview, offset: int, length: int) -> memoryview:
    if offset < 0 or offset + length > arena.nbytes:
        raise _ProtocolError(f"a buffer at {offset} of {length} bytes lies outside the {arena.nbytes}-byte arena")
    return arena[offset:offset + length]


def _frame(call_id: int, status: int, value: Any, arena: _Arena | None = None) -> list[Any]:
    """The parts of a frame carrying ``value``, its arrays out of band: in ``arena`` when given and
    it has room (then the space is the call's until :meth:`_Arena.release`), else in the stream."""
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [memoryview(buffer.raw()) for buffer in buffers]
    offsets = arena.place(call_id, raws) if arena is not None and raws else None
    table = b"".join(
        _BUFFER.pack(_IN_STREAM if offsets is None else offsets[i], raw.nbytes) for i, raw in enumerate(raws)
    )
    head = _FRAME.pack(call_id, status, len(meta), len(raws)) + table
    return [head, meta] if offsets is not None else [head, meta, *raws]


def _proof(token: bytes, challenge: bytes) -> bytes:
    return hmac.new(token, challenge, "sha256").digest()


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


class _Arena:
    """The front end's side of a link's arena (see the module): a sealed memory file, mapped,
    whose space each call takes front to back as in a ring, and gives back when answered."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("samplerd-link-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _ARENA_SEALS)
            self._map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self._view = memoryview(self._map)
        self._size = size
        self._leases: deque[tuple[int, int, int]] = deque()  # (call id, start, stop), oldest first

    def place(self, call_id: int, raws: list[memoryview]) -> list[int] | None:
        """Copy ``raws`` into the arena for call ``call_id``; their offsets, or None (nothing
        copied) when they do not fit in the free space."""
        sizes = [-(-raw.nbytes // _ALIGN) * _ALIGN for raw in raws]
        start = self._free_start(sum(sizes))
        if start is None:
            return None
        offsets = []
        at = start
        for raw, size in zip(raws, sizes, strict=True):
            self._view[at:at + raw.nbytes] = raw.cast("B")
            offsets.append(at)
            at += size
        self._leases.append((call_id, start, at))
        return offsets

    def _free_start(self, size: int) -> int | None:
        """Where ``size`` free bytes start: after the newest call's space, or at the front when
        that is where the room is (the space in use runs from the oldest call's start to the
        newest call's stop, around the end)."""
        if size > self._size:
            return None
        if not self._leases:
            return 0
        first = self._leases[0][1]
        last_start, last_stop = self._leases[-1][1:]
        if last_start >= first:  # in use: [first, last_stop)
            if last_stop + size <= self._size:
                return last_stop
            return 0 if size <= first else None
        return last_stop if last_stop + size <= first else None  # in use: [first, end) and [0, last_stop)

    def release(self, call_id: int) -> None:
        """Call ``call_id`` was answered: its space, and any older call's, is free again."""
        while self._leases and self._leases[0][0] <= call_id:
            self._leases.popleft()

    def close(self) -> None:
        self._leases.clear()
        self._view.release()
        self._map.close()


class SocketLink:
    """The front end's end of a link, driven by its event loop's reader and writer callbacks (no
    task per call): :meth:`call` may be awaited by many tasks at once; whole frames queue up in
    order and are written as the socket takes them. When the link breaks every waiting call
    raises :class:`LinkLostError`."""

    def __init__(self, sock: socket.socket, arena: _Arena | None, types: Iterable[type] = ()) -> None:
        self._sock = sock
        self._arena = arena
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
    async def open(
        cls, address: LinkAddress, timeout_s: float, types: Iterable[type] = (), arena_bytes: int = _ARENA_BYTES
    ) -> SocketLink:
        """Connect to a :class:`LinkServer` on this node, present its token and hand it an arena of
        ``arena_bytes``; answers may hold instances of ``types``, numpy arrays and plain containers."""
        sock = _client_socket(socket.AF_UNIX)
        arena = None
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, address.name), timeout_s)
            arena = _Arena(arena_bytes)
            # A new connection's buffer takes the token whole, so this never waits.
            sock.sendmsg([address.token], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [arena.fd]))])
        except BaseException:
            sock.close()
            if arena is not None:
                arena.close()
            raise
        finally:
            if arena is not None:
                os.close(arena.fd)  # the actor holds its own descriptor now
        return cls(sock, arena, types)

    @classmethod
    async def open_remote(cls, address: LinkAddress, timeout_s: float, types: Iterable[type] = ()) -> SocketLink:
        """Connect to a :class:`LinkServer`'s TCP listener (on another node) and answer its
        challenge; the batches' arrays travel in the stream."""
        if address.host is None or address.port is None:
            raise ValueError("this link server has no TCP listener")
        sock = _client_socket(_tcp_family(address.host))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (address.host, address.port)), timeout_s)
            challenge = await asyncio.wait_for(_sock_receive(loop, sock, _TOKEN_BYTES), timeout_s)
            await asyncio.wait_for(loop.sock_sendall(sock, _proof(address.token, challenge)), timeout_s)
        except BaseException:
            sock.close()
            raise
        return cls(sock, None, types)

    @property
    def is_open(self) -> bool:
        """False once the link broke or was closed."""
        return self._lost is None

    @property
    def over_tcp(self) -> bool:
        """True for a link to another node (:meth:`open_remote`), False for a Unix socket."""
        return self._sock.family != socket.AF_UNIX

    async def call(self, batch: Any) -> Any:
        """Send ``batch`` and await the handler's answer; :class:`LinkLostError` when the link
        breaks first, :class:`LinkCallError` when the handler raised. A cancelled call's frame
        is still sent whole (the stream stays in step); its answer is dropped."""
        if self._lost is not None:
            raise self._lost
        call_id = next(self._ids)
        parts = _frame(call_id, _OK, batch, self._arena)
        answer = self._loop.create_future()
        self._calls[call_id] = answer
        try:
            self._write(parts)
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
        while self._lost is None and len(self._inbox) >= _FRAME.size:
            call_id, status, payload_bytes, count = _FRAME.unpack_from(self._inbox)
            table_end = _FRAME.size + _BUFFER.size * count
            if len(self._inbox) < table_end:
                return
            table = list(_BUFFER.iter_unpack(bytes(self._inbox[_FRAME.size:table_end])))
            end = table_end + payload_bytes + sum(length for _offset, length in table)
            if len(self._inbox) < end:
                return
            if any(offset != _IN_STREAM for offset, _length in table):
                self._lose(LinkLostError("the sampler actor sent an answer that points into the arena"))
                return
            payload = bytes(self._inbox[table_end:table_end + payload_bytes])
            buffers = []
            at = table_end + payload_bytes
            for _offset, length in table:
                buffers.append(self._inbox[at:at + length])  # a copy of its own: the arrays come out writable
                at += length
            del self._inbox[:end]
            if self._arena is not None:
                self._arena.release(call_id)
            self._answer(call_id, status, payload, buffers)

    def _answer(self, call_id: int, status: int, payload: bytes, buffers: list[bytearray]) -> None:
        answer = self._calls.get(call_id)
        if answer is None or answer.done():  # its caller was cancelled
            return
        if status != _OK:
            answer.set_exception(LinkCallError(payload.decode(errors="replace")))
            return
        try:
            answer.set_result(_Unpickler(payload, buffers, self._types).load())
        except Exception as error:  # the stream cannot be trusted any more
            _log.exception("batch link answer unreadable")
            self._lose(LinkLostError(f"the batch link sent an unreadable answer: {error}"))

    def _lose(self, error: LinkLostError) -> None:
        """Fail every waiting call with ``error``; unregister and close the socket and the arena."""
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
        if self._arena is not None:
            self._arena.close()


def _tcp_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _client_socket(family: socket.AddressFamily) -> socket.socket:
    """A front end's non-blocking socket with the large send buffer (:data:`_SEND_BUFFER_BYTES`)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
    except BaseException:
        sock.close()
        raise
    return sock


async def _sock_receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from a non-blocking socket; EOFError if it closes first."""
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise EOFError("the link server closed the connection")
        data += chunk
    return data


def _after(views: list[memoryview], sent: int) -> list[memoryview]:
    """What remains of ``views`` once their first ``sent`` bytes went out."""
    for i, view in enumerate(views):
        if sent < view.nbytes:
            return [view[sent:], *views[i + 1:]]
        sent -= view.nbytes
    return []

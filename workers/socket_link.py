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
(:mod:`samplerd.workers.pool` picks).

Frames. Calls and answers are frames of one layout: a :data:`_FRAME` header (call id, status,
value length, buffer count), a :data:`_BUFFER` entry per out-of-band buffer (where it is, its
length), the value in :mod:`samplerd.workers.wire`'s format and the buffers that follow in the stream. The
numpy arrays of a batch travel out of band: the front end copies them into its arena (below) and
the frame says where, or, when the arena has no room, they follow the value and go to
``sendmsg`` as they are. An answer's arrays follow in the stream and arrive writable. A failed
call's answer carries the text of its error instead of a value. Calls may overlap; the actor
answers them in order, the front end matches answers to calls by id. A frame may carry at most
``LinkLimits.max_frame_bytes`` and :data:`_MAX_BUFFERS` buffers; its bytes are read into a
buffer that grows as they arrive, and a peer silent for ``frame_timeout_s`` inside a frame is
dropped.

The arena. Pushing a batch's logits through the socket cost the front end more than anything
else it does per batch (~50 us of its CPU per 128 KB row: a fifth of its time per request).
So each link on the node has an arena: a memory file (``memfd``, sealed against shrinking so that the actor
never faults on a page that went away) that the front end creates, maps, and hands to the actor
with its proof of the token; the actor maps it read-only. The front end copies each call's arrays into the
arena, front to back as in a ring, and frees a call's space when its answer comes: the actor
answers in order and has copied the rows out of the arena (``unpack_logits``) before it answers.
A call that does not fit sends its arrays in the stream instead, as every call over TCP does.

Trust. The wire format (:mod:`samplerd.workers.wire`) describes plain data, arrays of a closed list of
numeric dtypes and instances of the link's own dataclasses (``types``): decoding runs no code
and builds no other object. Only the front end that opened the link through Ray reaches the
actor, and the front end knows it reached the actor: the actor's address comes with a random
token through Ray, and both ends prove that they hold it. On connecting, the actor sends a fresh
challenge; the front end answers with a fresh challenge of its own and the HMAC of both under
the token (with the arena's descriptor, on the Unix socket); the actor checks it and, once a slot
is free, answers with its own HMAC of both, which the front end checks
(:class:`LinkRefusedError` otherwise). Each side's HMAC is keyed to its role, so neither can be
replayed as the other's, and the token never crosses the socket. The Unix socket has a random
name in Linux's abstract namespace and admits only peers of its own user (``SO_PEERCRED``) with
a sealed arena. The whole handshake must end within ``LinkLimits.admit_timeout_s``;
connections still in it are counted apart (``max_pending``: a new one beyond closes the oldest),
so peers without the token cannot hold the slots of admitted front ends
(``max_connections``). TCP links are not encrypted, like Ray's own traffic without TLS; a front
end whose Ray runs with TLS opens none (:mod:`samplerd.workers.pool`). An actor serves each connected
front end on a thread of its own. Without Linux (no abstract namespace, ``SO_PEERCRED`` or
``memfd``) there is no link and batches go by Ray.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import hmac
import itertools
import logging
import mmap
import os
import secrets
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from samplerd.workers.config import LinkLimits
from samplerd.workers.wire import Codec

_log = logging.getLogger(__name__)

#: call id, status (:data:`_OK` / :data:`_FAILED`; a call's is :data:`_OK`), encoded value (or
#: error text) length, buffer count.
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
_BACKLOG = 128
#: Pause before connecting again while a link server's backlog is full.
_CONNECT_RETRY_S = 0.01
#: Each side's challenge, and its proof: HMAC-SHA256 under the token of both challenges.
_CHALLENGE_BYTES = 32
_PROOF_BYTES = 32
#: Most out-of-band buffers one frame may list.
_MAX_BUFFERS = 1 << 16
#: A frame's bytes are read into a buffer that grows as they arrive, from this size: a header
#: announcing a huge frame costs nothing until the bytes come.
_FIRST_CHUNK_BYTES = 1 << 20
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



class LinkLostError(ConnectionError):
    """The link is closed or broke (the actor died, or closed its end); no answer will come."""


class LinkCallError(RuntimeError):
    """The actor's handler raised; the message is its error's text."""


class LinkRefusedError(ConnectionError):
    """The link server did not prove that it holds the token, or closed during the handshake."""


@dataclass(frozen=True)
class LinkAddress:
    """Where and how to open a link: the actor's node, its Unix socket's name, its token, and
    the host and port of its TCP listener (None: it has none)."""

    node_id: str
    name: bytes
    token: bytes
    host: str | None = None
    port: int | None = None


class LinkServer:
    """The actor's end: listening sockets (a Unix one, and a TCP one once :meth:`listen_tcp` was
    called), and a daemon thread per connected front end that answers each of its calls with
    ``handler(batch)``, one at a time, in arrival order. Batches and answers are values of
    :mod:`samplerd.workers.wire` made of plain data, arrays and instances of ``types``."""

    def __init__(self, handler: Callable[[Any], Any], types: Iterable[type] = (),
                 limits: LinkLimits | None = None) -> None:
        if not SUPPORTED:
            raise OSError("batch links need Linux (abstract Unix sockets, SO_PEERCRED, memfd)")
        self._handler = handler
        self._codec = Codec(types)
        self.limits = limits or LinkLimits()
        self._lock = threading.Lock()
        self._pending: OrderedDict[socket.socket, None] = OrderedDict()  # in their handshake, oldest first
        self._admitted = 0
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
            with self._lock:
                if len(self._pending) >= self.limits.max_pending:  # the oldest handshake makes room
                    oldest, _ = self._pending.popitem(last=False)
                    _log.warning("batch link dropped a connection still in its handshake: %d are",
                                 self.limits.max_pending)
                    _shut(oldest)
                self._pending[connection] = None
            peer = threading.Thread(target=self._connection, args=(connection,), name="samplerd-link-peer", daemon=True)
            try:
                peer.start()
            except RuntimeError as error:  # no thread to be had: refuse this one, keep accepting
                _log.warning("batch link refused a connection: %s", error)
                with self._lock:
                    self._pending.pop(connection, None)
                connection.close()

    def _connection(self, connection: socket.socket) -> None:
        admitted = False
        try:
            with connection:
                deadline = time.monotonic() + self.limits.admit_timeout_s
                admission = self._admit(connection, deadline)
                with self._lock:
                    self._pending.pop(connection, None)
                    if admission is not None and self._admitted >= self.limits.max_connections:
                        _log.warning("batch link refused a connection: %d are open", self.limits.max_connections)
                        admission = None
                    admitted = admission is not None
                    self._admitted += admitted
                if admission is not None:
                    arena, proof = admission
                    _send(connection, proof, deadline)  # only now does the peer know it is in
                    self._serve(connection, arena)
        except (OSError, EOFError, _ProtocolError) as error:  # the front end went away, or broke the protocol
            _log.info("batch link connection ended: %s", error)
        except Exception:
            _log.exception("batch link connection failed")
        finally:
            with self._lock:
                self._pending.pop(connection, None)
                self._admitted -= admitted

    def _admit(self, connection: socket.socket, deadline: float) -> tuple[memoryview, bytes] | None:
        """The peer's half of the handshake (see the module), all before ``deadline``: it must
        prove the token over both fresh challenges. The arena (a Unix peer's, mapped read-only;
        an empty one for a TCP peer) and this server's proof to send once a slot is taken, or
        None when the peer is refused."""
        local = connection.family == socket.AF_UNIX
        if local:
            _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid != os.getuid():
                _log.warning("batch link refused a peer of user %d", uid)
                return None
        challenge = secrets.token_bytes(_CHALLENGE_BYTES)
        fds: list[int] = []
        try:
            _send(connection, challenge, deadline)
            size = _CHALLENGE_BYTES + _PROOF_BYTES
            if local:  # the arena's descriptor comes with the first bytes
                _settimeout(connection, deadline)
                first, fds, _flags, _address = socket.recv_fds(connection, size, 1)
                if not first:
                    return None
                reply = bytes(first) + bytes(_receive(connection, size - len(first), deadline=deadline))
            else:
                reply = bytes(_receive(connection, size, deadline=deadline))
            theirs, proof = reply[:_CHALLENGE_BYTES], reply[_CHALLENGE_BYTES:]
            if not hmac.compare_digest(proof, _proof(self.token, b"front", challenge, theirs)):
                _log.warning("batch link refused a peer without the token")
                return None
            arena = memoryview(b"")  # no arena across nodes
            if local:
                if len(fds) != 1 or fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & _ARENA_SEALS != _ARENA_SEALS:
                    _log.warning("batch link refused a peer without a sealed arena")
                    return None
                arena = memoryview(mmap.mmap(fds[0], os.fstat(fds[0]).st_size, prot=mmap.PROT_READ))
        except (EOFError, TimeoutError, ValueError):  # ValueError: an empty arena cannot be mapped
            return None
        finally:
            for fd in fds:
                os.close(fd)
        if not local:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return arena, _proof(self.token, b"actor", challenge, theirs)

    def _serve(self, connection: socket.socket, arena: memoryview) -> None:
        limits = self.limits
        while True:
            connection.settimeout(None)  # between calls a front end may be quiet for as long as it likes
            try:
                head = _receive(connection, _FRAME.size)
            except EOFError:
                return
            connection.settimeout(limits.frame_timeout_s or None)  # within one, a silent peer is dropped (0: never)
            call_id, _status, value_bytes, count = _FRAME.unpack(head)
            if count > _MAX_BUFFERS or value_bytes > limits.max_frame_bytes:
                raise _ProtocolError(f"a frame of {value_bytes} bytes and {count} buffers is over the limits")
            table = list(_BUFFER.iter_unpack(_receive(connection, _BUFFER.size * count)))
            in_stream = value_bytes + sum(length for offset, length in table if offset == _IN_STREAM)
            if in_stream > limits.max_frame_bytes:
                raise _ProtocolError(f"a frame of {in_stream} bytes is over the {limits.max_frame_bytes}-byte limit")
            meta = _receive(connection, value_bytes)
            buffers = [
                _receive(connection, length) if offset == _IN_STREAM else _arena_slice(arena, offset, length)
                for offset, length in table
            ]
            try:
                answer = _frame(call_id, _OK, self._handler(self._codec.decode(meta, buffers)), self._codec)
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


def _frame(call_id: int, status: int, value: Any, codec: Codec, arena: _Arena | None = None) -> list[Any]:
    """The parts of a frame carrying ``value``, its arrays out of band: in ``arena`` when given and
    it has room (then the space is the call's until :meth:`_Arena.release`), else in the stream."""
    meta, raws = codec.encode(value)
    offsets = arena.place(call_id, raws) if arena is not None and raws else None
    table = b"".join(
        _BUFFER.pack(_IN_STREAM if offsets is None else offsets[i], raw.nbytes) for i, raw in enumerate(raws)
    )
    head = _FRAME.pack(call_id, status, len(meta), len(raws)) + table
    return [head, meta] if offsets is not None else [head, meta, *raws]


def _proof(token: bytes, side: bytes, actor_challenge: bytes, front_challenge: bytes) -> bytes:
    """What ``side`` (b"front" or b"actor") answers both challenges with: each side's proof is
    its own, so neither can be replayed as the other's."""
    return hmac.new(token, side + actor_challenge + front_challenge, "sha256").digest()


def _shut(connection: socket.socket) -> None:
    """End a connection another thread is reading (its read returns at once)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _settimeout(connection: socket.socket, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the handshake took too long")
    connection.settimeout(remaining)


def _send(connection: socket.socket, data: bytes, deadline: float) -> None:
    _settimeout(connection, deadline)
    connection.sendall(data)


def _receive(connection: socket.socket, size: int, deadline: float | None = None) -> bytearray:
    """Exactly ``size`` bytes from a blocking socket; EOFError if it closes first, TimeoutError
    past ``deadline`` (or past the socket's own timeout for a read). The buffer grows as bytes
    arrive (doubling from :data:`_FIRST_CHUNK_BYTES`), so a size that the peer only announced
    costs no memory."""
    buffer = bytearray(min(size, _FIRST_CHUNK_BYTES))
    got = 0
    while got < size:
        if got == len(buffer):
            buffer.extend(bytes(min(size - got, len(buffer))))
        if deadline is not None:
            _settimeout(connection, deadline)
        view = memoryview(buffer)
        try:
            n = connection.recv_into(view[got:])
        finally:
            view.release()
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

    def __init__(self, sock: socket.socket, arena: _Arena | None, types: Iterable[type] = (),
                 max_frame_bytes: int = LinkLimits.max_frame_bytes) -> None:
        self._sock = sock
        self._arena = arena
        self._codec = Codec(types)
        self._max_frame_bytes = max_frame_bytes
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
        cls, address: LinkAddress, timeout_s: float, types: Iterable[type] = (), arena_bytes: int = _ARENA_BYTES,
        max_frame_bytes: int = LinkLimits.max_frame_bytes,
    ) -> SocketLink:
        """Connect to a :class:`LinkServer` on this node, prove the token, hand it an arena of
        ``arena_bytes`` and check its own proof (:class:`LinkRefusedError` without it); answers
        may hold instances of ``types``, numpy arrays and plain containers."""
        sock = _client_socket(socket.AF_UNIX)
        arena = None
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(_connect_unix(sock, address.name), timeout_s)
            arena = _Arena(arena_bytes)
            await asyncio.wait_for(_handshake(loop, sock, address.token, arena.fd), timeout_s)
        except BaseException:
            sock.close()
            if arena is not None:
                arena.close()
            raise
        finally:
            if arena is not None:
                os.close(arena.fd)  # the actor holds its own descriptor now
        return cls(sock, arena, types, max_frame_bytes)

    @classmethod
    async def open_remote(cls, address: LinkAddress, timeout_s: float, types: Iterable[type] = (),
                          max_frame_bytes: int = LinkLimits.max_frame_bytes) -> SocketLink:
        """Connect to a :class:`LinkServer`'s TCP listener (on another node); both ends prove the
        token (:class:`LinkRefusedError` when the server does not). The batches' arrays travel in
        the stream."""
        if address.host is None or address.port is None:
            raise ValueError("this link server has no TCP listener")
        sock = _client_socket(_tcp_family(address.host))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (address.host, address.port)), timeout_s)
            await asyncio.wait_for(_handshake(loop, sock, address.token), timeout_s)
        except BaseException:
            sock.close()
            raise
        return cls(sock, None, types, max_frame_bytes)

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
        parts = _frame(call_id, _OK, batch, self._codec, self._arena)
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
            if count > _MAX_BUFFERS or payload_bytes > self._max_frame_bytes:
                self._lose(LinkLostError(f"the sampler actor announced a frame of {payload_bytes} bytes and "
                                         f"{count} buffers, over the limits"))
                return
            table_end = _FRAME.size + _BUFFER.size * count
            if len(self._inbox) < table_end:
                return
            table = list(_BUFFER.iter_unpack(bytes(self._inbox[_FRAME.size:table_end])))
            end = table_end + payload_bytes + sum(length for _offset, length in table)
            if end - table_end > self._max_frame_bytes:
                self._lose(LinkLostError(f"the sampler actor announced a frame of {end - table_end} bytes, over "
                                         f"the {self._max_frame_bytes}-byte limit"))
                return
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
            answer.set_result(self._codec.decode(payload, buffers))
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


async def _connect_unix(sock: socket.socket, name: bytes) -> None:
    """Connect a non-blocking Unix socket. While the listener's backlog is full, ``connect``
    fails with EAGAIN and, unlike TCP, does not go on in the background (asyncio's
    ``sock_connect`` would then report a connection that never was): try again shortly."""
    while True:
        try:
            sock.connect(name)
            return
        except (BlockingIOError, InterruptedError):
            await asyncio.sleep(_CONNECT_RETRY_S)


async def _handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket, token: bytes,
                     arena_fd: int | None = None) -> None:
    """The front end's half of the handshake (see the module): read the server's challenge,
    send a fresh one of its own with this side's proof (and the arena's descriptor), and check
    the server's proof over both."""
    theirs = await _sock_receive(loop, sock, _CHALLENGE_BYTES)
    mine = secrets.token_bytes(_CHALLENGE_BYTES)
    reply = mine + _proof(token, b"front", theirs, mine)
    if arena_fd is None:
        await loop.sock_sendall(sock, reply)
    else:  # a new connection's buffer takes these 64 bytes whole, so this never waits
        sock.sendmsg([reply], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [arena_fd]))])
    try:
        proof = await _sock_receive(loop, sock, _PROOF_BYTES)
    except EOFError:
        raise LinkRefusedError("the link server closed the connection during the handshake") from None
    if not hmac.compare_digest(proof, _proof(token, b"actor", theirs, mine)):
        raise LinkRefusedError("the link server did not prove that it holds the token")


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

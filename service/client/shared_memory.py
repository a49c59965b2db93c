"""Client side of samplerd's shared memory: a region this process owns, registered with a server.

>>> from samplerd.service.client import SamplerClient
>>> from samplerd.service.client.shared_memory import SharedMemoryRegion
>>> with SamplerClient("localhost:50051") as client, SharedMemoryRegion(client, 64 * 128256 * 2) as region:
...     result = client.sample(None, logits=region.put(logits_fp16), top_p=0.9, seed=7)

``put`` copies the logits into the region and returns the ``Tensor`` that references them;
the server reads them from there (one copy) instead of receiving them in the message. Only
for a server on the same machine, or in the same Kubernetes pod with ``/dev/shm`` shared.
Or simply ``SamplerClient(target, shared_memory=True)``, which keeps one such region.

Linux only (POSIX shared memory as files in ``/dev/shm``). Imports neither torch nor ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

SHM_DIR = Path("/dev/shm")


class _SharedMemoryObject:
    """The local half of a region: a POSIX shared-memory object of ``byte_size`` bytes, mapped
    here, that ``put`` fills; the subclasses register it with the server (blocking or asyncio)."""

    def __init__(self, client: Any, byte_size: int, name: str | None, mode: int, timeout: float | None) -> None:
        self._map: mmap.mmap | None = None
        self._registered = False
        if byte_size < 1:
            raise ValueError(f"byte_size must be >= 1, got {byte_size}")
        self._stub = getattr(client, "stub", client)
        self._timeout = timeout
        self.byte_size = byte_size
        self.key = f"samplerd-{os.getpid()}-{secrets.token_hex(8)}"
        self.name = name or self.key
        path = SHM_DIR / self.key
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.ftruncate(fd, byte_size)
            self._map = mmap.mmap(fd, byte_size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def put(self, array: Any, offset: int = 0) -> pb.Tensor:
        """Copy logits (numpy or torch, ``[B, V]`` or ``[V]``) into the region at ``offset`` and
        return the ``Tensor`` referencing them. Do not ``put`` over them before the answer came."""
        from samplerd.service.client import wire_array

        if self._map is None:
            raise ValueError("the region is closed")
        dtype, values = wire_array(array)
        if offset < 0 or offset + values.nbytes > self.byte_size:
            raise ValueError(f"{values.nbytes} bytes at offset {offset} do not fit the region ({self.byte_size} bytes)")
        target = np.ndarray(values.shape, values.dtype, buffer=self._map, offset=offset)
        np.copyto(target, values)
        del target  # the mmap cannot close while a view of it exists
        return pb.Tensor(dtype=dtype, shape=list(values.shape), shared_memory=pb.SharedMemoryReference(
            region=self.name, offset=offset, byte_size=values.nbytes))

    def view(self) -> memoryview:
        """The region's bytes (writable), e.g. for an engine that writes logits in place."""
        if self._map is None:
            raise ValueError("the region is closed")
        return memoryview(self._map)

    def _register_request(self) -> pb.RegisterSharedMemoryRequest:
        return pb.RegisterSharedMemoryRequest(name=self.name, key=self.key, byte_size=self.byte_size)

    def _unregister_request(self) -> pb.UnregisterSharedMemoryRequest:
        return pb.UnregisterSharedMemoryRequest(name=self.name)

    def _release(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        (SHM_DIR / self.key).unlink(missing_ok=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()


class SharedMemoryRegion(_SharedMemoryObject):
    """A POSIX shared-memory object of ``byte_size`` bytes, created here and registered with the
    server under ``name``; ``close()`` (or leaving the ``with`` block) unregisters and removes it.

    ``client``: a ``SamplerClient`` (or a ``Sampler`` stub). ``mode``: the object's file mode;
    the server process must be able to read it (0o600: the same user, as in a sidecar)."""

    def __init__(self, client: Any, byte_size: int, *, name: str | None = None, mode: int = 0o600,
                 timeout: float | None = None) -> None:
        super().__init__(client, byte_size, name, mode, timeout)
        try:
            self._stub.RegisterSharedMemory(self._register_request(), timeout=timeout)
        except BaseException:
            self._release()
            raise
        self._registered = True

    def close(self) -> None:
        """Unregister (if the server is still reachable) and remove the object; idempotent."""
        if self._registered:
            self._registered = False
            with contextlib.suppress(grpc.RpcError, ValueError):  # a closed channel raises ValueError
                self._stub.UnregisterSharedMemory(self._unregister_request(), timeout=self._timeout)
        self._release()

    def __enter__(self) -> SharedMemoryRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSharedMemoryRegion(_SharedMemoryObject):
    """:class:`SharedMemoryRegion` for an ``AsyncSamplerClient`` (or a ``grpc.aio`` stub):
    ``region = await AsyncSharedMemoryRegion.create(client, size)``, then ``put`` as there, and
    ``await region.close()`` (or ``async with``)."""

    @classmethod
    async def create(cls, client: Any, byte_size: int, *, name: str | None = None, mode: int = 0o600,
                     timeout: float | None = None) -> AsyncSharedMemoryRegion:
        """Create the object and register it with the server."""
        region = cls(client, byte_size, name, mode, timeout)
        try:
            await region._stub.RegisterSharedMemory(region._register_request(), timeout=timeout)
        except BaseException:
            region._release()
            raise
        region._registered = True
        return region

    async def close(self) -> None:
        """Unregister (if the server is still reachable) and remove the object; idempotent."""
        if self._registered:
            self._registered = False
            with contextlib.suppress(grpc.RpcError, grpc.aio.UsageError):  # UsageError: a closed channel
                await self._stub.UnregisterSharedMemory(self._unregister_request(), timeout=self._timeout)
        self._release()

    async def __aenter__(self) -> AsyncSharedMemoryRegion:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GrowingRegion:
    """The one region of a ``SamplerClient(shared_memory=True)``: replaced by a larger one (at
    least twice the size) when a step does not fit."""

    def __init__(self, stub: Any, timeout: float | None) -> None:
        self._stub = stub
        self._timeout = timeout
        self._region: SharedMemoryRegion | None = None

    def encode(self, array: Any) -> pb.Tensor:
        """``array`` copied into the region; the ``Tensor`` that references it."""
        from samplerd.service.client import wire_array

        _, values = wire_array(array)
        if self._region is None or self._region.byte_size < values.nbytes:
            size = max(values.nbytes, 2 * self._region.byte_size if self._region is not None else 0)
            self.close()
            self._region = SharedMemoryRegion(self._stub, size, timeout=self._timeout)
        return self._region.put(values if not type(array).__module__.startswith("torch") else array)

    def close(self) -> None:
        """Unregister and remove the region, if any."""
        if self._region is not None:
            self._region.close()
            self._region = None


#: Leases start on this boundary, so every dtype's rows are aligned in the region.
_LEASE_ALIGN = 64


class AsyncGrowingRegion:
    """The region of an ``AsyncSamplerClient(shared_memory=True)``, shared by its concurrent
    calls: each call leases its own byte range for as long as its answer takes. A call that does
    not fit beside the others replaces the region with one at least twice the size; the old one
    is unregistered and removed when its last lease ends."""

    def __init__(self, stub: Any, timeout: float | None) -> None:
        self._stub = stub
        self._timeout = timeout
        self._region: AsyncSharedMemoryRegion | None = None
        self._leases: dict[AsyncSharedMemoryRegion, dict[int, int]] = {}  # region -> {offset: end}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lease(self, array: Any) -> AsyncIterator[pb.Tensor]:
        """``array`` copied into a range of the region no other call uses until this block ends;
        yields the ``Tensor`` that references it."""
        from samplerd.service.client import wire_array

        _, values = wire_array(array)
        region, offset = await self._allocate(values.nbytes)
        try:
            yield region.put(values, offset)
        finally:
            await self._free(region, offset)

    async def _allocate(self, nbytes: int) -> tuple[AsyncSharedMemoryRegion, int]:
        async with self._lock:
            region = self._region
            offset = _first_fit(self._leases.get(region, {}), nbytes, region.byte_size) if region else None
            if offset is None:
                in_use = sum(end - start for start, end in self._leases.get(region, {}).items())
                size = max(nbytes + in_use, 2 * region.byte_size if region is not None else 0)
                fresh = await AsyncSharedMemoryRegion.create(self._stub, _aligned(size), timeout=self._timeout)
                self._region, region, offset = fresh, fresh, 0
                await self._retire_idle()
            self._leases.setdefault(region, {})[offset] = offset + _aligned(nbytes)
            return region, offset

    async def _free(self, region: AsyncSharedMemoryRegion, offset: int) -> None:
        async with self._lock:
            self._leases.get(region, {}).pop(offset, None)
            await self._retire_idle()

    async def _retire_idle(self) -> None:
        """Close the replaced regions that no call uses any more."""
        for region in [r for r, leases in self._leases.items() if r is not self._region and not leases]:
            del self._leases[region]
            await region.close()

    async def close(self) -> None:
        """Unregister and remove every region, if any."""
        async with self._lock:
            regions = set(self._leases) | ({self._region} if self._region is not None else set())
            self._leases.clear()
            self._region = None
            for region in regions:
                await region.close()


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _LEASE_ALIGN) * _LEASE_ALIGN


def _first_fit(leases: dict[int, int], nbytes: int, byte_size: int) -> int | None:
    """The lowest offset where ``nbytes`` fit between the leased ranges, or None."""
    start = 0
    for offset, end in sorted(leases.items()):
        if offset - start >= nbytes:
            return start
        start = end
    return start if byte_size - start >= nbytes else None

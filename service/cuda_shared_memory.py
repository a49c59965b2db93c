"""Triton's CUDA shared-memory extension on the OIP endpoint: regions of a client's GPU memory,
registered by CUDA IPC handle (``CudaSharedMemoryRegister``, as tritonclient sends it: the raw
64-byte ``cudaIpcMemHandle_t``, the device id, the byte size).

The front end only keeps the registrations, per owner as for system shared memory (a bearer
token's digest, or everyone), within the same limits. An input that names a CUDA region becomes
a :class:`~samplerd.workers.cuda_ipc.CudaRegionSlice`, which a GPU sampler actor reads device to
device (:mod:`samplerd.workers.cuda_ipc`). Registration needs a front end that sees CUDA and
GPU sampler workers (``--device cuda``, or ``auto`` on a GPU machine): anywhere else it is
FAILED_PRECONDITION, as is a handle that does not open on the worker. Outputs are not written
to CUDA regions (INVALID_ARGUMENT naming the output): request them inline or in system shared memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from samplerd.service.errors import RequestError, invalid_argument
from samplerd.service.shared_memory import Registrations, SharedMemoryLimits, valid_name
from samplerd.workers.cuda_ipc import IPC_HANDLE_BYTES, CudaRegionSlice


@dataclass(frozen=True)
class CudaRegion:
    """One registration: ``byte_size`` bytes of the allocation ``raw_handle`` exports, on the
    client's device ``device_id``."""

    name: str
    raw_handle: bytes
    device_id: int
    byte_size: int


class CudaSharedMemoryRegistry(Registrations):
    """The server's CUDA regions per owner. ``unavailable``: why registration is refused on
    this server (FAILED_PRECONDITION), or None when it can serve them. Thread-safe."""

    kind = "CUDA shared-memory region"

    def __init__(self, limits: SharedMemoryLimits | None = None, unavailable: str | None = None) -> None:
        super().__init__(limits)
        self.unavailable = unavailable

    def register(self, owner: str, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> CudaRegion:
        """Register a region; RequestError (FAILED_PRECONDITION, INVALID_ARGUMENT, ALREADY_EXISTS,
        RESOURCE_EXHAUSTED) otherwise."""
        if self.unavailable is not None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, self.unavailable)
        valid_name(name)
        if len(raw_handle) != IPC_HANDLE_BYTES:
            raise invalid_argument("raw_handle", f"raw_handle must be a {IPC_HANDLE_BYTES}-byte cudaIpcMemHandle_t, "
                                                 f"got {len(raw_handle)} bytes")
        if device_id < 0:
            raise invalid_argument("device_id", f"device_id must be >= 0, got {device_id}")
        if byte_size < 1:
            raise invalid_argument("byte_size", f"byte_size must be >= 1, got {byte_size}")
        region = CudaRegion(name, bytes(raw_handle), device_id, byte_size)
        self._add(owner, region)
        return region

    def slice(self, region: CudaRegion, offset: int, byte_size: int, shape: tuple[int, int], dtype: str,
              field: str) -> CudaRegionSlice:
        """Where a tensor lies in ``region``, checked to fit it."""
        if offset + byte_size > region.byte_size:
            raise invalid_argument(f"{field}.byte_size", f"offset + byte_size = {offset + byte_size} exceeds CUDA "
                                                         f"region {region.name!r} ({region.byte_size} bytes)")
        rows, vocab = shape
        return CudaRegionSlice(region.raw_handle, region.device_id, offset, rows, vocab, dtype,
                               f"CUDA region {region.name!r}")


@dataclass(frozen=True)
class CudaAccess:
    """One caller's view of the CUDA registry (its owner's regions)."""

    registry: CudaSharedMemoryRegistry
    owner: str

    def find(self, name: str) -> CudaRegion | None:
        """The caller's CUDA region ``name``, if registered."""
        return self.registry.find(self.owner, name)

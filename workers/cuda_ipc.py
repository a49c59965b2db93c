"""Reading logits straight from a client's GPU memory by CUDA IPC handle (Triton's CUDA
shared-memory extension, as ``tritonclient.utils.cuda_shared_memory`` drives it).

A client on the same node allocates device memory, exports it (``cudaIpcGetMemHandle``) and
registers the 64-byte handle with the front end (``samplerd.service.cuda_shared_memory``). A
request naming that region travels as a :class:`CudaRegionSlice`; a sampler actor on a GPU
opens the handle on its device (``cudaIpcOpenMemHandle`` through libcudart, once per handle,
kept open for later requests) and copies the rows device to device into its batch tensor: the
logits never cross to the host. The client must have finished writing them (synchronised its
stream) before it sends the request, as with Triton.

What can go wrong is answered, not crashed on: a handle that does not open (another node, a
freed allocation, a CPU actor) is :class:`~samplerd.workers.region.RegionError`, so
FAILED_PRECONDITION for that request alone. A client that frees memory the actor still reads is
outside what an IPC handle can guard: the read is a CUDA fault, and the actor retires (its pool
starts another). At most :data:`MAX_OPEN_HANDLES` handles stay open per actor, the least
recently used closed first.

Written without a GPU to run it on (the machines this was built on have none); its tests are
marked ``cuda`` and skip without one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from samplerd.workers.region import LogitsRows, RegionError

#: Bytes of a ``cudaIpcMemHandle_t``.
IPC_HANDLE_BYTES = 64
#: Handles an actor keeps open (each maps its allocation into the actor's address space).
MAX_OPEN_HANDLES = 64
_LAZY_ENABLE_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess: the allocation may live on another GPU
_TYPESTR = {"float32": "<f4", "float16": "<f2", "bfloat16": "<i2"}  # bf16 as its int16 bits


@dataclass(frozen=True)
class CudaRegionSlice(LogitsRows):
    """``rows`` x ``vocab`` logits of dtype ``dtype`` at byte ``offset`` of the allocation that
    ``handle`` (a raw ``cudaIpcMemHandle_t``) exports; ``label`` names the region in errors."""

    handle: bytes
    device_id: int
    offset: int
    rows: int
    vocab: int
    dtype: str
    label: str


class _IpcMemHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * IPC_HANDLE_BYTES)]


class _DeviceArray:
    """Device memory described by ``__cuda_array_interface__``, for ``torch.as_tensor``."""

    def __init__(self, pointer: int, shape: tuple[int, int], typestr: str) -> None:
        # Read-only is False: torch refuses the flag (the actor only reads it all the same).
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (pointer, False),
                                         "version": 3, "strides": None}


class _OpenHandles:
    """This process's open handles, by handle bytes: the device pointer each maps to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pointers: OrderedDict[bytes, int] = OrderedDict()
        self._runtime: ctypes.CDLL | None = None

    def pointer(self, handle: bytes, device: torch.device, label: str) -> int:
        with self._lock:
            if handle in self._pointers:
                self._pointers.move_to_end(handle)
                return self._pointers[handle]
            runtime = self._cudart()
            pointer = ctypes.c_void_p()
            with torch.cuda.device(device):
                code = runtime.cudaIpcOpenMemHandle(ctypes.byref(pointer), _IpcMemHandle.from_buffer_copy(handle),
                                                    ctypes.c_uint(_LAZY_ENABLE_PEER_ACCESS))
                if code != 0:
                    runtime.cudaGetLastError()  # clear it: a handle that does not open is not the device's fault
                    raise RegionError(f"{label}: its CUDA IPC handle does not open on this sampler worker's GPU "
                                      f"({_error_text(runtime, code)}); is the client on the same node, "
                                      "and its allocation still alive?")
            self._pointers[handle] = pointer.value
            if len(self._pointers) > MAX_OPEN_HANDLES:
                torch.cuda.synchronize(device)  # no copy queued earlier may still read what is closed
                while len(self._pointers) > MAX_OPEN_HANDLES:
                    _, oldest = self._pointers.popitem(last=False)
                    runtime.cudaIpcCloseMemHandle(ctypes.c_void_p(oldest))
            return pointer.value

    def _cudart(self) -> ctypes.CDLL:
        if self._runtime is None:
            torch.cuda.init()  # torch's CUDA build has loaded its libcudart: open that one by name
            for name in ("libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", ctypes.util.find_library("cudart")):
                if name is None:
                    continue
                try:
                    runtime = ctypes.CDLL(name)
                except OSError:
                    continue
                runtime.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcMemHandle, ctypes.c_uint]
                runtime.cudaGetErrorString.restype = ctypes.c_char_p
                self._runtime = runtime
                break
            else:
                raise RegionError("CUDA shared memory: libcudart cannot be loaded on this sampler worker")
        return self._runtime


def _error_text(runtime: ctypes.CDLL, code: int) -> str:
    text = runtime.cudaGetErrorString(code)
    return f"cudaError {code}: {text.decode() if text else 'unknown'}"


_OPEN = _OpenHandles()


def read_into_device(part: CudaRegionSlice, rows: torch.Tensor) -> None:
    """Copy ``part``'s logits, device to device, into ``rows`` (a ``[rows, V]`` view of the
    batch tensor on a GPU, in the raw dtype: int16 for bf16); RegionError when its handle does
    not open here."""
    if rows.device.type != "cuda":
        raise RegionError(f"{part.label}: CUDA shared memory needs a GPU sampler worker (--device cuda)")
    base = _OPEN.pointer(part.handle, rows.device, part.label)
    source = torch.as_tensor(_DeviceArray(base + part.offset, part.shape, _TYPESTR[part.dtype]), device=rows.device)
    rows.copy_(source)

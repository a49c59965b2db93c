"""Reading logits straight from a client's shared-memory region, checked at every use.

A :class:`RegionSlice` names a request's logits in a POSIX shared-memory object that a client
registered with the front end (``samplerd.service.shared_memory``). The front end passes it in the
batch instead of the bytes, and the sampler actor on the same node reads them into its batch
tensor with ``preadv``: the only copy between the client and the kernel.

The object is client-owned, so every use opens it again (``O_NOFOLLOW``), checks with
``fstat`` that it is the registered file (device, inode) and still long enough, and reads with
``preadv``: a shrunk, removed or replaced object raises :class:`RegionError`, never a SIGBUS,
and nothing stays open or mapped afterwards.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np

# O_NONBLOCK: opening a FIFO put in place of the object must not block.
_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: numpy dtype of each logits dtype name (bf16 as its int16 bits, as samplerd.workers.batch packs it).
_NUMPY = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<i2")}


class RegionError(Exception):
    """The region changed under the server (removed, replaced, shrunk): FAILED_PRECONDITION."""


class LogitsRows:
    """``rows`` x ``vocab`` logits of dtype ``dtype`` that a batch names instead of carrying."""

    rows: int
    vocab: int
    dtype: str

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.vocab)

    @property
    def nbytes(self) -> int:
        return self.rows * self.vocab * _NUMPY[self.dtype].itemsize


@dataclass(frozen=True)
class RegionSlice(LogitsRows):
    """``rows`` x ``vocab`` logits of dtype ``dtype`` at byte ``position`` of the object at
    ``path``, which must still be the file ``identity`` (st_dev, st_ino) and hold at least
    ``end`` bytes (the registered region's end). ``label`` names the region in errors."""

    path: str
    identity: tuple[int, int]
    end: int
    position: int
    rows: int
    vocab: int
    dtype: str
    label: str


def open_checked(path: str, identity: tuple[int, int], end: int, flags: int, label: str) -> int:
    """A descriptor of ``path``, checked to be file ``identity`` with at least ``end`` bytes."""
    try:
        fd = os.open(path, flags | _FLAGS)
    except FileNotFoundError:
        raise RegionError(f"the shared-memory object of {label} no longer exists") from None
    except OSError as error:
        raise RegionError(f"the shared-memory object of {label} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != identity or not stat.S_ISREG(info.st_mode):
            raise RegionError(f"the shared-memory object of {label} was replaced since it was registered; "
                              "register it again")
        if info.st_size < end:
            raise RegionError(f"the shared-memory object of {label} shrank to {info.st_size} bytes, below the "
                              f"region's end ({end})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def transfer(call, fd: int, view: memoryview, position: int, label: str) -> None:
    """``preadv``/``pwritev`` all of ``view`` at ``position``; a short transfer means the object
    shrank between the size check and the call."""
    done = 0
    while done < len(view):
        moved = call(fd, [view[done:]], position + done)
        if moved <= 0:
            raise RegionError(f"the shared-memory object of {label} shrank while it was in use")
        done += moved


def read_into(part: RegionSlice, out: np.ndarray) -> None:
    """Read ``part``'s bytes into ``out`` (C-contiguous, exactly ``part.nbytes``)."""
    fd = open_checked(part.path, part.identity, part.end, os.O_RDONLY, part.label)
    try:
        transfer(os.preadv, fd, memoryview(out).cast("B"), part.position, part.label)
    finally:
        os.close(fd)


def read_array(part: RegionSlice) -> np.ndarray:
    """``part`` as a new ``[rows, vocab]`` array (bf16 as int16 bits)."""
    out = np.empty(part.shape, dtype=_NUMPY[part.dtype])
    read_into(part, out)
    return out

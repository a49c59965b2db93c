"""Registered system shared-memory regions: logits (and OIP outputs) by reference.

A region is a byte range of a POSIX shared-memory object (``shm_open``; on Linux the file
``/dev/shm/<key>``) that a client on the same machine or pod registers once and then names in
requests instead of sending the bytes. It is client-owned memory, so nothing is trusted:

- keys are shm names only (no paths, no ``..``), opened with ``O_NOFOLLOW``, regular files only;
- the server keeps nothing open or mapped between uses: every read opens the object, checks
  with ``fstat`` that it is still the same file (device and inode) and still long enough, and
  reads with ``preadv``, so a shrunk, removed or replaced object is an error answer, never a
  SIGBUS (which touching a mapping past a truncated file's end would raise);
- with bearer-token auth on, regions belong to the token that registered them (other tokens
  neither see nor use them) and the limits on regions and registered bytes apply per token;
- unregistering only forgets the name: a read in flight holds its own descriptor and finishes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from samplerd.service.errors import RequestError, invalid_argument, over_limit
from samplerd.workers.region import RegionError, RegionSlice, open_checked, transfer

SHM_DIR = Path("/dev/shm")
#: shm_open names: one optional leading '/', then one path component of safe characters.
_KEY_RE = re.compile(r"/?([A-Za-z0-9_.-]{1,255})")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# O_NONBLOCK: opening a FIFO a client put in /dev/shm must not block the event loop.
_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class SharedMemoryLimits:
    """Per owner (bearer token, or everyone when auth is off): regions and registered bytes."""

    max_regions: int = 64
    max_bytes: int = 4 * 1024**3


@dataclass(frozen=True)
class Region:
    """One registration: the object ``key`` at ``offset``..``offset + byte_size``, and the
    identity (device, inode) the object had then."""

    name: str
    key: str
    offset: int
    byte_size: int
    path: Path
    identity: tuple[int, int]

    @property
    def label(self) -> str:
        """How errors name the region."""
        return f"region {self.name!r} (key {self.key!r})"


def valid_name(name: str) -> None:
    """INVALID_ARGUMENT naming ``name`` unless it is a valid region name."""
    if _NAME_RE.fullmatch(name) is None:
        raise invalid_argument("name", f"name must be 1-128 characters of [A-Za-z0-9_.-], got {name[:64]!r}")


def _check_room(own: Mapping[str, Any], name: str, byte_size: int, limits: SharedMemoryLimits, kind: str) -> None:
    """ALREADY_EXISTS when ``own`` (an owner's registrations, each with a ``byte_size``) has
    ``name``; RESOURCE_EXHAUSTED when one more of ``byte_size`` bytes would exceed ``limits``."""
    if name in own:
        raise RequestError(grpc.StatusCode.ALREADY_EXISTS, f"a {kind} named {name!r} is already registered")
    if len(own) >= limits.max_regions:
        raise over_limit("name", f"{len(own)} {kind}s are registered, the server's limit "
                                 f"(--max-shm-regions) is {limits.max_regions}")
    registered = sum(r.byte_size for r in own.values())
    if registered + byte_size > limits.max_bytes:
        raise over_limit("byte_size", f"{registered} bytes are registered, {byte_size} more would exceed the "
                                      f"server's limit (--max-shm-bytes) of {limits.max_bytes}")


def failed_precondition(field: str, description: str) -> RequestError:
    """FAILED_PRECONDITION naming ``field`` (the region changed under the server)."""
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{field}: {description}")


def object_path(key: str, field: str = "key") -> Path:
    """``/dev/shm/<name>`` for a valid shm key; INVALID_ARGUMENT naming ``field`` otherwise."""
    match = _KEY_RE.fullmatch(key)
    if match is None or match.group(1) in (".", ".."):
        raise invalid_argument(
            field, f"key must be a POSIX shared-memory name (an optional leading '/', then 1-255 characters of "
                   f"[A-Za-z0-9_.-], not '.' or '..'), got {key[:64]!r}")
    return SHM_DIR / match.group(1)


class _Opened:
    """A descriptor of a region's object, checked against the registration (context manager)."""

    def __init__(self, region: Region, flags: int, field: str) -> None:
        try:
            self.fd = open_checked(str(region.path), region.identity, region.offset + region.byte_size, flags,
                                   region.label)
        except RegionError as error:
            raise failed_precondition(field, str(error)) from None

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class Registrations:
    """Registrations per owner within ``limits`` (each with a ``name`` and a ``byte_size``);
    ``kind`` names them in errors. Thread-safe. The system and CUDA registries build on it."""

    kind = "shared-memory region"

    def __init__(self, limits: SharedMemoryLimits | None = None) -> None:
        self.limits = limits or SharedMemoryLimits()
        self._lock = threading.Lock()
        self._regions: dict[str, dict[str, Any]] = {}

    def _add(self, owner: str, region: Any) -> None:
        """Record ``region`` for ``owner``: ALREADY_EXISTS or RESOURCE_EXHAUSTED when it may not be."""
        with self._lock:
            own = self._regions.setdefault(owner, {})
            _check_room(own, region.name, region.byte_size, self.limits, self.kind)
            own[region.name] = region

    def unregister(self, owner: str, name: str = "") -> int:
        """Forget one region of ``owner`` (or all, for ``""``); how many were forgotten."""
        with self._lock:
            own = self._regions.get(owner, {})
            if not name:
                count = len(own)
                own.clear()
                return count
            return 1 if own.pop(name, None) is not None else 0

    def status(self, owner: str, name: str = "") -> list[Any]:
        """``owner``'s regions sorted by name, or the one named (NOT_FOUND when it is not)."""
        with self._lock:
            own = dict(self._regions.get(owner, {}))
        if name:
            if name not in own:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"no {self.kind} named {name!r} is registered")
            return [own[name]]
        return [own[n] for n in sorted(own)]

    def find(self, owner: str, name: str) -> Any:
        """``owner``'s region ``name``, or None."""
        with self._lock:
            return self._regions.get(owner, {}).get(name)

    def clear(self) -> None:
        """Forget every region (server stop)."""
        with self._lock:
            self._regions.clear()

    def count(self) -> int:
        """Regions registered, over all owners."""
        with self._lock:
            return sum(len(own) for own in self._regions.values())


class SharedMemoryRegistry(Registrations):
    """The server's registered regions, per owner (see the module docstring). Thread-safe."""

    def __init__(self, limits: SharedMemoryLimits | None = None, per_token: bool = False) -> None:
        super().__init__(limits)
        self.per_token = per_token

    # -- owners --------------------------------------------------------------------------------

    def owner(self, context) -> str:
        """Who owns the regions a call may use: a digest of its bearer token when auth is on
        (the interceptor already checked the token), else everyone ("")."""
        if not self.per_token:
            return ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value.encode() if isinstance(value, str) else value
                return hashlib.sha256(token.partition(b" ")[2].strip()).hexdigest()
        return ""

    # -- registration --------------------------------------------------------------------------

    def register(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> Region:
        """Register a region; raises RequestError (INVALID_ARGUMENT, ALREADY_EXISTS, RESOURCE_EXHAUSTED)."""
        valid_name(name)
        path = object_path(key)
        if byte_size < 1:
            raise invalid_argument("byte_size", f"byte_size must be >= 1, got {byte_size}")
        try:
            fd = os.open(path, os.O_RDONLY | _FLAGS)
        except FileNotFoundError:
            raise invalid_argument("key", f"no shared-memory object {key!r} (shm_open it first)") from None
        except OSError as error:
            raise invalid_argument("key", f"shared-memory object {key!r} cannot be opened: {error.strerror}") from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise invalid_argument("key", f"{key!r} is not a shared-memory object (not a regular file)")
        if offset + byte_size > info.st_size:
            raise invalid_argument(
                "byte_size", f"offset + byte_size = {offset + byte_size} exceeds the size of {key!r} ({info.st_size})")
        region = Region(name, key, offset, byte_size, path, (info.st_dev, info.st_ino))
        self._add(owner, region)
        return region

    # -- use -----------------------------------------------------------------------------------

    def lookup(self, owner: str, name: str, offset: int, byte_size: int, field: str) -> Region:
        """``owner``'s region ``name``, checked to hold ``byte_size`` bytes at ``offset``."""
        region = self.find(owner, name)
        if region is None:
            raise invalid_argument(f"{field}.region", f"no shared-memory region named {name!r} is registered")
        if offset + byte_size > region.byte_size:
            raise invalid_argument(
                f"{field}.byte_size", f"offset + byte_size = {offset + byte_size} exceeds region {name!r} "
                                      f"({region.byte_size} bytes)")
        return region

    def read(self, region: Region, offset: int, byte_size: int, field: str) -> np.ndarray:
        """``byte_size`` bytes at ``offset`` in ``region`` as a new uint8 array (one copy)."""
        out = np.empty(byte_size, dtype=np.uint8)
        with _Opened(region, os.O_RDONLY, field) as fd:
            _transfer(os.preadv, fd, memoryview(out), region.offset + offset, region.label, field)
        return out

    def write(self, region: Region, offset: int, parts: Iterable[bytes], field: str) -> None:
        """Write ``parts`` one after another at ``offset`` in ``region``."""
        with _Opened(region, os.O_RDWR, field) as fd:
            position = region.offset + offset
            for part in parts:
                _transfer(os.pwritev, fd, memoryview(part), position, region.label, field)
                position += len(part)


def _transfer(call, fd: int, view: memoryview, position: int, label: str, field: str) -> None:
    try:
        transfer(call, fd, view, position, label)
    except RegionError as error:
        raise failed_precondition(field, str(error)) from None


@dataclass(frozen=True)
class SharedAccess:
    """One caller's view of the registry: the regions its requests may read and write."""

    registry: SharedMemoryRegistry
    owner: str

    def read(self, name: str, offset: int, byte_size: int, field: str) -> np.ndarray:
        """The caller's region ``name``: ``byte_size`` bytes at ``offset``, read now."""
        if offset < 0:
            raise invalid_argument(f"{field}.offset", f"offset must be >= 0, got {offset}")
        region = self.registry.lookup(self.owner, name, offset, byte_size, field)
        return self.registry.read(region, offset, byte_size, field)

    def slice(self, name: str, offset: int, byte_size: int, shape: tuple[int, int], dtype: str,
              field: str) -> RegionSlice:
        """A reference to the caller's region ``name`` at ``offset`` that a sampler actor reads
        itself (checked now against the registration, and again when read)."""
        if offset < 0:
            raise invalid_argument(f"{field}.offset", f"offset must be >= 0, got {offset}")
        region = self.registry.lookup(self.owner, name, offset, byte_size, field)
        with _Opened(region, os.O_RDONLY, field):  # still there and long enough: fail early
            pass
        return RegionSlice(str(region.path), region.identity, region.offset + region.byte_size,
                           region.offset + offset, shape[0], shape[1], dtype, region.label)

    def write(self, name: str, offset: int, byte_size: int, parts: list[bytes], field: str) -> None:
        """Write ``parts`` into the caller's region ``name`` at ``offset``; they must fit ``byte_size``."""
        if offset < 0:
            raise invalid_argument(f"{field}.offset", f"offset must be >= 0, got {offset}")
        needed = sum(len(p) for p in parts)
        if needed > byte_size:
            raise invalid_argument(f"{field}.byte_size", f"the output needs {needed} bytes, byte_size is {byte_size}")
        region = self.registry.lookup(self.owner, name, offset, byte_size, field)
        self.registry.write(region, offset, parts, field)

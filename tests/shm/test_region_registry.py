"""The shared-memory registry on its own (samplerd.service.shared_memory): owners, limits, clearing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from samplerd.service.errors import RequestError
from samplerd.service.shared_memory import SHM_DIR, SharedAccess, SharedMemoryLimits, SharedMemoryRegistry


@pytest.fixture()
def shm_object() -> Iterator[Path]:
    path = SHM_DIR / f"samplerd-test-registry-{os.getpid()}-{os.urandom(4).hex()}"
    path.write_bytes(bytes(range(256)) * 4)
    yield path
    path.unlink(missing_ok=True)


def test_owners_have_separate_names_limits_and_reads(shm_object: Path) -> None:
    registry = SharedMemoryRegistry(SharedMemoryLimits(max_regions=1, max_bytes=1024), per_token=True)
    registry.register("a", "r", shm_object.name, 16, 100)
    registry.register("b", "r", "/" + shm_object.name, 0, 1024)  # same name, another owner
    with pytest.raises(RequestError) as caught:
        registry.register("a", "s", shm_object.name, 0, 8)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bytes(SharedAccess(registry, "a").read("r", 4, 4, "t")) == bytes([20, 21, 22, 23])
    with pytest.raises(RequestError) as caught:
        SharedAccess(registry, "c").read("r", 0, 4, "t")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "t.region" in caught.value.message
    assert registry.unregister("a") == 1 and [r.name for r in registry.status("b")] == ["r"]


def test_clear_forgets_every_registration(shm_object: Path) -> None:
    registry = SharedMemoryRegistry()
    for name in ("x", "y"):
        registry.register("", name, shm_object.name, 0, 64)
    assert registry.count() == 2
    registry.clear()
    assert registry.count() == 0 and registry.status("") == []
    assert shm_object.exists()  # the object is the client's: stopping only forgets it


def test_writes_are_bounded_by_the_reference(shm_object: Path) -> None:
    registry = SharedMemoryRegistry()
    registry.register("", "out", shm_object.name, 512, 16)
    access = SharedAccess(registry, "")
    access.write("out", 8, 8, [b"\xff" * 8], "o")
    assert shm_object.read_bytes()[520:528] == b"\xff" * 8
    with pytest.raises(RequestError) as caught:
        access.write("out", 0, 4, [b"\0" * 8], "o")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "o.byte_size" in caught.value.message

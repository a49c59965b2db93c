"""CUDA shared-memory registrations (samplerd.service.cuda_shared_memory) and what a CPU sampler
worker does with a CUDA region: everything here runs without a GPU (the GPU path itself is in
tests/oip/test_oip_cuda_shared_memory.py, marked ``cuda``)."""

from __future__ import annotations

import grpc
import pytest
import torch

from samplerd.sampling import SamplingParams
from samplerd.service.cuda_shared_memory import CudaSharedMemoryRegistry
from samplerd.service.errors import RequestError
from samplerd.service.shared_memory import SharedMemoryLimits
from samplerd.workers.batch import WIRE_TYPES, RowGroup, pack_logits, unpack_group
from samplerd.workers.cuda_ipc import IPC_HANDLE_BYTES, CudaRegionSlice
from samplerd.workers.wire import Codec

HANDLE = bytes(range(IPC_HANDLE_BYTES))


def refusal(call, *args) -> RequestError:
    with pytest.raises(RequestError) as caught:
        call(*args)
    return caught.value


def test_a_server_without_cuda_workers_refuses_registration_with_its_reason() -> None:
    registry = CudaSharedMemoryRegistry(unavailable="CUDA shared memory needs GPU sampler workers")

    error = refusal(registry.register, "", "g", HANDLE, 0, 64)

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "GPU sampler workers" in error.message
    assert registry.status("") == []


def test_registrations_are_checked_listed_and_forgotten() -> None:
    registry = CudaSharedMemoryRegistry(SharedMemoryLimits(max_regions=2, max_bytes=1000))

    assert refusal(registry.register, "", "g", HANDLE[:63], 0, 64).violations[0].field == "raw_handle"
    assert refusal(registry.register, "", "g/..", HANDLE, 0, 64).violations[0].field == "name"
    assert refusal(registry.register, "", "g", HANDLE, -1, 64).violations[0].field == "device_id"
    assert refusal(registry.register, "", "g", HANDLE, 0, 0).violations[0].field == "byte_size"
    registry.register("", "g", HANDLE, 1, 600)
    assert refusal(registry.register, "", "g", HANDLE, 0, 64).code == grpc.StatusCode.ALREADY_EXISTS
    assert refusal(registry.register, "", "h", HANDLE, 0, 600).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    registry.register("other-token", "g", HANDLE, 0, 600)  # owners are apart
    registry.register("", "h", HANDLE, 0, 400)
    assert refusal(registry.register, "", "i", HANDLE, 0, 1).code == grpc.StatusCode.RESOURCE_EXHAUSTED

    assert [(r.name, r.device_id, r.byte_size) for r in registry.status("")] == [("g", 1, 600), ("h", 0, 400)]
    assert refusal(registry.status, "", "x").code == grpc.StatusCode.NOT_FOUND
    assert registry.unregister("", "g") == 1 and registry.unregister("", "g") == 0
    assert registry.unregister("") == 1 and registry.status("") == []
    assert [r.name for r in registry.status("other-token")] == ["g"]


def test_a_reference_must_fit_its_region() -> None:
    registry = CudaSharedMemoryRegistry()
    region = registry.register("", "g", HANDLE, 0, 4000)

    part = registry.slice(region, 800, 3200, (4, 400), "float16", "logits.parameters")
    assert (part.handle, part.offset, part.shape, part.nbytes) == (HANDLE, 800, (4, 400), 3200)
    assert refusal(registry.slice, region, 801, 3200, (4, 400), "float16",
                   "logits.parameters").violations[0].field == "logits.parameters.byte_size"


def test_a_cuda_region_travels_over_a_batch_link_as_plain_data() -> None:
    part = CudaRegionSlice(HANDLE, 0, 128, 2, 50, "bfloat16", "CUDA region 'g'")
    group = RowGroup(logits=[part], dtype="bfloat16", params=[SamplingParams()] * 2, steps=[0, 0])
    codec = Codec(WIRE_TYPES)

    meta, buffers = codec.encode([group])

    assert codec.decode(meta, buffers) == [group]


def test_on_a_cpu_worker_a_cuda_region_fails_its_request_alone() -> None:
    neighbour = torch.randn(3, 50)
    part = CudaRegionSlice(HANDLE, 0, 0, 2, 50, "float32", "CUDA region 'g'")

    logits, failed = unpack_group([pack_logits(neighbour), part], "float32", torch.device("cpu"))

    assert list(failed) == [1] and failed[1].kind == "region" and "GPU sampler worker" in failed[1].reason
    assert torch.equal(logits[:3], neighbour) and tuple(logits.shape) == (5, 50)

"""Triton's CUDA shared-memory extension on a GPU server: logits registered by CUDA IPC handle
are read device to device by the sampler actor. Needs a CUDA device (``pytest -m cuda``); not
run where this was written (no GPU there). The no-CUDA answer is tested in
test_oip_shared_memory.py, the registry and the CPU worker's answer in tests/shm/test_cuda_registry.py."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from samplerd.service.bench.process import ServerProcess, serving
from samplerd.service.generated.inference import grpc_service_pb2 as oip
from samplerd.service.generated.inference import grpc_service_pb2_grpc as oip_grpc

pytestmark = [pytest.mark.cuda, pytest.mark.e2e,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def gpu_server(ray_address: str) -> Iterator[ServerProcess]:
    with serving("--workers", "1", "--device", "cuda", "--ray-address", ray_address) as process:
        yield process


@pytest.fixture()
def stub(gpu_server: ServerProcess) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(gpu_server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        yield stub
        stub.CudaSharedMemoryUnregister(oip.CudaSharedMemoryUnregisterRequest(), timeout=30)


def exported(tensor: torch.Tensor) -> tuple[bytes, int, int]:
    """``(raw cudaIpcMemHandle_t, byte size of its allocation used, offset of the tensor in it)``."""
    _device, handle, size_bytes, offset_bytes, *_ = tensor.untyped_storage()._share_cuda_()
    return handle, offset_bytes + size_bytes, offset_bytes


def infer_request(region: str, logits: torch.Tensor, offset: int) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="samplerd")
    request.parameters["temperature"].double_param = 0.0  # greedy: the same token on any device
    datatype = {torch.float32: "FP32", torch.float16: "FP16", torch.bfloat16: "BF16"}[logits.dtype]
    tensor = request.inputs.add(name="logits", datatype=datatype, shape=list(logits.shape))
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = logits.numel() * logits.element_size()
    tensor.parameters["shared_memory_offset"].int64_param = offset
    request.outputs.add(name="token_ids")
    return request


def test_the_server_announces_the_extension(stub) -> None:
    assert "cuda_shared_memory" in stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=30).extensions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_logits_in_cuda_shared_memory_are_sampled_on_the_gpu(stub, dtype: torch.dtype) -> None:
    logits = (torch.randn(8, 32000, device="cuda") * 3).to(dtype)
    torch.cuda.synchronize()
    handle, byte_size, offset = exported(logits)
    stub.CudaSharedMemoryRegister(oip.CudaSharedMemoryRegisterRequest(
        name="logits_gpu", raw_handle=handle, device_id=logits.device.index or 0, byte_size=byte_size), timeout=30)
    assert stub.CudaSharedMemoryStatus(oip.CudaSharedMemoryStatusRequest(), timeout=30).regions["logits_gpu"] \
        .byte_size == byte_size

    response = stub.ModelInfer(infer_request("logits_gpu", logits, offset), timeout=120)

    tokens = np.frombuffer(response.raw_output_contents[0], "<i8").reshape(8, 1)[:, 0].tolist()
    assert tokens == logits.float().argmax(dim=1).tolist()


def test_outputs_are_not_written_to_cuda_regions(stub) -> None:
    logits = torch.randn(2, 100, device="cuda")
    handle, byte_size, offset = exported(logits)
    stub.CudaSharedMemoryRegister(oip.CudaSharedMemoryRegisterRequest(
        name="out_gpu", raw_handle=handle, device_id=0, byte_size=byte_size), timeout=30)
    request = infer_request("out_gpu", logits, offset)
    request.outputs[0].parameters["shared_memory_region"].string_param = "out_gpu"
    request.outputs[0].parameters["shared_memory_byte_size"].int64_param = 16

    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=60)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("outputs[0].parameters")

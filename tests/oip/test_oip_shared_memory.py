"""Triton's system shared-memory extension on the OIP endpoint, driven by the real tritonclient.

tritonclient runs in its own process and virtual environment (see
``test_open_inference_protocol.py``); ``tritonclient_shm_check.py`` is what it runs. The
server and the client share this machine's /dev/shm.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from test_open_inference_protocol import PARAMS, triton_python

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import ServerProcess, serving
from samplerd.service.client.shared_memory import SHM_DIR
from samplerd.service.generated.inference import grpc_service_pb2 as oip
from samplerd.service.generated.inference import grpc_service_pb2_grpc as oip_grpc

pytestmark = pytest.mark.e2e

CHECK_SCRIPT = Path(__file__).with_name("tritonclient_shm_check.py")


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return (np.random.default_rng(5).standard_normal((6, 3000)) * 3).astype(np.float32)


@pytest.fixture(scope="module")
def report(server: ServerProcess, logits: np.ndarray, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("oip-shm") / "logits.npy"
    np.save(path, logits)
    run = subprocess.run([str(triton_python()), str(CHECK_SCRIPT), server.target, str(path), json.dumps(PARAMS)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def expected(logits: np.ndarray) -> list[list[int]]:
    return sample(torch.from_numpy(logits), SamplingParams(**PARAMS)).token_ids.tolist()


def test_the_server_announces_the_extension(report: dict) -> None:
    assert "system_shared_memory" in report["extensions"]


def test_registered_regions_are_listed(report: dict, logits: np.ndarray) -> None:
    regions = report["status"]["regions"]
    assert sorted(regions) == ["logits_in", "tokens_out"]
    assert int(regions["logits_in"]["byte_size"]) == logits.nbytes
    assert regions["logits_in"]["key"].startswith("/samplerd_tc_in_")


def test_infer_reads_logits_from_and_writes_tokens_to_shared_memory(report: dict, logits: np.ndarray) -> None:
    fp32 = report["fp32"]
    assert fp32["token_ids"] == expected(logits)
    assert fp32["shape"] == [len(logits), 1]
    assert fp32["output_region"] == "tokens_out"
    assert len(fp32["entropy"]) == len(logits)  # an output not in shared memory comes back inline
    assert report["fp16"]["token_ids"] == sample(torch.from_numpy(logits.astype(np.float16)),
                                                 SamplingParams(**PARAMS)).token_ids.tolist()


def test_errors_carry_the_right_status(report: dict) -> None:
    errors = report["errors"]
    assert errors["unknown_region"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "logits.shared_memory.region" in errors["unknown_region"]["message"]
    assert errors["output_too_small"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "outputs[0]" in errors["output_too_small"]["message"]
    assert errors["register_path"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert errors["register_twice"]["status"] == "StatusCode.ALREADY_EXISTS"
    assert errors["too_large"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert errors["cuda"]["status"] in ("StatusCode.FAILED_PRECONDITION", "StatusCode.UNIMPLEMENTED")
    assert "system shared memory" in errors["cuda"]["message"]


def test_unregister_one_then_all(report: dict) -> None:
    assert report["after_unregister_one"] == ["tokens_out"]
    assert report["unregistered_region"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert report["after_unregister_all"] == {}


def shm_request(**input_parameters) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="samplerd")
    tensor = request.inputs.add(name="logits", datatype="FP32", shape=[2, 10])
    for name, value in input_parameters.items():
        if isinstance(value, str):
            tensor.parameters[name].string_param = value
        elif isinstance(value, float):
            tensor.parameters[name].double_param = value
        else:
            tensor.parameters[name].int64_param = value
    return request


@pytest.mark.parametrize(("parameters", "field"), [
    ({"shared_memory_region": "r"}, "logits.parameters.shared_memory_byte_size"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": -8}, "logits.parameters.shared_memory_byte_size"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 80, "shared_memory_offset": 1.5},
     "logits.parameters.shared_memory_offset"),
    ({"shared_memory_byte_size": 80}, "logits.parameters.shared_memory_byte_size"),
    ({"shared_memory_region": 3, "shared_memory_byte_size": 80}, "logits.parameters.shared_memory_region"),
    ({"shared_memory_region": "unregistered", "shared_memory_byte_size": 80}, "logits.shared_memory.region"),
    ({"shared_memory_region": "unregistered", "shared_memory_byte_size": 40}, "logits.shared_memory.byte_size"),
])
def test_malformed_input_references_are_invalid_argument_naming_the_parameter(
        server: ServerProcess, parameters: dict, field: str) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(shm_request(**parameters), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field), caught.value.details()


def test_cuda_register_answers_a_clear_error_without_cuda(server: ServerProcess) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA answer is not what it gives")
    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CudaSharedMemoryRegister(oip.CudaSharedMemoryRegisterRequest(name="g", raw_handle=b"\0" * 64,
                                                                              byte_size=64))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "needs a CUDA device" in caught.value.details()
        assert not stub.CudaSharedMemoryStatus(oip.CudaSharedMemoryStatusRequest()).regions
        assert "cuda_shared_memory" not in stub.ServerMetadata(oip.ServerMetadataRequest()).extensions


@pytest.fixture(scope="module")
def small_message_server(ray_address: str) -> Iterator[ServerProcess]:
    with serving("--workers", "1", "--device", "cpu", "--ray-address", ray_address,
                 "--max-message-bytes", str(64 << 10)) as process:
        yield process


def test_outputs_in_shared_memory_do_not_count_against_the_message_limit(small_message_server: ServerProcess) -> None:
    rows, vocab, k = 1024, 16, 8
    logits = (np.random.default_rng(9).standard_normal((rows, vocab)) * 3).astype(np.float32)
    top_ids_bytes, top_logprobs_bytes = rows * k * 8, rows * k * 4  # 96 KiB together: over the 64 KiB limit
    key = f"samplerd-oip-test-{os.getpid()}-{os.urandom(4).hex()}"
    path = SHM_DIR / key
    path.write_bytes(logits.tobytes() + bytes(top_ids_bytes + top_logprobs_bytes))
    request = oip.ModelInferRequest(model_name="samplerd")
    request.parameters["top_logprobs"].int64_param = k
    request.parameters["seed"].int64_param = 4
    tensor = request.inputs.add(name="logits", datatype="FP32", shape=[rows, vocab])
    tensor.parameters["shared_memory_region"].string_param = "all"
    tensor.parameters["shared_memory_byte_size"].int64_param = logits.nbytes
    for name in ("token_ids", "top_logprobs_ids", "top_logprobs"):
        request.outputs.add(name=name)
    try:
        with grpc.insecure_channel(small_message_server.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            stub.SystemSharedMemoryRegister(oip.SystemSharedMemoryRegisterRequest(
                name="all", key=key, byte_size=path.stat().st_size), timeout=30)
            with pytest.raises(grpc.RpcError) as caught:  # every output inline: over the limit
                stub.ModelInfer(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.details().startswith("outputs")
            for output, offset, size in ((request.outputs[1], logits.nbytes, top_ids_bytes),
                                         (request.outputs[2], logits.nbytes + top_ids_bytes, top_logprobs_bytes)):
                output.parameters["shared_memory_region"].string_param = "all"
                output.parameters["shared_memory_offset"].int64_param = offset
                output.parameters["shared_memory_byte_size"].int64_param = size
            response = stub.ModelInfer(request, timeout=60)
            stub.SystemSharedMemoryUnregister(oip.SystemSharedMemoryUnregisterRequest(name="all"), timeout=30)
        written = path.read_bytes()[logits.nbytes:]
    finally:
        path.unlink(missing_ok=True)
    assert [o.name for o in response.outputs] == ["token_ids", "top_logprobs_ids", "top_logprobs"]
    assert len(response.raw_output_contents) == 1  # only token_ids travelled in the message
    expected_out = sample(torch.from_numpy(logits), SamplingParams(top_logprobs=k, seed=4))
    assert np.frombuffer(response.raw_output_contents[0], "<i8").reshape(rows, 1).tolist() == \
        expected_out.token_ids.tolist()
    top_ids = np.frombuffer(written[:top_ids_bytes], "<i8").reshape(rows, k)
    assert top_ids.tolist() == np.asarray(expected_out.top_logprobs[0]).tolist()

"""The Open Inference Protocol front door (``inference.GRPCInferenceService``), end to end.

One real ``samplerd serve`` (one CPU worker, joined to the test session's Ray instance)
serves the module. The real ``tritonclient[grpc]`` from PyPI drives it from a separate
process and virtual environment (``.venv-tritonclient``, created on first use): it and
samplerd's generated copy of Triton's proto cannot share one Python process. The other
tests use samplerd's own generated stubs of the same service.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import ServerProcess
from samplerd.service.client import SamplerClient, field_violations
from samplerd.service.generated.inference import grpc_service_pb2 as oip
from samplerd.service.generated.inference import grpc_service_pb2_grpc as oip_grpc
from samplerd.service.oip import OUTPUTS, SERVICE_NAME

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TRITON_VENV = Path(os.environ.get("SAMPLERD_TRITONCLIENT_VENV", REPO / ".venv-tritonclient"))
CHECK_SCRIPT = Path(__file__).with_name("tritonclient_check.py")
PARAMS = {"top_p": 0.9, "seed": 7}


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return (np.random.default_rng(11).standard_normal((4, 1000)) * 3).astype(np.float32)


def triton_python() -> Path:
    """The Python of a virtual environment holding ``tritonclient[grpc]`` (created on first use)."""
    python = TRITON_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tritonclient.grpc"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    venv.create(TRITON_VENV, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "tritonclient[grpc]", "numpy"], check=True,
                   timeout=600)
    return python


@pytest.fixture(scope="module")
def tritonclient_report(server: ServerProcess, logits: np.ndarray, tmp_path_factory) -> dict:
    """What the real tritonclient saw (see tritonclient_check.py)."""
    path = tmp_path_factory.mktemp("oip") / "logits.npy"
    np.save(path, logits)
    run = subprocess.run([str(triton_python()), str(CHECK_SCRIPT), server.target, str(path), json.dumps(PARAMS)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def infer_request(logits: np.ndarray, datatype: str = "FP32", raw: bytes | None = None, **parameters):
    """A ModelInferRequest for ``samplerd`` with ``logits`` in raw_input_contents."""
    request = oip.ModelInferRequest(model_name="samplerd", id="req-1")
    request.inputs.add(name="logits", datatype=datatype, shape=list(logits.shape))
    request.raw_input_contents.append(raw if raw is not None else logits.astype("<f4").tobytes())
    for name, value in parameters.items():
        target = request.parameters[name]
        if isinstance(value, str):
            target.string_param = value
        elif isinstance(value, bool):
            target.bool_param = value
        elif isinstance(value, int):
            target.int64_param = value
        else:
            target.double_param = value
    return request


def outputs_of(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    """Each numeric output as a NumPy array of its shape."""
    types = {"INT64": "<i8", "FP32": "<f4", "FP64": "<f8"}
    arrays = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype in types:
            arrays[tensor.name] = np.frombuffer(raw, dtype=types[tensor.datatype]).reshape(list(tensor.shape))
    return arrays


def code_of(call) -> tuple[grpc.StatusCode, str, grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details(), caught.value


# -- the real tritonclient ----------------------------------------------------------------------


def test_tritonclient_sees_a_live_ready_server_and_model(tritonclient_report: dict) -> None:
    assert tritonclient_report["live"] is True
    assert tritonclient_report["ready"] is True
    assert tritonclient_report["model_ready"] is True
    assert tritonclient_report["other_model_ready"] is False
    meta = tritonclient_report["server_metadata"]
    assert meta["name"] == "samplerd" and "parameters" in meta["extensions"]


def test_tritonclient_reads_model_metadata_and_config(tritonclient_report: dict) -> None:
    meta = tritonclient_report["model_metadata"]
    assert meta["name"] == "samplerd" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "-1"]}]
    assert [o["name"] for o in meta["outputs"]] == [s.name for s in OUTPUTS]
    config = tritonclient_report["model_config"]["config"]
    assert config["input"][0] == {"name": "logits", "data_type": "TYPE_FP32", "dims": ["-1", "-1"]}
    assert {o["name"]: o["data_type"] for o in config["output"]}["token_ids"] == "TYPE_INT64"


def test_tritonclient_infer_equals_samplerd_sample_for_the_same_seed(
        tritonclient_report: dict, server: ServerProcess, logits: np.ndarray) -> None:
    with SamplerClient(server.target, timeout=60) as client:
        ours = client.sample(logits, **PARAMS)
    infer = tritonclient_report["infer"]
    assert infer["id"] == "tc-1" and infer["model_name"] == "samplerd"
    assert infer["token_ids"] == ours.token_ids
    np.testing.assert_allclose(infer["logprobs"], [row.logprobs for row in ours], rtol=1e-6)
    np.testing.assert_allclose(infer["entropy"], [row.entropy for row in ours], rtol=1e-6)
    assert infer["kept_tokens"] == [row.kept_tokens for row in ours]
    assert infer["strategy"] == ["top_p"] * len(logits)
    assert infer["outputs"]["token_ids"] == {"datatype": "INT64", "shape": [4, 1]}
    assert infer["outputs"]["entropy"] == {"datatype": "FP32", "shape": [4]}


def test_tritonclient_fp16_and_requested_outputs(tritonclient_report: dict, logits: np.ndarray) -> None:
    half = tritonclient_report["fp16"]
    assert half["outputs"] == ["token_ids", "kept_mass"]
    expected = sample(torch.from_numpy(logits.astype(np.float16)), SamplingParams(**PARAMS)).token_ids.tolist()
    assert half["token_ids"] == expected


def test_tritonclient_errors_carry_the_right_status(tritonclient_report: dict) -> None:
    errors = tritonclient_report["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "'gpt-17' is not served" in errors["unknown_model"]["message"]
    assert errors["bad_parameter"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "parameters.top_p" in errors["bad_parameter"]["message"]
    assert errors["unknown_parameter"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "unknown parameter 'top_q'" in errors["unknown_parameter"]["message"]


def test_tritonclient_reads_statistics(tritonclient_report: dict) -> None:
    stats = tritonclient_report["statistics"]
    assert stats["name"] == "samplerd"
    assert int(stats["inference_count"]) >= 8 and int(stats["execution_count"]) >= 2
    assert int(stats["inference_stats"]["fail"]["count"]) >= 2


# -- samplerd's own stubs of the same service ---------------------------------------------------


def test_liveness_and_readiness(stub) -> None:
    assert stub.ServerLive(oip.ServerLiveRequest()).live
    assert stub.ServerReady(oip.ServerReadyRequest()).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name="samplerd", version="1")).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name="samplerd", version="2")).ready


def test_typed_fp32_contents_equal_raw_contents(stub, logits: np.ndarray) -> None:
    raw = outputs_of(stub.ModelInfer(infer_request(logits, top_k=20, seed=3)))
    typed = infer_request(logits, top_k=20, seed=3)
    del typed.raw_input_contents[:]
    typed.inputs[0].contents.fp32_contents.extend(logits.ravel().tolist())
    np.testing.assert_array_equal(outputs_of(stub.ModelInfer(typed))["token_ids"], raw["token_ids"])


def test_bf16_logits_in_raw_contents(stub, logits: np.ndarray) -> None:
    bf16 = torch.from_numpy(logits).to(torch.bfloat16)
    raw = bf16.view(torch.int16).numpy().astype("<i2").tobytes()
    response = stub.ModelInfer(infer_request(logits, "BF16", raw=raw, min_p=0.05, seed=5))
    expected = sample(bf16, SamplingParams(min_p=0.05, seed=5)).token_ids.numpy()
    np.testing.assert_array_equal(outputs_of(response)["token_ids"], expected)


def test_n_step_top_logprobs_and_json_parameters(stub, logits: np.ndarray) -> None:
    response = stub.ModelInfer(infer_request(
        logits, n=3, top_logprobs=2, seed=9, step=4, temperature=0.7, logit_bias='{"5": 100}'))
    got = outputs_of(response)
    params = SamplingParams(n=3, top_logprobs=2, seed=9, temperature=0.7, logit_bias={5: 100.0})
    expected = sample(torch.from_numpy(logits), params, steps=4)
    assert got["token_ids"].shape == (4, 3) and got["top_logprobs_ids"].shape == (4, 2)
    np.testing.assert_array_equal(got["token_ids"], expected.token_ids.numpy())
    assert (got["token_ids"] == 5).all()  # a +100 bias makes token 5 all but certain
    np.testing.assert_array_equal(got["top_logprobs_ids"][:, 0], [5, 5, 5, 5])
    strategy = response.raw_output_contents[[o.name for o in response.outputs].index("strategy")]
    assert strategy == b"".join(len(b"temperature").to_bytes(4, "little") + b"temperature" for _ in range(4))


def test_mirostat_mu_is_returned(stub, logits: np.ndarray) -> None:
    got = outputs_of(stub.ModelInfer(infer_request(logits, mirostat=2, seed=1)))
    assert got["mirostat_mu"].shape == (4,) and np.isfinite(got["mirostat_mu"]).all()
    assert "top_logprobs" not in got  # off, and not asked for


def test_outputs_named_while_off_come_back_empty(stub, logits: np.ndarray) -> None:
    request = infer_request(logits, seed=1)
    for name in ("mirostat_mu", "top_logprobs_ids", "token_ids"):
        request.outputs.add(name=name)
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["mirostat_mu", "top_logprobs_ids", "token_ids"]
    got = outputs_of(response)
    assert np.isnan(got["mirostat_mu"]).all() and got["top_logprobs_ids"].shape == (4, 0)


def test_numbers_as_strings_for_perf_analyzer(stub, logits: np.ndarray) -> None:
    as_text = infer_request(logits, top_p="0.8", seed="12", top_k="40")
    typed = infer_request(logits, top_p=0.8, seed=12, top_k=40)
    np.testing.assert_array_equal(outputs_of(stub.ModelInfer(as_text))["token_ids"],
                                  outputs_of(stub.ModelInfer(typed))["token_ids"])


@pytest.mark.parametrize(("mutate", "code", "field"), [
    (lambda r: setattr(r, "model_name", "other"), grpc.StatusCode.NOT_FOUND, None),
    (lambda r: setattr(r, "model_version", "7"), grpc.StatusCode.NOT_FOUND, None),
    (lambda r: setattr(r.inputs[0], "name", "scores"), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].name"),
    (lambda r: setattr(r.inputs[0], "datatype", "INT32"), grpc.StatusCode.INVALID_ARGUMENT, "logits.datatype"),
    (lambda r: r.inputs[0].shape.append(1), grpc.StatusCode.INVALID_ARGUMENT, "logits.shape"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT, "logits.data"),
    (lambda r: r.parameters["top_k"].CopyFrom(oip.InferParameter(double_param=2.5)),
     grpc.StatusCode.INVALID_ARGUMENT, "parameters.top_k"),
    (lambda r: r.parameters["logit_bias"].CopyFrom(oip.InferParameter(string_param="{\"99999\": 1}")),
     grpc.StatusCode.INVALID_ARGUMENT, "parameters.logit_bias"),
    (lambda r: r.parameters["step"].CopyFrom(oip.InferParameter(int64_param=-1)),
     grpc.StatusCode.INVALID_ARGUMENT, "parameters.step"),
    (lambda r: r.parameters["top_p"].CopyFrom(oip.InferParameter(string_param="high")),
     grpc.StatusCode.INVALID_ARGUMENT, "parameters.top_p"),
    (lambda r: r.outputs.add(name="perplexity"), grpc.StatusCode.INVALID_ARGUMENT, "outputs[0].name"),
])
def test_bad_requests_get_the_right_code_and_name_the_field(stub, logits: np.ndarray, mutate, code, field) -> None:
    request = infer_request(logits[:2], seed=1)
    mutate(request)
    got, details, error = code_of(lambda: stub.ModelInfer(request, timeout=30))
    assert got == code, details
    if field is not None:
        assert [f for f, _ in field_violations(error)] == [field]
        assert details.startswith(field)


def test_nan_logits_are_refused(stub, logits: np.ndarray) -> None:
    bad = logits[:2].copy()
    bad[1, 3] = np.nan
    code, details, _ = code_of(lambda: stub.ModelInfer(infer_request(bad), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "row 1 contains NaN" in details


def test_triton_protocol_parameters_are_ignored(stub, logits: np.ndarray) -> None:
    request = infer_request(logits, seed=2, top_k=5, priority=1, timeout=10_000_000)
    plain = infer_request(logits, seed=2, top_k=5)
    np.testing.assert_array_equal(outputs_of(stub.ModelInfer(request))["token_ids"],
                                  outputs_of(stub.ModelInfer(plain))["token_ids"])


def test_unknown_model_metadata_is_not_found(stub) -> None:
    code, details, _ = code_of(lambda: stub.ModelMetadata(oip.ModelMetadataRequest(name="llama")))
    assert code == grpc.StatusCode.NOT_FOUND and "'llama' is not served" in details


def test_reflection_lists_the_inference_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert SERVICE_NAME in [s.name for s in reply.list_services_response.service]


def test_the_check_script_runs_without_this_repository_on_its_path() -> None:
    source = CHECK_SCRIPT.read_text()
    assert not any(name in source for name in ("from samplerd", "import samplerd", "from service", "from sampling"))

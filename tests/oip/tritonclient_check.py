"""Drive samplerd with the real ``tritonclient[grpc]`` package; print what it saw as JSON.

Runs in its OWN virtual environment (see ``test_open_inference_protocol.py``): tritonclient
registers Triton's ``grpc_service.proto`` in the protobuf descriptor pool, which samplerd's
generated copy of the same messages would collide with in one process. It imports nothing
from this repository.

Usage: ``python tritonclient_check.py TARGET LOGITS.npy PARAMS_JSON`` — PARAMS_JSON is the
``parameters`` dict passed to ``infer()`` (e.g. ``{"top_p": 0.9, "seed": 7}``).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def error_of(call) -> dict:
    """``{"status": ..., "message": ...}`` of the InferenceServerException ``call()`` raises."""
    try:
        call()
    except InferenceServerException as error:
        return {"status": error.status(), "message": error.message()}
    return {"status": None, "message": None}


def main(target: str, logits_path: str, params_json: str) -> None:
    """Run every check against ``target`` and print one JSON object."""
    logits = np.load(logits_path)
    parameters = json.loads(params_json)
    client = grpcclient.InferenceServerClient(url=target)
    report: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("samplerd"),
        "other_model_ready": client.is_model_ready("gpt-17"),
    }
    server = client.get_server_metadata(as_json=True)
    report["server_metadata"] = server
    report["model_metadata"] = client.get_model_metadata("samplerd", as_json=True)
    report["model_config"] = client.get_model_config("samplerd", as_json=True)

    infer_input = grpcclient.InferInput("logits", list(logits.shape), "FP32")
    infer_input.set_data_from_numpy(logits.astype(np.float32))
    result = client.infer("samplerd", [infer_input], parameters=parameters, request_id="tc-1")
    response = result.get_response(as_json=True)
    report["infer"] = {
        "id": response.get("id"),
        "model_name": response.get("model_name"),
        "outputs": {o["name"]: {"datatype": o["datatype"], "shape": [int(d) for d in o["shape"]]}
                    for o in response["outputs"]},
        "token_ids": result.as_numpy("token_ids").tolist(),
        "logprobs": result.as_numpy("logprobs").tolist(),
        "entropy": result.as_numpy("entropy").tolist(),
        "kept_tokens": result.as_numpy("kept_tokens").tolist(),
        "strategy": [s.decode() for s in result.as_numpy("strategy").tolist()],
    }
    # FP16 through the raw path, only two outputs requested.
    half = grpcclient.InferInput("logits", list(logits.shape), "FP16")
    half.set_data_from_numpy(logits.astype(np.float16))
    wanted = [grpcclient.InferRequestedOutput("token_ids"), grpcclient.InferRequestedOutput("kept_mass")]
    half_result = client.infer("samplerd", [half], outputs=wanted, parameters=parameters)
    report["fp16"] = {
        "outputs": [o["name"] for o in half_result.get_response(as_json=True)["outputs"]],
        "token_ids": half_result.as_numpy("token_ids").tolist(),
    }
    report["errors"] = {
        "unknown_model": error_of(lambda: client.infer("gpt-17", [infer_input])),
        "bad_parameter": error_of(lambda: client.infer("samplerd", [infer_input], parameters={"top_p": 1.5})),
        "unknown_parameter": error_of(lambda: client.infer("samplerd", [infer_input], parameters={"top_q": 0.5})),
    }
    stats = client.get_inference_statistics("samplerd", as_json=True)
    report["statistics"] = stats["model_stats"][0]
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Drive samplerd's system shared-memory extension with the real ``tritonclient[grpc]``; print JSON.

Runs in tritonclient's own virtual environment, like ``tritonclient_check.py`` (which says
why), and imports nothing from this repository. Exactly what a Triton user writes:
``tritonclient.utils.shared_memory`` regions, ``register_system_shared_memory``,
``InferInput.set_shared_memory`` and ``InferRequestedOutput.set_shared_memory``.

Usage: ``python tritonclient_shm_check.py TARGET LOGITS.npy PARAMS_JSON``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException


def error_of(call) -> dict:
    """``{"status": ..., "message": ...}`` of the InferenceServerException ``call()`` raises."""
    try:
        call()
    except InferenceServerException as error:
        return {"status": error.status(), "message": error.message()}
    return {"status": None, "message": None}


def infer_by_shm(client, logits: np.ndarray, datatype: str, parameters: dict, in_region: str,
                 out_region: str, out_bytes: int):
    """One ModelInfer with ``logits`` in ``in_region`` and token_ids in ``out_region``."""
    infer_input = grpcclient.InferInput("logits", list(logits.shape), datatype)
    infer_input.set_shared_memory(in_region, logits.nbytes)
    tokens = grpcclient.InferRequestedOutput("token_ids")
    tokens.set_shared_memory(out_region, out_bytes)
    entropy = grpcclient.InferRequestedOutput("entropy")
    return client.infer("samplerd", [infer_input], outputs=[tokens, entropy], parameters=parameters)


def main(target: str, logits_path: str, params_json: str) -> None:
    """Run every check against ``target`` and print one JSON object."""
    logits = np.load(logits_path).astype(np.float32)
    parameters = json.loads(params_json)
    client = grpcclient.InferenceServerClient(url=target)
    rows = logits.shape[0]
    suffix = os.getpid()
    in_handle = shm.create_shared_memory_region("logits_in", f"/samplerd_tc_in_{suffix}", logits.nbytes)
    out_handle = shm.create_shared_memory_region("tokens_out", f"/samplerd_tc_out_{suffix}", rows * 8)
    report: dict = {"extensions": client.get_server_metadata(as_json=True).get("extensions", [])}
    try:
        shm.set_shared_memory_region(in_handle, [logits])
        client.register_system_shared_memory("logits_in", f"/samplerd_tc_in_{suffix}", logits.nbytes)
        client.register_system_shared_memory("tokens_out", f"/samplerd_tc_out_{suffix}", rows * 8)
        report["status"] = client.get_system_shared_memory_status(as_json=True)
        result = infer_by_shm(client, logits, "FP32", parameters, "logits_in", "tokens_out", rows * 8)
        token_output = result.get_output("token_ids")  # (its as_json=True path returns None)
        shape = [int(d) for d in token_output.shape]
        report["fp32"] = {
            "token_ids": shm.get_contents_as_numpy(out_handle, np.int64, shape).tolist(),
            "shape": shape,
            "output_region": token_output.parameters["shared_memory_region"].string_param,
            "entropy": result.as_numpy("entropy").tolist(),
        }
        half = logits.astype(np.float16)
        shm.set_shared_memory_region(in_handle, [half])
        result = infer_by_shm(client, half, "FP16", parameters, "logits_in", "tokens_out", rows * 8)
        report["fp16"] = {"token_ids": shm.get_contents_as_numpy(out_handle, np.int64, shape).tolist()}
        report["errors"] = {
            "unknown_region": error_of(lambda: infer_by_shm(client, logits, "FP32", parameters, "nope",
                                                            "tokens_out", rows * 8)),
            "output_too_small": error_of(lambda: infer_by_shm(client, logits, "FP32", parameters, "logits_in",
                                                              "tokens_out", 8 if rows > 1 else 4)),
            "register_path": error_of(lambda: client.register_system_shared_memory("evil", "/../etc/passwd", 8)),
            "register_twice": error_of(lambda: client.register_system_shared_memory(
                "logits_in", f"/samplerd_tc_in_{suffix}", 8)),
            "too_large": error_of(lambda: client.register_system_shared_memory(
                "big", f"/samplerd_tc_out_{suffix}", rows * 8 + 1)),
            "cuda": error_of(lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)),
        }
        client.unregister_system_shared_memory("logits_in")
        report["after_unregister_one"] = sorted(client.get_system_shared_memory_status(as_json=True)
                                                .get("regions", {}))
        report["unregistered_region"] = error_of(lambda: infer_by_shm(
            client, logits, "FP32", parameters, "logits_in", "tokens_out", rows * 8))
        client.unregister_system_shared_memory()
        report["after_unregister_all"] = client.get_system_shared_memory_status(as_json=True).get("regions", {})
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])

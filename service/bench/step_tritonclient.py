"""The tritonclient row of ``samplerd bench step``, run in tritonclient's own Python.

It imports nothing from samplerd (tritonclient's copy of Triton's proto and samplerd's would
collide in one process). Usage: ``python step_bench_tritonclient.py TARGET ROWS VOCAB DTYPE``;
prints ``ready``, then for each line N on stdin times N ``ModelInfer`` calls with the logits in
a registered system shared-memory region and prints their seconds, comma-separated.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

PARAMS = {"top_p": 0.9, "min_p": 0.05, "top_k": 50, "temperature": 0.7, "seed": 1}


def main(target: str, rows: str, vocab: str, datatype: str) -> None:
    shape = [int(rows), int(vocab)]
    values = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 3
    if datatype == "FP16":
        values = values.astype(np.float16)
    elif datatype == "BF16":
        values = (values.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bits
    key = f"/samplerd_bench_{os.getpid()}"
    client = grpcclient.InferenceServerClient(url=target)
    handle = shm.create_shared_memory_region("bench_logits", key, values.nbytes)
    try:
        shm.set_shared_memory_region(handle, [values])
        client.register_system_shared_memory("bench_logits", key, values.nbytes)
        infer_input = grpcclient.InferInput("logits", shape, datatype)
        infer_input.set_shared_memory("bench_logits", values.nbytes)
        outputs = [grpcclient.InferRequestedOutput("token_ids")]

        def call() -> None:
            client.infer("samplerd", [infer_input], outputs=outputs, parameters=PARAMS)

        call()
        print("ready", flush=True)
        for line in sys.stdin:
            seconds = []
            for _ in range(int(line)):
                started = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - started)
            print(",".join(f"{s:.6f}" for s in seconds), flush=True)
        client.unregister_system_shared_memory("bench_logits")
    finally:
        shm.destroy_shared_memory_region(handle)


if __name__ == "__main__":
    main(*sys.argv[1:])

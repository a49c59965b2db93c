"""The README's Node.js example (examples/node/sample.js) runs from any working directory
against a real samplerd and prints the tokens the sampling library draws."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "node" / "sample.js"
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"


def test_the_readme_shows_the_example_file_verbatim() -> None:
    blocks = re.findall(r"```js\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert EXAMPLE.read_text() in blocks


def test_the_example_runs_from_another_directory(node: str, server: ServerProcess, tmp_path: Path) -> None:
    expected = sample(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), SamplingParams(top_p=0.9, seed=7)).token_ids[0].tolist()
    env = {**os.environ, "SAMPLERD_TARGET": server.target, "NODE_PATH": str(NODE_MODULES)}
    env.pop("SAMPLERD_PROTO_DIR", None)
    run = subprocess.run([node, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stdout + run.stderr
    reply = json.loads(run.stdout.strip().splitlines()[-1])
    assert reply["token_ids"] == expected and reply["strategy"] == "top_p"
    assert reply["entropy"] > 0

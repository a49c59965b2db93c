"""A newcomer's first hour, against a real ``samplerd serve --model demo`` (one CPU sampler
worker and the demo language model, joined to the test session's Ray instance): the README's
Python examples run as printed, ``client.wait()`` returns once calls are answered and the
server says so in one line, the Generate and SampleStream helpers work, and shutdown is quiet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.client import SamplerClient

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README_TARGET = "localhost:50051"


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The XDG cache directory the server writes the demo model to (not the user's)."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="module")
def demo_server(ray_address: str, demo_cache: Path) -> Iterator[ServerProcess]:
    """``samplerd serve --model demo``, started but NOT waited for: the first test waits."""
    process = start_server("--workers", "1", "--device", "cpu", "--ray-address", ray_address, "--model", "demo",
                           "--model-device", "cpu", "--grace-seconds", "5", env={"XDG_CACHE_HOME": str(demo_cache)})
    try:
        yield process
    finally:
        process.terminate()


def output_line(server: ServerProcess, prefix: str, timeout_s: float = 10.0) -> str:
    """The first line of the server's output starting with ``prefix`` (waits for it a little)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in list(server.output) if line.startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no line starting with {prefix!r} in:\n" + "\n".join(server.output))


def readme_python_examples() -> list[str]:
    """The README's Python code blocks that call a samplerd at the quickstart's address."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    return [block for block in blocks if f'SamplerClient("{README_TARGET}")' in block]


def test_wait_returns_once_the_server_answers_and_the_server_says_it_is_ready(demo_server: ServerProcess,
                                                                               demo_cache: Path) -> None:
    with SamplerClient(demo_server.target) as client:
        client.wait(timeout=300)
        result = client.sample(np.zeros((2, 16), dtype=np.float32), seed=1)  # no UNAVAILABLE after wait()
    assert [len(ids) for ids in result.token_ids] == [1, 1]

    model = demo_cache / "samplerd" / "demo-model"
    ready = output_line(demo_server, "samplerd: ready:")
    assert ready == f"samplerd: ready: 1 sampler worker on cpu, language model {model}; health SERVING"
    lines = list(demo_server.output)
    listening = next(i for i, line in enumerate(lines) if line.startswith("samplerd: listening grpc="))
    assert listening < lines.index(ready)
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()


def test_the_readme_has_quickstart_session_and_generate_examples() -> None:
    examples = readme_python_examples()
    assert any("client.sample(" in code for code in examples)
    assert any("client.session(" in code and "session.step(" in code for code in examples)
    assert any("client.generate(" in code for code in examples)
    assert all("client.wait(" in code for code in examples)


@pytest.mark.parametrize("index", range(3))
def test_the_readme_python_examples_run_as_printed(demo_server: ServerProcess, index: int) -> None:
    code = readme_python_examples()[index].replace(README_TARGET, demo_server.target)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": path}, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip(), run.stderr


def test_generate_streams_the_tokens_then_the_finish(demo_server: ServerProcess) -> None:
    with SamplerClient(demo_server.target, timeout=120) as client:
        client.wait(timeout=300)
        stream = client.generate("The quick brown fox", max_tokens=8, ignore_eos=True, top_p=0.9, seed=7)
        assert stream.reason is None
        tokens = list(stream)
        again = client.generate("The quick brown fox", max_tokens=8, ignore_eos=True, top_p=0.9, seed=7).text()

    assert [t.index for t in tokens] == list(range(8))
    assert stream.reason == "LENGTH"
    assert list(stream.finish.token_ids) == [t.token_id for t in tokens]
    assert stream.finish.output_text == "".join(t.text for t in tokens) == again  # seeded: reproducible
    assert all(t.strategy == "top_p" for t in tokens)


def test_a_session_steps_subsets_forces_tokens_and_closes(demo_server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    logits = [rng.standard_normal((2, 64)).astype(np.float32) for _ in range(3)]

    def run_session(client: SamplerClient) -> tuple[list, object]:
        tokens = []
        with client.session(["a", "b"], top_p=0.9, seed=11) as session:
            assert session.opened.sequences == 2
            for step_logits in logits[:2]:
                step = session.step(step_logits)
                assert list(step.rows) == ["a", "b"]
                tokens.append([step.rows["a"].token_ids, step.rows["b"].token_ids])
            only_b = session.step(logits[2][1:], sequence_ids=["b"], forced={"a": [5]})
            assert list(only_b.rows) == ["b"]
            tokens.append(only_b.rows["b"].token_ids)
            closed = session.close()
            with pytest.raises(RuntimeError, match="closed"):
                session.step(logits[0])
        return tokens, closed

    with SamplerClient(demo_server.target, timeout=120) as client:
        client.wait(timeout=300)
        first, closed = run_session(client)
        second, _ = run_session(client)
    assert first == second  # same seed, same steps: same tokens
    assert all(0 <= t < 64 for pair in first[:2] for ids in pair for t in ids)
    assert closed.steps == 3 and {s.sequence_id for s in closed.sequences} == {"a", "b"}


def test_shutdown_is_quiet(demo_server: ServerProcess) -> None:
    """Start-up and SIGTERM print no third-party noise: no gRPC fork lines, no Ray SIGTERM
    warning or stack dump (runs last in this module: it stops the server)."""
    assert demo_server.terminate() == 0
    demo_server.reader.join(10)
    output = "\n".join(demo_server.output)
    for noise in ("fork_posix", "SIGTERM handler is not set", "SIGTERM received", "PC: @"):
        assert noise not in output, output
    assert "shutting down" in output

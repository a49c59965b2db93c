"""The user-facing commands: ``samplerd sample``, ``samplerd strategies``, ``--help`` on every
command, one-line errors, and the benchmarks' ``--json``/``--plot`` outputs.

``sample --target`` and ``strategies --target`` talk to a real ``samplerd serve`` (one CPU
worker, joined to the test session's Ray instance); ``--local`` samples in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.sampling.registry import PARAMETERS, STRATEGIES
from samplerd.service.bench.process import ServerProcess
from samplerd.service.bench.service import Measurement
from samplerd.service.bench.service import plot as plot_service
from samplerd.service.cli.commands import flag_of
from samplerd.service.cli.main import main

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def samplerd(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``samplerd ARGV`` as a child process (the console script's module)."""
    return subprocess.run([sys.executable, "-m", "samplerd.service.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def logits_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "logits.npy"
    np.save(path, (np.random.default_rng(5).standard_normal((3, 400)) * 3).astype(np.float32))
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


# -- --help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["serve"], ["sample"], ["strategies"], ["bench", "service"],
                                     ["bench", "kernels"], []])
def test_every_command_has_help(command: list[str]) -> None:
    run = samplerd(*command, "--help")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: samplerd")


def test_sample_help_has_a_flag_for_every_sampling_parameter() -> None:
    text = samplerd("sample", "--help").stdout
    for name in PARAMETERS:
        assert flag_of(name) in text, name
    assert "--target" in text and "--local" in text and "--json" in text
    assert "Range (0, 1]" in " ".join(text.split())  # top_p's range, from the registry


def test_bench_help_mentions_json_and_plot() -> None:
    for target in ("service", "kernels"):
        text = samplerd("bench", target, "--help").stdout
        assert "--json" in text and "--plot" in text


# -- sample ----------------------------------------------------------------------------------------


def test_local_sample_equals_the_library(logits_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    got = run_json(capsys, "sample", str(logits_file), "--local", "--top-p", "0.8", "--seed", "3", "--n", "2",
                   "--top-logprobs", "2", "--json")
    params = SamplingParams(top_p=0.8, seed=3, n=2, top_logprobs=2)
    expected = sample(torch.from_numpy(np.load(logits_file)), params)
    assert [row["token_ids"] for row in got["rows"]] == expected.token_ids.tolist()
    assert [row["strategy"] for row in got["rows"]] == ["top_p"] * 3
    assert all(len(row["top_logprobs"]) == 2 for row in got["rows"])
    np.testing.assert_allclose([row["entropy"] for row in got["rows"]], expected.stats.entropy.numpy(), rtol=1e-6)


def test_server_sample_equals_local_sample(server: ServerProcess, logits_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--min-p", "0.05", "--temperature", "0.9", "--seed", "11", "--step", "2", "--logit-bias", "7=1.5",
             "--json"]
    remote = run_json(capsys, "sample", str(logits_file), "--target", server.target, *flags)
    local = run_json(capsys, "sample", str(logits_file), "--local", *flags)
    assert [r["token_ids"] for r in remote["rows"]] == [r["token_ids"] for r in local["rows"]]
    np.testing.assert_allclose([r["kept_mass"] for r in remote["rows"]], [r["kept_mass"] for r in local["rows"]],
                               rtol=1e-5)


def test_sample_prints_a_table(server: ServerProcess, logits_file: Path) -> None:
    run = samplerd("sample", str(logits_file), "--target", server.target, "--top-k", "5", "--seed", "1")
    assert run.returncode == 0, run.stderr
    for heading in ("token ids", "log-probs", "entropy", "kept mass"):
        assert heading in run.stdout
    assert run.stdout.count("top_k") == 3


def test_a_one_dimensional_float64_array_is_one_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "row.npy"
    np.save(path, np.array([0.0, 5.0, 1.0]))
    got = run_json(capsys, "sample", str(path), "--local", "--temperature", "0", "--json")
    assert [row["token_ids"] for row in got["rows"]] == [[1]]


# -- one-line errors ------------------------------------------------------------------------------


def one_line_error(run: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert run.returncode == code, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_a_bad_flag_value_is_one_line(logits_file: Path) -> None:
    one_line_error(samplerd("sample", str(logits_file), "--top-p", "abc"), 2, "--top-p", "invalid number: 'abc'")


def test_an_out_of_range_parameter_is_one_line_naming_the_flag(logits_file: Path) -> None:
    line = one_line_error(samplerd("sample", str(logits_file), "--local", "--top-p", "1.5"), 1)
    assert line == "samplerd: error: --top-p: top_p must be in (0, 1], got 1.5"


def test_an_unreachable_server_is_one_line(logits_file: Path) -> None:
    one_line_error(samplerd("sample", str(logits_file), "--target", "127.0.0.1:1", "--timeout", "5"), 1,
                   "cannot reach samplerd at 127.0.0.1:1")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"not numpy at all", "not a .npy file"),
    (None, "no such file"),
    ("ints", "must be float32, float16 or float64, got int64"),
    ("3d", "must have shape [V] or [B, V]"),
])
def test_a_bad_npy_file_is_one_line(tmp_path: Path, content, fragment: str) -> None:
    path = tmp_path / "bad.npy"
    if content == "ints":
        np.save(path, np.arange(10))
    elif content == "3d":
        np.save(path, np.zeros((2, 3, 4), dtype=np.float32))
    elif content is not None:
        path.write_bytes(content)
    one_line_error(samplerd("sample", str(path), "--local"), 1, fragment)


def test_a_token_outside_the_vocabulary_is_one_line(logits_file: Path) -> None:
    one_line_error(samplerd("sample", str(logits_file), "--local", "--logit-bias", "999=1"), 1, "--logit-bias",
                   "999")


# -- strategies -------------------------------------------------------------------------------------


def test_strategies_lists_every_strategy_with_its_paper(capsys: pytest.CaptureFixture[str]) -> None:
    got = run_json(capsys, "strategies", "--json")["strategies"]
    assert {s["name"] for s in got} == {s.name for s in STRATEGIES}
    top_p = next(s for s in got if s["name"] == "top_p")
    assert "Holtzman" in top_p["paper"] and top_p["parameters"][0]["range"] == "(0, 1]"
    table = samplerd("strategies").stdout
    for declared in STRATEGIES:
        assert declared.name in table


def test_strategies_from_a_server_equal_the_registry(server: ServerProcess,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "strategies", "--target", server.target, "--json") == run_json(
        capsys, "strategies", "--json")


# -- bench outputs ----------------------------------------------------------------------------------


def test_bench_kernels_writes_json_and_a_plot_over_batch_sizes(tmp_path: Path) -> None:
    run = samplerd("bench", "kernels", "--rows", "1,2", "--vocab", "300", "--cases", "randn", "--device", "cpu",
                   "--repeats", "1", "--json", str(tmp_path / "k.json"), "--plot", str(tmp_path / "k.png"),
                   "--no-progress", timeout=300)
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "k.json").read_text())
    assert sorted({r["rows"] for r in rows}) == [1, 2]
    assert (tmp_path / "k.png").read_bytes().startswith(PNG_MAGIC)


def test_bench_kernels_check_exits_1_exactly_when_a_row_misses_its_target(tmp_path: Path) -> None:
    run = samplerd("bench", "kernels", "--rows", "1", "--vocab", "300", "--cases", "randn", "--device", "cpu",
                   "--repeats", "1", "--no-progress", "--check", timeout=300)
    assert "rows meet their target" in run.stdout, run.stdout + run.stderr
    assert run.returncode == (1 if "MISSED" in run.stdout else 0), run.stdout + run.stderr


def test_bench_service_plot(tmp_path: Path) -> None:
    results = [Measurement(target, c, 100.0 * c, 100.0 * c, 1.0 + c, 2.0 + c, 0)
               for target in ("empty", "samplerd") for c in (1, 16, 64)]
    plot_service(results, str(tmp_path / "s.png"), "B=1 V=32000")
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_MAGIC)

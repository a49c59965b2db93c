"""What a newcomer sees when something is wrong: a taken port, a misspelt flag, bad logits, and
the common parameters in ``samplerd strategies``. Each is one line on stderr, naming the cause."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
COMMON = {"seed", "n", "top_logprobs", "min_tokens_to_keep", "stats_top_k"}


def samplerd(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "samplerd.service.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.strip()]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_taken_port_is_one_line_naming_the_port_and_the_flag(taken_port: int, flag: str) -> None:
    ports = {"--port": "0", "--metrics-port": "0", flag: str(taken_port)}
    run = samplerd("serve", "--host", "127.0.0.1", "--port", ports["--port"], "--metrics-port",
                   ports["--metrics-port"], "--workers", "1", "--device", "cpu")

    assert run.returncode == 1, run.stdout + run.stderr
    assert error_lines(run) == [f"samplerd: error: cannot listen on 127.0.0.1:{taken_port} ({flag}): already in use; "
                                f"pick another port with {flag} (0 = any free port)"], run.stderr
    assert "listening" not in run.stdout  # it stopped before claiming to listen, and before Ray


@pytest.mark.parametrize(("typed", "meant"), [("--top_p", "--top-p"), ("--min_tokens_to_keep", "--min-tokens-to-keep"),
                                              ("--temprature", "--temperature")])
def test_a_misspelt_flag_gets_a_suggestion(tmp_path: Path, typed: str, meant: str) -> None:
    path = tmp_path / "logits.npy"
    np.save(path, np.zeros((1, 8), dtype=np.float32))
    run = samplerd("sample", str(path), "--local", typed, "0.9")

    assert run.returncode == 2
    [line] = error_lines(run)
    assert f"unrecognized arguments: {typed} 0.9; did you mean {meant}?" in line, run.stderr


def test_a_serve_flag_with_underscores_gets_a_suggestion() -> None:
    run = samplerd("serve", "--metrics_port", "9999")
    assert run.returncode == 2 and "did you mean --metrics-port?" in run.stderr, run.stderr
    assert len(error_lines(run)) == 1, run.stderr


@pytest.mark.parametrize(("value", "what"), [(np.nan, "NaN"), (np.inf, "+inf")])
def test_bad_logits_in_a_file_blame_the_file_not_a_flag(tmp_path: Path, value: float, what: str) -> None:
    path = tmp_path / "bad.npy"
    logits = np.zeros((2, 8), dtype=np.float32)
    logits[1, 3] = value
    np.save(path, logits)
    run = samplerd("sample", str(path), "--local", "--top-p", "0.9")

    assert run.returncode == 1
    [line] = error_lines(run)
    assert line.startswith(f"samplerd: error: {path}: ") and "row 1" in line and what in line, line
    assert "--logits" not in line


def test_strategies_lists_the_common_parameters() -> None:
    listing = json.loads(samplerd("strategies", "--json").stdout)
    common = {p["name"]: p for p in listing["common_parameters"]}
    assert set(common) == COMMON
    assert common["seed"]["range"] == "[0, 18446744073709551615]" and common["n"]["default"] == "1"

    table = samplerd("strategies").stdout
    for name in COMMON:
        assert "--" + name.replace("_", "-") in table, name

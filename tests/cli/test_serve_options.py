"""The ``samplerd`` command line: options, environment variables, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from samplerd.service.cli.main import SERVE_OPTIONS, build_parser, env_name, main, parse_args


def test_serve_help_lists_every_option_with_its_environment_variable() -> None:
    text = subprocess.run([sys.executable, "-m", "samplerd.service.cli", "serve", "--help"],
                          capture_output=True, text=True,
                          timeout=60, check=True).stdout
    for flag, *_ in SERVE_OPTIONS:
        assert flag in text
        assert env_name(flag) in text


def test_environment_variables_set_defaults_and_flags_override_them() -> None:
    environ = {"SAMPLERD_MAX_BATCH_ROWS": "512", "SAMPLERD_RAY_ADDRESS": "none", "SAMPLERD_DEVICE": "cpu"}
    args = build_parser(environ).parse_args(["serve"])
    assert (args.max_batch_rows, args.ray_address, args.device) == (512, None, "cpu")
    assert build_parser(environ).parse_args(["serve", "--max-batch-rows", "8"]).max_batch_rows == 8


def test_fractional_gpus_per_worker_are_accepted() -> None:
    assert build_parser({}).parse_args(["serve", "--num-gpus-per-worker", "0.25"]).num_gpus_per_worker == 0.25


def test_a_bad_environment_value_is_one_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAMPLERD_PORT", "http")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "samplerd: error: SAMPLERD_PORT='http' is not a valid port (0-65535)"


@pytest.mark.parametrize("argv", [["serve", "--device", "tpu"], ["serve", "--workers", "0"], ["serve", "--port", "-1"],
                                  ["serve", "--batch-transport", "channel"]])
def test_a_bad_flag_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser({}).parse_args(argv)
    assert caught.value.code == 2


def test_bench_kernels_passes_its_arguments_on() -> None:
    args = parse_args(["bench", "kernels", "--rows", "4", "--vocab", "100", "--help"], {})
    assert (args.target, args.args) == ("kernels", ["--rows", "4", "--vocab", "100", "--help"])


def test_unknown_arguments_elsewhere_are_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse_args(["serve", "--rows", "4"], {})


def test_bench_service_has_the_issue_defaults() -> None:
    args = build_parser({}).parse_args(["bench", "service"])
    assert (args.rows, args.vocab, args.top_p, args.concurrency) == (1, 32000, 0.9, "1,16,64")

"""``samplerd serve --model`` options, a model directory that does not load, ``samplerd bench generate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from samplerd.service.bench.process import start_server
from samplerd.service.cli.main import build_parser, main, parse_args
from samplerd.service.config import ServerConfig


def test_model_options_have_flags_environment_variables_and_defaults(tmp_path: Path) -> None:
    args = build_parser({}).parse_args(["serve"])
    assert (args.model, args.model_device, args.model_dtype, args.model_max_tokens) == (None, "auto", "auto", 4096)
    environ = {"SAMPLERD_MODEL": str(tmp_path), "SAMPLERD_MODEL_DEVICE": "cpu", "SAMPLERD_MODEL_DTYPE": "bfloat16",
               "SAMPLERD_MODEL_MAX_TOKENS": "128"}
    args = build_parser(environ).parse_args(["serve", "--model-dtype", "float32"])
    assert (args.model, args.model_device, args.model_dtype, args.model_max_tokens) == (
        str(tmp_path.resolve()), "cpu", "float32", 128)
    assert build_parser(environ).parse_args(["serve", "--model", "none"]).model is None
    assert {"model", "model_device", "model_dtype", "model_max_tokens"} <= set(ServerConfig.__dataclass_fields__)


def test_replica_options_have_flags_environment_variables_and_defaults() -> None:
    args = build_parser({}).parse_args(["serve"])
    assert (args.model_replicas, args.model_gpus_per_replica) == (1, None)
    environ = {"SAMPLERD_MODEL_REPLICAS": "3", "SAMPLERD_MODEL_GPUS_PER_REPLICA": "0.5"}
    args = build_parser(environ).parse_args(["serve"])
    assert (args.model_replicas, args.model_gpus_per_replica) == (3, 0.5)
    args = build_parser(environ).parse_args(["serve", "--model-replicas", "2", "--model-gpus-per-replica", "auto"])
    assert (args.model_replicas, args.model_gpus_per_replica) == (2, None)
    assert {"model_replicas", "model_gpus_per_replica"} <= set(ServerConfig.__dataclass_fields__)


@pytest.mark.parametrize("argv", [["serve", "--model", "/no/such/dir"], ["serve", "--model-dtype", "int8"],
                                  ["serve", "--model-device", "tpu"], ["serve", "--model-max-tokens", "0"],
                                  ["serve", "--model-replicas", "0"], ["serve", "--model-gpus-per-replica", "-1"]])
def test_bad_model_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(argv)
    assert leaving.value.code == 2
    assert argv[1] in capsys.readouterr().err


@pytest.mark.e2e
def test_a_directory_without_a_model_stops_the_server_with_one_clear_line(tmp_path: Path, ray_address: str) -> None:
    server = start_server("--workers", "1", "--device", "cpu", "--ray-address", ray_address, "--model", str(tmp_path))
    try:
        code = server.process.wait(120)
    finally:
        server.terminate()
    server.reader.join(10)
    assert code == 1
    assert any(line.startswith("samplerd: error: ModelLoadError:") for line in server.output), "\n".join(server.output)


def test_bench_generate_prints_the_engine_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["bench", "generate", "--no-grpc", "--concurrency", "1,4", "--max-tokens", "4", "--repeats", "1"])
    assert main(["bench", "generate", "--no-grpc", "--concurrency", "1,4", "--max-tokens", "4",
                 "--repeats", "1"]) == 0
    assert args.target == "generate" and args.no_grpc
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("1 concurrent") for line in lines)
    assert any(line.startswith("4 concurrent") and "padded" in line for line in lines)

"""The ``samplerd`` command: ``serve`` the service, ``bench`` it.

Every ``serve`` option can also be set with an environment variable ``SAMPLERD_<OPTION>``
(upper case, dashes as underscores, e.g. ``SAMPLERD_MAX_BATCH_ROWS=512``); a flag on the
command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from samplerd.service.config import ServerConfig
from samplerd.service.demo_model import DEMO
from samplerd.service.ports import PortInUseError
from samplerd.service.quiet_logs import quiet_third_party_logs
from samplerd.workers.config import BATCH_TRANSPORTS, DEVICES, MODEL_DTYPES

_DEFAULTS = ServerConfig()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _device(text: str) -> str:
    if text not in DEVICES:
        raise ValueError(text)
    return text


def _optional_address(text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def _batch_transport(text: str) -> str:
    if text not in BATCH_TRANSPORTS:
        raise ValueError(text)
    return text


def _model_dir(text: str) -> str | None:
    """A model directory that exists ('' or 'none': no model; 'demo': the demo model), made
    absolute for the actor."""
    if text.lower() in ("", "none"):
        return None
    if text == DEMO:
        return DEMO  # written to the cache when the server starts, not while parsing
    if not os.path.isdir(text):
        raise ValueError(text)
    return os.path.abspath(text)


def _optional_gpus(text: str) -> float | None:
    """GPUs per language-model replica ('' or 'auto': 1 on a GPU device, else 0)."""
    if text.lower() in ("", "auto"):
        return None
    return _non_negative_float(text)


def _model_dtype(text: str) -> str:
    if text not in MODEL_DTYPES:
        raise ValueError(text)
    return text


def _optional_file(text: str) -> str | None:
    """An existing file ('' or 'none': not set), made absolute."""
    if text.lower() in ("", "none"):
        return None
    if not os.path.isfile(text):
        raise ValueError(text)
    return os.path.abspath(text)


_optional_file.__name__ = "file (an existing file, or 'none')"
_positive_int.__name__ = "positive integer"
_port.__name__ = "port (0-65535)"
_non_negative_float.__name__ = "non-negative number"
_optional_address.__name__ = "address"
_device.__name__ = "device (auto, cpu or cuda)"
_model_dir.__name__ = "model directory (an existing directory, 'demo' or 'none')"
_batch_transport.__name__ = f"batch transport ({' or '.join(BATCH_TRANSPORTS)})"
_model_dtype.__name__ = f"dtype ({', '.join(MODEL_DTYPES)})"
_optional_gpus.__name__ = "number of GPUs (or 'auto')"

# (flag, type, default, help). The environment variable is derived from the flag.
SERVE_OPTIONS: tuple[tuple[str, Callable[[str], Any], Any, str], ...] = (
    ("--host", str, _DEFAULTS.host, "address to listen on"),
    ("--port", _port, _DEFAULTS.port, "gRPC port (0 = any free port; the bound port is printed)"),
    ("--metrics-port", _port, _DEFAULTS.metrics_port, "Prometheus /metrics HTTP port (0 = any free port)"),
    ("--workers", _positive_int, _DEFAULTS.workers, "number of sampler actors (one device each)"),
    ("--device", _device, _DEFAULTS.device, "auto (cuda if available), cpu or cuda"),
    ("--num-gpus-per-worker", _non_negative_float, _DEFAULTS.num_gpus_per_worker,
     "GPUs per sampler actor when --device is cuda (none: 1); fractional values share a GPU"),
    ("--max-batch-rows", _positive_int, _DEFAULTS.max_batch_rows, "most rows a worker samples in one batch"),
    ("--batch-window-ms", _non_negative_float, _DEFAULTS.batch_window_ms,
     "longest a row waits for others to join its batch, in milliseconds (not at all once 1 MiB of logits waits)"),
    ("--max-batches-per-worker", _positive_int, _DEFAULTS.max_batches_per_worker,
     "batches in flight per worker; 2 overlaps the transfer with sampling but halves batches"),
    ("--batch-transport", _batch_transport, _DEFAULTS.batch_transport,
     "how batches reach the workers: 'socket' over a link to each worker (a Unix socket on this node, "
     "TCP to others; by Ray, as 'put', where none opens), 'put' by a Ray actor call each, stored once "
     "with ray.put"),
    ("--link-admit-timeout-s", _non_negative_float, _DEFAULTS.link_admit_timeout_s,
     "seconds a new batch-link connection has, in all, to prove the worker's token before the worker closes it"),
    ("--link-frame-timeout-s", _non_negative_float, _DEFAULTS.link_frame_timeout_s,
     "a batch-link peer silent this many seconds in the middle of a batch is disconnected"),
    ("--link-max-frame-bytes", _positive_int, _DEFAULTS.link_max_frame_bytes,
     "largest batch or answer one batch link carries, in bytes; a peer announcing more is disconnected"),
    ("--link-max-connections", _positive_int, _DEFAULTS.link_max_connections,
     "batch-link connections a worker serves at once, and as many more may be proving the token"),
    ("--max-queue", _positive_int, _DEFAULTS.max_queue,
     "rows waiting for a worker before new requests get RESOURCE_EXHAUSTED"),
    ("--max-queue-bytes", _positive_int, _DEFAULTS.max_queue_bytes,
     "logits bytes queued or being sampled before new requests get RESOURCE_EXHAUSTED"),
    ("--max-message-bytes", _positive_int, _DEFAULTS.max_message_bytes,
     "largest gRPC message received or sent, in bytes"),
    ("--max-tensor-elements", _positive_int, _DEFAULTS.max_tensor_elements,
     "largest logits tensor (B*V elements) accepted; larger gets RESOURCE_EXHAUSTED"),
    ("--max-sessions", _positive_int, _DEFAULTS.max_sessions,
     "SampleStream sessions open at once; one more gets RESOURCE_EXHAUSTED"),
    ("--max-sequences-per-session", _positive_int, _DEFAULTS.max_sequences_per_session,
     "sequences one SampleStream session may open; more is INVALID_ARGUMENT (open.sequences)"),
    ("--session-idle-timeout-s", _non_negative_float, _DEFAULTS.session_idle_timeout_s,
     "a session with no client message for this many seconds ends with DEADLINE_EXCEEDED (0 = never)"),
    ("--max-history-tokens", _positive_int, _DEFAULTS.max_history_tokens,
     "token history one session sequence may hold (prompt, forced and sampled); more is RESOURCE_EXHAUSTED"),
    ("--max-session-tokens", _positive_int, _DEFAULTS.max_session_tokens,
     "token history one session may hold over all its sequences and paths; more is RESOURCE_EXHAUSTED"),
    ("--max-sessions-per-client", _positive_int, _DEFAULTS.max_sessions_per_client,
     "SampleStream sessions one client (bearer token, else peer address) may hold open; one more is "
     "RESOURCE_EXHAUSTED"),
    ("--max-shm-regions", _positive_int, _DEFAULTS.max_shm_regions,
     "shared-memory regions one client (bearer token; everyone without auth) may register; more is "
     "RESOURCE_EXHAUSTED"),
    ("--max-shm-bytes", _positive_int, _DEFAULTS.max_shm_bytes,
     "bytes of shared-memory regions one client (bearer token; everyone without auth) may register"),
    ("--model", _model_dir, _DEFAULTS.model,
     "Hugging Face causal LM directory (config, weights, tokenizer) that Generate runs; 'demo' = a tiny "
     "random-weight GPT-2 written to ~/.cache/samplerd (gibberish text, no download); none = Generate answers "
     "FAILED_PRECONDITION"),
    ("--model-device", _device, _DEFAULTS.model_device,
     "device of the language model: auto (cuda if the Ray cluster has a GPU), cpu or cuda"),
    ("--model-dtype", _model_dtype, _DEFAULTS.model_dtype,
     "weights dtype of the language model: auto (float32 on cpu, bfloat16 on cuda), float32, float16, bfloat16"),
    ("--model-max-tokens", _positive_int, _DEFAULTS.model_max_tokens,
     "largest max_tokens a Generate request may ask for; larger gets RESOURCE_EXHAUSTED"),
    ("--model-replicas", _positive_int, _DEFAULTS.model_replicas,
     "language-model actors of --model; each Generate call goes to the least-loaded, a dead one is replaced"),
    ("--model-gpus-per-replica", _optional_gpus, _DEFAULTS.model_gpus_per_replica,
     "GPUs each language-model actor reserves (fractions share a GPU); auto: 1 when --model-device is cuda, "
     "or auto and the cluster has a GPU, else 0"),
    ("--ray-address", _optional_address, _DEFAULTS.ray_address,
     "Ray cluster to join; 'none' starts a local Ray instance (dashboard off)"),
    ("--grace-seconds", _non_negative_float, _DEFAULTS.grace_seconds,
     "on SIGTERM, how long in-flight requests may take to finish"),
    ("--tls-cert", _optional_file, _DEFAULTS.tls_cert, "PEM server certificate (chain); with --tls-key serves TLS"),
    ("--tls-key", _optional_file, _DEFAULTS.tls_key, "PEM private key of --tls-cert"),
    ("--tls-client-ca", _optional_file, _DEFAULTS.tls_client_ca,
     "PEM CA bundle: clients must present a certificate it signed (mutual TLS; needs --tls-cert)"),
    ("--auth-token-file", _optional_file, _DEFAULTS.auth_token_file,
     "file of bearer tokens, one per line: calls need 'authorization: Bearer <token>' (health and "
     "reflection stay open)"),
    ("--metrics-host", _optional_address, _DEFAULTS.metrics_host,
     "interface of the /metrics port, e.g. 127.0.0.1 or an internal address ('none': the same as --host)"),
)


def env_name(flag: str) -> str:
    """``--max-batch-rows`` -> ``SAMPLERD_MAX_BATCH_ROWS``."""
    return "SAMPLERD_" + flag.lstrip("-").replace("-", "_").upper()


class CliError(Exception):
    """A bad option value; printed as one line."""


def _add_serve_options(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    for flag, kind, default, help_text in SERVE_OPTIONS:
        variable = env_name(flag)
        if variable in environ:
            try:
                default = kind(environ[variable])
            except ValueError:
                raise CliError(f"{variable}={environ[variable]!r} is not a valid {kind.__name__}") from None
        shown = "none" if default is None else default
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} [env {variable}; default {shown}]")


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``samplerd`` argument parser; ``environ`` supplies ``SAMPLERD_*`` defaults."""
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="samplerd",
        description="Token sampling as a service: every modern LLM decoding strategy behind gRPC, on Ray.",
    )
    parser.add_argument("--log-level", default=environ.get("SAMPLERD_LOG_LEVEL", "INFO"),
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log verbosity [env SAMPLERD_LOG_LEVEL]")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the sampling service", description=__doc__)
    _add_serve_options(serve, environ)

    from samplerd.service.cli import commands as user_commands  # sample / strategies (light imports only

    user_commands.one_line_errors(parser)

    user_commands.add_sample_arguments(commands.add_parser(
        "sample", help="sample from a saved logits array (.npy), on a server or in-process",
        description=user_commands.SAMPLE_DESCRIPTION))
    user_commands.add_strategies_arguments(commands.add_parser(
        "strategies", help="list the strategies with their parameters and papers",
        description=user_commands.STRATEGIES_DESCRIPTION))

    bench = commands.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    service_bench = targets.add_parser(
        "service", help="the service against an empty grpc.aio handler, at several concurrencies")
    from samplerd.service.bench.service import (
        add_arguments as add_bench_arguments,  # imports grpc: after quiet_third_party_logs
    )

    add_bench_arguments(service_bench)
    targets.add_parser(
        "kernels", help="sampling kernels against sort-based implementations (options: see its --help)",
        add_help=False)
    demo = commands.add_parser(
        "demo-model", help="write the tiny demo language model (random weights) to a directory, for --model DIR",
        description="Write a tiny GPT-2 (random weights, byte-level BPE tokenizer) as a Hugging Face model "
                    "directory, so Generate can be tried without downloading a model: samplerd demo-model DIR, "
                    "then samplerd serve --model DIR. Its text is gibberish. (--model demo does this by itself.)")
    demo.add_argument("directory", metavar="DIR", help="where to write it (created if missing)")
    from samplerd.service.bench.session import add_arguments as add_session_bench_arguments

    add_session_bench_arguments(targets.add_parser(
        "session", help="one SampleStream session of 64 sequences against 64 unary calls per step"))
    from samplerd.service.bench.generate import add_arguments as add_generate_bench_arguments

    add_generate_bench_arguments(targets.add_parser(
        "generate", help="generation tokens/s for 1 and 16 concurrent prompts on a tiny model: engine and gRPC"))
    from samplerd.service.bench.step import add_arguments as add_step_bench_arguments

    add_step_bench_arguments(targets.add_parser(
        "step", help="one engine-sized step (B x 128256): in-process, Sample inline and by shared memory, OIP by "
                     "shared memory (tritonclient), an empty handler"))
    from samplerd.service.bench.soak import add_arguments as add_soak_arguments

    add_soak_arguments(targets.add_parser(
        "soak", help="mixed traffic with periodic sampler-actor kills; counts every answer (lost must be 0)"))
    return parser


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``bench kernels`` keeps its own options in ``args.args`` for
    samplerd.sampling.bench to parse."""
    parser = build_parser(environ)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench" and args.target == "kernels":
        args.args = rest
    elif rest:
        parser.error("unrecognized arguments: " + " ".join(rest) + _flag_hint(parser, args, rest))
    return args


def _flag_hint(parser: argparse.ArgumentParser, args: argparse.Namespace, rest: list[str]) -> str:
    """'; did you mean --top-p?' for the first unknown flag that is close to one of the command's."""
    command = parser
    for name in (args.command, getattr(args, "target", None)):
        sub = _subcommand(command, name)
        if sub is None:
            break
        command = sub
    known = [flag for action in command._actions for flag in action.option_strings if flag.startswith("--")]
    for word in rest:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            dashed = flag.replace("_", "-")
            close = [dashed] if dashed in known else difflib.get_close_matches(flag, known, n=1)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


def _subcommand(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``samplerd`` console script."""
    quiet_third_party_logs()
    try:
        args = parse_args(argv)
    except CliError as error:
        print(f"samplerd: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo-model":
            from samplerd.service.demo_model import write_demo_model

            print(write_demo_model(args.directory))
            return 0
        if args.command in ("sample", "strategies"):
            from samplerd.service.cli import commands as user_commands

            run_command = user_commands.run_sample if args.command == "sample" else user_commands.run_strategies
            return user_commands.main_guard(run_command, args)
        if args.target == "kernels":
            from samplerd.sampling.bench import main as kernels_main  # written separately; imported only when asked

            return kernels_main(args.args) or 0
        if args.target == "session":
            from samplerd.service.bench.session import run as run_session_bench

            return run_session_bench(args)
        if args.target == "generate":
            from samplerd.service.bench.generate import run as run_generate_bench

            return run_generate_bench(args)
        if args.target == "step":
            from samplerd.service.bench.step import run as run_step_bench

            return run_step_bench(args)
        if args.target == "soak":
            from samplerd.service.bench.soak import run as run_soak

            return run_soak(args)
        from samplerd.service.bench.service import run

        return run(args)
    except KeyboardInterrupt:
        return 130
    except PortInUseError as error:
        print(f"samplerd: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a clear one-line message, not a traceback, for start-up failures
        logging.getLogger("samplerd").debug("failed", exc_info=True)
        print(f"samplerd: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    from samplerd.service.server import serve

    fields = {flag.lstrip("-").replace("-", "_") for flag, *_ in SERVE_OPTIONS}
    values = {name: getattr(args, name) for name in fields}
    if values["model"] == DEMO:
        from samplerd.service.demo_model import demo_model_dir

        values["model"] = demo_model_dir()
    config = ServerConfig(**values)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``samplerd sample`` and ``samplerd strategies``: the user-facing commands of the CLI.

``samplerd sample FILE.npy --top-p 0.9 --seed 7`` samples from a saved logits array ([V] or
[B, V], float32/float16/float64) against a running server (``--target``) or in this process
(``--local``), and prints tokens, log-probabilities and the row statistics as a table or, with
``--json``, as JSON. Every ``SamplingParams`` parameter is a flag, generated from
:data:`samplerd.sampling.registry.PARAMETERS` (``top_p`` -> ``--top-p``).

``samplerd strategies`` lists the strategies with their parameters and papers, from the
registry (or from a server's ``ListStrategies`` with ``--target``).

Every failure is one line on stderr (``samplerd: error: ...``), exit status 1 (2 for a bad
flag), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any, NoReturn

from samplerd.sampling.declarations import Parameter
from samplerd.sampling.registry import PARAMETERS

DEFAULT_TARGET = "localhost:50051"
SAMPLE_DESCRIPTION = (
    "Sample from a saved logits array (numpy.save; shape [V] or [B, V]; float32, float16 or float64) against a "
    "running server (--target) or in this process (--local), and print each row's tokens, log-probabilities and "
    "statistics as a table or, with --json, as JSON. Every sampling parameter is a flag. Example: "
    "samplerd sample logits.npy --top-p 0.9 --seed 7")
STRATEGIES_DESCRIPTION = (
    "List every strategy and logits processor in pipeline order, with its parameters (as sample flags), ranges, "
    "defaults and the paper it implements; from the local registry, or from a server with --target.")


class CommandError(Exception):
    """A failure the user can act on, printed as one line."""


def flag_of(name: str) -> str:
    """``top_p`` -> ``--top-p``."""
    return "--" + name.replace("_", "-")


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def _token_ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids like 13,198, got {text!r}") from None


def _token_bias(text: str) -> dict[int, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        token, sep, bias = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[int(token)] = float(bias)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected TOKEN=BIAS pairs like 50256=-100,13=2.5, got {text!r}") from None
    return out


_KIND_TYPES = {"float": _float, "int": _int, "optional_int": _int, "token_ids": _token_ids, "token_bias": _token_bias}
_KIND_METAVARS = {"float": "X", "int": "N", "optional_int": "N", "token_ids": "IDS", "token_bias": "ID=BIAS,..."}


def parameter_help(parameter: Parameter) -> str:
    """A flag's help: the parameter's doc, range, default and what switches it off."""
    parts = [parameter.doc.rstrip(".") + "."]
    if parameter.range_text():
        parts.append(f"Range {parameter.range_text()}.")
    default = "unset" if parameter.default is None else parameter.default
    if parameter.kind == "token_ids":
        parts.append("Comma-separated ids.")
        default = "none"
    elif parameter.kind == "token_bias":
        parts.append("Comma-separated TOKEN=BIAS pairs.")
        default = "none"
    parts.append(f"[default {default}{'; off: ' + parameter.off if parameter.off else ''}]")
    return " ".join(parts).replace("%", "%%")


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's usage error as one line (exit status 2)."""
    parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a bad flag or value as one line instead of usage + message."""
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    return parser


def _add_target(parser: argparse.ArgumentParser, what: str) -> None:
    default = os.environ.get("SAMPLERD_TARGET", DEFAULT_TARGET)
    parser.add_argument("--target", dest="server", default=default, metavar="HOST:PORT",
                        help=f"samplerd server to {what} [env SAMPLERD_TARGET; default {default}]")


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd sample``: the file, where to sample, output, and one flag per
    sampling parameter."""
    one_line_errors(parser)
    parser.add_argument("file", metavar="FILE.npy",
                        help="logits saved with numpy.save: shape [V] (one row) or [B, V]; float32, float16 or "
                             "float64 (sent as float32)")
    where = parser.add_argument_group("where to sample")
    _add_target(where, "ask")
    where.add_argument("--local", action="store_true",
                       help="sample in this process with the sampling library (no server, no Ray)")
    where.add_argument("--timeout", type=_float, default=30.0, metavar="SECONDS",
                       help="deadline of the request to the server [default 30]")
    where.add_argument("--step", type=_int, default=0, metavar="N",
                       help="decoding step of every row: the counter of the seeded random stream [default 0]")
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    sampling = parser.add_argument_group(
        "sampling parameters", "One flag per field of SamplingParams; unset flags take the default. "
                               "`samplerd strategies` explains which strategy each one drives.")
    for name, parameter in PARAMETERS.items():
        sampling.add_argument(flag_of(name), dest=f"param_{name}", type=_KIND_TYPES[parameter.kind], default=None,
                              metavar=_KIND_METAVARS[parameter.kind], help=parameter_help(parameter))


def add_strategies_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd strategies``."""
    one_line_errors(parser)
    parser.add_argument("--target", dest="server", default=None, metavar="HOST:PORT",
                        help="ask this server's ListStrategies instead of the local registry [default: local]")
    parser.add_argument("--timeout", type=_float, default=10.0, metavar="SECONDS",
                        help="deadline of the request to the server [default 10]")
    parser.add_argument("--json", action="store_true", help="print the strategies as JSON instead of a table")


# ---- sample ---------------------------------------------------------------------------------------


def load_logits(path: str):
    """The float32/float16 ``[B, V]`` array in ``path``; raises CommandError with the reason."""
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{path}: no such file")
    with file.open("rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY":
        raise CommandError(f"{path}: not a .npy file (no NumPy header); save the logits with numpy.save")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise CommandError(f"{path}: not a .npy array file ({reason})") from None
    if not isinstance(array, np.ndarray):
        raise CommandError(f"{path}: holds several arrays (.npz); save one [B, V] array with numpy.save")
    if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
        raise CommandError(f"{path}: logits must be float32, float16 or float64, got {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or 0 in array.shape:
        raise CommandError(f"{path}: logits must have shape [V] or [B, V] with B, V >= 1, got {list(array.shape)}")
    if array.dtype.itemsize == 8:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


def sampling_values(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling parameters set on the command line, as ``SamplingParams`` keyword arguments."""
    return {name: getattr(args, f"param_{name}") for name in PARAMETERS if getattr(args, f"param_{name}") is not None}


def _validate(values: dict[str, Any]):
    from samplerd.sampling import SamplingError, SamplingParams

    try:
        return SamplingParams(**values)
    except SamplingError as error:
        raise CommandError(f"{flag_of(error.field)}: {error}") from None


def sample_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sample the file's rows (locally or on the server); one dict per row."""
    logits = load_logits(args.file)
    values = sampling_values(args)
    params = _validate(values)  # the same checks as the server's, before any connection
    if args.step < 0:
        raise CommandError(f"--step must be >= 0, got {args.step}")
    if args.local:
        return _sample_local(logits, params, args.step, args.file)
    return _sample_remote(logits, values, args)


def _sample_local(logits, params, step: int, path: str) -> list[dict[str, Any]]:
    import torch

    from samplerd.sampling import SamplingError, sample
    from samplerd.service.codec import check_logits_values, check_request_fit
    from samplerd.service.errors import RequestError

    tensor = torch.from_numpy(logits)
    try:
        check_request_fit(params, tensor.shape[1], "")
        check_logits_values(tensor, "logits")
        out = sample(tensor, params, steps=step)
    except RequestError as error:
        if error.violations:
            violation = error.violations[0]
            if violation.field.split(".")[0].split("[")[0] == "logits":  # the file's values, not a flag
                raise CommandError(f"{path}: {violation.description}") from None
            raise CommandError(f"{flag_of(violation.field.split('.')[-1])}: {violation.description}") from None
        raise CommandError(error.message) from None
    except SamplingError as error:
        raise CommandError(f"{flag_of(error.field)}: {error}") from None
    n, k = params.n, params.top_logprobs
    top = [t.tolist() for t in out.top_logprobs] if out.top_logprobs is not None and k else None
    rows = []
    for i in range(tensor.shape[0]):
        mu = float(out.mirostat_mu[i]) if out.mirostat_mu is not None else math.nan
        stats = out.stats
        rows.append({
            "row": i, "strategy": out.strategies[i],
            "token_ids": out.token_ids[i, :n].tolist(), "logprobs": out.logprobs[i, :n].tolist(),
            "entropy": float(stats.entropy[i]), "varentropy": float(stats.varentropy[i]),
            "truncated_entropy": float(stats.truncated_entropy[i]), "kept_tokens": int(stats.kept_tokens[i]),
            "kept_mass": float(stats.kept_mass[i]), "top_k_entropy": float(stats.top_k_entropy[i]),
            "top_k_mass": float(stats.top_k_mass[i]), "surprise": stats.surprise[i, :n].tolist(),
            "top_logprobs": list(zip(top[0][i][:k], top[1][i][:k], strict=True)) if top else [],
            "mirostat_mu": None if math.isnan(mu) else mu,
        })
    return rows


def _sample_remote(logits, values: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    import grpc

    from samplerd.service.client import SamplerClient

    try:
        with SamplerClient(args.server, timeout=args.timeout) as client:
            result = client.sample(logits, steps=[args.step] * logits.shape[0], **values)
    except grpc.RpcError as error:
        raise CommandError(rpc_error_text(error, args.server)) from None
    return [{"row": i, **dataclasses.asdict(row)} for i, row in enumerate(result.rows)]


def rpc_error_text(error, target: str) -> str:
    """One line for a gRPC error: unreachable servers are named as such."""
    import grpc

    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    details = details.splitlines()[0] if details else ""
    if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "unavailable" in details.lower()):
        return f"cannot reach samplerd at {target} (UNAVAILABLE): {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {target} within the deadline (DEADLINE_EXCEEDED)"
    return f"{code.name if code else 'error'}: {details}"


def _fmt_list(values, spec: str = ".4f") -> str:
    return ", ".join(format(v, spec) if isinstance(v, float) else str(v) for v in values)


def print_sample_table(rows: list[dict[str, Any]]) -> None:
    """The rows as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="samplerd sample", title_justify="left")
    for column in ("row", "strategy", "token ids", "log-probs", "entropy", "trunc. entropy", "kept", "kept mass",
                   "surprise"):
        table.add_column(column, justify="left" if column in ("strategy", "token ids") else "right")
    show_top = any(row["top_logprobs"] for row in rows)
    if show_top:
        table.add_column("top log-probs")
    for row in rows:
        cells = [str(row["row"]), row["strategy"], _fmt_list(row["token_ids"]), _fmt_list(row["logprobs"]),
                 f"{row['entropy']:.4f}", f"{row['truncated_entropy']:.4f}", str(row["kept_tokens"]),
                 f"{row['kept_mass']:.4f}", _fmt_list(row["surprise"])]
        if show_top:
            cells.append(", ".join(f"{t}:{lp:.3f}" for t, lp in row["top_logprobs"]))
        table.add_row(*cells)
    Console(width=max(120, Console().width)).print(table)


def run_sample(args: argparse.Namespace) -> int:
    """``samplerd sample``."""
    rows = sample_rows(args)
    if args.json:
        print(json.dumps({"rows": rows}, indent=2, allow_nan=True))
    else:
        print_sample_table(rows)
    return 0


# ---- strategies -----------------------------------------------------------------------------------


def strategies_data(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every strategy with its parameters, from the registry or a server."""
    from google.protobuf.json_format import MessageToDict

    if args.server is None:
        from samplerd.service.catalog import list_strategies

        strategies = list_strategies().strategies
    else:
        import grpc

        from samplerd.service.client import SamplerClient

        try:
            with SamplerClient(args.server, timeout=args.timeout) as client:
                strategies = client.list_strategies()
        except grpc.RpcError as error:
            raise CommandError(rpc_error_text(error, args.server)) from None
    return [MessageToDict(s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for s in strategies]


def common_parameters_data() -> list[dict[str, Any]]:
    """The parameters every row has whatever its strategy (seed, n, top_logprobs,
    min_tokens_to_keep, stats_top_k), from the registry: they are fields of SamplingParams
    like the others, and ListStrategies describes strategies only."""
    from google.protobuf.json_format import MessageToDict

    from samplerd.sampling.registry import COMMON_PARAMETERS
    from samplerd.service.catalog import parameter_info

    return [MessageToDict(parameter_info(p), preserving_proto_field_name=True,
                          always_print_fields_with_no_presence=True) for p in COMMON_PARAMETERS]


def run_strategies(args: argparse.Namespace) -> int:
    """``samplerd strategies``."""
    strategies = strategies_data(args)
    common = common_parameters_data()
    if args.json:
        print(json.dumps({"strategies": strategies, "common_parameters": common}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="samplerd strategies (pipeline order)", title_justify="left", show_lines=True)
    table.add_column("strategy", style="bold")
    table.add_column("stage")
    table.add_column("parameters (range; default)")
    table.add_column("summary and source")
    for s in strategies:
        params = "\n".join(f"{flag_of(p['name'])} {p['range'] or ''}; {p['default']}".replace(" ;", ";")
                           for p in s["parameters"])
        table.add_row(s["name"], s["stage"], params or "-", f"{s['summary']}\n[dim]{s['paper']}[/dim]")
    table.add_row("(every row)", "-", "\n".join(f"{flag_of(p['name'])} {p['range']}; {p['default']}" for p in common),
                  "\n".join(f"{p['name']}: {p['doc']}" for p in common))
    Console(width=max(140, Console().width)).print(table)
    return 0


def main_guard(run, args: argparse.Namespace) -> int:
    """Run a command; a CommandError is one line on stderr and exit status 1."""
    try:
        return run(args)
    except CommandError as error:
        print(f"samplerd: error: {error}", file=sys.stderr)
        return 1

"""The Open Inference Protocol (KServe v2 / Triton) front door: ``inference.GRPCInferenceService``.

Served on the same port as ``samplerd.v1.Sampler``, so Triton and KServe clients
(``tritonclient``, ``perf_analyzer``, any OIP client) work unchanged. The proto is Triton's
(``proto/inference/grpc_service.proto``, identical names and field numbers).

**One model, ``samplerd``** (version ``"1"``), not one model per strategy: the strategy of a
row is decided by which sampling parameters are set, exactly as in ``Sample`` (top_p alone is
nucleus sampling, top_k and top_p together are both, ...), so a model per strategy could not
express the combinations. The sampling parameters come from the request's ``parameters``
map, named exactly like the fields of ``SamplingParams``:

- numbers as ``double_param`` or ``int64_param`` (what tritonclient sends for Python floats
  and ints), ``uint64_param`` too (e.g. a seed >= 2**63), or as text in ``string_param``
  (perf_analyzer's ``--request-parameter top_p:0.9:string``);
- ``dry_sequence_breakers`` as a JSON list in ``string_param`` (``"[13, 198]"``) and
  ``logit_bias`` as a JSON object (``'{"50256": -100}'``);
- ``step`` (``int64_param``, >= 0): the decoding step of every row (the counter of the seeded
  random stream; default 0). Not a ``SamplingParams`` field: ``Sample`` has it per row.

Triton's own request parameters (``sequence_id``, ``priority``, ``timeout`` ...) are
accepted and ignored. Every other name is INVALID_ARGUMENT naming ``parameters.<name>``.

Input ``logits``: FP32, FP16 or BF16, shape [B, V], in ``raw_input_contents`` (little
endian) or, for FP32, in ``contents.fp32_contents``. Outputs (all by default; a request that
names outputs gets exactly those, in its order), in ``raw_output_contents``:
``token_ids`` INT64 [B, n], ``logprobs`` FP32 [B, n], ``surprise`` FP32 [B, n], the row
statistics ``entropy``, ``varentropy``, ``truncated_entropy``, ``kept_mass``,
``top_k_entropy``, ``top_k_mass`` FP32 [B] and ``kept_tokens`` INT64 [B], ``strategy``
BYTES [B]; with ``top_logprobs`` > 0 also ``top_logprobs_ids`` INT64 [B, k] and
``top_logprobs`` FP32 [B, k]; with ``mirostat`` > 0 also ``mirostat_mu`` FP64 [B] (named
explicitly while their parameter is off, they come back as [B, 0] and NaN).

Triton's system shared-memory extension (:mod:`samplerd.service.shared_memory`): regions registered
with ``SystemSharedMemoryRegister``; an input whose parameters name ``shared_memory_region``
(with ``shared_memory_byte_size``, optional ``shared_memory_offset``) is read from there by the
sampler actor, and a requested output that names one is written there (listed after the
inline outputs, with those parameters, and without an entry in ``raw_output_contents``).
Triton's CUDA shared-memory extension (:mod:`samplerd.service.cuda_shared_memory`): an input in a
region registered by CUDA IPC handle is read device to device by a GPU sampler actor; outputs
are not written to CUDA regions. Without CUDA sampler workers registration is FAILED_PRECONDITION.

Errors have the same codes as ``Sample`` (INVALID_ARGUMENT with google.rpc.BadRequest
naming the field, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE) plus NOT_FOUND for a
model or version this server does not serve.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from importlib import metadata

import grpc
import numpy as np
import torch

from samplerd.sampling import SamplingError, SamplingParams
from samplerd.sampling.registry import PARAMETERS
from samplerd.service.codec import (
    ACTOR_CHECKED_BYTES,
    Limits,
    check_logits_values,
    check_request_fit,
    check_tensor_header,
    decode_tensor,
    region_slice,
)
from samplerd.service.cuda_shared_memory import CudaAccess, CudaSharedMemoryRegistry
from samplerd.service.dispatcher import Dispatcher, SampleJob
from samplerd.service.errors import RequestError, classify, from_sampling_error, invalid_argument, over_limit, to_status
from samplerd.service.generated.inference import grpc_service_pb2 as oip
from samplerd.service.generated.inference import grpc_service_pb2_grpc as oip_grpc
from samplerd.service.generated.inference import model_config_pb2 as mc
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.metrics import Metrics
from samplerd.service.shared_memory import SharedAccess, SharedMemoryRegistry
from samplerd.workers import REGION_TYPES, CudaRegionSlice, RegionSlice

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
MODEL_NAME = "samplerd"
MODEL_VERSION = "1"
PLATFORM = "samplerd"
EXTENSIONS = ("parameters", "model_configuration", "statistics", "system_shared_memory")
LOGITS = "logits"
STEP_PARAMETER = "step"
# Request parameters of the protocol itself (tritonclient sets them): accepted, not sampling parameters.
PROTOCOL_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers", "binary_data_output"}
)
#: Longest JSON text a string parameter (``dry_sequence_breakers``, ``logit_bias``) may hold.
MAX_JSON_PARAMETER_CHARS = 1 << 20
# The parameters of an input or requested output that put its bytes in a registered region.
SHM_REGION, SHM_BYTE_SIZE, SHM_OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"
_WIRE_DTYPES = {"FP32": pb.Tensor.FP32, "FP16": pb.Tensor.FP16, "BF16": pb.Tensor.BF16}
_CONFIG_TYPES = {"FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64, "INT64": mc.TYPE_INT64, "BYTES": mc.TYPE_STRING}


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: name, OIP datatype, metadata shape (-1 = variable) and when it exists."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    doc: str
    present: Callable[[SamplingParams], bool] = lambda params: True


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("token_ids", "INT64", (-1, -1), "the n sampled token ids of each row"),
    OutputSpec("logprobs", "FP32", (-1, -1), "log-probability of each token under the final distribution"),
    OutputSpec("surprise", "FP32", (-1, -1), "-ln p_full(token) of each sampled token"),
    OutputSpec("entropy", "FP32", (-1,), "Shannon entropy of the full distribution (nats)"),
    OutputSpec("varentropy", "FP32", (-1,), "varentropy of the full distribution (nats^2)"),
    OutputSpec("truncated_entropy", "FP32", (-1,), "entropy of the final distribution (nats)"),
    OutputSpec("kept_tokens", "INT64", (-1,), "tokens the truncation kept"),
    OutputSpec("kept_mass", "FP32", (-1,), "full-distribution mass of the kept tokens (Z)"),
    OutputSpec("top_k_entropy", "FP32", (-1,), "entropy of the renormalised top stats_top_k"),
    OutputSpec("top_k_mass", "FP32", (-1,), "mass of the top stats_top_k tokens"),
    OutputSpec("strategy", "BYTES", (-1,), "label of the strategy that decided the row"),
    OutputSpec("top_logprobs_ids", "INT64", (-1, -1), "the top_logprobs most probable tokens of the final "
               "distribution", lambda p: p.top_logprobs > 0),
    OutputSpec("top_logprobs", "FP32", (-1, -1), "their log-probabilities", lambda p: p.top_logprobs > 0),
    OutputSpec("mirostat_mu", "FP64", (-1,), "mirostat's mu after this step (bits)", lambda p: p.mirostat > 0),
)
OUTPUTS_BY_NAME = {spec.name: spec for spec in OUTPUTS}


def server_version() -> str:
    """The installed samplerd version (``0+unknown`` when run from a source tree without metadata)."""
    try:
        return metadata.version("samplerd")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def not_found(what: str) -> RequestError:
    """NOT_FOUND for a model or version this server does not serve."""
    return RequestError(grpc.StatusCode.NOT_FOUND, what)


def check_model(name: str, version: str) -> None:
    """Raise NOT_FOUND unless ``name``/``version`` is the served model (empty version = latest)."""
    if name != MODEL_NAME:
        raise not_found(f"model {name!r} is not served here; this server serves one model, {MODEL_NAME!r}")
    if version not in ("", MODEL_VERSION):
        raise not_found(f"model {MODEL_NAME!r} has no version {version!r}; its only version is {MODEL_VERSION!r}")


# ----------------------------------------------------------------------------------------------
# Request decoding
# ----------------------------------------------------------------------------------------------


def decode_parameters(parameters: Mapping[str, oip.InferParameter]) -> tuple[SamplingParams, int]:
    """``(SamplingParams, step)`` from a request's ``parameters`` map; raises RequestError."""
    values: dict[str, object] = {}
    step = 0
    for name in sorted(parameters):
        field = f"parameters.{name}"
        if name in PROTOCOL_PARAMETERS or name.startswith("triton_"):
            continue
        message = parameters[name]
        choice = message.WhichOneof("parameter_choice")
        if choice is None:
            raise invalid_argument(field, f"parameter {name!r} has no value")
        raw = getattr(message, choice)
        if name == STEP_PARAMETER:
            if choice not in ("int64_param", "uint64_param") or raw < 0:
                raise invalid_argument(field, f"step must be a non-negative integer (int64_param), got {raw!r}")
            step = int(raw)
            continue
        declared = PARAMETERS.get(name)
        if declared is None:
            raise invalid_argument(
                field, f"unknown parameter {name!r}: expected a SamplingParams field name or 'step' "
                       "(list them with `samplerd strategies`)")
        values[name] = _convert(declared.kind, name, choice, raw, field)
    try:
        return SamplingParams(**values), step
    except SamplingError as error:
        raise from_sampling_error(error, "parameters.") from None
    except (TypeError, ValueError, OverflowError) as error:  # e.g. a JSON value of the wrong type
        raise invalid_argument("parameters", f"the sampling parameters are not acceptable: {error}") from None


def _convert(kind: str, name: str, choice: str, raw: object, field: str) -> object:
    """One parameter's value in the type ``SamplingParams`` expects for ``kind``."""
    if kind in ("float", "int", "optional_int") and choice == "string_param":
        # perf_analyzer's --request-parameter knows only bool, int and string: numbers as text.
        try:
            raw, choice = (float(raw), "double_param") if kind == "float" else (int(raw, 0), "int64_param")
        except ValueError:
            raise invalid_argument(field, f"{name} must be a number, got the string {raw!r}") from None
    if kind == "float":
        if choice in ("double_param", "int64_param", "uint64_param"):
            return float(raw)
        raise invalid_argument(field, f"{name} must be a number (double_param or int64_param), got {choice}")
    if kind in ("int", "optional_int"):
        if choice in ("int64_param", "uint64_param"):
            return int(raw)
        if choice == "double_param" and math.isfinite(raw) and float(raw).is_integer():
            return int(raw)
        raise invalid_argument(field, f"{name} must be an integer (int64_param), got {choice} {raw!r}")
    if choice != "string_param":
        raise invalid_argument(field, f"{name} must be a JSON string (string_param), got {choice}")
    if len(raw) > MAX_JSON_PARAMETER_CHARS:
        raise invalid_argument(field, f"{name} is {len(raw)} characters of JSON, more than the "
                                      f"{MAX_JSON_PARAMETER_CHARS} allowed")
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError as error:
        raise invalid_argument(field, f"{name} is not valid JSON: {error.msg}") from None
    except (ValueError, RecursionError) as error:  # nesting too deep, a number too long to convert
        raise invalid_argument(field, f"{name} is not acceptable JSON: {type(error).__name__}") from None
    if kind == "token_ids":
        if not isinstance(decoded, list):
            raise invalid_argument(field, f"{name} must be a JSON list of token ids, e.g. \"[13, 198]\"")
        return decoded
    if not isinstance(decoded, dict):
        raise invalid_argument(field, f"{name} must be a JSON object token id -> bias, e.g. '{{\"50256\": -100}}'")
    try:
        return {int(token): bias for token, bias in decoded.items()}
    except ValueError:
        raise invalid_argument(field, f"{name} keys must be integer token ids") from None


def decode_logits(request: oip.ModelInferRequest, limits: Limits, shared: SharedAccess | None = None,
                  cuda: CudaAccess | None = None) -> torch.Tensor | RegionSlice | CudaRegionSlice:
    """The ``logits`` input as a [B, V] CPU tensor; raises RequestError naming the input.
    ``shared``, ``cuda``: the caller's system and CUDA regions, for an input given by
    ``shared_memory_region`` (a name registered as a CUDA region is that one)."""
    names = [tensor.name for tensor in request.inputs]
    for i, name in enumerate(names):
        if name != LOGITS:
            raise invalid_argument(f"inputs[{i}].name", f"unknown input {name!r}; the model's only input is 'logits'")
    if not names:
        raise invalid_argument("inputs", "input 'logits' is required")
    if len(names) > 1:
        raise invalid_argument("inputs", f"input 'logits' given {len(names)} times")
    tensor = request.inputs[0]
    dtype = _WIRE_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise invalid_argument(f"{LOGITS}.datatype", f"datatype must be FP32, FP16 or BF16, got {tensor.datatype!r}")
    reference = shared_memory_reference(tensor.parameters, f"{LOGITS}.parameters")
    if reference is not None and shared is None:
        raise invalid_argument(f"{LOGITS}.parameters.{SHM_REGION}", "shared memory is not available here")
    if reference is not None:
        if request.raw_input_contents or tensor.HasField("contents"):
            raise invalid_argument(f"{LOGITS}.parameters.{SHM_REGION}",
                                   "an input in shared memory must have neither raw_input_contents nor contents")
        region, byte_size, offset = reference
        message = pb.Tensor(dtype=dtype, shape=tensor.shape,
                            shared_memory=pb.SharedMemoryReference(region=region, offset=offset, byte_size=byte_size))
        rows, vocab = check_tensor_header(message, limits, LOGITS)
        cuda_region = cuda.find(region) if cuda is not None else None
        if cuda_region is not None:
            expected = rows * vocab * _CUDA_ITEMSIZE[dtype]
            if byte_size != expected:
                raise invalid_argument(f"{LOGITS}.parameters.{SHM_BYTE_SIZE}",
                                       f"{SHM_BYTE_SIZE} must be B*V*itemsize = {expected} bytes, got {byte_size}")
            return cuda.registry.slice(cuda_region, offset, expected, (rows, vocab), _CUDA_DTYPE_NAMES[dtype],
                                       f"{LOGITS}.parameters")  # read by a GPU sampler actor
        return region_slice(message, shared, LOGITS)  # read by the sampler actor
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise invalid_argument(
                "raw_input_contents", f"raw_input_contents must hold one entry per input (1), "
                f"got {len(request.raw_input_contents)}")
        if tensor.HasField("contents"):
            raise invalid_argument(f"{LOGITS}.contents", "contents must be unset when raw_input_contents is used")
        data = request.raw_input_contents[0]
    else:
        data = _typed_contents(tensor)
    return decode_tensor(pb.Tensor(dtype=dtype, shape=tensor.shape, data=data), limits, LOGITS)


_CUDA_DTYPE_NAMES = {pb.Tensor.FP32: "float32", pb.Tensor.FP16: "float16", pb.Tensor.BF16: "bfloat16"}
_CUDA_ITEMSIZE = {pb.Tensor.FP32: 4, pb.Tensor.FP16: 2, pb.Tensor.BF16: 2}


def shared_memory_reference(parameters: Mapping[str, oip.InferParameter],
                            field: str) -> tuple[str, int, int] | None:
    """``(region, byte_size, offset)`` when ``parameters`` put a tensor in shared memory, else None."""
    if SHM_REGION not in parameters:
        for name in (SHM_BYTE_SIZE, SHM_OFFSET):
            if name in parameters:
                raise invalid_argument(f"{field}.{name}", f"{name} needs {SHM_REGION}")
        return None
    region = parameters[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise invalid_argument(f"{field}.{SHM_REGION}", f"{SHM_REGION} must be a string_param")
    values = []
    for name in (SHM_BYTE_SIZE, SHM_OFFSET):
        message = parameters.get(name)
        if message is None:
            if name == SHM_BYTE_SIZE:
                raise invalid_argument(f"{field}.{name}", f"{name} is required with {SHM_REGION}")
            values.append(0)
            continue
        choice = message.WhichOneof("parameter_choice")
        value = getattr(message, choice) if choice in ("int64_param", "uint64_param") else -1
        if value < 0:
            raise invalid_argument(f"{field}.{name}", f"{name} must be a non-negative int64_param")
        values.append(int(value))
    return region.string_param, values[0], values[1]


def _typed_contents(tensor: oip.ModelInferRequest.InferInputTensor) -> bytes:
    """FP32 ``contents.fp32_contents`` as little-endian bytes (FP16/BF16 have no typed field)."""
    if tensor.datatype != "FP32":
        raise invalid_argument(
            f"{LOGITS}.contents", f"{tensor.datatype} logits must come in raw_input_contents "
                                  "(the protocol has no typed field for them)")
    values = tensor.contents.fp32_contents
    shape = list(tensor.shape)
    if len(shape) == 2 and shape[0] >= 1 and shape[1] >= 1 and len(values) != shape[0] * shape[1]:
        raise invalid_argument(
            f"{LOGITS}.contents", f"fp32_contents must hold B*V = {shape[0]}*{shape[1]} = {shape[0] * shape[1]} "
                                  f"values, got {len(values)}")
    return np.asarray(values, dtype="<f4").tobytes()


def requested_outputs(request: oip.ModelInferRequest, params: SamplingParams) -> list[OutputSpec]:
    """The outputs to answer with: those the request names, in its order, or every present one.

    A named output whose parameter is off is still answered: ``top_logprobs*`` as [B, 0],
    ``mirostat_mu`` as NaN (so clients that request every output, like perf_analyzer, work)."""
    if not request.outputs:
        return [spec for spec in OUTPUTS if spec.present(params)]
    chosen = []
    for i, output in enumerate(request.outputs):
        spec = OUTPUTS_BY_NAME.get(output.name)
        if spec is None:
            raise invalid_argument(
                f"outputs[{i}].name", f"unknown output {output.name!r}; the outputs are {', '.join(OUTPUTS_BY_NAME)}")
        if spec in chosen:
            raise invalid_argument(f"outputs[{i}].name", f"output {output.name!r} is requested twice")
        chosen.append(spec)
    return chosen


#: Bytes per element of each output (BYTES: the length prefix; the text is counted apart).
_ELEMENT_BYTES = {"INT64": 8, "FP32": 4, "FP64": 8, "BYTES": 4}
#: Protocol overhead counted per output (name, datatype, shape) and per response.
_OUTPUT_OVERHEAD_BYTES = 64
_RESPONSE_OVERHEAD_BYTES = 1024


def response_bytes(outputs: list[OutputSpec], rows: int, params: SamplingParams, strategy_chars: int = 0,
                   placed: Collection[str] = ()) -> int:
    """An upper bound of the response's size: each inline output's raw bytes (``strategy_chars``,
    the labels' total length, once known) plus the protocol's overhead. Outputs ``placed`` in a
    shared-memory region travel outside the message: they count only their overhead."""
    size = _RESPONSE_OVERHEAD_BYTES
    for spec in outputs:
        if spec.name in placed:
            size += _OUTPUT_OVERHEAD_BYTES
            continue
        if spec.name in ("top_logprobs_ids", "top_logprobs"):
            columns = params.top_logprobs
        elif len(spec.shape) == 2:
            columns = params.n
        else:
            columns = 1
        size += _OUTPUT_OVERHEAD_BYTES + rows * columns * _ELEMENT_BYTES[spec.datatype]
        if spec.datatype == "BYTES":
            size += strategy_chars
    return size


def check_response_size(size: int, limit: int) -> None:
    """RESOURCE_EXHAUSTED naming ``outputs`` when the response would exceed ``limit`` bytes."""
    if size > limit:
        raise over_limit("outputs", f"the response would take {size} bytes, more than the server's "
                                    f"{limit}-byte message limit (--max-message-bytes): ask for fewer rows, "
                                    "outputs, n or top_logprobs")


# ----------------------------------------------------------------------------------------------
# Response encoding
# ----------------------------------------------------------------------------------------------


def _bytes_tensor(strings: list[str]) -> bytes:
    """A BYTES tensor's raw form: each element as a 4-byte little-endian length and its bytes."""
    out = bytearray()
    for text in strings:
        encoded = text.encode()
        out += len(encoded).to_bytes(4, "little") + encoded
    return bytes(out)


def _raw(array: np.ndarray, dtype: str) -> bytes:
    values = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return values.tobytes()


def output_arrays(out, params: SamplingParams) -> dict[str, tuple[list[int], bytes]]:
    """Every present output of a sampler result as ``name -> (shape, raw bytes)``."""
    n = params.n
    stats = out.stats
    rows = out.token_ids.shape[0]
    arrays: dict[str, tuple[list[int], bytes]] = {
        "token_ids": ([rows, n], _raw(out.token_ids[:, :n].numpy(), "i8")),
        "logprobs": ([rows, n], _raw(out.logprobs[:, :n].numpy(), "f4")),
        "surprise": ([rows, n], _raw(stats.surprise[:, :n].float().numpy(), "f4")),
        "kept_tokens": ([rows], _raw(stats.kept_tokens.numpy(), "i8")),
        "strategy": ([rows], _bytes_tensor(list(out.strategies))),
    }
    for name in ("entropy", "varentropy", "truncated_entropy", "kept_mass", "top_k_entropy", "top_k_mass"):
        arrays[name] = ([rows], _raw(getattr(stats, name).float().numpy(), "f4"))
    k = params.top_logprobs if out.top_logprobs is not None else 0
    ids, logprobs = out.top_logprobs if k else (np.zeros((rows, 0), "i8"), np.zeros((rows, 0), "f4"))
    arrays["top_logprobs_ids"] = ([rows, k], _raw(np.asarray(ids[:, :k]), "i8"))
    arrays["top_logprobs"] = ([rows, k], _raw(np.asarray(logprobs[:, :k], dtype=np.float32), "f4"))
    mu = out.mirostat_mu.double().numpy() if params.mirostat and out.mirostat_mu is not None else np.full(rows, np.nan)
    arrays["mirostat_mu"] = ([rows], _raw(mu, "f8"))
    return arrays


def encode_infer_response(request: oip.ModelInferRequest, out, params: SamplingParams,
                          outputs: list[OutputSpec], shared: SharedAccess | None = None) -> oip.ModelInferResponse:
    """The ``ModelInferResponse``: the chosen outputs in ``raw_output_contents``, except those
    the request asked for in a shared-memory region, which are written there and listed last
    (``raw_output_contents`` holds one entry per output before them, as tritonclient reads it)."""
    arrays = output_arrays(out, params)
    placed = output_regions(request)
    response = oip.ModelInferResponse(model_name=MODEL_NAME, model_version=MODEL_VERSION, id=request.id)
    for spec in outputs:
        if spec.name not in placed:
            shape, raw = arrays[spec.name]
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            response.raw_output_contents.append(raw)
    for spec in outputs:
        if spec.name in placed:
            (region, byte_size, offset), field = placed[spec.name]
            shape, raw = arrays[spec.name]
            if shared is None:
                raise invalid_argument(field, "shared memory is not available")
            shared.write(region, offset, byte_size, [raw], field)
            tensor = response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            tensor.parameters[SHM_REGION].string_param = region
            tensor.parameters[SHM_BYTE_SIZE].int64_param = len(raw)
            if offset:
                tensor.parameters[SHM_OFFSET].int64_param = offset
    return response


def output_regions(request: oip.ModelInferRequest) -> dict[str, tuple[tuple[str, int, int], str]]:
    """Requested outputs that go to shared memory: name -> ((region, byte_size, offset), field)."""
    placed = {}
    for i, output in enumerate(request.outputs):
        field = f"outputs[{i}].parameters"
        reference = shared_memory_reference(output.parameters, field)
        if reference is not None:
            placed[output.name] = (reference, f"{field}.{SHM_REGION}")
    return placed


# ----------------------------------------------------------------------------------------------
# Statistics (ModelStatistics)
# ----------------------------------------------------------------------------------------------


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def proto(self) -> oip.StatisticDuration:
        return oip.StatisticDuration(count=self.count, ns=self.ns)


class InferStatistics:
    """Cumulative counts and durations of ModelInfer, as ModelStatistics reports them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success, self.fail, self.queue = _Duration(), _Duration(), _Duration()
        self.compute_input, self.compute_infer, self.compute_output = _Duration(), _Duration(), _Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def record_success(self, rows: int, total: float, decode: float, queue: float, infer: float,
                       encode: float) -> None:
        """One answered request of ``rows`` rows and where its time went (seconds)."""
        with self._lock:
            self.success.add(total)
            self.compute_input.add(decode)
            self.queue.add(queue)
            self.compute_infer.add(max(infer - queue, 0.0))
            self.compute_output.add(encode)
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, total: float) -> None:
        """One refused or failed request."""
        with self._lock:
            self.fail.add(total)
            self.last_inference_ms = int(time.time() * 1000)

    def proto(self) -> oip.ModelStatistics:
        """The ``ModelStatistics`` message of the one model."""
        with self._lock:
            return oip.ModelStatistics(
                name=MODEL_NAME, version=MODEL_VERSION, last_inference=self.last_inference_ms,
                inference_count=self.inference_count, execution_count=self.execution_count,
                inference_stats=oip.InferStatistics(
                    success=self.success.proto(), fail=self.fail.proto(), queue=self.queue.proto(),
                    compute_input=self.compute_input.proto(), compute_infer=self.compute_infer.proto(),
                    compute_output=self.compute_output.proto(),
                ),
            )


# ----------------------------------------------------------------------------------------------
# The servicer
# ----------------------------------------------------------------------------------------------


def model_metadata() -> oip.ModelMetadataResponse:
    """The ``ModelMetadata`` answer of the one model (logits are declared FP32; FP16/BF16 are accepted)."""
    tensor = oip.ModelMetadataResponse.TensorMetadata
    return oip.ModelMetadataResponse(
        name=MODEL_NAME, versions=[MODEL_VERSION], platform=PLATFORM,
        inputs=[tensor(name=LOGITS, datatype="FP32", shape=[-1, -1])],
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in OUTPUTS],
    )


def model_config() -> mc.ModelConfig:
    """The ``ModelConfig`` of the one model: max_batch_size 0, so dims are full shapes
    (perf_analyzer then needs ``--shape logits:B,V``)."""
    return mc.ModelConfig(
        name=MODEL_NAME, platform=PLATFORM, backend=PLATFORM, max_batch_size=0,
        input=[mc.ModelInput(name=LOGITS, data_type=mc.TYPE_FP32, dims=[-1, -1])],
        output=[mc.ModelOutput(name=s.name, data_type=_CONFIG_TYPES[s.datatype], dims=list(s.shape)) for s in OUTPUTS],
    )


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService``: the Open Inference Protocol over samplerd's dispatcher."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics, limits: Limits,
                 max_response_bytes: int = 64 * 1024 * 1024,
                 shared_memory: SharedMemoryRegistry | None = None,
                 cuda_shared_memory: CudaSharedMemoryRegistry | None = None) -> None:
        self._dispatcher = dispatcher
        self._shared_memory = shared_memory or SharedMemoryRegistry()
        self._cuda = cuda_shared_memory or CudaSharedMemoryRegistry(unavailable=cuda_unavailable(cuda_workers=False))
        self._metrics = metrics
        self._limits = limits
        self._max_response_bytes = max_response_bytes
        self.statistics = InferStatistics()
        self._metadata = model_metadata()
        self._config = model_config()

    async def ServerLive(self, request: oip.ServerLiveRequest, context) -> oip.ServerLiveResponse:
        """Live whenever the process answers."""
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest, context) -> oip.ServerReadyResponse:
        """Ready when a sampler worker is up (the same condition as gRPC health SERVING)."""
        return oip.ServerReadyResponse(ready=self._dispatcher.ready())

    async def ModelReady(self, request: oip.ModelReadyRequest, context) -> oip.ModelReadyResponse:
        """Ready for ``samplerd`` (version empty or ``1``) when the server is; false for any other model."""
        served = request.name == MODEL_NAME and request.version in ("", MODEL_VERSION)
        return oip.ModelReadyResponse(ready=served and self._dispatcher.ready())

    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context) -> oip.ServerMetadataResponse:
        """Name ``samplerd``, the package version and the protocol extensions served (with
        ``cuda_shared_memory`` when this server can serve it)."""
        extensions = [*EXTENSIONS, *(("cuda_shared_memory",) if self._cuda.unavailable is None else ())]
        return oip.ServerMetadataResponse(name="samplerd", version=server_version(), extensions=extensions)

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context) -> oip.ModelMetadataResponse:
        """Inputs and outputs of the ``samplerd`` model."""
        await self._guard(context, check_model, request.name, request.version)
        return self._metadata

    async def ModelConfig(self, request: oip.ModelConfigRequest, context) -> oip.ModelConfigResponse:
        """Triton's model configuration of the ``samplerd`` model."""
        await self._guard(context, check_model, request.name, request.version)
        return oip.ModelConfigResponse(config=self._config)

    async def ModelStatistics(self, request: oip.ModelStatisticsRequest, context) -> oip.ModelStatisticsResponse:
        """Cumulative ModelInfer statistics (an empty name means every model: the one)."""
        if request.name or request.version:
            await self._guard(context, check_model, request.name or MODEL_NAME, request.version)
        return oip.ModelStatisticsResponse(model_stats=[self.statistics.proto()])

    async def ModelInfer(self, request: oip.ModelInferRequest, context) -> oip.ModelInferResponse:
        """Sample every row of the ``logits`` input with the request's parameters."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._metrics.inflight.inc()
        try:
            check_model(request.model_name, request.model_version)
            params, step = decode_parameters(request.parameters)
            owner = self._shared_memory.owner(context)
            shared = SharedAccess(self._shared_memory, owner)
            cuda = CudaAccess(self._cuda, owner)
            outputs = requested_outputs(request, params)
            placed = output_regions(request)  # a malformed output reference is refused before any work
            for (region, _, _), field in placed.values():
                if cuda.find(region) is not None:
                    raise invalid_argument(field, f"outputs are not written to CUDA shared memory (region {region!r}); "
                                                  "request them inline or in system shared memory")
            logits = decode_logits(request, self._limits, shared, cuda)
            rows, vocab = logits.shape
            check_request_fit(params, vocab, "parameters.")
            check_response_size(response_bytes(outputs, rows, params, placed=placed), self._max_response_bytes)
            # The sampler actor checks what it reads from a region, and large logits (as for Sample).
            if not isinstance(logits, REGION_TYPES) and logits.numel() * logits.element_size() < ACTOR_CHECKED_BYTES:
                check_logits_values(logits, LOGITS)
            decoded = time.perf_counter()
            job = SampleJob(logits=logits, params=[params] * rows, steps=[step] * rows,
                            deadline=_deadline(context))
            result = await self._dispatcher.submit(job)
            sampled = time.perf_counter()
            labels = sum(len(label.encode()) for label in result.output.strategies)
            check_response_size(response_bytes(outputs, rows, params, labels, placed), self._max_response_bytes)
            response = encode_infer_response(request, result.output, params, outputs, shared)
            done = time.perf_counter()
            self._metrics.queue_wait.observe(result.queue_wait_s)
            self._metrics.observe_rows(result, [params.n] * rows)
            self.statistics.record_success(rows, done - started, decoded - started, result.queue_wait_s,
                                           sampled - decoded, done - sampled)
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # every failure is answered, with the code classify() picks
            refused = classify(error)
            code = refused.code
            self.statistics.record_failure(time.perf_counter() - started)
            await context.abort_with_status(to_status(refused))
        finally:
            self._metrics.inflight.dec()
            self._metrics.observe_request("ModelInfer", code.name, time.perf_counter() - started)

    # -- the system shared-memory extension (samplerd.service.shared_memory) ---------------------------

    async def SystemSharedMemoryStatus(self, request: oip.SystemSharedMemoryStatusRequest,
                                       context) -> oip.SystemSharedMemoryStatusResponse:
        """The caller's registered regions (or the one named; NOT_FOUND when it is not)."""
        regions = await self._guard(context, self._shared_memory.status, self._shared_memory.owner(context),
                                    request.name)
        response = oip.SystemSharedMemoryStatusResponse()
        for region in regions:
            response.regions[region.name].CopyFrom(oip.SystemSharedMemoryStatusResponse.RegionStatus(
                name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size))
        return response

    async def SystemSharedMemoryRegister(self, request: oip.SystemSharedMemoryRegisterRequest,
                                         context) -> oip.SystemSharedMemoryRegisterResponse:
        """Register a region of a POSIX shared-memory object for inputs and outputs to name."""
        await self._guard(context, self._shared_memory.register, self._shared_memory.owner(context), request.name,
                          request.key, request.offset, request.byte_size)
        return oip.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: oip.SystemSharedMemoryUnregisterRequest,
                                           context) -> oip.SystemSharedMemoryUnregisterResponse:
        """Forget one of the caller's regions, or all of them (empty name)."""
        await self._guard(context, self._shared_memory.unregister, self._shared_memory.owner(context), request.name)
        return oip.SystemSharedMemoryUnregisterResponse()

    # -- the CUDA shared-memory extension (samplerd.service.cuda_shared_memory) ------------------

    async def CudaSharedMemoryStatus(self, request: oip.CudaSharedMemoryStatusRequest,
                                     context) -> oip.CudaSharedMemoryStatusResponse:
        """The caller's CUDA regions (NOT_FOUND for an unknown name)."""
        regions = await self._guard(context, self._cuda.status, self._shared_memory.owner(context), request.name)
        response = oip.CudaSharedMemoryStatusResponse()
        for region in regions:
            response.regions[region.name].CopyFrom(oip.CudaSharedMemoryStatusResponse.RegionStatus(
                name=region.name, device_id=region.device_id, byte_size=region.byte_size))
        return response

    async def CudaSharedMemoryRegister(self, request: oip.CudaSharedMemoryRegisterRequest,
                                       context) -> oip.CudaSharedMemoryRegisterResponse:
        """Register a CUDA IPC handle; FAILED_PRECONDITION on a server without CUDA sampler
        workers (see :func:`cuda_unavailable`)."""
        await self._guard(context, self._cuda.register, self._shared_memory.owner(context), request.name,
                          request.raw_handle, request.device_id, request.byte_size)
        return oip.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(self, request: oip.CudaSharedMemoryUnregisterRequest,
                                         context) -> oip.CudaSharedMemoryUnregisterResponse:
        """Forget one CUDA region (or all, without a name); an unknown name is not an error."""
        self._cuda.unregister(self._shared_memory.owner(context), request.name)
        return oip.CudaSharedMemoryUnregisterResponse()

    async def _guard(self, context, check: Callable[..., object], *args: object):
        """Run ``check(*args)``; answer its RequestError as the RPC's status."""
        try:
            return check(*args)
        except RequestError as error:
            await context.abort_with_status(to_status(error))


def cuda_unavailable(cuda_workers: bool) -> str | None:
    """Why this server cannot serve CUDA shared memory, or None when it can: it needs CUDA in
    the front end (a client on its node) and GPU sampler workers to open the handles."""
    if not torch.cuda.is_available():
        return ("CUDA shared memory needs a CUDA device on the server; this server has none "
                "(use system shared memory: SystemSharedMemoryRegister)")
    if not cuda_workers:
        return ("CUDA shared memory needs GPU sampler workers (--device cuda); this server samples on the CPU "
                "(use system shared memory: SystemSharedMemoryRegister)")
    return None


def _deadline(context) -> float | None:
    """The RPC's deadline on the ``time.monotonic()`` clock, or None; refuses expired ones."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work was queued")
    return time.monotonic() + remaining


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``inference.GRPCInferenceService`` on ``server``."""
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)

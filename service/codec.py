"""Request decoding and validation, and response encoding, for ``Sampler/Sample``.

Everything a request can get wrong is checked here, before any work is queued, and raised as
a :class:`~samplerd.service.errors.RequestError` naming the field (``logits.shape``,
``params.top_p``, ``row_params[3].top_k`` ...). The logits bytes are viewed in place (no
copy) on little-endian hosts.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from samplerd.sampling import SamplingError, SamplingParams, check_logits, check_token_ids
from samplerd.service import params as params_codec
from samplerd.service.errors import from_sampling_error, invalid_argument, over_limit
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.shared_memory import SharedAccess
from samplerd.workers.batch import DTYPE_NAMES
from samplerd.workers.region import RegionSlice

# Wire dtype -> (little-endian NumPy dtype of the raw elements, torch dtype).
# bfloat16 has no NumPy dtype: its raw 16-bit patterns are viewed as int16 and reinterpreted.
_WIRE_DTYPES: dict[int, tuple[np.dtype, torch.dtype]] = {
    pb.Tensor.FP32: (np.dtype("<f4"), torch.float32),
    pb.Tensor.FP16: (np.dtype("<f2"), torch.float16),
    pb.Tensor.BF16: (np.dtype("<i2"), torch.bfloat16),
}
MAX_REQUEST_ID_BYTES = 256
#: Inline logits of at least this many bytes are left for the sampler actor to check (it checks
#: every batch as it samples): a second pass over them here costs 1-3 ms per MB (fp16 most) on the
#: event loop. Smaller ones are checked here, so a bad request rarely costs its batch
#: neighbours the actor's one-request-at-a-time retry.
ACTOR_CHECKED_BYTES = 1024 * 1024

# torch warns whenever it views read-only memory, as the request's bytes are; the front end
# never writes to the logits and the sampler computes out of place. A filter installed once
# (for warnings raised from this module only) costs nothing per request, unlike
# ``warnings.catch_warnings`` around each view.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                        module=__name__)


@dataclass(frozen=True)
class Limits:
    """Request size limits of the server."""

    max_tensor_elements: int


@dataclass(frozen=True)
class DecodedRequest:
    """A validated ``SampleRequest``: logits ``[B, V]`` on the CPU (or where they lie in the
    caller's shared memory, for the sampler actor to read) and per-row parameters/steps."""

    logits: torch.Tensor | RegionSlice
    params: list[SamplingParams]
    steps: list[int]
    request_id: str
    #: None when the values were checked here; else the field that names them, for the
    #: sampler actor's verdict (see ACTOR_CHECKED_BYTES).
    unchecked_field: str | None = None


def decode_request(request: pb.SampleRequest, limits: Limits, shared: SharedAccess | None = None,
                   actor_checks: bool = False, logits_data: memoryview | None = None) -> DecodedRequest:
    """Validate ``request`` and decode it; raises :class:`~samplerd.service.errors.RequestError`.
    ``shared``: the caller's shared-memory regions, for logits given by reference.
    ``actor_checks``: leave the values of large logits to the sampler actor (see
    ``ACTOR_CHECKED_BYTES``; logits in shared memory are always the actor's).
    ``logits_data``: ``logits.data`` when the request was parsed without it
    (:mod:`samplerd.service.inline_logits`): viewed where it lies, never copied."""
    if len(request.request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise invalid_argument("request_id", f"request_id must be at most {MAX_REQUEST_ID_BYTES} bytes")
    if not request.HasField("logits"):
        raise invalid_argument("logits", "logits is required")
    rows, vocab = check_tensor_header(request.logits, limits, "logits")
    params = decode_params(request, rows, vocab)  # before reading a region: a bad request costs no copy
    steps = decode_steps(request, rows)
    field = tensor_data_field(request.logits, "logits")
    if request.logits.HasField("shared_memory") and shared is not None:
        # The sampler actor reads the region itself (and checks the values as it samples).
        logits = region_slice(request.logits, shared, "logits", logits_data)
        return DecodedRequest(logits, params, steps, request.request_id, field)
    logits = decode_tensor(request.logits, limits, "logits", shared, logits_data)
    if actor_checks and logits.numel() * logits.element_size() >= ACTOR_CHECKED_BYTES:
        return DecodedRequest(logits, params, steps, request.request_id, field)
    check_logits_values(logits, field)
    return DecodedRequest(logits=logits, params=params, steps=steps, request_id=request.request_id)


def check_tensor_header(tensor: pb.Tensor, limits: Limits, field: str) -> tuple[int, int]:
    """``(B, V)`` of a logits tensor whose dtype and shape are valid and within the limits."""
    if tensor.dtype not in _WIRE_DTYPES:
        name = pb.Tensor.DType.Name(tensor.dtype) if tensor.dtype in pb.Tensor.DType.values() else tensor.dtype
        raise invalid_argument(f"{field}.dtype", f"dtype must be FP32, FP16 or BF16, got {name}")
    if len(tensor.shape) != 2:  # counted before copying: a hostile shape may hold millions of dims
        rank = len(tensor.shape)
        shown = list(tensor.shape[:4]) + (["..."] if rank > 4 else [])
        raise invalid_argument(f"{field}.shape", f"shape must be [B, V] (rank 2), got rank {rank}: {shown}")
    shape = list(tensor.shape)
    rows, vocab = shape
    if rows < 1 or vocab < 1:
        raise invalid_argument(f"{field}.shape", f"shape [B, V] needs B >= 1 and V >= 1, got {shape}")
    if rows * vocab > limits.max_tensor_elements:
        raise over_limit(
            f"{field}.shape",
            f"{rows} x {vocab} = {rows * vocab} elements exceed the server limit of {limits.max_tensor_elements}",
        )
    return rows, vocab


def tensor_data_field(tensor: pb.Tensor, field: str) -> str:
    """The field that names a tensor's bytes: ``<field>.data``, or ``<field>.shared_memory``."""
    return f"{field}.shared_memory" if tensor.HasField("shared_memory") else f"{field}.data"


def decode_tensor(tensor: pb.Tensor, limits: Limits, field: str, shared: SharedAccess | None = None,
                  data: memoryview | None = None) -> torch.Tensor:
    """A ``[B, V]`` CPU tensor viewing ``tensor.data``, or ``data`` when the message was parsed
    without it (copied only on big-endian hosts), or read from the caller's shared-memory
    region when ``tensor.shared_memory`` is set (one copy)."""
    rows, vocab = check_tensor_header(tensor, limits, field)
    raw_dtype, torch_dtype = _WIRE_DTYPES[tensor.dtype]
    expected = rows * vocab * raw_dtype.itemsize
    if tensor.HasField("shared_memory"):
        data = _read_shared(tensor, expected, shared, field, data)
    else:
        if data is None:
            data = tensor.data  # each read of a bytes field copies it out of the message
        if len(data) != expected:
            raise invalid_argument(
                f"{field}.data",
                f"data must hold B*V*itemsize = {rows}*{vocab}*{raw_dtype.itemsize} = {expected} bytes, "
                f"got {len(data)}",
            )
    array = np.frombuffer(data, dtype=raw_dtype).reshape(rows, vocab)
    if sys.byteorder != "little":
        array = array.astype(raw_dtype.newbyteorder("="))
    values = torch.from_numpy(array)
    return values.view(torch_dtype) if torch_dtype is torch.bfloat16 else values


def region_slice(tensor: pb.Tensor, shared: SharedAccess, field: str, data: memoryview | None = None) -> RegionSlice:
    """Where a tensor given by ``shared_memory`` lies (checked against its region now, and read
    by the sampler actor later); its header must already be checked (:func:`check_tensor_header`).
    ``data``: the tensor's ``data`` when the message was parsed without it."""
    rows, vocab = tensor.shape
    raw_dtype, torch_dtype = _WIRE_DTYPES[tensor.dtype]
    expected = rows * vocab * raw_dtype.itemsize
    where = f"{field}.shared_memory"
    if tensor.data or data:
        raise invalid_argument(f"{field}.data", "data must be empty when shared_memory is set (give one of them)")
    reference = tensor.shared_memory
    if reference.byte_size != expected:
        raise invalid_argument(
            f"{where}.byte_size", f"byte_size must be B*V*itemsize = {expected} bytes, got {reference.byte_size}")
    return shared.slice(reference.region, reference.offset, expected, (rows, vocab), DTYPE_NAMES[torch_dtype], where)


def _read_shared(tensor: pb.Tensor, expected: int, shared: SharedAccess | None, field: str,
                 data: memoryview | None = None) -> np.ndarray:
    """The tensor's bytes from the region its ``shared_memory`` names."""
    where = f"{field}.shared_memory"
    if tensor.data or data:
        raise invalid_argument(f"{field}.data", "data must be empty when shared_memory is set (give one of them)")
    if shared is None:
        raise invalid_argument(where, "shared memory is not available for this tensor")
    reference = tensor.shared_memory
    if reference.byte_size != expected:
        raise invalid_argument(
            f"{where}.byte_size", f"byte_size must be B*V*itemsize = {expected} bytes, got {reference.byte_size}")
    return shared.read(reference.region, reference.offset, expected, where)


def decode_params(request: pb.SampleRequest, rows: int, vocab: int) -> list[SamplingParams]:
    """Per-row ``SamplingParams``: ``params`` for every row, each ``row_params[i]`` merged over it."""
    try:
        shared = params_codec.from_proto(request.params)
    except SamplingError as error:
        raise from_sampling_error(error, "params.") from None
    check_request_fit(shared, vocab, "params.")
    if not request.row_params:
        return [shared] * rows
    if len(request.row_params) != rows:
        raise invalid_argument(
            "row_params", f"row_params must be empty or hold exactly B = {rows} entries, got {len(request.row_params)}"
        )
    out = []
    for i, message in enumerate(request.row_params):
        try:
            row = params_codec.from_proto(message, shared)
        except SamplingError as error:
            raise from_sampling_error(error, f"row_params[{i}].") from None
        if row is not shared:
            check_request_fit(row, vocab, f"row_params[{i}].")
        out.append(row)
    return out


def decode_steps(request: pb.SampleRequest, rows: int) -> list[int]:
    """Per-row steps: 0 when absent, else exactly B non-negative entries."""
    if not request.steps:
        return [0] * rows
    if len(request.steps) != rows:
        raise invalid_argument(
            "steps", f"steps must be empty or hold exactly B = {rows} entries, got {len(request.steps)}"
        )
    steps = list(request.steps)
    for i, step in enumerate(steps):
        if step < 0:
            raise invalid_argument(f"steps[{i}]", f"steps[{i}] must be >= 0, got {step}")
    return steps


def check_request_fit(params: SamplingParams, vocab: int, prefix: str) -> None:
    """What a valid ``SamplingParams`` can still get wrong in a unary ``Sample``: token ids
    outside the vocabulary, and path-aware beams, which need a session."""
    if params.path_beams > 1:
        raise invalid_argument(
            f"{prefix}path_beams", f"path_beams > 1 needs a decoding session (SampleStream), got {params.path_beams}"
        )
    try:
        check_token_ids(params, vocab)
    except SamplingError as error:
        raise from_sampling_error(error, prefix) from None


def check_logits_values(logits: torch.Tensor, field: str) -> None:
    """Reject NaN and +inf logits and rows without a finite logit, naming the first bad row
    (the sampler's own check, :func:`sampling.check_logits`, answered as ``field``)."""
    try:
        check_logits(logits)
    except SamplingError as error:
        raise invalid_argument(field, error.reason) from None


def encode_response(out, params: list[SamplingParams], request_id: str) -> pb.SampleResponse:
    """The ``SampleResponse`` for a sampler output ``out`` over rows with ``params``.

    Padding of rows with fewer samples (``n``) or top log-probs than the batch maximum is
    dropped, so each row holds exactly its own counts.
    """
    token_ids = out.token_ids.tolist()
    logprobs = out.logprobs.tolist()
    stats = out.stats
    entropy = stats.entropy.tolist()
    varentropy = stats.varentropy.tolist()
    truncated_entropy = stats.truncated_entropy.tolist()
    kept_tokens = stats.kept_tokens.tolist()
    kept_mass = stats.kept_mass.tolist()
    top_k_entropy = stats.top_k_entropy.tolist()
    top_k_mass = stats.top_k_mass.tolist()
    surprise = stats.surprise.tolist()
    mirostat_mu = out.mirostat_mu.tolist() if out.mirostat_mu is not None else [math.nan] * len(params)
    if out.top_logprobs is not None:
        top_ids, top_lp = (t.tolist() for t in out.top_logprobs)
    response = pb.SampleResponse(request_id=request_id)
    for i, row in enumerate(params):
        n = row.n
        result = response.rows.add(
            token_ids=token_ids[i][:n],
            logprobs=logprobs[i][:n],
            strategy=out.strategies[i],
            stats=pb.RowStatistics(
                entropy=entropy[i],
                varentropy=varentropy[i],
                truncated_entropy=truncated_entropy[i],
                kept_tokens=kept_tokens[i],
                kept_mass=kept_mass[i],
                top_k_entropy=top_k_entropy[i],
                top_k_mass=top_k_mass[i],
                surprise=surprise[i][:n],
            ),
        )
        if row.top_logprobs and out.top_logprobs is not None:
            k = row.top_logprobs
            for token, logprob in zip(top_ids[i][:k], top_lp[i][:k], strict=True):
                result.top_logprobs.add(token_id=token, logprob=logprob)
        if not math.isnan(mirostat_mu[i]):
            result.mirostat_mu = mirostat_mu[i]
    return response


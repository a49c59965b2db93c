"""What travels between the dispatcher and a sampler actor: one batch of row groups, and its answer.

A batch is a list of :class:`RowGroup` values. A group holds rows of one vocabulary size and
dtype stacked into one numpy array, so Ray stores the logits bytes once, zero-copy, in its
object store (numpy buffers are serialised out of band; a torch tensor would be pickled in
band). numpy has no bfloat16, so bf16 logits travel as their int16 bit pattern and are
viewed back on the actor.

The answer is a :class:`BatchOutput`: per group the ``sampling.SampleOutput`` of the whole
group, the group's kernel time, and the device name. Its tensors travel back as numpy arrays
(:func:`to_numpy`) and are CPU tensors again (:func:`outputs_from_numpy`) by the time
:meth:`workers.pool.SamplerPool.run` returns.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sampling import SampleOutput, SampleStats, SamplingError, SamplingParams, SequenceState

#: The logits dtypes a batch may carry, by torch dtype, with their names on the wire.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


@dataclass(frozen=True)
class RowGroup:
    """Rows of one vocabulary size and dtype, stacked, with their per-row parameters and steps,
    and per-row ``sampling.SequenceState`` (or None) when any request of the group has state.

    ``job_rows`` gives the row counts of the requests stacked here, in order; the actor uses
    it only when sampling the whole group fails, to sample each request on its own so that
    one request's bad rows never fail its neighbours.
    """

    logits: np.ndarray
    dtype: str
    params: list[SamplingParams]
    steps: list[int]
    job_rows: tuple[int, ...]
    states: list[SequenceState | None] | None = None

    @property
    def rows(self) -> int:
        """Number of rows in the group."""
        return int(self.logits.shape[0])


@dataclass(frozen=True)
class RowError:
    """A failure to sample, as plain data: exceptions with custom constructors do not pickle.

    ``kind`` is ``"sampling"`` for a :class:`sampling.SamplingError` (bad input) and
    ``"internal"`` for anything else.
    """

    kind: str
    field: str
    reason: str

    @classmethod
    def from_exception(cls, error: BaseException) -> RowError:
        """Describe ``error``."""
        if isinstance(error, SamplingError):
            return cls("sampling", error.field, error.reason)
        return cls("internal", "", f"{type(error).__name__}: {error}")

    def to_exception(self) -> Exception:
        """The exception to raise to the caller: a SamplingError again, or a RuntimeError."""
        if self.kind == "sampling":
            return SamplingError(self.field, self.reason)
        return RuntimeError(f"sampler actor failed: {self.reason}")


@dataclass(frozen=True)
class GroupResult:
    """The answer for one group.

    Normally ``output`` holds the whole group's result. When sampling the whole group raised,
    ``output`` is None and ``job_outputs`` holds, per request of the group, its own result or
    its :class:`RowError`.
    """

    output: SampleOutput | None
    job_outputs: list[SampleOutput | RowError] | None
    kernel_seconds: float


@dataclass(frozen=True)
class BatchOutput:
    """The answer for one batch: per group results, the device, and the kernel time by strategy.

    ``kernel_seconds_by_strategy`` splits each group's kernel time over its rows' strategy
    labels in proportion to their row counts (a row's share of a group's time is
    ``kernel_seconds / rows``), summed over groups.
    """

    groups: list[GroupResult]
    device: str
    kernel_seconds_by_strategy: dict[str, float]


def pack_logits(logits: torch.Tensor) -> np.ndarray:
    """A [rows, V] CPU tensor as a numpy array Ray can store zero-copy (bf16 as its int16 bits)."""
    if logits.dtype == torch.bfloat16:
        logits = logits.view(torch.int16)
    return logits.numpy()


def unpack_logits(array: np.ndarray, dtype: str, device: torch.device) -> torch.Tensor:
    """The tensor of :func:`pack_logits`, on ``device``.

    Arrays that come out of Ray's object store are read-only views of shared memory; on the
    CPU the rows are copied once so the sampler owns writable memory, on a GPU the host to
    device copy is that copy.
    """
    if device.type == "cpu":
        tensor = torch.from_numpy(np.array(array, copy=True))
    else:
        with warnings.catch_warnings():  # torch warns about read-only arrays; it only reads this one
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array).to(device)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor


def stack_group(
    tensors: Sequence[torch.Tensor],
    params: list[SamplingParams],
    steps: list[int],
    states: list[SequenceState | None] | None = None,
) -> RowGroup:
    """One :class:`RowGroup` from requests' [rows, V] tensors of equal V and dtype.

    ``params``, ``steps`` and ``states`` are the per-row lists of all the tensors,
    concatenated in order (``states`` None when no row has any).
    The rows are stacked with one ``torch.cat`` (no copy for a lone contiguous tensor).
    """
    if len(tensors) == 1 and tensors[0].is_contiguous():
        stacked = tensors[0]
    else:
        stacked = torch.cat(list(tensors), dim=0)
    return RowGroup(
        logits=pack_logits(stacked),
        dtype=DTYPE_NAMES[stacked.dtype],
        params=params,
        steps=steps,
        job_rows=tuple(int(t.shape[0]) for t in tensors),
        states=states,
    )


def take_job(output: SampleOutput, start: int, stop: int, draws: int, top_logprobs: int) -> SampleOutput:
    """One request's rows ``start:stop`` of its group's output, shaped as ``sample()`` shapes
    them for those rows alone.

    A group's output is padded to the group's largest ``n`` (token ids -1, log-probs NaN) and
    largest ``top_logprobs``; the request gets its own: ``draws`` columns (its largest ``n``)
    and ``top_logprobs`` columns of top log-probs (None when 0). Written out field by field:
    this runs once per request, and a generic walk over the dataclasses cost ~10x more.
    """
    rows = slice(start, stop)
    stats = output.stats
    top = None
    if top_logprobs > 0 and output.top_logprobs is not None:
        ids, logprobs = output.top_logprobs
        top = (ids[rows, :top_logprobs], logprobs[rows, :top_logprobs])
    return SampleOutput(
        token_ids=output.token_ids[rows, :draws],
        logprobs=output.logprobs[rows, :draws],
        stats=SampleStats(
            entropy=stats.entropy[rows],
            varentropy=stats.varentropy[rows],
            truncated_entropy=stats.truncated_entropy[rows],
            kept_tokens=stats.kept_tokens[rows],
            kept_mass=stats.kept_mass[rows],
            top_k_entropy=stats.top_k_entropy[rows],
            top_k_mass=stats.top_k_mass[rows],
            surprise=stats.surprise[rows, :draws],
        ),
        strategies=output.strategies[rows],
        mirostat_mu=output.mirostat_mu[rows],
        top_logprobs=top,
    )


def to_numpy(value: Any) -> Any:
    """``value`` with every tensor in it moved to the CPU as a numpy array, for the trip back.

    numpy arrays pickle out of band in microseconds; torch tensors pickle in band at tens of
    microseconds each, which for a ``SampleOutput`` (a dozen tensors) cost milliseconds per
    batch.
    """
    return _map_tensors(value, torch.Tensor, lambda t: t.cpu().numpy())


def from_numpy(value: Any) -> Any:
    """The inverse of :func:`to_numpy`: numpy arrays back to (writable) CPU tensors."""
    return _map_tensors(
        value, np.ndarray, lambda a: torch.from_numpy(a if a.flags.writeable else a.copy())
    )


def outputs_from_numpy(batch: BatchOutput) -> BatchOutput:
    """A batch answer as it arrived from the actor, with its outputs holding tensors again."""
    groups = [
        dataclasses.replace(
            group,
            output=from_numpy(group.output),
            job_outputs=None if group.job_outputs is None else [from_numpy(o) for o in group.job_outputs],
        )
        for group in batch.groups
    ]
    return dataclasses.replace(batch, groups=groups)


def _map_tensors(value: Any, kind: type, convert: Any) -> Any:
    if isinstance(value, kind):
        return convert(value)
    if isinstance(value, tuple):
        return tuple(_map_tensors(item, kind, convert) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _map_tensors(getattr(value, f.name), kind, convert) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value

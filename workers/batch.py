"""What travels between the dispatcher and a sampler actor: one batch of row groups, and its answer.

A batch is a list of :class:`RowGroup` values (and :class:`PathGroup` values: path-aware
steps, riding in the same call). A group holds the rows of one vocabulary size
and dtype, as the requests' own numpy arrays in order: their bytes travel once, out of band,
over a batch link or into Ray's object store (a torch tensor would be pickled in band), and the actor
concatenates them (its one copy, which also makes them writable). numpy has no bfloat16, so
bf16 logits travel as their int16 bit pattern and are viewed back on the actor.

The answer is a :class:`BatchOutput`: per group the ``sampling.SampleOutput`` of the whole
group with numpy arrays for tensors (:func:`to_numpy`: they pickle out of band, cheaply), the
group's kernel time, and the device name. :func:`take_job` cuts one request's rows out of it
as CPU tensors again.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from samplerd.sampling import SampleOutput, SampleStats, SamplingError, SamplingParams, SequenceState
from samplerd.workers.cuda_ipc import CudaRegionSlice, read_into_device
from samplerd.workers.region import RegionError, RegionSlice, read_into

#: Logits a batch names instead of carrying: the actor reads them itself.
REGION_TYPES = (RegionSlice, CudaRegionSlice)

#: The logits dtypes a batch may carry, by torch dtype, with their names on the wire.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
_NUMPY_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<i2")}


class _LogitParts:
    """The size of a group whose ``logits`` is a list of ``[rows, V]`` parts."""

    logits: list

    @property
    def rows(self) -> int:
        """Number of rows in the group (live paths, for a path group)."""
        return sum(int(part.shape[0]) for part in self.logits)

    @property
    def nbytes(self) -> int:
        """Bytes of logits in the group."""
        return sum(part.nbytes for part in self.logits)


@dataclass(frozen=True)
class RowGroup(_LogitParts):
    """Rows of one vocabulary size and dtype: each request's ``[rows, V]`` logits array in order
    (see :func:`pack_logits`), with the per-row parameters and steps of all of them, and per-row
    ``sampling.SequenceState`` (or None) when any request of the group has state.
    """

    logits: list[np.ndarray | RegionSlice | CudaRegionSlice]
    dtype: str
    params: list[SamplingParams]
    steps: list[int]
    states: list[SequenceState | None] | None = None

    @property
    def job_rows(self) -> tuple[int, ...]:
        """The row counts of the requests in the group, in order; the actor uses them only when
        sampling the whole group fails, to sample each request on its own so that one
        request's bad rows never fail its neighbours."""
        return tuple(int(part.shape[0]) for part in self.logits)


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
        if isinstance(error, RegionError):
            return cls("region", "", str(error))
        return cls("internal", "", f"{type(error).__name__}: {error}")

    def to_exception(self) -> Exception:
        """The exception to raise to the caller: a SamplingError again, or a RuntimeError."""
        if self.kind == "sampling":
            return SamplingError(self.field, self.reason)
        if self.kind == "region":
            return RegionError(self.reason)
        return RuntimeError(f"sampler actor failed: {self.reason}")


@dataclass(frozen=True)
class PathJob:
    """One path-aware sequence's step (``params.path_beams > 1``, a ``SampleStream`` feature),
    without its logits: the sequence's parameters, step and seed (the key of its random
    stream), and per live path its accumulated log-probability and ``SequenceState``."""

    params: SamplingParams
    step: int
    seed: int
    path_logprobs: list[float]
    states: list[SequenceState | None]


@dataclass(frozen=True)
class PathGroup(_LogitParts):
    """Path-aware steps of one vocabulary size and dtype, batched with the row groups of the
    same call: each job's ``[paths, V]`` logits (as :func:`pack_logits` makes them) and its
    :class:`PathJob`, in order. The actor runs one ``filter_logits`` over all their rows, then
    each sequence's ``path_aware_step`` (:mod:`samplerd.workers.path_steps`)."""

    logits: list[np.ndarray]
    dtype: str
    jobs: list[PathJob]


@dataclass(frozen=True)
class PathChoice:
    """The paths one path-aware step kept (``samplerd.sampling.strategies.path_top_p.PathStep`` as numpy
    arrays): which previous path each extends, its token, the path's new log-probability and
    the token's log-probability on its path."""

    parent: np.ndarray
    token: np.ndarray
    path_logprob: np.ndarray
    token_logprob: np.ndarray


@dataclass(frozen=True)
class PathGroupResult:
    """The answer for one :class:`PathGroup`: per job its :class:`PathChoice` or :class:`RowError`."""

    choices: list[PathChoice | RowError]
    kernel_seconds: float


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
    """The answer for one batch: per group results (a :class:`PathGroupResult` for a
    :class:`PathGroup`), the device, and the kernel time by strategy.

    ``kernel_seconds_by_strategy`` splits each group's kernel time over its rows' strategy
    labels in proportion to their row counts (a row's share of a group's time is
    ``kernel_seconds / rows``), summed over groups.
    """

    groups: list[GroupResult | PathGroupResult]
    device: str
    kernel_seconds_by_strategy: dict[str, float]


#: The classes a batch and its answer are made of (with numpy arrays and plain containers): all
#: that a batch link loads (:mod:`samplerd.workers.socket_link`).
WIRE_TYPES: tuple[type, ...] = (
    RowGroup, BatchOutput, GroupResult, RowError, SampleOutput, SampleStats, SamplingParams, SequenceState,
    RegionSlice, CudaRegionSlice,
    PathGroup, PathJob, PathChoice, PathGroupResult,
)


def pack_logits(logits: torch.Tensor) -> np.ndarray:
    """A [rows, V] CPU tensor as a numpy array, which pickles out of band (bf16 as its int16 bits)."""
    if logits.dtype == torch.bfloat16:
        logits = logits.view(torch.int16)
    return logits.numpy()


def unpack_logits(parts: Sequence[np.ndarray | RegionSlice], dtype: str, device: torch.device) -> torch.Tensor:
    """:func:`unpack_group`'s tensor; raises the first region's RegionError."""
    tensor, failed = unpack_group(parts, dtype, device)
    if failed:
        raise next(iter(failed.values())).to_exception()
    return tensor


def unpack_group(parts: Sequence[np.ndarray | RegionSlice], dtype: str,
                 device: torch.device) -> tuple[torch.Tensor, dict[int, RowError]]:
    """The requests' arrays of :func:`pack_logits` as one ``[rows, V]`` tensor on ``device``,
    and the requests whose :class:`~samplerd.workers.region.RegionSlice` could not be read (by index;
    their rows are left unset).

    The arrays arrive as read-only views of a link's arena or of Ray's shared memory, or in a
    link's receive buffers; regions are read from the client's shared memory. Either way they
    are copied once, into one new array, which the sampler owns; on a GPU, arrays go straight
    into their rows of the device's batch tensor (regions through a host array first). Nothing
    may keep a view of them past the batch's answer: the front end reuses its arena once the
    answer is in.
    """
    failed: dict[int, RowError] = {}
    if device.type != "cpu":
        return _upload_parts(parts, dtype, device, failed), failed
    if any(isinstance(part, REGION_TYPES) for part in parts):
        rows = sum(part.shape[0] for part in parts)
        array = np.empty((rows, parts[0].shape[1]), dtype=_NUMPY_DTYPES[dtype])
        start = 0
        for index, part in enumerate(parts):
            stop = start + part.shape[0]
            if isinstance(part, CudaRegionSlice):
                failed[index] = RowError("region", "", f"{part.label}: CUDA shared memory needs a GPU sampler "
                                                       "worker (--device cuda)")
            elif isinstance(part, RegionSlice):
                try:
                    read_into(part, array[start:stop])
                except RegionError as error:
                    failed[index] = RowError.from_exception(error)
            else:
                array[start:stop] = part
            start = stop
    else:
        array = np.concatenate(parts)
    tensor = torch.from_numpy(array)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor, failed


def _upload_parts(parts: Sequence[np.ndarray | RegionSlice | CudaRegionSlice], dtype: str, device: torch.device,
                  failed: dict[int, RowError]) -> torch.Tensor:
    """The parts copied straight into their rows of one batch tensor on ``device`` (a GPU): one
    host-to-device copy per request (a region's through a host array it is read into), a
    device-to-device copy for CUDA shared memory, and no concatenation on the host. Each copy
    from pageable memory returns once the source is read, so no view of the parts outlives the
    call. Parts that cannot be read are put in ``failed`` by index (their rows left unset)."""
    raw = torch.from_numpy(np.empty(0, dtype=_NUMPY_DTYPES[dtype])).dtype
    batch = torch.empty((sum(part.shape[0] for part in parts), parts[0].shape[1]), dtype=raw, device=device)
    start = 0
    with warnings.catch_warnings():  # the parts are read-only views; they are only read
        warnings.simplefilter("ignore", UserWarning)
        for index, part in enumerate(parts):
            stop = start + part.shape[0]
            try:
                if isinstance(part, CudaRegionSlice):
                    read_into_device(part, batch[start:stop])
                elif isinstance(part, RegionSlice):
                    host = np.empty(part.shape, dtype=_NUMPY_DTYPES[dtype])
                    read_into(part, host)
                    batch[start:stop] = torch.from_numpy(host)
                else:
                    batch[start:stop] = torch.from_numpy(part)
            except RegionError as error:
                failed[index] = RowError.from_exception(error)
            start = stop
    return batch.view(torch.bfloat16) if dtype == "bfloat16" else batch


def stack_group(
    tensors: Sequence[torch.Tensor | RegionSlice],
    params: list[SamplingParams],
    steps: list[int],
    states: list[SequenceState | None] | None = None,
) -> RowGroup:
    """One :class:`RowGroup` from requests' [rows, V] tensors of equal V and dtype.

    ``params``, ``steps`` and ``states`` are the per-row lists of all the tensors,
    concatenated in order (``states`` None when no row has any). The tensors are not copied
    here: their bytes are sent once, over a batch link or into Ray's object store; a
    :class:`~samplerd.workers.region.RegionSlice` is sent as it is, for the actor to read.
    """
    first = tensors[0]
    return RowGroup(
        logits=[t if isinstance(t, REGION_TYPES) else pack_logits(t) for t in tensors],
        dtype=first.dtype if isinstance(first, REGION_TYPES) else DTYPE_NAMES[first.dtype],
        params=params,
        steps=steps,
        states=states,
    )


def take_job(output: SampleOutput, start: int, stop: int, draws: int, top_logprobs: int) -> SampleOutput:
    """One request's rows ``start:stop`` of its group's output as it came back from the actor
    (numpy arrays, see :func:`to_numpy`), as CPU tensors shaped as ``sample()`` shapes them for
    those rows alone.

    A group's output is padded to the group's largest ``n`` (token ids -1, log-probs NaN) and
    largest ``top_logprobs``; the request gets its own: ``draws`` columns (its largest ``n``)
    and ``top_logprobs`` columns of top log-probs (None when 0). Written out field by field,
    slicing numpy arrays: this runs once per request, and slicing tensors, or a generic walk
    over the dataclasses, cost several times more.
    """
    rows = slice(start, stop)
    stats = output.stats
    top = None
    if top_logprobs > 0 and output.top_logprobs is not None:
        ids, logprobs = output.top_logprobs
        top = (_tensor(ids[rows, :top_logprobs]), _tensor(logprobs[rows, :top_logprobs]))
    return SampleOutput(
        token_ids=_tensor(output.token_ids[rows, :draws]),
        logprobs=_tensor(output.logprobs[rows, :draws]),
        stats=SampleStats(
            entropy=_tensor(stats.entropy[rows]),
            varentropy=_tensor(stats.varentropy[rows]),
            truncated_entropy=_tensor(stats.truncated_entropy[rows]),
            kept_tokens=_tensor(stats.kept_tokens[rows]),
            kept_mass=_tensor(stats.kept_mass[rows]),
            top_k_entropy=_tensor(stats.top_k_entropy[rows]),
            top_k_mass=_tensor(stats.top_k_mass[rows]),
            surprise=_tensor(stats.surprise[rows, :draws]),
        ),
        strategies=output.strategies[rows],
        mirostat_mu=_tensor(output.mirostat_mu[rows]),
        top_logprobs=top,
    )


def to_numpy(output: SampleOutput) -> SampleOutput:
    """``output`` with its tensors as CPU numpy arrays, for the trip back to the front end.

    numpy arrays pickle out of band in microseconds; torch tensors pickle in band at tens of
    microseconds each, which for a ``SampleOutput`` (a dozen tensors) cost milliseconds per
    batch.
    """
    stats = output.stats
    tensors = [output.token_ids, output.logprobs, output.mirostat_mu,
               *(getattr(stats, field.name) for field in dataclasses.fields(SampleStats)),
               *(output.top_logprobs or ())]
    arrays = host_arrays(tensors)
    token_ids, logprobs, mirostat_mu = arrays[:3]
    fields = len(dataclasses.fields(SampleStats))
    return SampleOutput(
        token_ids=token_ids,
        logprobs=logprobs,
        stats=SampleStats(*arrays[3 : 3 + fields]),
        strategies=output.strategies,
        mirostat_mu=mirostat_mu,
        top_logprobs=None if output.top_logprobs is None else tuple(arrays[3 + fields :]),
    )


def host_arrays(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """The tensors as numpy arrays; off the CPU in one download (one sync instead of one per
    tensor): their bytes packed into one device buffer, copied once, and cut apart again."""
    if all(t.device.type == "cpu" for t in tensors):
        return [t.numpy() for t in tensors]
    packed = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors]).cpu().numpy()
    arrays, offset = [], 0
    for t in tensors:
        size = t.numel() * t.element_size()
        dtype = torch.empty(0, dtype=t.dtype).numpy().dtype
        arrays.append(packed[offset : offset + size].view(dtype).reshape(t.shape).copy())  # aligned
        offset += size
    return arrays


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``array``'s values; arrays that arrived read-only (they view the
    received bytes) are copied, the others shared."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())

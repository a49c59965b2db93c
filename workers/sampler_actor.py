"""The sampler actor: batched sampling on one device.

:class:`SamplerActor` is a plain class; :mod:`samplerd.workers.pool` turns it into a Ray actor with
the resources it needs (``num_cpus``, ``num_gpus``, fractional allowed). Each call takes one
whole batch and runs :func:`sampling.sample` once per row group; ``sample`` itself groups
the rows by strategy and runs each kernel once over all of them, so there is no loop over
rows here. A front end sends its batches over a link instead of actor calls where it can
(:meth:`SamplerActor.open_link`, :mod:`samplerd.workers.socket_link`): they are sampled on the link's
thread, one batch at a time across all ways in.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import ray
import torch

from samplerd.sampling import SampleOutput, SamplingParams, sample
from samplerd.sampling.allocator import keep_freed_memory
from samplerd.workers.batch import (
    WIRE_TYPES,
    BatchOutput,
    GroupResult,
    PathGroup,
    PathGroupResult,
    RowError,
    RowGroup,
    to_numpy,
    unpack_group,
    unpack_logits,
)
from samplerd.workers.config import DEVICES, LinkLimits
from samplerd.workers.path_steps import PATH_STRATEGY, run_path_group
from samplerd.workers.socket_link import LinkAddress, LinkServer

#: The devices a sampler actor accepts: ``auto`` is cuda when the actor sees a GPU, else cpu.


def resolve_device(device: str) -> torch.device:
    """The torch device for a configured device name (see :data:`DEVICES`).

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU(s) it assigned the actor, so the actor's GPU
    is always ``cuda:0``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but this sampler actor sees no GPU")
    return torch.device("cuda:0" if device == "cuda" else "cpu")


class SamplerActor:
    """Samples whole batches on the one device it owns."""

    def __init__(self, device: str = "auto", link_limits: LinkLimits | None = None) -> None:
        self._device = resolve_device(device)
        self._link_limits = link_limits or LinkLimits()
        # A long-lived process sampling large batches: keep freed tensor memory (see module).
        keep_freed_memory()
        self._link: LinkServer | None = None
        self._sampling = threading.Lock()  # the link's thread and Ray's calls take turns

    def device_name(self) -> str:
        """The device label for metrics: ``cpu`` or ``cuda``."""
        return self._device.type

    def warmup(self) -> str:
        """Sample the batch shapes this actor serves, so imports and kernels are loaded (on
        CUDA: the Triton chain compiled per logits dtype); return :meth:`device_name`."""
        for logits, params in warmup_batches(self._device):
            sample(logits, params, 0)
        self._synchronize()
        return self.device_name()

    def open_link(self, tcp: bool = False) -> LinkAddress:
        """Listen for a front end's batch link (one server per actor; with ``tcp``, also on this
        node's address, for a front end on another node); where to connect."""
        if self._link is None:
            self._link = LinkServer(self.sample_batch, WIRE_TYPES, self._link_limits)
        if tcp:
            self._link.listen_tcp(ray.util.get_node_ip_address())
        return self._link.address(ray.get_runtime_context().get_node_id())

    def sample_batch(self, groups: list[RowGroup | PathGroup]) -> BatchOutput:
        """Sample every group of one batch (a :class:`PathGroup` holds path-aware steps); never
        raises for bad rows (see :class:`GroupResult`, :class:`PathGroupResult`)."""
        with self._sampling:
            results = [self._path_group(group) if isinstance(group, PathGroup) else self._sample_group(group)
                       for group in groups]
        seconds_by_strategy: dict[str, float] = {}
        for result in results:
            if isinstance(result, PathGroupResult):
                seconds_by_strategy[PATH_STRATEGY] = seconds_by_strategy.get(PATH_STRATEGY, 0.0) + result.kernel_seconds
                continue
            outputs = [result.output] if result.output is not None else result.job_outputs or []
            labels = Counter(label for out in outputs if isinstance(out, SampleOutput) for label in out.strategies)
            rows = sum(labels.values())
            for label, count in labels.items():
                seconds_by_strategy[label] = seconds_by_strategy.get(label, 0.0) + (
                    result.kernel_seconds * count / rows
                )
        return BatchOutput(results, self.device_name(), seconds_by_strategy)

    def _path_group(self, group: PathGroup) -> PathGroupResult:
        result = run_path_group(unpack_logits(group.logits, group.dtype, self._device), group)
        self._synchronize()
        return result

    def _sample_group(self, group: RowGroup) -> GroupResult:
        started = time.perf_counter()
        try:  # the copy to the device too: an out-of-memory there fails requests, not the batch
            logits, unreadable = unpack_group(group.logits, group.dtype, self._device)
            if unreadable:  # a request's shared-memory region could not be read: it alone fails
                return self._sample_jobs_apart(group, unreadable)
            output = sample(logits, group.params, group.steps, group.states)
            self._synchronize()
        except Exception as error:  # isolate the request(s) at fault, below
            self._retire_on_device_fault(error)
            return self._sample_jobs_apart(group)
        kernel_seconds = time.perf_counter() - started
        return GroupResult(to_numpy(output), None, kernel_seconds)

    def _sample_jobs_apart(self, group: RowGroup, failed: dict[int, RowError] | None = None) -> GroupResult:
        """The slow path after a group failed: each request's rows on their own, each copied to
        the device on its own (those in ``failed``, by index, answered with their error unsampled)."""
        outputs: list[SampleOutput | RowError] = []
        kernel_seconds = 0.0
        start = 0
        for index, (part, rows) in enumerate(zip(group.logits, group.job_rows, strict=True)):
            stop = start + rows
            if failed and index in failed:
                outputs.append(failed[index])
                start = stop
                continue
            states = group.states[start:stop] if group.states is not None else None
            started = time.perf_counter()
            try:
                logits, unreadable = unpack_group([part], group.dtype, self._device)
                if unreadable:
                    outputs.append(unreadable[0])
                else:
                    output = sample(logits, group.params[start:stop], group.steps[start:stop], states)
                    self._synchronize()
                    outputs.append(to_numpy(output))
            except Exception as error:  # returned to the request as its answer
                self._retire_on_device_fault(error)
                outputs.append(RowError.from_exception(error))
            kernel_seconds += time.perf_counter() - started
            start = stop
        return GroupResult(None, outputs, kernel_seconds)

    def _retire_on_device_fault(self, error: Exception) -> None:
        """End this actor's process on a CUDA error that poisons its context (every one but
        out-of-memory is sticky: each later call would fail too). The pool sees the actor die
        (``ActorDiedError``) and starts a replacement."""
        if is_device_fault(error, self._device):
            print(f"sampler actor retiring after a CUDA error: {error!r}", file=sys.stderr, flush=True)
            _exit_process(70)

    def _synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def is_device_fault(error: BaseException, device: torch.device) -> bool:
    """Whether ``error`` is a CUDA error that leaves ``device``'s context unusable: any CUDA
    error but out-of-memory (which frees with its tensors)."""
    if device.type != "cuda" or isinstance(error, torch.cuda.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and ("CUDA error" in str(error) or "CUDA driver error" in str(error))


def _exit_process(code: int) -> None:
    os._exit(code)


def warmup_batches(device: torch.device) -> list[tuple[torch.Tensor, list[SamplingParams]]]:
    """The batches :meth:`SamplerActor.warmup` samples. On CUDA: the fused chain (a sampled
    and a greedy row) and an eager-path row for each logits dtype, at a vocabulary size
    divisible by 16 and one not (Triton compiles a kernel per pointer dtype and per such
    divisibility of its integer arguments). Elsewhere one tiny batch loads both fused CPU paths."""
    if device.type != "cuda":  # the fused CPU chain, the general kernel, the processors (bias); one-row twins
        general = SamplingParams(typical_p=0.9, logit_bias={0: 1.0})
        return [(torch.zeros(2, 16, device=device), [SamplingParams(), general]),
                (torch.zeros(1, 16, device=device), [general])]
    params = [SamplingParams(top_k=50, top_p=0.9, min_p=0.01), SamplingParams(temperature=0.0),
              SamplingParams(typical_p=0.9)]
    return [(torch.zeros(3, vocab, dtype=dtype, device=device), params)
            for dtype in (torch.float32, torch.float16, torch.bfloat16) for vocab in (4096, 4097)]

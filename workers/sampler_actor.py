"""The sampler actor: batched sampling on one device.

:class:`SamplerActor` is a plain class; :mod:`workers.pool` turns it into a Ray actor with
the resources it needs (``num_cpus``, ``num_gpus``, fractional allowed). Each call takes one
whole batch and runs :func:`sampling.sample` once per row group; ``sample`` itself groups
the rows by strategy and runs each kernel once over all of them, so there is no loop over
rows here. A front end sends its batches over a link instead of actor calls where it can
(:meth:`SamplerActor.open_link`, :mod:`workers.socket_link`): they are sampled on the link's
thread, one batch at a time across all ways in.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import ray
import torch

from sampling import SampleOutput, SamplingParams, sample
from sampling.allocator import keep_freed_memory
from workers.batch import WIRE_TYPES, BatchOutput, GroupResult, RowError, RowGroup, to_numpy, unpack_logits
from workers.socket_link import LinkAddress, LinkServer

#: The devices a sampler actor accepts: ``auto`` is cuda when the actor sees a GPU, else cpu.
DEVICES = ("auto", "cpu", "cuda")


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

    def __init__(self, device: str = "auto") -> None:
        self._device = resolve_device(device)
        # A long-lived process sampling large batches: keep freed tensor memory (see module).
        keep_freed_memory()
        self._link: LinkServer | None = None
        self._sampling = threading.Lock()  # the link's thread and Ray's calls take turns

    def device_name(self) -> str:
        """The device label for metrics: ``cpu`` or ``cuda``."""
        return self._device.type

    def warmup(self) -> str:
        """Run one tiny sample so imports and kernels are loaded; return :meth:`device_name`.
        Its two rows take both fused CPU paths (the chain's kernels and the general kernel)."""
        sample(torch.zeros(2, 16, device=self._device), [SamplingParams(), SamplingParams(typical_p=0.9)], 0)
        self._synchronize()
        return self.device_name()

    def open_link(self, tcp: bool = False) -> LinkAddress:
        """Listen for a front end's batch link (one server per actor; with ``tcp``, also on this
        node's address, for a front end on another node); where to connect."""
        if self._link is None:
            self._link = LinkServer(self.sample_batch, WIRE_TYPES)
        if tcp:
            self._link.listen_tcp(ray.util.get_node_ip_address())
        return self._link.address(ray.get_runtime_context().get_node_id())

    def sample_batch(self, groups: list[RowGroup]) -> BatchOutput:
        """Sample every group of one batch; never raises for bad rows (see :class:`GroupResult`)."""
        with self._sampling:
            results = [self._sample_group(group) for group in groups]
        seconds_by_strategy: dict[str, float] = {}
        for result in results:
            outputs = [result.output] if result.output is not None else result.job_outputs or []
            labels = Counter(label for out in outputs if isinstance(out, SampleOutput) for label in out.strategies)
            rows = sum(labels.values())
            for label, count in labels.items():
                seconds_by_strategy[label] = seconds_by_strategy.get(label, 0.0) + (
                    result.kernel_seconds * count / rows
                )
        return BatchOutput(results, self.device_name(), seconds_by_strategy)

    def _sample_group(self, group: RowGroup) -> GroupResult:
        logits = unpack_logits(group.logits, group.dtype, self._device)
        started = time.perf_counter()
        try:
            output = sample(logits, group.params, group.steps, group.states)
            self._synchronize()
        except Exception:  # isolate the request(s) at fault, below
            return self._sample_jobs_apart(logits, group)
        kernel_seconds = time.perf_counter() - started
        return GroupResult(to_numpy(output), None, kernel_seconds)

    def _sample_jobs_apart(self, logits: torch.Tensor, group: RowGroup) -> GroupResult:
        """The slow path after a group failed: each request's rows on their own."""
        outputs: list[SampleOutput | RowError] = []
        kernel_seconds = 0.0
        start = 0
        for rows in group.job_rows:
            stop = start + rows
            states = group.states[start:stop] if group.states is not None else None
            started = time.perf_counter()
            try:
                output = sample(logits[start:stop], group.params[start:stop], group.steps[start:stop], states)
                self._synchronize()
                outputs.append(to_numpy(output))
            except Exception as error:  # returned to the request as its answer
                outputs.append(RowError.from_exception(error))
            kernel_seconds += time.perf_counter() - started
            start = stop
        return GroupResult(None, outputs, kernel_seconds)

    def _synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

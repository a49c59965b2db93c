"""The fused chain on a GPU: per-row parameters in, :class:`~samplerd.sampling.output.SampleOutput` out.

The host packs every row's parameters into one int64 tensor (one upload), launches
:func:`samplerd.sampling.gpu.kernels.fused_chain_kernel` once, and reads back one small tensor, the
rows' status flags (the one host sync): a row with NaN, +inf or no finite logit raises
:class:`~samplerd.sampling.errors.SamplingError` naming the row, as
:func:`samplerd.sampling.checks.check_logits` does. The outputs stay on the device.

Rows eligible here: greedy rows, and sampled rows (plain temperature) whose other
strategies are top-k, top-p and min-p (with ``n``, ``seed``, ``top_logprobs``,
``stats_top_k``, ``min_tokens_to_keep``) — the CPU fast path's rows (:mod:`samplerd.sampling.fused`)
and greedy ones. See :mod:`samplerd.sampling.gpu` for what "same result as the CPU" means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samplerd.sampling.errors import SamplingError
from samplerd.sampling.output import SampleOutput, SampleStats
from samplerd.sampling.rng import fresh_seeds
from samplerd.sampling.strategies import min_p, temperature, top_k, top_p
from samplerd.sampling.switch import ThreadSwitch

_SAMPLED = frozenset(s.name for s in (temperature.TEMPERATURE_STRATEGY, top_k.STRATEGY, top_p.STRATEGY,
                                      min_p.STRATEGY))
# A greedy row skips the truncations, so any of these may be set on it.
_GREEDY = frozenset({temperature.GREEDY.name, top_k.STRATEGY.name, top_p.STRATEGY.name, min_p.STRATEGY.name})
_BLOCK = 1024
_PIVOTS = 16
_DRAWS_PER_PASS = 8  # draws per pass over the row: each holds a [draws, 1024] float64 search
_WHAT = {1: "contains NaN", 2: "contains +inf", 3: "has no finite logit"}

# Whether :func:`samplerd.sampling.sample` uses this path (default on; off in a thread for tests and benchmarks).
_switch = ThreadSwitch()
is_enabled = _switch.is_enabled
enabled = _switch.enabled


def is_eligible(p) -> bool:
    """Whether a row with parameters ``p`` can take the fused GPU chain."""
    active = frozenset(p.active_strategies())
    if temperature.GREEDY.name in active:
        return _GREEDY.issuperset(active)
    return temperature.TEMPERATURE_STRATEGY.name in active and _SAMPLED.issuperset(active)


def eligible_rows(logits: torch.Tensor, params: Sequence) -> list[int]:
    """Indices of the rows the fused GPU chain takes: none unless ``logits`` is on a CUDA
    device, triton imports and the path is on (:func:`enabled`). Tests call :func:`sample`
    directly to run the kernel on CPU tensors under Triton's interpreter."""
    if logits.device.type != "cuda" or not is_enabled() or not available():
        return []
    return [i for i, p in enumerate(params) if is_eligible(p)]


def available() -> bool:
    """Whether triton imports (it ships with CUDA builds of torch; ``pip install samplerd[gpu]``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _pow2(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def _float_bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)


def pack_params(params: Sequence, steps: Sequence[int], rows: Sequence[int], vocab: int) -> np.ndarray:
    """``[len(rows), PARAM_COLUMNS]`` int64: the packed parameters of the logits rows ``rows``
    (see :mod:`samplerd.sampling.gpu.kernels` for the columns). Seeds of unseeded rows are fresh."""
    from samplerd.sampling.gpu import kernels

    count = len(rows)
    packed = np.zeros((count, kernels.PARAM_COLUMNS), dtype=np.int64)
    seeds = np.array([p.seed if p.seed is not None else 0 for p in params], dtype=np.uint64)
    unseeded = [i for i, p in enumerate(params) if p.seed is None]
    if unseeded:
        seeds[unseeded] = fresh_seeds(len(unseeded))
    greedy = np.array([temperature.is_greedy(p) for p in params])
    flags = (greedy * kernels.FLAG_GREEDY
             + np.array([p.uses(top_k.STRATEGY) for p in params]) * kernels.FLAG_TOP_K
             + np.array([p.uses(top_p.STRATEGY) for p in params]) * kernels.FLAG_TOP_P
             + np.array([p.uses(min_p.STRATEGY) for p in params]) * kernels.FLAG_MIN_P)
    packed[:, kernels.P_FLAGS] = flags
    packed[:, kernels.P_K] = [max(p.top_k, p.min_tokens_to_keep) for p in params]
    packed[:, kernels.P_MIN_KEEP] = [p.min_tokens_to_keep for p in params]
    packed[:, kernels.P_N] = [p.n for p in params]
    packed[:, kernels.P_STATS_K] = [min(p.stats_top_k, vocab) for p in params]
    packed[:, kernels.P_WANTED] = [min(p.top_logprobs, vocab) for p in params]
    packed[:, kernels.P_SEED] = seeds.view(np.int64)
    packed[:, kernels.P_STEP] = np.asarray(steps, dtype=np.uint64).view(np.int64)
    packed[:, kernels.P_DIVISOR] = _float_bits([1.0 if g else p.temperature for g, p in zip(greedy, params,
                                                                                              strict=True)])
    packed[:, kernels.P_TOP_P] = _float_bits([p.top_p for p in params])
    # torch's float32 log, as the general path's min-p takes it (log(0) = -inf for rows without min-p).
    min_ps = torch.tensor([p.min_p for p in params], dtype=torch.float32)
    packed[:, kernels.P_LOG_MIN_P] = _float_bits(min_ps.log().numpy())
    packed[:, kernels.P_ROW] = rows
    return packed


def sample(logits: torch.Tensor, params: Sequence, steps: Sequence[int], rows: Sequence[int] | None = None,
           states: Sequence | None = None) -> SampleOutput:
    """:func:`sampling.sample` for the eligible rows ``rows`` of ``logits`` (all rows when
    None; ``params`` and ``steps`` one per logits row), read in place. ``states`` is accepted
    as the CPU path takes it, and unused: the chain's strategies keep no state. The outputs are on
    the logits' device, one row per entry of ``rows``."""
    from samplerd.sampling.gpu import kernels

    if rows is None:
        rows = range(logits.shape[0])
    rows = list(rows)
    vocab = logits.shape[1]
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    chosen = [params[i] for i in rows]
    packed = pack_params(chosen, [steps[i] for i in rows], rows, vocab)
    device = logits.device
    count = len(rows)
    draws = max(p.n for p in chosen)
    wanted = max(min(p.top_logprobs, vocab) for p in chosen)
    widest = _pow2(max(max(min(p.stats_top_k, vocab), min(p.top_logprobs, vocab)) for p in chosen))
    packed_params = torch.from_numpy(packed)
    if device.type == "cuda":
        packed_params = packed_params.pin_memory().to(device, non_blocking=True)
    status = torch.empty(count, dtype=torch.int32, device=device)
    tokens = torch.empty(count, draws, dtype=torch.int64, device=device)
    logprobs = torch.empty(count, draws, dtype=torch.float32, device=device)
    surprise = torch.empty(count, draws, dtype=torch.float32, device=device)
    stats = torch.empty(len(kernels.STATS), count, dtype=torch.float32, device=device)
    kept = torch.empty(count, dtype=torch.int64, device=device)
    top_ids = torch.empty(count, max(wanted, 1), dtype=torch.int64, device=device)
    top_logprobs = torch.empty(count, max(wanted, 1), dtype=torch.float32, device=device)
    scratch = torch.empty(count, 2 * widest, dtype=torch.int32, device=device)
    kernels.fused_chain_kernel[(count,)](
        logits, logits.stride(0), vocab, packed_params,
        status, tokens, logprobs, surprise, stats, kept, top_ids, top_logprobs, scratch, count,
        N_DRAWS=min(_pow2(draws), _DRAWS_PER_PASS), TOP_WIDTH=draws, WIDEST=widest, WANTED=max(wanted, 1),
        BLOCK=_BLOCK, PIVOTS=_PIVOTS, num_warps=8,
    )
    flags = status.cpu().numpy()  # the one host sync
    bad = np.flatnonzero(flags)
    if bad.size:
        row = rows[int(bad[0])]
        raise SamplingError("logits", f"logits row {row} {_WHAT[int(flags[bad[0]])]}")
    entropy, varentropy, truncated_entropy, kept_mass, top_k_entropy, top_k_mass = stats
    return SampleOutput(
        token_ids=tokens,
        logprobs=logprobs,
        stats=SampleStats(entropy=entropy, varentropy=varentropy, truncated_entropy=truncated_entropy,
                          kept_tokens=kept, kept_mass=kept_mass, top_k_entropy=top_k_entropy,
                          top_k_mass=top_k_mass, surprise=surprise),
        strategies=[p.strategy_label() for p in chosen],
        mirostat_mu=torch.full((count,), float("nan"), dtype=torch.float64, device=device),
        top_logprobs=(top_ids, top_logprobs) if wanted else None,
    )

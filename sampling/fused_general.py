"""The fused CPU path for every strategy.

Rows of :func:`sampling.sample` that :mod:`samplerd.sampling.fused`'s bit-exact temperature / top-k /
top-p / min-p chain does not take, and whose strategies are all among :data:`STRATEGIES`,
are sampled here by :func:`samplerd.sampling.kernels.general.sample_rows` instead of by the general
pipeline's eager torch stages: greedy, dynamic temperature, top-nσ, top-k, optimal-k,
entropy and statistical top-k, top-H, top-p, min-p, typical, epsilon, eta, XTC and mirostat
v1 / v2, alone or chained, after the row's penalties, DRY and logit bias
(:mod:`samplerd.sampling.fused_processors`). This module prepares the kernel's arguments (one typed
record per row, :data:`samplerd.sampling.kernels.records.ROW`) and wraps its outputs.

The decisions are the eager stages': the kernels compare tokens against the same float32
quantities, the sums among them replayed in torch's order of addition (as :mod:`samplerd.sampling.fused`
does), so kept sets and draws are the same. Where the reference's float32 scalars come from
an algorithm not replayed here — the mean and standard deviation of top-nσ and statistical
top-k (torch's ``var_mean``, whose float32 variance also overflows beyond |logit| ~ 1.8e19, where
the kernel's float64 one does not), dynamic temperature's entropy, ``exp`` of logits re-centred
after typical or XTC removed the maximum, and the float32 ``log`` / ``exp`` / ``sigmoid`` of
row scalars (here correctly rounded) — a token that lies within float32 rounding of its
threshold may be decided differently. Statistics are float64 (the reference: float32).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numba
import numpy as np
import torch

from samplerd.sampling import fused_prepare, fused_processors
from samplerd.sampling.draw import block_size
from samplerd.sampling.kernels import records
from samplerd.sampling.kernels.general import dynamic_divisors, sample_one_row, sample_rows
from samplerd.sampling.output import SampleOutput, SampleStats
from samplerd.sampling.state import SequenceState
from samplerd.sampling.strategies import temperature

#: Names of the strategies the general kernel implements.
STRATEGIES = frozenset(records.FLAGS) | {temperature.TEMPERATURE_STRATEGY.name} | fused_processors.STRATEGIES


def is_eligible(p) -> bool:
    """Whether a row with parameters ``p`` switches on nothing but :data:`STRATEGIES`."""
    return STRATEGIES.issuperset(p.active_strategies())


_local = threading.local()


def _scratch(vocab: int) -> records.Scratch:
    threads = numba.get_num_threads()
    space = getattr(_local, "scratch", None)
    if space is None or space.current.shape != (threads, vocab):
        space = _local.scratch = records.scratch(threads, vocab)
    return space


def _rows(params: Sequence, steps: Sequence[int], states, vocab: int) -> np.ndarray:
    """One :data:`records.ROW` per row (fresh seeds for unseeded rows)."""
    seeds = fused_prepare.seeds(params)
    out = np.empty(len(params), dtype=records.ROW)
    for r, p in enumerate(params):
        flags = 0
        for name in p.active_strategies():
            flags |= records.FLAGS.get(name, 0)
        state = states[r] if states is not None else None
        known = state.mirostat_mu if isinstance(state, SequenceState) else None
        mu = known if known is not None else 2.0 * p.mirostat_tau
        out[r] = records.row_record(p, flags, vocab, mu, int(seeds[r]), steps[r])
    return out


def _dynamic_divisors(x: np.ndarray, row: np.ndarray, lanes: int, space) -> np.ndarray:
    """Each row's dynamic temperature (1 on other rows) from its untempered logits ``x``, the
    workspace ``space`` lending its scratch (bad rows are left to the caller's check)."""
    rows, vocab = x.shape
    untempered, status = fused_prepare.maxima_and_weights(x, np.ones(rows, dtype=np.float32), space)
    divisors = np.ones(rows, dtype=np.float32)
    dynamic_divisors(x, untempered.w, untempered.m, row, status, lanes,
                     np.empty((vocab // 512 + 2, 64), dtype=np.float32), space.scratch, divisors)
    return divisors


def sample(logits: torch.Tensor, params: Sequence, steps: Sequence[int], states=None) -> SampleOutput:
    """:func:`sampling.sample` for a CPU batch whose rows are all eligible (:func:`is_eligible`),
    checked but for the logits' values, which this checks as :func:`samplerd.sampling.checks.check_logits`
    does; ``params``, ``steps`` and ``states`` (or None) hold one entry per row."""
    from samplerd.sampling.fused import sum_lanes  # the chain path's replay of torch's sums

    rows, vocab = logits.shape
    row = _rows(params, steps, states, vocab)
    space = fused_prepare.workspace(rows, vocab)
    x = fused_prepare.processed(logits, params, states, space)
    divisors = np.where(row["flags"] & records.GREEDY, np.float32(1.0), row["temperature"]).astype(np.float32)
    dynamic = (row["flags"] & records.DYNATEMP).astype(bool)
    if dynamic.any():
        divisors[dynamic] = _dynamic_divisors(x, row, sum_lanes(), space)[dynamic]
        newly_greedy = dynamic & (divisors < temperature.GREEDY_BELOW)
        row["flags"][newly_greedy] |= records.GREEDY
        divisors[newly_greedy] = 1.0
    row["divisor"] = divisors
    prepared = fused_prepare.first_pass(logits, x, divisors, space)

    draws = int(row["n"].max())
    ranked = min(int(row["top_logprobs"].max()), vocab)
    out = records.Outputs(
        tokens=np.empty((rows, draws), dtype=np.int64),
        logprobs=np.empty((rows, draws), dtype=np.float32),
        surprise=np.empty((rows, draws), dtype=np.float32),
        measures=np.empty((rows, 6), dtype=np.float64),
        kept=np.empty(rows, dtype=np.int64),
        ranked_ids=np.empty((rows, ranked), dtype=np.int64),
        ranked_logprobs=np.empty((rows, ranked), dtype=np.float32),
        mu=np.empty(rows, dtype=np.float64),
    )
    (sample_rows if rows > 1 else sample_one_row)(prepared, row, sum_lanes(), block_size(vocab), _scratch(vocab), out)
    entropy, varentropy, truncated_entropy, kept_mass, top_k_entropy, top_k_mass = (
        torch.from_numpy(np.ascontiguousarray(out.measures.T, dtype=np.float32)))
    return SampleOutput(
        token_ids=torch.from_numpy(out.tokens),
        logprobs=torch.from_numpy(out.logprobs),
        stats=SampleStats(entropy=entropy, varentropy=varentropy, truncated_entropy=truncated_entropy,
                          kept_tokens=torch.from_numpy(out.kept), kept_mass=kept_mass, top_k_entropy=top_k_entropy,
                          top_k_mass=top_k_mass, surprise=torch.from_numpy(out.surprise)),
        strategies=[p.strategy_label() for p in params],
        mirostat_mu=torch.from_numpy(out.mu),
        top_logprobs=(torch.from_numpy(out.ranked_ids), torch.from_numpy(out.ranked_logprobs)) if ranked else None,
    )

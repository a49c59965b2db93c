"""The sampling pipeline: logits in, filtered logits or sampled tokens out.

The stages run in the registry's order (:data:`samplerd.sampling.registry.STRATEGIES`;
docs/semantics.md): logits processors (penalties, DRY, logit bias), then temperature (below 1e-5,
greedy), then the truncations, each seeing the renormalised output of the one before, then
the draw. Each stage runs its declaration's kernel on the rows that switch it on, all at
once, with per-row parameter tensors; which rows those are is decided once per batch
(:mod:`samplerd.sampling.plan`), and a stage no row uses costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from samplerd.sampling import fused
from samplerd.sampling.checks import check_logits, check_processed, checked_inputs
from samplerd.sampling.distribution import Distribution
from samplerd.sampling.draw import inverse_cdf
from samplerd.sampling.errors import SamplingError
from samplerd.sampling.output import SampleOutput, SampleStats
from samplerd.sampling.params import SamplingParams
from samplerd.sampling.plan import BatchPlan, Step, plan_batch
from samplerd.sampling.rng import STREAM_DRAW, device_uniforms
from samplerd.sampling.rows import RowParams
from samplerd.sampling.selection import kth_largest
from samplerd.sampling.state import SequenceState
from samplerd.sampling.strategies import mirostat
from samplerd.sampling.strategies.temperature import GREEDY_BELOW, is_greedy, may_come_out_greedy
from samplerd.sampling.topk import first_argmax, top_values
from samplerd.sampling.transfer import upload

_NEG_INF = float("-inf")


@dataclass
class _Batch:
    """The processed batch: its plan and the logits at each point of the pipeline."""

    plan: BatchPlan  # with the rows whose dynamic temperature came out greedy
    untempered: torch.Tensor  # after penalties and bias (greedy decides here)
    full: Distribution  # after temperature: what the truncations see
    truncated_or_none: torch.Tensor | None  # after truncation; None: only ``final`` has it (lazily)
    final: Distribution | None  # cached distribution of the final logits when still valid
    first_max: torch.Tensor | None  # int64 [B, 1], argmax of untempered (when any row is greedy)

    @property
    def truncated(self) -> torch.Tensor:
        """The truncated logits (greedy rows not yet reduced to their argmax)."""
        return _materialise(self.truncated_or_none, self.final)

    @cached_property
    def final_logits(self) -> torch.Tensor:
        """The truncated logits, greedy rows holding only their argmax (at its untempered value)."""
        if self.first_max is None:
            return self.truncated
        only_max = torch.full_like(self.untempered, _NEG_INF).scatter(
            1, self.first_max, self.untempered.gather(1, self.first_max))
        return torch.where(self.plan.greedy[:, None], only_max, self.truncated)


def filter_logits(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
                  steps: int | Sequence[int] = 0,
                  states: Sequence[SequenceState | None] | None = None) -> torch.Tensor:
    """Apply penalties, bias, temperature and every truncation; removed tokens become ``-inf``.

    Returns a float32 ``[B, V]`` tensor. Greedy rows keep only their argmax, at its
    pre-temperature value. ``params`` is one :class:`SamplingParams` or one per row;
    ``steps`` (the decoding step, keys XTC's coin) an int or one per row; ``states`` one
    :class:`SequenceState` (or None) per row, for penalties and mirostat.
    """
    inputs = checked_inputs(logits, params, steps, states)
    plan = plan_batch(inputs.params, inputs.steps, inputs.states, logits.device)
    return _run_stages(logits, plan, inputs.all_finite).final_logits


def sample(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
           steps: int | Sequence[int] = 0, states: Sequence[SequenceState | None] | None = None) -> SampleOutput:
    """Sample ``n`` tokens per row and compute the row statistics. Arguments as :func:`filter_logits`.

    On a CPU, rows take the fused path (:mod:`samplerd.sampling.fused`, same decisions) unless it is
    switched off; elsewhere, rows the device's fused path does not take go through the stages below. Each row's result
    depends on its own parameters alone, whichever path it takes.
    """
    try:
        inputs = checked_inputs(logits, params, steps, states, values=False)
    except SamplingError as error:
        if error.field != "logits":
            check_logits(logits)  # bad logits are reported first, as filter_logits does
        raise
    params, steps, states = inputs.params, inputs.steps, inputs.states
    engine = _fused_engine(logits)
    fast = engine.eligible_rows(logits, params)
    if len(fast) == len(params):
        return engine.sample(logits, params, steps, states=states)  # checks the logits' values in its first pass
    all_finite = check_logits(logits)
    if not fast:
        return _sample(logits, params, steps, states, all_finite)
    fast_set = set(fast)
    general = [i for i in range(len(params)) if i not in fast_set]
    parts = [
        (fast, engine.sample(_rows_of(logits, fast), [params[i] for i in fast], [steps[i] for i in fast],
                             states=None if states is None else [states[i] for i in fast])),
        (general, _sample(_rows_of(logits, general), [params[i] for i in general], [steps[i] for i in general],
                          None if states is None else [states[i] for i in general], all_finite)),
    ]
    return _merge_rows(parts, len(params))


def _rows_of(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The given rows of ``logits``, the index uploaded without blocking (:mod:`samplerd.sampling.transfer`)."""
    return logits.index_select(0, upload(torch.tensor(rows), logits.device))


def _fused_engine(logits: torch.Tensor):
    """The fused fast path for the logits' device: :mod:`samplerd.sampling.gpu.fused_chain` (Triton)
    on CUDA, :mod:`samplerd.sampling.fused` (numba) elsewhere. Both have ``eligible_rows`` and ``sample``."""
    if logits.device.type == "cuda":  # issue 15: imported only here, triton is an optional extra
        from samplerd.sampling.gpu import fused_chain

        return fused_chain
    return fused


def _sample(logits, params, steps, states, all_finite) -> SampleOutput:
    """:func:`sample` through the pipeline's stages, for checked inputs."""
    batch = _run_stages(logits, plan_batch(params, steps, states, logits.device), all_finite)
    rows = batch.plan.rows
    full = batch.full
    counts = [p.n for p in rows.params]
    draws = max(counts)
    if batch.plan.all_greedy:
        # Only argmaxes: no final distribution to build and nothing to draw.
        token_ids = batch.first_max.expand(-1, draws)
        logprobs = torch.zeros(token_ids.shape, dtype=torch.float32, device=token_ids.device)
        kept_logits = batch.untempered.gather(1, batch.first_max)
        truncated = _Truncated(entropy=torch.zeros_like(kept_logits[:, 0]),
                               kept_tokens=torch.ones_like(batch.first_max[:, 0]),
                               kept_mass=full.log_prob_of(kept_logits)[:, 0].exp())
        final = None
    else:
        final = batch.final or Distribution(batch.final_logits)
        noise = device_uniforms(rows.seeds, rows.steps, STREAM_DRAW, draws, rows.device)
        token_ids = inverse_cdf(final.weights, noise)
        # A kept token's final logit is its full-distribution logit, except on greedy rows.
        source = batch.full.logits if batch.first_max is None else batch.final_logits
        logprobs = final.log_prob_of(source.gather(1, token_ids))
        truncated = _Truncated(entropy=final.entropy[:, 0], kept_tokens=torch.count_nonzero(final.finite, dim=-1),
                               kept_mass=(final.total * torch.exp(final.max - full.max) / full.total)[:, 0])
    surprise = -full.log_prob_of(full.logits.gather(1, token_ids))
    stats = _statistics(batch, truncated, surprise)
    mu = _next_mirostat_mu(batch, surprise[:, :1])
    if min(counts) < draws:
        padding = torch.arange(draws, device=token_ids.device)[None, :] >= upload(torch.tensor(counts)[:, None],
                                                                                    token_ids.device)
        token_ids = token_ids.masked_fill(padding, -1)
        logprobs = logprobs.masked_fill(padding, float("nan"))
        stats = replace(stats, surprise=stats.surprise.masked_fill(padding, float("nan")))
    return SampleOutput(
        token_ids=token_ids,
        logprobs=logprobs,
        stats=stats,
        strategies=[p.strategy_label() for p in rows.params],
        mirostat_mu=mu,
        top_logprobs=_top_logprobs(batch, final),
    )


def _merge_rows(parts, rows: int) -> SampleOutput:
    """One output from the outputs of row groups: ``parts`` holds (row indices, output) pairs.
    Token ids are padded with -1 (log-probabilities and surprise with NaN) to the widest
    ``n``, top log-probabilities with -1 / -inf to the widest group."""
    order = torch.tensor([i for index, _ in parts for i in index])
    where = torch.empty_like(order)
    where[order] = torch.arange(rows)
    outputs = [out for _, out in parts]
    on_device = upload(where, outputs[0].token_ids.device)  # every part's tensors are on the batch's device

    def merged(values, pad=None):
        if pad is not None:
            width = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, width - v.shape[1]), value=pad) for v in values]
        return torch.cat(values)[on_device]

    stats = {name: merged([getattr(out.stats, name) for out in outputs], float("nan") if name == "surprise" else None)
             for name in SampleStats.__dataclass_fields__}
    top = None
    if any(out.top_logprobs is not None for out in outputs):
        device = outputs[0].token_ids.device
        tops = [out.top_logprobs or (torch.empty(len(index), 0, dtype=torch.int64, device=device),
                                     torch.empty(len(index), 0, device=device))
                for index, out in parts]
        top = (merged([ids for ids, _ in tops], -1), merged([values for _, values in tops], _NEG_INF))
    labels = [label for out in outputs for label in out.strategies]
    return SampleOutput(
        token_ids=merged([out.token_ids for out in outputs], -1),
        logprobs=merged([out.logprobs for out in outputs], float("nan")),
        stats=SampleStats(**stats),
        strategies=[labels[i] for i in where.tolist()],
        mirostat_mu=merged([out.mirostat_mu for out in outputs]),
        top_logprobs=top,
    )


@dataclass(frozen=True)
class _Truncated:
    """Statistics of the final distribution, per row."""

    entropy: torch.Tensor
    kept_tokens: torch.Tensor
    kept_mass: torch.Tensor


def _run_stages(logits: torch.Tensor, plan: BatchPlan, all_finite: bool) -> _Batch:
    """The plan's stages in their order: processors, temperatures (then the division), truncations."""
    z = logits.float()
    for step in plan.processes:
        z = _on_rows(step, z)
    if plan.processes:
        check_processed(z)  # a second read back on CUDA, only for batches with processors
    untempered = z
    if plan.temperatures:
        temp = torch.ones_like(plan.rows.float("temperature"))
        for step in plan.temperatures:
            temp = _on_rows(step, z, temp)
        if any(may_come_out_greedy(p) for p in plan.rows.params):
            # A dynamic temperature that can fall below GREEDY_BELOW: the one decision here
            # that the data make, read back (one sync).
            found_greedy = (temp[:, 0] < GREEDY_BELOW).tolist()
            if any(found_greedy):
                plan = plan.with_greedy(found_greedy)
        if _divides(plan):  # dividing by 1 changes nothing, so the host may over-approximate
            z = z / torch.where(plan.greedy[:, None], torch.ones_like(temp), temp)
    full = Distribution(z, may_have_removed=not all_finite)
    truncated, current = _truncate(full, plan.truncations)
    first_max = None
    if plan.any_greedy:
        first_max = first_argmax(untempered)
        truncated, current = _materialise(truncated, current), None
    return _Batch(plan, untempered, full, truncated, current, first_max)


def _divides(plan: BatchPlan) -> bool:
    """Whether some row's temperature may differ from 1, from the parameters alone."""
    return any(not is_greedy(p) and (p.temperature != 1.0 or p.dynatemp_range > 0) for p in plan.rows.params)


def _on_rows(step: Step, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``step``'s kernel on its rows of ``z``, written into those rows of ``out`` (default ``z``)."""
    on = step.on
    if on.index is None:
        return step.strategy.kernel(z, on.rows)
    out = z if out is None else out
    return out.index_copy(0, on.index, step.strategy.kernel(z[on.index], on.rows))


def _truncate(full: Distribution, truncations: tuple[Step, ...]):
    """Run the truncation stages; returns the truncated logits and, when still valid, their
    cached distribution."""
    z, current = full.logits, full
    for step in truncations:
        strategy, on = step.strategy, step.on
        everyone = on.index is None
        dist = current if everyone and current is not None else Distribution(z if everyone else z[on.index])
        keep = strategy.keep(dist, on.rows)
        if dist.may_have_removed:
            keep &= dist.finite
        keep = _protect_top_tokens(strategy, dist, on.rows, keep)
        if everyone:
            current = dist.restricted(keep, _kept_max(dist, keep) if strategy.own_min_keep else None)
            z = None  # built from ``current`` only if needed
        else:
            z = _materialise(z, current).index_copy(0, on.index, torch.where(keep, dist.logits, _NEG_INF))
            current = None
    return z, current


def _materialise(z: torch.Tensor | None, current: Distribution | None) -> torch.Tensor:
    return current.logits if z is None else z


def _kept_max(dist: Distribution, keep: torch.Tensor) -> torch.Tensor | None:
    """The kept set's row maxima, for a strategy that may remove a row's maximum; None when it
    removed none. Off the CPU it is not read back: rescaling to an unchanged maximum gives the
    same weights, at the cost of one exp pass instead of a sync."""
    kept_max = torch.where(keep, dist.logits, _NEG_INF).amax(dim=-1, keepdim=True)
    if kept_max.device.type != "cpu":
        return kept_max
    return None if bool((kept_max == dist.max).all()) else kept_max


def _protect_top_tokens(strategy, dist: Distribution, rows: RowParams, keep: torch.Tensor) -> torch.Tensor:
    """``min_tokens_to_keep``: never remove the m most probable tokens (ties with the m-th kept)."""
    if strategy.own_min_keep:
        return keep
    largest = max(p.min_tokens_to_keep for p in rows.params)
    if largest > 1:
        return keep | (dist.logits >= kth_largest(dist.logits, rows.min_keep, largest)) & dist.finite
    if not strategy.keeps_argmax:
        return keep | (dist.logits >= dist.max)
    return keep


def _statistics(batch: _Batch, truncated: _Truncated, surprise: torch.Tensor) -> SampleStats:
    full = batch.full
    k = batch.plan.rows.int("stats_top_k")
    width = min(max(p.stats_top_k for p in batch.plan.rows.params), full.logits.shape[-1])
    top = full.log_prob_of(top_values(full.logits, width)[0]).exp()
    top = torch.where(torch.arange(width, device=top.device)[None, :] < k, top, torch.zeros_like(top))
    top_mass = top.sum(dim=-1, keepdim=True)
    renormalised = top / top_mass
    top_entropy = -torch.xlogy(renormalised, renormalised).sum(dim=-1, keepdim=True)
    return SampleStats(
        entropy=full.entropy[:, 0],
        varentropy=full.varentropy[:, 0],
        truncated_entropy=truncated.entropy,
        kept_tokens=truncated.kept_tokens,
        kept_mass=truncated.kept_mass.clamp(max=1.0),
        top_k_entropy=top_entropy[:, 0].clamp(min=0.0),
        top_k_mass=top_mass[:, 0].clamp(max=1.0),
        surprise=surprise,
    )


def _next_mirostat_mu(batch: _Batch, surprise_nats: torch.Tensor) -> torch.Tensor:
    on = batch.plan.mirostat
    mu = torch.full((len(batch.plan.rows),), float("nan"), dtype=torch.float64, device=surprise_nats.device)
    if on is None:
        return mu
    bits = (surprise_nats if on.index is None else surprise_nats[on.index]).double() / np.log(2.0)
    updated = mirostat.next_mu(on.rows.mirostat_mu, bits, on.rows.float("mirostat_tau").double(),
                               on.rows.float("mirostat_eta").double())
    return updated[:, 0] if on.index is None else mu.index_copy(0, on.index, updated[:, 0])


def _top_logprobs(batch: _Batch, final: Distribution | None):
    wanted = batch.plan.rows.int("top_logprobs")
    width = max(p.top_logprobs for p in batch.plan.rows.params)
    if width == 0:
        return None
    final = final or Distribution(batch.final_logits)
    width = min(width, batch.final_logits.shape[-1])
    values, ids = top_values(batch.final_logits, width)
    logprobs = final.log_prob_of(values)
    unused = (torch.arange(width, device=ids.device)[None, :] >= wanted) | (values == _NEG_INF)
    return ids.masked_fill(unused, -1), logprobs.masked_fill(unused, _NEG_INF)

"""The sampling pipeline: logits in, filtered logits or sampled tokens out.

Order of stages (SAMPLERS.md Part A; the Hugging Face / vLLM order, temperature before
truncation): repetition / frequency / presence penalties -> DRY -> logit bias ->
temperature (dynamic temperature when ``dynatemp_range > 0``; below 1e-5, greedy) ->
top-nσ -> top-k -> optimal-k -> entropy top-k -> statistical top-k -> top-H -> top-p ->
min-p -> typical -> epsilon -> eta -> XTC -> draw. Mirostat replaces the truncations. Each
truncation sees the renormalised output of the one before it. Every stage works on the rows
that switch it on, all at once, with per-row parameter tensors; a stage no row uses costs
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from sampling import fused
from sampling.distribution import Distribution
from sampling.draw import inverse_cdf
from sampling.errors import SamplingError
from sampling.output import SampleOutput, SampleStats
from sampling.params import SamplingParams
from sampling.registry import MIROSTATS, TRUNCATIONS
from sampling.rng import STREAM_DRAW, fresh_seeds, uniforms
from sampling.rows import RowParams
from sampling.selection import kth_largest
from sampling.state import SequenceState
from sampling.strategies import dry, mirostat, penalties, temperature
from sampling.topk import first_argmax, top_values

_ACCEPTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NEG_INF = float("-inf")


@dataclass
class _Batch:
    """The processed batch: logits at each point of the pipeline and the per-row parameters."""

    rows: RowParams
    untempered: torch.Tensor  # after penalties and bias (greedy decides here)
    full: Distribution  # after temperature: what the truncations see
    truncated_or_none: torch.Tensor | None  # after truncation; None: only ``final`` has it (lazily)
    final: Distribution | None  # cached distribution of the final logits when still valid
    greedy: torch.Tensor  # bool [B]
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
        return torch.where(self.greedy[:, None], only_max, self.truncated)


def filter_logits(logits: torch.Tensor, params, steps=0, states=None) -> torch.Tensor:
    """Apply penalties, bias, temperature and every truncation; removed tokens become ``-inf``.

    Returns a float32 ``[B, V]`` tensor. Greedy rows keep only their argmax, at its
    pre-temperature value. ``params`` is one :class:`SamplingParams` or one per row;
    ``steps`` (the decoding step, keys XTC's coin) an int or one per row; ``states`` one
    :class:`SequenceState` (or None) per row, for penalties and mirostat.
    """
    return _run_stages(*_checked_inputs(logits, params, steps, states)).final_logits


def sample(logits: torch.Tensor, params, steps=0, states=None) -> SampleOutput:
    """Sample ``n`` tokens per row and compute the row statistics. Arguments as :func:`filter_logits`.

    On a CPU, rows without penalties, DRY or logit bias take the fused path
    (:mod:`sampling.fused`, same decisions); the others the stages below. Each row's result
    depends on its own parameters alone, whichever path it takes.
    """
    try:
        logits, params, steps, states, _ = _checked_inputs(logits, params, steps, states, values=False)
    except SamplingError as error:
        if error.field != "logits":
            check_logits(logits)  # bad logits are reported first, as filter_logits does
        raise
    fast = fused.eligible_rows(logits, params)
    if len(fast) == len(params):
        return fused.sample(logits, params, steps, states)  # checks the logits' values in its first pass
    all_finite = check_logits(logits)
    if not fast:
        return _sample(logits, params, steps, states, all_finite)
    fast_set = set(fast)
    general = [i for i in range(len(params)) if i not in fast_set]
    parts = [
        (fast, fused.sample(logits[fast], [params[i] for i in fast], [steps[i] for i in fast],
                            None if states is None else [states[i] for i in fast])),
        (general, _sample(logits[general], [params[i] for i in general], [steps[i] for i in general],
                          None if states is None else [states[i] for i in general], all_finite)),
    ]
    return _merge_rows(parts, len(params))


def _sample(logits, params, steps, states, all_finite) -> SampleOutput:
    """:func:`sample` through the pipeline's stages, for checked inputs."""
    batch = _run_stages(logits, params, steps, states, all_finite)
    rows = batch.rows
    full = batch.full
    counts = [p.n for p in rows.params]
    draws = max(counts)
    if bool(batch.greedy.all()):
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
        noise = torch.from_numpy(uniforms(rows.seeds, rows.steps, STREAM_DRAW, draws))
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
        padding = torch.arange(draws, device=token_ids.device)[None, :] >= torch.tensor(counts)[:, None].to(
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

    def merged(values, pad=None):
        if pad is not None:
            width = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, width - v.shape[1]), value=pad) for v in values]
        return torch.cat(values)[where]

    outputs = [out for _, out in parts]
    stats = {name: merged([getattr(out.stats, name) for out in outputs], float("nan") if name == "surprise" else None)
             for name in SampleStats.__dataclass_fields__}
    top = None
    if any(out.top_logprobs is not None for out in outputs):
        tops = [out.top_logprobs or (torch.empty(len(index), 0, dtype=torch.int64), torch.empty(len(index), 0))
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


def _run_stages(logits, params, steps, states, all_finite) -> _Batch:
    device = logits.device
    vocab = logits.shape[1]
    seeds = np.array([p.seed if p.seed is not None else 0 for p in params], dtype=np.uint64)
    unseeded = [i for i, p in enumerate(params) if p.seed is None]
    if unseeded:
        seeds[unseeded] = fresh_seeds(len(unseeded))
    rows = RowParams(params, seeds, np.asarray(steps, dtype=np.uint64), _initial_mu(params, states, device), device)

    z = logits.float()
    z = _apply_processors(z, rows, states, vocab)
    untempered = z
    greedy = torch.tensor([temperature.is_greedy(p) for p in params], device=device)
    temp = rows.float("temperature").clone()
    dynamic = _active_rows(temperature.DYNATEMP, params, device)
    if dynamic is not None:
        sub = rows.subset(dynamic)
        temp[dynamic] = temperature.dynamic_temperature(
            z[dynamic], sub.float("temperature"), sub.float("dynatemp_range"), sub.float("dynatemp_exponent"))
        greedy = greedy | (temp[:, 0] < temperature.GREEDY_BELOW)
    divisor = torch.where(greedy[:, None], torch.ones_like(temp), temp)
    if bool((divisor != 1.0).any()):
        z = z / divisor
    full = Distribution(z, may_have_removed=not all_finite)
    truncated, current = _truncate(full, rows, greedy)
    first_max = None
    if bool(greedy.any()):
        first_max = first_argmax(untempered)
        truncated, current = _materialise(truncated, current), None
    return _Batch(rows, untempered, full, truncated, current, greedy, first_max)


def _checked_inputs(logits, params, steps, states, values: bool = True):
    """The inputs validated (the logits' values too unless ``values=False``; then
    ``all_finite`` is None), params one per row, steps a list, states a list or None."""
    if not isinstance(logits, torch.Tensor):
        raise SamplingError("logits", f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _ACCEPTED_DTYPES:
        raise SamplingError("logits", f"logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.dim() != 2:
        raise SamplingError("logits", f"logits must have shape [B, V], got {list(logits.shape)}")
    rows, vocab = logits.shape
    if rows < 1 or vocab < 1:
        raise SamplingError("logits", f"logits must have B >= 1 and V >= 1, got {list(logits.shape)}")
    all_finite = check_logits(logits) if values else None
    if isinstance(params, SamplingParams):
        params = [params] * rows
    else:
        params = list(params)
        if len(params) != rows:
            raise SamplingError("params", f"params must hold one SamplingParams per row ({rows}), got {len(params)}")
        for i, p in enumerate(params):
            if not isinstance(p, SamplingParams):
                raise SamplingError("params", f"params[{i}] must be a SamplingParams, got {type(p).__name__}")
    steps = _per_row("steps", steps, rows)
    if states is not None:
        states = list(states)
        if len(states) != rows:
            raise SamplingError("states", f"states must hold one entry per row ({rows}), got {len(states)}")
        _check_states(states, vocab)
    for i, p in enumerate(params):
        check_token_ids(p, vocab, f" (row {i})" if rows > 1 else "")
        if p.path_beams > 1:
            raise SamplingError("path_beams", "path_beams > 1 needs a decoding session "
                                "(sampling.strategies.path_top_p.path_aware_step)")
    return logits, params, steps, states, all_finite


def check_logits(logits: torch.Tensor) -> bool:
    """Raise :class:`SamplingError` on NaN, +inf or a row with no finite logit (``-inf`` is a
    masked token, valid); return whether every logit is finite.

    Two reductions decide it: max and min propagate NaN, the max is +inf with any +inf and
    -inf only when the row has no finite logit, and the min is -inf when a token is masked.
    """
    if logits.device.type == "cpu" and logits.dtype != torch.bfloat16:
        # numpy reduces a few rows several times faster than torch dispatches its ops (the
        # front end checks every request this way); numpy has no bfloat16.
        values = logits.detach().numpy()
        if _all_finite(values):
            return True
        row_max, row_min = values.max(axis=-1), values.min(axis=-1)
    else:
        row_max = logits.amax(dim=-1).float().cpu().numpy()
        row_min = logits.amin(dim=-1).float().cpu().numpy()
    bad = ~np.isfinite(row_max)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if np.isnan(row_max[row]):
            what = "contains NaN"
        elif row_max[row] == np.inf:
            what = "contains +inf"
        else:
            what = "has no finite logit"
        raise SamplingError("logits", f"logits row {row} {what}")
    return bool(np.isfinite(row_min).all())


def _all_finite(values: np.ndarray) -> bool:
    """True when every value is finite, in one pass; False may also mean a huge sum (the caller
    then looks closer). NaN and +-inf propagate into a sum of squares, which for float32 is a
    BLAS dot product, several times faster than a numpy reduction (``np.vdot``: unlike ``np.dot``
    it warns of no overflow). float16 squares overflow at 256, so float16 is summed in float32."""
    flat = values.reshape(-1)
    if flat.dtype == np.float32:
        return bool(np.isfinite(np.vdot(flat, flat)))
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, or an overflowing sum
        return bool(np.isfinite(flat.sum(dtype=np.float32)))


def _per_row(name: str, value, rows: int) -> list[int]:
    if isinstance(value, (int, np.integer)):
        values = [value] * rows
    else:
        try:
            values = list(value)
        except TypeError:
            raise SamplingError(name, f"{name} must be an int or a sequence of ints, got {value!r}") from None
    if len(values) != rows:
        raise SamplingError(name, f"{name} must be an int or one per row ({rows}), got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**64:
            raise SamplingError(name, f"{name} must be integers in [0, 2**64), got {v!r}")
    return [int(v) for v in values]


def _check_states(states, vocab: int) -> None:
    """Each state is None or a SequenceState with history ids in [0, V) and a finite mu."""
    for row, state in enumerate(states):
        if state is None:
            continue
        if not isinstance(state, SequenceState):
            raise SamplingError(f"states[{row}]",
                                f"states[{row}] must be a SequenceState or None, got {type(state).__name__}")
        if state.history:
            try:
                history = np.asarray(state.history, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                raise SamplingError(f"states[{row}].history",
                                    f"states[{row}].history must hold integer token ids") from None
            outside = np.flatnonzero((history < 0) | (history >= vocab))
            if outside.size:
                position = int(outside[0])
                raise SamplingError(
                    f"states[{row}].history",
                    f"states[{row}].history[{position}]: token {int(history[position])} is outside the "
                    f"vocabulary (V={vocab})")
        mu = state.mirostat_mu
        if mu is not None and not (isinstance(mu, (int, float)) and np.isfinite(mu)):
            raise SamplingError(f"states[{row}].mirostat_mu", f"states[{row}].mirostat_mu must be finite, got {mu!r}")


def check_token_ids(p: SamplingParams, vocab: int, where: str = "") -> None:
    """Raise :class:`SamplingError` when a token id in ``p`` (logit bias, DRY breakers) is outside
    a vocabulary of ``vocab`` tokens; ``where`` is appended to the message."""
    for token, _ in p.logit_bias:
        if token >= vocab:
            raise SamplingError("logit_bias", f"logit_bias token {token} is outside the vocabulary (V={vocab}){where}")
    for token in p.dry_sequence_breakers:
        if token >= vocab:
            raise SamplingError("dry_sequence_breakers",
                                f"dry_sequence_breakers token {token} is outside the vocabulary (V={vocab}){where}")


def _initial_mu(params, states, device) -> torch.Tensor:
    mu = []
    for i, p in enumerate(params):
        state = states[i] if states is not None else None
        known = state.mirostat_mu if isinstance(state, SequenceState) else None
        mu.append(known if known is not None else 2.0 * p.mirostat_tau)
    return torch.tensor(mu, dtype=torch.float64, device=device)[:, None]


def _active_rows(strategies, params, device, exclude: torch.Tensor | None = None) -> torch.Tensor | None:
    """Indices of the rows that switch on any of ``strategies`` (one declaration or several),
    less those in ``exclude``; None when there are none."""
    if not isinstance(strategies, (list, tuple)):
        strategies = (strategies,)
    flags = [any(p.uses(s) for s in strategies) for p in params]
    if not any(flags):
        return None
    active = torch.tensor(flags, device=device)
    if exclude is not None:
        active &= ~exclude
    if not bool(active.any()):
        return None
    return active.nonzero()[:, 0]


def _apply_processors(z: torch.Tensor, rows: RowParams, states, vocab: int) -> torch.Tensor:
    params = rows.params
    device = z.device
    counted = [penalties.REPETITION_PENALTY, penalties.FREQUENCY_PENALTY, penalties.PRESENCE_PENALTY]
    penalised = _active_rows(counted, params, device)
    if penalised is not None:
        sub = rows.subset(penalised)
        counts = penalties.token_counts(_histories(states, penalised, device), vocab)
        z = z.index_copy(0, penalised, penalties.apply_penalties(
            z[penalised], counts, sub.float("repetition_penalty"), sub.float("frequency_penalty"),
            sub.float("presence_penalty")))
    repeated = _active_rows(dry.DRY, params, device)
    if repeated is not None:
        histories = [np.asarray(_history(states, i), dtype=np.int64) for i in repeated.tolist()]
        amounts = dry.dry_penalties(histories, [params[i] for i in repeated.tolist()], vocab).to(device)
        z = z.index_copy(0, repeated, z[repeated] - amounts)
    biased = [(i, token, bias) for i, p in enumerate(params) for token, bias in p.logit_bias]
    if biased:
        row_index, token_index, amount = zip(*biased, strict=True)
        z = z.index_put((torch.tensor(row_index, device=device), torch.tensor(token_index, device=device)),
                        torch.tensor(amount, dtype=z.dtype, device=device), accumulate=True)
    return z


def _history(states, row: int) -> tuple[int, ...]:
    state = states[row] if states is not None else None
    return state.history if isinstance(state, SequenceState) else ()


def _histories(states, index: torch.Tensor, device) -> torch.Tensor:
    """``[rows, L]`` int64 token histories of the rows at ``index``, padded with -1."""
    found = [_history(states, i) for i in index.tolist()]
    longest = max((len(h) for h in found), default=0)
    padded = torch.full((len(found), max(longest, 1)), -1, dtype=torch.int64)
    for r, h in enumerate(found):
        if h:
            padded[r, : len(h)] = torch.tensor(h, dtype=torch.int64)
    return padded.to(device)


def _truncate(full: Distribution, rows: RowParams, greedy: torch.Tensor):
    """Run every truncation stage; returns the truncated logits and, when still valid, their
    cached distribution."""
    params = rows.params
    device = full.logits.device
    z, current = full.logits, full
    for strategy in TRUNCATIONS:
        index = _active_rows(strategy, params, device, exclude=greedy)
        if index is None:
            continue
        everyone = index.numel() == len(params)
        dist = current if everyone and current is not None else Distribution(z if everyone else z[index])
        sub = rows if everyone else rows.subset(index)
        keep = strategy.keep(dist, sub)
        if dist.may_have_removed:
            keep &= dist.finite
        keep = _protect_top_tokens(strategy, dist, sub, keep)
        if everyone:
            current = dist.restricted(keep, _new_max(dist, keep) if strategy.own_min_keep else None)
            z = None  # built from ``current`` only if needed
        else:
            z = _materialise(z, current).index_copy(0, index, torch.where(keep, dist.logits, _NEG_INF))
            current = None
    return z, current


def _materialise(z: torch.Tensor | None, current: Distribution | None) -> torch.Tensor:
    return current.logits if z is None else z


def _new_max(dist: Distribution, keep: torch.Tensor) -> torch.Tensor | None:
    """The kept set's row maxima when a strategy removed some row's maximum, else None."""
    kept_max = torch.where(keep, dist.logits, _NEG_INF).amax(dim=-1, keepdim=True)
    return None if bool((kept_max == dist.max).all()) else kept_max


def _protect_top_tokens(strategy, dist: Distribution, rows: RowParams, keep: torch.Tensor) -> torch.Tensor:
    """``min_tokens_to_keep``: never remove the m most probable tokens (ties with the m-th kept)."""
    if strategy.own_min_keep:
        return keep
    min_keep = rows.min_keep
    if bool((min_keep > 1).any()):
        return keep | (dist.logits >= kth_largest(dist.logits, min_keep)) & dist.finite
    if not strategy.keeps_argmax:
        return keep | (dist.logits >= dist.max)
    return keep


def _statistics(batch: _Batch, truncated: _Truncated, surprise: torch.Tensor) -> SampleStats:
    full = batch.full
    k = batch.rows.int("stats_top_k")
    width = min(int(k.max().item()), full.logits.shape[-1])
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
    rows = batch.rows
    mu = torch.full((len(rows),), float("nan"), dtype=torch.float64, device=surprise_nats.device)
    index = _active_rows(MIROSTATS, rows.params, surprise_nats.device)
    if index is None:
        return mu
    sub = rows.subset(index)
    bits = surprise_nats[index].double() / np.log(2.0)
    updated = mirostat.next_mu(sub.mirostat_mu, bits, sub.float("mirostat_tau").double(),
                               sub.float("mirostat_eta").double())
    return mu.index_copy(0, index, updated[:, 0])


def _top_logprobs(batch: _Batch, final: Distribution | None):
    wanted = batch.rows.int("top_logprobs")
    width = int(wanted.max().item())
    if width == 0:
        return None
    final = final or Distribution(batch.final_logits)
    width = min(width, batch.final_logits.shape[-1])
    values, ids = top_values(batch.final_logits, width)
    logprobs = final.log_prob_of(values)
    unused = (torch.arange(width, device=ids.device)[None, :] >= wanted) | (values == _NEG_INF)
    return ids.masked_fill(unused, -1), logprobs.masked_fill(unused, _NEG_INF)

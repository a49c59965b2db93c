"""A fused CPU fast path of :func:`sampling.sample` for the most common request shape.

Rows whose parameters switch on nothing but temperature (not greedy, not dynamic), top-k
(Fan et al. 2018, :mod:`samplerd.sampling.strategies.top_k`), top-p (Holtzman et al. 2020,
:mod:`samplerd.sampling.strategies.top_p`) and min-p (Nguyen et al. 2024,
:mod:`samplerd.sampling.strategies.min_p`) — with ``n``, ``seed``, ``top_logprobs``,
``stats_top_k`` and ``min_tokens_to_keep``, and any of the logits processors (penalties, DRY,
logit bias) — are sampled here instead of by the general pipeline's ~25 batched torch passes
(:func:`is_chain`, decided per row from the registry's declarations). Rows with any other
strategy take the general kernel (:mod:`samplerd.sampling.fused_general`); :func:`sample` splits a
batch between the two. On a CPU every valid row takes one of them.

What is fused: the processors (:mod:`samplerd.sampling.fused_processors`, applied to a copy of each
row from its history first), the check of the logits, the temperature division, the row maxima, the
statistics of the full distribution (entropy, varentropy, top-k entropy and mass), the
three truncations in their chain order (temperature -> top-k -> top-p -> min-p, each seeing
the renormalised output of the one before), ``min_tokens_to_keep``, the statistics of the
final distribution, the inverse-CDF draws and ``top_logprobs``: a first kernel prepares the
rows, torch exponentiates them (its vectorised ``exp`` gives the general path's weights bit
for bit), a second kernel does the rest of each row in a few passes while it is in cache,
a third draws and writes the outputs.

The decisions are the general path's, not an approximation of them:

* Every truncation here is a threshold on the tempered logit (ties at a boundary are kept
  with their whole group), so the chain is ``z >= max(t_k, t_p, t_minp)``, each threshold
  lowered to the ``min_tokens_to_keep``-th largest logit as
  :func:`samplerd.sampling.pipeline._protect_top_tokens` does.
* top-k's threshold is the exact k-th largest finite logit (:func:`samplerd.sampling.selection.kth_largest`).
* top-p's threshold replays :func:`samplerd.sampling.selection.prefix_boundary` float for float: the
  same bins, float32 bin sums accumulated in index order (as ``scatter_add_``), running
  sums accumulated in float64 and rounded to float32 (as torch's CPU ``cumsum``), the same
  search inside the boundary bin (rows whose boundary bin holds too few tokens for the
  target are resolved as a single row is there); its target is ``top_p`` times the float32
  total that torch computes of the weights top-p sees.
* min-p keeps ``z >= max + log(min_p)`` with torch's float32 ``log``.
* The draw replays :func:`samplerd.sampling.draw.inverse_cdf` on the float32 block sums that torch
  computes of the final weights, with the same uniforms (:func:`samplerd.sampling.rng.uniforms`).
* Those float32 totals and block sums are replayed in torch's order of addition (see
  :func:`sum_lanes`), checked against torch once per process; where the replay does not
  match, torch computes them.

Statistics are float32 sums within groups of 512 tokens, float64 across them (the general
path: float32 throughout), equal within float32 rounding. Ties inside ``top_logprobs`` are
reported in index order (the general path: in ``torch.topk``'s order).

Why numba: the per-row work left after ``exp`` — a histogram of the row, a few running
sums, a search inside one bin — is sequential and data-dependent; torch needs a dozen
full-row passes and as many dispatches for it, a compiled loop needs one pass. The kernels
are compiled once and cached on disk (``cache=True``; :mod:`samplerd.sampling.kernels`), release the
GIL, spread the first pass's rows over numba's threads and run the rest on the caller's
thread, and take the same argument types whatever the batch, so a warm-up call on a tiny
batch compiles (or loads) exactly what serving uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samplerd.sampling import fused_general, fused_prepare, fused_processors
from samplerd.sampling.draw import block_size, block_sums
from samplerd.sampling.kernels import records
from samplerd.sampling.kernels.chain import _finish_chained, _outputs, _scan, _scan_and_draw
from samplerd.sampling.kernels.common import _F32, _NEG_INF, _ZERO
from samplerd.sampling.kernels.torch_sums import _block_totals, _torch_sum
from samplerd.sampling.output import SampleOutput, SampleStats
from samplerd.sampling.strategies import min_p, temperature, top_k, top_p
from samplerd.sampling.switch import ThreadSwitch

#: The strategies this path implements; a row that switches on any other is not eligible.
STRATEGIES = (temperature.TEMPERATURE_STRATEGY, top_k.STRATEGY, top_p.STRATEGY, min_p.STRATEGY)
_NAMES = frozenset(s.name for s in STRATEGIES) | fused_processors.STRATEGIES

# Whether :func:`samplerd.sampling.sample` uses this path (default on; off in a thread for tests and benchmarks).
_switch = ThreadSwitch()
is_enabled = _switch.is_enabled
enabled = _switch.enabled


def is_chain(p) -> bool:
    """Whether a row with parameters ``p`` takes the temperature / top-k / top-p / min-p chain:
    sampled with temperature, every other strategy it switches on is top-k, top-p or min-p."""
    active = p.active_strategies()
    return temperature.TEMPERATURE_STRATEGY.name in active and _NAMES.issuperset(active)


def is_eligible(p) -> bool:
    """Whether a row with parameters ``p`` can take a fused path (on a CPU tensor): the chain
    (:func:`is_chain`) or the general kernel (:func:`samplerd.sampling.fused_general.is_eligible`)."""
    return is_chain(p) or fused_general.is_eligible(p)


def eligible_rows(logits: torch.Tensor, params: Sequence) -> list[int]:
    """Indices of the rows of a checked batch that the fast path takes (none off the CPU or
    while switched off)."""
    if logits.device.type != "cpu" or not is_enabled():
        return []
    known: dict[int, bool] = {}
    rows = []
    for i, p in enumerate(params):
        flag = known.get(id(p))
        if flag is None:
            flag = known[id(p)] = is_eligible(p)
        if flag:
            rows.append(i)
    return rows


# --------------------------------------------------------------------------------------
# The kernels live in samplerd.sampling.kernels; this module prepares their arguments.
# --------------------------------------------------------------------------------------
# The driver: per-row parameters in, SampleOutput out.

_lanes: int | None = None


def sum_lanes() -> int:
    """The vector width (floats) with which torch's CPU kernel adds float32 rows on this
    machine, as :func:`_torch_sum` replays it; 0 where no width reproduces torch's sums
    (the fast path then asks torch for them). Checked once per process."""
    global _lanes
    if _lanes is None:
        _lanes = _find_lanes()
    return _lanes


def _find_lanes() -> int:
    rng = np.random.default_rng(20240521)
    cases = []
    for vocab in (1, 3, 4, 7, 9, 16, 31, 33, 100, 257, 1000, 1024, 1500, 4097, 32000, 50021):
        # Four rows (torch splits a single long row across threads), a wide range of magnitudes
        # (so that the order of additions shows), and a mask as the truncations make.
        weights = (rng.random((4, vocab)) ** 8 * 100).astype(np.float32)
        logits = rng.standard_normal((4, vocab)).astype(np.float32)
        for threshold in (_NEG_INF, _F32(0.5)):
            masked = torch.from_numpy(np.where(logits >= threshold, weights, _ZERO).astype(np.float32))
            block = block_size(vocab)
            cases.append((logits, weights, threshold, block, masked.sum(dim=-1).numpy(),
                          block_sums(masked, block).numpy()))
    groups = np.empty((50021 // 512 + 2, 64), dtype=np.float32)
    for lanes in (8, 16, 4):
        if all(_replays(lanes, groups, *case) for case in cases):
            return lanes
    return 0


def _replays(lanes, groups, logits, weights, threshold, block, totals, blocks) -> bool:
    for r in range(logits.shape[0]):
        if _torch_sum(logits[r], weights[r], threshold, lanes, groups) != totals[r]:
            return False
        replayed = np.empty(blocks.shape[1], dtype=np.float64)
        _block_totals(logits[r], weights[r], threshold, block, lanes, groups, 0, replayed)
        if not np.array_equal(replayed, blocks[r]):
            return False
    return True


def _settings(p, vocab: int) -> tuple[tuple, tuple]:
    """One row's integer and float settings."""
    stats_k = min(p.stats_top_k, vocab)
    integers = (p.uses(top_k.STRATEGY), max(p.top_k, p.min_tokens_to_keep), p.min_tokens_to_keep,
                p.uses(top_p.STRATEGY), p.uses(min_p.STRATEGY), max(stats_k, min(p.top_logprobs, vocab)), p.n,
                stats_k, p.top_logprobs)
    return integers, (p.temperature, p.top_p, p.min_p)


def sample(logits: torch.Tensor, params: Sequence, steps: Sequence[int], states=None) -> SampleOutput:
    """:func:`sampling.sample` for a CPU batch whose rows are all eligible (:func:`is_eligible`),
    checked but for the logits' values, which this checks as
    :func:`samplerd.sampling.checks.check_logits` does; ``params``, ``steps`` and ``states`` (None, or
    one :class:`sampling.SequenceState` or None per row: mirostat's mu) hold one entry per row.
    Chain rows (:func:`is_chain`) take the chain's kernels, the others the general kernel."""
    chain = [i for i, p in enumerate(params) if is_chain(p)]
    if len(chain) == len(params):
        return _sample_chain(logits, params, steps, states)
    if not chain:
        return fused_general.sample(logits, params, steps, states)
    from samplerd.sampling.checks import check_logits
    from samplerd.sampling.pipeline import _merge_rows

    check_logits(logits)  # the first bad row of the whole batch, as the general path reports it
    chained = set(chain)
    rest = [i for i in range(len(params)) if i not in chained]
    parts = [
        (chain, _sample_chain(logits[chain], [params[i] for i in chain], [steps[i] for i in chain],
                              None if states is None else [states[i] for i in chain])),
        (rest, fused_general.sample(logits[rest], [params[i] for i in rest], [steps[i] for i in rest],
                                    None if states is None else [states[i] for i in rest])),
    ]
    return _merge_rows(parts, len(params))


def _sample_chain(logits: torch.Tensor, params: Sequence, steps: Sequence[int], states) -> SampleOutput:
    """:func:`sample` for rows that all take the chain."""
    rows, vocab = logits.shape
    known: dict[int, tuple] = {}
    settings = [known.get(id(p)) or known.setdefault(id(p), _settings(p, vocab)) for p in params]
    # One contiguous array per setting: the kernels then see the same array types whatever
    # the batch (a warm-up compiles what serving calls).
    integers = np.ascontiguousarray(np.array([s[0] for s in settings], dtype=np.int64).T)
    top_k_on, k, min_keep, top_p_on, min_p_on, top_width, n, stats_k, wanted = integers
    floats = np.ascontiguousarray(np.array([s[1] for s in settings], dtype=np.float32).T)  # float32 as in general
    divisors, top_p_value, min_p_value = floats

    space = fused_prepare.workspace(rows, vocab)
    x = fused_prepare.processed(logits, params, states, space)
    prepared = fused_prepare.first_pass(logits, x, divisors, space)
    lanes = sum_lanes()
    totals = space.small[4]
    if not lanes and top_p_on.any():
        totals = torch.from_numpy(prepared.w).sum(dim=-1).numpy()  # top-p's target: top_p times torch's total
    log_min_p = min_p_value
    if min_p_on.any():
        log_min_p = torch.from_numpy(min_p_value[:, None]).log()[:, 0].numpy()  # torch's float32 log
    chain = records.ChainSettings(top_k_on, k, min_keep, top_p_on, top_p_value, min_p_on, log_min_p, top_width, n,
                                  stats_k, wanted, fused_prepare.seeds(params), np.asarray(steps, dtype=np.uint64))

    widest = int(top_width.max())
    block = space.block
    space.sums.fill(0.0)
    work = records.ChainWork(
        totals=totals,
        top_values=np.empty((rows, widest), dtype=np.float32),
        top_ids=np.empty((rows, widest), dtype=np.int64),
        floors=space.small[1],
        protect=space.small[2],
        chained_out=np.empty((0 if lanes else int((top_k_on & top_p_on).sum()), vocab), dtype=np.float32),
        chained_row=space.counts[2],
        bins=space.bins,
        members=space.members,
        member_count=space.counts[1],
        sums=space.sums,
        thresholds=space.small[3],
        kept=np.empty(rows, dtype=np.int64),
        stats=space.stats,
        final=np.empty((0 if lanes else rows, vocab), dtype=np.float32),
        block_totals=np.empty((rows, -(-vocab // block)), dtype=np.float64),
        index=space.index,
        scratch=space.scratch,
        groups=space.groups,
    )
    draws = int(n.max())
    ranked = min(int(wanted.max()), vocab)
    out = records.ChainOutputs(
        tokens=np.empty((rows, draws), dtype=np.int64),
        logprobs=np.empty((rows, draws), dtype=np.float32),
        surprise=np.empty((rows, draws), dtype=np.float32),
        measures=np.empty((6, rows), dtype=np.float32),
        ranked_ids=np.empty((rows, ranked), dtype=np.int64),
        ranked_logprobs=np.empty((rows, ranked), dtype=np.float32),
    )
    if lanes:
        _scan_and_draw(prepared, chain, lanes, block, work, out)
    else:  # torch's sums between the passes
        _scan(prepared, chain, lanes, block, work)
        chained = int((work.chained_row >= 0).sum())
        if chained:
            chained_totals = torch.from_numpy(work.chained_out[:chained]).sum(dim=-1).numpy()
            _finish_chained(prepared, chain, chained_totals, work)
        work = work._replace(block_totals=block_sums(torch.from_numpy(work.final), block).numpy())
        _outputs(prepared, chain, block, work, out)
    tokens, logprobs, surprise, measures, ranked_ids, ranked_logprobs = out
    kept = work.kept
    entropy, varentropy, truncated_entropy, kept_mass, top_k_entropy, top_k_mass = torch.from_numpy(measures)
    return SampleOutput(
        token_ids=torch.from_numpy(tokens),
        logprobs=torch.from_numpy(logprobs),
        stats=SampleStats(entropy=entropy, varentropy=varentropy, truncated_entropy=truncated_entropy,
                          kept_tokens=torch.from_numpy(kept), kept_mass=kept_mass, top_k_entropy=top_k_entropy,
                          top_k_mass=top_k_mass, surprise=torch.from_numpy(surprise)),
        strategies=[p.strategy_label() for p in params],
        mirostat_mu=torch.full((rows,), float("nan"), dtype=torch.float64),
        top_logprobs=(torch.from_numpy(ranked_ids), torch.from_numpy(ranked_logprobs)) if ranked else None,
    )

"""The typed records the kernels take, instead of dozens of positional arguments.

* :class:`Prepared`: what the first pass (:mod:`samplerd.sampling.kernels.prepare`) leaves per row,
  which every later kernel reads.
* The general kernel (:mod:`samplerd.sampling.kernels.general`): one :data:`ROW` record per row holds
  every parameter as the reference stages see it (float32 where
  :class:`samplerd.sampling.rows.RowParams` gives float32 columns), with a bit per switched-on
  strategy in ``flags``; :class:`Scratch` and :class:`Outputs`.
* The chain's kernels (:mod:`samplerd.sampling.kernels.chain`): :class:`ChainSettings`,
  :class:`ChainWork` and :class:`ChainOutputs`.
* The processors (:mod:`samplerd.sampling.kernels.processors`): :data:`PROCESSING` and
  :class:`ProcessorInputs`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Prepared(NamedTuple):
    """The batch after the first pass, ``[B, V]`` or ``[B]``: ``z`` the tempered float32 logits,
    ``w`` their weights (torch's ``exp`` of ``max(z - m, EXP_FLOOR)``, 0 where masked), ``m`` the
    row maxima, ``chunk_max`` the maxima of each chunk of a row, ``finite`` the number of
    finite logits of each row."""

    z: np.ndarray
    w: np.ndarray
    m: np.ndarray
    chunk_max: np.ndarray
    finite: np.ndarray


# One bit per stage the general kernel implements, in pipeline order.
GREEDY = 1 << 0
DYNATEMP = 1 << 1
TOP_N_SIGMA = 1 << 2
TOP_K = 1 << 3
OPTIMAL_K = 1 << 4
ENTROPY_TOP_K = 1 << 5
STATISTICAL_TOP_K = 1 << 6
TOP_H = 1 << 7
TOP_P = 1 << 8
MIN_P = 1 << 9
TYPICAL = 1 << 10
EPSILON = 1 << 11
ETA = 1 << 12
XTC = 1 << 13
MIROSTAT_V1 = 1 << 14
MIROSTAT_V2 = 1 << 15

#: Strategy name (registry) -> its bit; temperature is implied by not being greedy.
FLAGS = {
    "greedy": GREEDY, "dynatemp": DYNATEMP, "top_n_sigma": TOP_N_SIGMA, "top_k": TOP_K, "optimal_k": OPTIMAL_K,
    "entropy_top_k": ENTROPY_TOP_K, "statistical_top_k": STATISTICAL_TOP_K, "top_h": TOP_H, "top_p": TOP_P,
    "min_p": MIN_P, "typical": TYPICAL, "epsilon": EPSILON, "eta": ETA, "xtc": XTC, "mirostat_v1": MIROSTAT_V1,
    "mirostat_v2": MIROSTAT_V2,
}

_FLOAT_PARAMETERS = ("temperature", "dynatemp_range", "dynatemp_exponent", "top_n_sigma", "optimal_k", "top_h",
                     "top_p", "min_p", "typical_p", "epsilon", "eta", "xtc_probability", "xtc_threshold",
                     "mirostat_tau", "mirostat_eta")
_INT_PARAMETERS = ("top_k", "entropy_top_k", "entropy_top_k_min", "statistical_top_k")

#: One row's parameters: ``flags``, the float32 and int64 parameters by their names, and
#: ``min_keep`` (min_tokens_to_keep), ``n``, ``stats_k`` (min(stats_top_k, V)), ``top_logprobs``,
#: ``divisor`` (the temperature the logits are divided by; 1 on greedy rows), ``mirostat_mu``
#: (float64), ``seed`` and ``step``.
ROW = np.dtype(
    [("flags", np.int64)]
    + [(name, np.float32) for name in _FLOAT_PARAMETERS]
    + [(name, np.int64) for name in _INT_PARAMETERS]
    + [("min_keep", np.int64), ("n", np.int64), ("stats_k", np.int64), ("top_logprobs", np.int64),
       ("divisor", np.float32), ("mirostat_mu", np.float64), ("seed", np.uint64), ("step", np.uint64)],
    align=True,
)


def row_record(p, flags: int, vocab: int, mu: float, seed: int, step: int) -> tuple:
    """The :data:`ROW` values of one row with parameters ``p`` (a SamplingParams)."""
    return ((flags,) + tuple(getattr(p, name) for name in _FLOAT_PARAMETERS)
            + tuple(getattr(p, name) for name in _INT_PARAMETERS)
            + (p.min_tokens_to_keep, p.n, min(p.stats_top_k, vocab), p.top_logprobs, 1.0, mu, seed, step))


class Scratch(NamedTuple):
    """Per-thread scratch, ``[threads, ...]``: ``current`` the weights of the distribution a stage
    sees, ``score`` a stage's ranking score, ``aux`` products to sum, ``partial`` float64 terms
    (top-H), ``values`` / ``index`` gathered tokens, ``bins`` histogram bins, ``sums32`` /
    ``sums64`` histograms, ``groups`` the column sums of the replayed torch sums."""

    current: np.ndarray
    score: np.ndarray
    aux: np.ndarray
    partial: np.ndarray
    values: np.ndarray
    index: np.ndarray
    bins: np.ndarray
    sums32: np.ndarray
    sums64: np.ndarray
    groups: np.ndarray


class Outputs(NamedTuple):
    """What the general kernel writes per row: ``tokens`` / ``logprobs`` / ``surprise`` ``[B, n]``,
    ``measures`` ``[B, 6]`` (entropy, varentropy, truncated entropy, kept mass, top-k entropy,
    top-k mass), ``kept`` ``[B]``, ``ranked_ids`` / ``ranked_logprobs`` ``[B, N]`` and ``mu`` ``[B]``."""

    tokens: np.ndarray
    logprobs: np.ndarray
    surprise: np.ndarray
    measures: np.ndarray
    kept: np.ndarray
    ranked_ids: np.ndarray
    ranked_logprobs: np.ndarray
    mu: np.ndarray


def scratch(threads: int, vocab: int) -> Scratch:
    """Fresh scratch for ``threads`` threads and rows of ``vocab`` tokens."""
    return Scratch(
        current=np.empty((threads, vocab), dtype=np.float32),
        score=np.empty((threads, vocab), dtype=np.float32),
        aux=np.empty((threads, vocab), dtype=np.float32),
        partial=np.empty((threads, vocab), dtype=np.float64),
        values=np.empty((threads, vocab + 1), dtype=np.float32),
        index=np.empty((threads, vocab), dtype=np.int64),
        bins=np.empty((threads, vocab), dtype=np.uint16),
        sums32=np.empty((threads, 2048), dtype=np.float32),
        sums64=np.empty((threads, 2048), dtype=np.float64),
        groups=np.empty((threads, vocab // 512 + 2, 64), dtype=np.float32),
    )


# The logits processors (:mod:`samplerd.sampling.kernels.processors`), one bit each, in pipeline order.
PENALTIES = 1 << 0  # repetition, frequency and presence: one stage
DRY = 1 << 1
LOGIT_BIAS = 1 << 2

#: One row's processor settings: ``flags``; the three penalties (float32 as the reference's
#: columns); DRY's allowed length; and where the row's pieces lie in :class:`ProcessorInputs`'
#: flat arrays (``[start, stop)`` of its history, sorted sequence breakers and biases, and the
#: start of its DRY amounts).
PROCESSING = np.dtype(
    [("flags", np.int64), ("repetition", np.float32), ("frequency", np.float32), ("presence", np.float32),
     ("allowed_length", np.int64), ("history_start", np.int64), ("history_stop", np.int64),
     ("breakers_start", np.int64), ("breakers_stop", np.int64), ("amounts_start", np.int64),
     ("bias_start", np.int64), ("bias_stop", np.int64)],
    align=True,
)


class ProcessorInputs(NamedTuple):
    """Every processed row's data, concatenated: ``history`` token ids, ``breakers`` (DRY's
    sequence breakers, sorted per row), ``amounts`` (float32 DRY penalty per match length beyond
    the allowed one, as the reference rounds it), ``bias_tokens`` / ``bias_amounts`` (float32)."""

    history: np.ndarray
    breakers: np.ndarray
    amounts: np.ndarray
    bias_tokens: np.ndarray
    bias_amounts: np.ndarray


class ChainSettings(NamedTuple):
    """The chain rows' settings, one entry per row: whether top-k / top-p / min-p are on, ``k``
    (raised to ``min_keep``), ``min_keep`` (min_tokens_to_keep), ``top_p``, ``log_min_p``
    (torch's float32 log), ``top_width`` (how many of the largest tokens to find), ``n``,
    ``stats_k``, ``wanted`` (top_logprobs), ``seeds`` and ``steps``."""

    top_k_on: np.ndarray
    k: np.ndarray
    min_keep: np.ndarray
    top_p_on: np.ndarray
    top_p: np.ndarray
    min_p_on: np.ndarray
    log_min_p: np.ndarray
    top_width: np.ndarray
    n: np.ndarray
    stats_k: np.ndarray
    wanted: np.ndarray
    seeds: np.ndarray
    steps: np.ndarray


class ChainWork(NamedTuple):
    """What the chain's kernels hand each other, per row: ``totals`` (torch's totals of the
    weights, for top-p, when not replayed), the largest tokens (``top_values`` / ``top_ids``),
    top-k's threshold (``floors``) and min_tokens_to_keep's (``protect``), the rows left for
    torch's top-k totals (``chained_out``, ``chained_row``), top-p's histogram (``bins``,
    ``members``, ``member_count``, ``sums``), the final ``thresholds``, ``kept`` counts,
    ``stats`` sums, ``final`` weights (when torch sums them) and the draw's ``block_totals``;
    then per-batch scratch: ``index``, ``scratch``, ``groups``."""

    totals: np.ndarray
    top_values: np.ndarray
    top_ids: np.ndarray
    floors: np.ndarray
    protect: np.ndarray
    chained_out: np.ndarray
    chained_row: np.ndarray
    bins: np.ndarray
    members: np.ndarray
    member_count: np.ndarray
    sums: np.ndarray
    thresholds: np.ndarray
    kept: np.ndarray
    stats: np.ndarray
    final: np.ndarray
    block_totals: np.ndarray
    index: np.ndarray
    scratch: np.ndarray
    groups: np.ndarray


class ChainOutputs(NamedTuple):
    """What the chain's last kernel writes: ``tokens`` / ``logprobs`` / ``surprise`` ``[B, n]``,
    ``measures`` ``[6, B]`` (entropy, varentropy, truncated entropy, kept mass, top-k entropy,
    top-k mass), ``ranked_ids`` / ``ranked_logprobs`` ``[B, N]``."""

    tokens: np.ndarray
    logprobs: np.ndarray
    surprise: np.ndarray
    measures: np.ndarray
    ranked_ids: np.ndarray
    ranked_logprobs: np.ndarray

"""The fused paths' logits processors: penalties, DRY and logit bias, applied per row from
the row's history by :func:`samplerd.sampling.kernels.processors.process_rows` before either fused
kernel sees the logits (:mod:`samplerd.sampling.fused`, :mod:`samplerd.sampling.fused_general`).

This module gathers the rows' settings into :data:`~samplerd.sampling.kernels.records.PROCESSING`
records and their histories, breakers and biases into flat arrays; the kernel writes the
processed logits into a copy (the caller's logits are never changed).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numba
import numpy as np
import torch

from samplerd.sampling.checks import AFTER_PROCESSORS, check_logits, raise_bad_row
from samplerd.sampling.kernels import records
from samplerd.sampling.kernels.processors import process_one_row, process_rows
from samplerd.sampling.strategies import dry, logit_bias, penalties

#: Names of the processors the fused paths apply.
STRATEGIES = frozenset(s.name for s in (penalties.REPETITION_PENALTY, penalties.FREQUENCY_PENALTY,
                                        penalties.PRESENCE_PENALTY, dry.DRY, logit_bias.STRATEGY))
_PENALTIES = frozenset(s.name for s in (penalties.REPETITION_PENALTY, penalties.FREQUENCY_PENALTY,
                                        penalties.PRESENCE_PENALTY))

_local = threading.local()


def _counts(vocab: int) -> np.ndarray:
    """Per-thread int32 counters over the vocabulary, all zero (the kernel leaves them so)."""
    threads = numba.get_num_threads()
    counts = getattr(_local, "counts", None)
    if counts is None or counts.shape != (threads, vocab):
        counts = _local.counts = np.zeros((threads, vocab), dtype=np.int32)
    return counts


def _dry_amounts(p) -> list[float]:
    """The DRY penalty for each match length from the allowed one to :data:`dry.MAX_MATCH`,
    (:func:`samplerd.sampling.strategies.dry.penalty_of`, float64; the kernel rounds them to float32)."""
    return [dry.penalty_of(p, length) for length in range(p.dry_allowed_length, dry.MAX_MATCH + 1)]


def settings(params: Sequence, states) -> tuple[np.ndarray, records.ProcessorInputs] | None:
    """The rows' :data:`~samplerd.sampling.kernels.records.PROCESSING` records and their flat
    inputs; None when no row switches a processor on."""
    rows = np.zeros(len(params), dtype=records.PROCESSING)
    history: list[int] = []
    breakers: list[int] = []
    amounts: list[float] = []
    bias_tokens: list[int] = []
    bias_amounts: list[float] = []
    for r, p in enumerate(params):
        active = STRATEGIES.intersection(p.active_strategies())
        if not active:
            continue
        row = rows[r]
        flags = 0
        if active & _PENALTIES or dry.DRY.name in active:
            state = states[r] if states is not None else None
            row["history_start"] = len(history)
            history.extend(state.history if state is not None else ())
            row["history_stop"] = len(history)
        if active & _PENALTIES:
            flags |= records.PENALTIES
            row["repetition"], row["frequency"], row["presence"] = (
                p.repetition_penalty, p.frequency_penalty, p.presence_penalty)
        if dry.DRY.name in active:
            flags |= records.DRY
            row["allowed_length"] = p.dry_allowed_length
            row["breakers_start"] = len(breakers)
            breakers.extend(sorted(set(p.dry_sequence_breakers)))
            row["breakers_stop"] = len(breakers)
            row["amounts_start"] = len(amounts)
            amounts.extend(_dry_amounts(p))
        if logit_bias.STRATEGY.name in active:
            flags |= records.LOGIT_BIAS
            row["bias_start"] = len(bias_tokens)
            for token, amount in p.logit_bias:
                bias_tokens.append(token)
                bias_amounts.append(amount)
            row["bias_stop"] = len(bias_tokens)
        row["flags"] = flags
    if not rows["flags"].any():
        return None
    with np.errstate(over="ignore"):  # a DRY amount beyond float32 becomes inf: a ban, as in the eager stage
        inputs = records.ProcessorInputs(
            history=np.array(history, dtype=np.int64),
            breakers=np.array(breakers, dtype=np.int64),
            amounts=np.array(amounts, dtype=np.float64).astype(np.float32),
            bias_tokens=np.array(bias_tokens, dtype=np.int64),
            bias_amounts=np.array(bias_amounts, dtype=np.float64).astype(np.float32),
        )
    return rows, inputs


def processed(x: np.ndarray, params: Sequence, states, out: np.ndarray) -> np.ndarray:
    """The logits ``x`` (float32 ``[B, V]``, checked or not) after each row's processors: ``x``
    itself when no row has any, else ``out`` (same shape) holding them."""
    found = settings(params, states)
    if found is None:
        return x
    rows, inputs = found
    (process_rows if len(params) > 1 else process_one_row)(x, out, rows, inputs, _counts(x.shape[1]))
    return out


def check_prepared(status: np.ndarray, logits: torch.Tensor, was_processed: bool) -> None:
    """Raise ``SamplingError`` naming the first row the first pass found bad, if any: the
    caller's logits' own fault first (as :func:`samplerd.sampling.checks.check_logits` reports it),
    then one the processors made (a penalty that overflowed to +inf, every finite token banned)."""
    if was_processed and (status < 0).any():
        check_logits(logits)
    raise_bad_row(status, AFTER_PROCESSORS if was_processed else "")

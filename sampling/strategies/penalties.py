"""Repetition, frequency and presence penalties over a row's token history.

* repetition penalty (Keskar et al., "CTRL: A Conditional Transformer Language Model for
  Controllable Generation", arXiv 1909.05858): a logit ``z`` of a token seen in the history
  becomes ``z / r`` when positive and ``z * r`` otherwise (Hugging Face's reading);
* frequency and presence penalties (OpenAI API semantics, as vLLM and llama.cpp):
  ``z -= frequency * count + presence * [count > 0]``.

The history is whatever the caller passes in the row's :class:`~samplerd.sampling.state.SequenceState`
(a session passes the prompt and every generated token). The history is host data, so each
row's distinct tokens and their counts are found on the host (a few entries per row, never a
``[rows, V]`` table) and the penalties touch only those logits, on the logits' device.
"""

from __future__ import annotations

import numpy as np
import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.rows import RowParams
from samplerd.sampling.transfer import upload

REPETITION = Parameter(
    "repetition_penalty", "float", 1.0,
    "Divides positive (multiplies negative) logits of tokens already in the history.",
    low=0.0, high=100.0, low_inclusive=False, off="1",
)
FREQUENCY = Parameter(
    "frequency_penalty", "float", 0.0,
    "Subtracted from a token's logit once per occurrence in the history.",
    low=-2.0, high=2.0, off="0",
)
PRESENCE = Parameter(
    "presence_penalty", "float", 0.0,
    "Subtracted from the logit of every token that occurs in the history.",
    low=-2.0, high=2.0, off="0",
)

_PAPER_COUNT = "OpenAI API frequency/presence penalties (as implemented in vLLM and llama.cpp)"

def history_counts(histories: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's distinct history tokens: int64 rows and tokens, float32 occurrence counts."""
    rows, tokens, counts = [], [], []
    for row, history in enumerate(histories):
        if history:
            distinct, count = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
            rows.append(np.full(distinct.size, row, dtype=np.int64))
            tokens.append(distinct)
            counts.append(count)
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(rows), np.concatenate(tokens), np.concatenate(counts).astype(np.float32)


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, repetition: torch.Tensor,
                    frequency: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """The three penalties on logits of tokens seen ``counts`` times (all broadcast together;
    neutral values are no-ops)."""
    seen = counts > 0
    scaled = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, scaled, logits)
    return logits - frequency * counts - presence * seen.to(logits.dtype)


def process(logits: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """The three penalties on the rows that switch any of them on (a neutral one changes nothing)."""
    row, token, count = history_counts(rows.histories)
    if not row.size:
        return logits
    where = tuple(upload(torch.from_numpy(np.stack([row, token])), logits.device))
    counts = upload(torch.from_numpy(count), logits.device)
    penalised = apply_penalties(logits[where], counts, *(rows.float(name)[where[0], 0] for name in (
        "repetition_penalty", "frequency_penalty", "presence_penalty")))
    return logits.index_put(where, penalised)


REPETITION_PENALTY = Strategy(
    name="repetition_penalty",
    stage=Stage.PENALTY,
    summary="Scale down logits of tokens already generated (divide if > 0, multiply if < 0).",
    paper="Keskar et al., CTRL: A Conditional Transformer Language Model for Controllable Generation, "
    "arXiv 1909.05858",
    parameters=(REPETITION,),
    is_active=lambda p: p.repetition_penalty != 1.0,
    process=process,
)
FREQUENCY_PENALTY = Strategy(
    name="frequency_penalty",
    stage=Stage.PENALTY,
    summary="Subtract frequency * count(token in history).",
    paper=_PAPER_COUNT,
    parameters=(FREQUENCY,),
    is_active=lambda p: p.frequency_penalty != 0.0,
    process=process,
)
PRESENCE_PENALTY = Strategy(
    name="presence_penalty",
    stage=Stage.PENALTY,
    summary="Subtract presence once for every token present in the history.",
    paper=_PAPER_COUNT,
    parameters=(PRESENCE,),
    is_active=lambda p: p.presence_penalty != 0.0,
    process=process,
)

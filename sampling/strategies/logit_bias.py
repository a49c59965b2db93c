"""Logit bias: add a fixed amount to chosen tokens' logits (OpenAI API ``logit_bias``)."""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.rows import RowParams
from samplerd.sampling.transfer import upload

LOGIT_BIAS = Parameter(
    "logit_bias", "token_bias", (),
    "Map token id -> additive bias, applied after penalties and before temperature.",
    high=4096, element_low=-100.0, element_high=100.0, off="empty",
)


def process(logits: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """Each row's biases added to its logits."""
    row_index, token_index, amount = zip(
        *[(row, token, bias) for row, p in enumerate(rows.params) for token, bias in p.logit_bias], strict=True)
    where = tuple(upload(torch.tensor([row_index, token_index]), logits.device))
    return logits.index_put(where, upload(torch.tensor(amount, dtype=logits.dtype), logits.device), accumulate=True)


STRATEGY = Strategy(
    name="logit_bias",
    stage=Stage.LOGIT_BIAS,
    summary="Add a per-token bias to the logits (+100 forces, -100 bans in practice).",
    paper="OpenAI API logit_bias (as in vLLM's and Hugging Face's logit-bias processors)",
    parameters=(LOGIT_BIAS,),
    is_active=lambda p: len(p.logit_bias) > 0,
    process=process,
)

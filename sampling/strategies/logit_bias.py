"""Logit bias: add a fixed amount to chosen tokens' logits (OpenAI API ``logit_bias``)."""

from __future__ import annotations

from sampling.declarations import Parameter, Stage, Strategy

LOGIT_BIAS = Parameter(
    "logit_bias", "token_bias", (),
    "Map token id -> additive bias, applied after penalties and before temperature.",
    high=4096, element_low=-100.0, element_high=100.0, off="empty",
)

STRATEGY = Strategy(
    name="logit_bias",
    stage=Stage.LOGIT_BIAS,
    summary="Add a per-token bias to the logits (+100 forces, -100 bans in practice).",
    paper="OpenAI API logit_bias (as in vLLM's and Hugging Face's logit-bias processors)",
    parameters=(LOGIT_BIAS,),
    is_active=lambda p: len(p.logit_bias) > 0,
)

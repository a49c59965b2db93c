"""Min-p sampling: keep tokens with ``p >= min_p * p_max``.

Nguyen, Baker, Neo, Roush, Kirsch, Shwartz-Ziv, "Turning Up the Heat: Min-p Sampling for
Creative and Coherent LLM Outputs", arXiv 2407.01082 (ICLR 2025). Applied after
temperature (Hugging Face / vLLM order); in logit form ``z >= z_max + ln(min_p)``.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy

MIN_P = Parameter(
    "min_p", "float", 0.0, "Keep tokens at least min_p times as probable as the most probable one.",
    low=0.0, high=1.0, off="0",
)


def keep(dist, rows) -> torch.Tensor:
    return dist.logits >= dist.max + rows.float("min_p").log()


STRATEGY = Strategy(
    name="min_p",
    stage=Stage.TRUNCATION,
    summary="Keep p >= min_p * p_max.",
    paper="Nguyen et al., Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs, "
    "arXiv 2407.01082",
    parameters=(MIN_P,),
    is_active=lambda p: p.min_p > 0.0,
    keep=keep,
)

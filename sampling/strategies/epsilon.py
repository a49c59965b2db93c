"""Epsilon sampling: keep tokens with ``p >= epsilon`` (the argmax always stays).

Hewitt, Manning, Liang, "Truncation Sampling as Language Model Desmoothing", Findings of
EMNLP 2022, arXiv 2210.15191.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy

EPSILON = Parameter(
    "epsilon", "float", 0.0, "Absolute probability floor: keep tokens with p >= epsilon.",
    low=0.0, high=1.0, high_inclusive=False, off="0",
)


def keep(dist, rows) -> torch.Tensor:
    return dist.weights >= rows.float("epsilon") * dist.total


STRATEGY = Strategy(
    name="epsilon",
    stage=Stage.TRUNCATION,
    summary="Keep p >= epsilon; the most probable token always stays.",
    paper="Hewitt, Manning, Liang, Truncation Sampling as Language Model Desmoothing, "
    "Findings of EMNLP 2022, arXiv 2210.15191",
    parameters=(EPSILON,),
    is_active=lambda p: p.epsilon > 0.0,
    keep=keep,
    keeps_argmax=False,
)

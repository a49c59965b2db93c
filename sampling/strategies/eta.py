"""Eta sampling: an entropy-dependent probability floor ``eta = min(eps, sqrt(eps) * exp(-H))``.

Hewitt, Manning, Liang, "Truncation Sampling as Language Model Desmoothing", Findings of
EMNLP 2022, arXiv 2210.15191. ``H`` is the entropy (nats) of the distribution the stage
sees. This is the paper's and Hugging Face's code; Hugging Face's docstring, which writes
``sqrt(eps * exp(-H))``, is wrong. The floor never exceeds ``p_max`` (``p_max >= exp(-H)``),
so the argmax always stays.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy

ETA = Parameter(
    "eta", "float", 0.0, "Epsilon of eta sampling; the floor is min(eta, sqrt(eta) * exp(-H)).",
    low=0.0, high=1.0, high_inclusive=False, off="0",
)


def keep(dist, rows) -> torch.Tensor:
    epsilon = rows.float("eta")
    floor = torch.minimum(epsilon, epsilon.sqrt() * torch.exp(-dist.entropy))
    return dist.weights >= floor * dist.total


STRATEGY = Strategy(
    name="eta",
    stage=Stage.TRUNCATION,
    summary="Keep p >= min(eta, sqrt(eta) * exp(-H)).",
    paper="Hewitt, Manning, Liang, Truncation Sampling as Language Model Desmoothing, "
    "Findings of EMNLP 2022, arXiv 2210.15191",
    parameters=(ETA,),
    is_active=lambda p: p.eta > 0.0,
    keep=keep,
)

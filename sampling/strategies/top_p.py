"""Top-p (nucleus) sampling: keep the smallest set of most probable tokens with mass >= p.

Holtzman, Buys, Du, Forbes, Choi, "The Curious Case of Neural Text Degeneration",
ICLR 2020. Rank ``j`` is kept iff the mass of the ranks before it is ``< p``; the boundary
token's whole tie group is kept. Found without sorting the vocabulary
(:func:`samplerd.sampling.selection.prefix_boundary`).
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import prefix_boundary

TOP_P = Parameter(
    "top_p", "float", 1.0, "Keep the smallest most-probable set whose probability mass reaches p.",
    low=0.0, high=1.0, low_inclusive=False, off="1",
)


def keep(dist, rows) -> torch.Tensor:
    target = rows.float("top_p") * dist.total
    return dist.logits >= prefix_boundary(dist.logits, dist.weights, target, best=dist.max)


STRATEGY = Strategy(
    name="top_p",
    stage=Stage.TRUNCATION,
    summary="Nucleus: the smallest most-probable set with mass >= p (boundary tie group kept).",
    paper="Holtzman et al., The Curious Case of Neural Text Degeneration, ICLR 2020, arXiv 1904.09751",
    parameters=(TOP_P,),
    is_active=lambda p: p.top_p < 1.0,
    keep=keep,
)

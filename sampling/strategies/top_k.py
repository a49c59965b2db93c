"""Top-k sampling: keep the k most probable tokens.

Fan, Lewis, Dauphin, "Hierarchical Neural Story Generation", ACL 2018. Threshold semantics:
every token whose logit equals the k-th largest is kept (as Hugging Face and vLLM), so the
kept set does not depend on sort order. ``top_k`` of 0 or -1, or ``>= V``, switches it off.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import kth_largest

TOP_K = Parameter(
    "top_k", "int", 0, "Keep the k most probable tokens (and every token tied with the k-th).",
    low=-1, high=2**31 - 1, off="0 or -1 (values >= V keep everything)",
)


def keep(dist, rows) -> torch.Tensor:
    largest = max(p.top_k for p in rows.params)
    return dist.logits >= kth_largest(dist.logits, rows.int("top_k"), largest)


STRATEGY = Strategy(
    name="top_k",
    stage=Stage.TRUNCATION,
    summary="Keep the k highest logits (ties with the k-th kept).",
    paper="Fan, Lewis, Dauphin, Hierarchical Neural Story Generation, ACL 2018, arXiv 1805.04833",
    parameters=(TOP_K,),
    is_active=lambda p: p.top_k > 0,
    keep=keep,
)

"""Locally typical sampling: keep the tokens whose surprise is closest to the entropy.

Meister, Pimentel, Wiher, Cotterell, "Locally Typical Sampling", TACL 2023,
arXiv 2202.00666. Tokens are ranked by ``|-ln p - H|`` (ascending); the smallest prefix with
mass ``>= typical_p`` is kept, with the boundary score's whole tie group. ``min_tokens_to_keep``
protects the most *typical* tokens, not the most probable (as in Hugging Face), so this
stage may remove the argmax.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import kth_largest, prefix_boundary

TYPICAL_P = Parameter(
    "typical_p", "float", 1.0, "Mass of the most typical tokens to keep (typicality = |-ln p - H|).",
    low=0.0, high=1.0, low_inclusive=False, off="1",
)


def keep(dist, rows) -> torch.Tensor:
    # |-ln p - H| = |z - (max + ln Z - H)| from the raw logits: exact, and +inf (typicality
    # -inf) for removed tokens.
    centre = dist.max + dist.log_total - dist.entropy
    typicality = torch.sub(dist.logits, centre).abs_().neg_()
    target = rows.float("typical_p") * dist.total
    kept = typicality >= prefix_boundary(typicality, dist.weights, target)
    largest = max(p.min_tokens_to_keep for p in rows.params)
    if largest == 1:
        return kept  # the prefix always holds the most typical token
    return kept | (typicality >= kth_largest(typicality, rows.min_keep, largest))


STRATEGY = Strategy(
    name="typical",
    stage=Stage.TRUNCATION,
    summary="Keep the most typical tokens (|-ln p - H| smallest) up to mass typical_p.",
    paper="Meister et al., Locally Typical Sampling, TACL 2023, arXiv 2202.00666",
    parameters=(TYPICAL_P,),
    is_active=lambda p: p.typical_p < 1.0,
    keep=keep,
    keeps_argmax=False,
    own_min_keep=True,
)

"""Top-H decoding: keep the most probable tokens while their partial entropy stays bounded.

Baghaei Potraghloo, Azizi, Kundu, Pedram, "Top-H Decoding: Adapting the Creativity and
Coherence with Bounded Entropy in Text Generation", arXiv 2509.02510 (NeurIPS 2025). As the
authors' code computes it, over the whole vocabulary (no top-100 window): rank 1 is always
kept; rank ``j`` is kept iff ``sum_{r <= j} -p_r ln p_r <= top_h * H(p)``. (The paper's
prose describes the renormalised entropy of the kept set; neither the authors' code nor
Hugging Face's implementation computes that, and samplerd follows the code.)

On the CPU the terms are summed in float64 (:func:`keep`). Off the CPU (:func:`keep_on_device`)
no ``[rows, V]`` float64 tensor is made: each row's terms are scaled by its largest term, so
the tiny terms of a near-deterministic row stay in float32's range, and summed in float32
within blocks of 1024 ranks and in float64 across blocks (a fixed order, no atomics); the
decisions are the CPU's except within float32 rounding of the budget.
"""

from __future__ import annotations

import torch

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.selection import prefix_boundary

TOP_H = Parameter(
    "top_h", "float", 0.0, "Entropy budget alpha: keep ranks while partial entropy <= alpha * H.",
    low=0.0, high=1.0, off="0",
)


_BLOCK = 1024


def keep(dist, rows) -> torch.Tensor:
    if dist.logits.device.type != "cpu":
        return keep_on_device(dist, rows)
    # float64 from the exact log-probabilities: near-deterministic rows put terms of 1e-40
    # into these sums, below float32's range, and the budget must use the same terms.
    log_probs = dist.log_probs.double()
    partial = torch.where(dist.finite, -log_probs.exp() * log_probs, torch.zeros_like(log_probs))
    budget = rows.float("top_h").double() * partial.sum(dim=-1, keepdim=True)
    # First rank whose partial sum exceeds the budget (W_j > budget <=> W_j >= next float up).
    over_budget = torch.nextafter(budget, torch.full_like(budget, 1e30))
    first_over = prefix_boundary(dist.logits, partial, over_budget, best=dist.max)
    above = dist.logits > first_over
    mass_above = torch.where(above, partial, torch.zeros_like(partial)).sum(dim=-1, keepdim=True)
    log_p_first = (first_over - dist.max - dist.log_total).double()
    partial_first = torch.where(torch.isfinite(log_p_first), -log_p_first.exp() * log_p_first,
                                torch.zeros_like(log_p_first))
    tie_group_fits = (mass_above + partial_first) <= budget
    kept = above | ((dist.logits == first_over) & tie_group_fits)
    return kept | (dist.logits >= dist.max)


def keep_on_device(dist, rows) -> torch.Tensor:
    """:func:`keep` in float32 with scaled terms and blocked sums (see the module docstring)."""
    log_probs = dist.log_probs
    negative = (log_probs < 0) & dist.finite  # a positive term (removed tokens and p = 1 have none)
    log_terms = torch.where(negative, log_probs + torch.log(-log_probs.clamp(max=-1e-30)), float("-inf"))
    scale = log_terms.amax(dim=-1, keepdim=True)
    terms = torch.exp(log_terms - torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale)))
    ranked, order = dist.logits.sort(dim=-1, descending=True, stable=True)
    running, total = _blocked_running_sum(terms.gather(1, order))
    budget = (rows.float("top_h").double() * total).float()
    # Rank j is kept iff its running sum is within the budget; so is the tie group of the last
    # such rank (its first member is within it too), and nothing after.
    over = running > budget
    first_over = torch.where(over.any(dim=-1, keepdim=True), over.to(torch.int8).argmax(dim=-1, keepdim=True),
                             torch.full_like(budget, ranked.shape[-1], dtype=torch.int64))
    last_kept = ranked.gather(1, (first_over - 1).clamp(min=0))
    threshold = torch.where(first_over > 0, last_kept, torch.full_like(last_kept, float("inf")))
    return (dist.logits >= threshold) | (dist.logits >= dist.max)


def _blocked_running_sum(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running sums ``[rows, V]`` float32 of non-negative ``values`` (float32 inside blocks of
    :data:`_BLOCK`, float64 across blocks) and each row's float64 total ``[rows, 1]``."""
    rows, vocab = values.shape
    padded = torch.nn.functional.pad(values, (0, -vocab % _BLOCK)).reshape(rows, -1, _BLOCK)
    inside = padded.cumsum(dim=-1)
    block_totals = inside[:, :, -1].double()
    before = (block_totals.cumsum(dim=-1) - block_totals).float()
    running = (inside + before.unsqueeze(-1)).reshape(rows, -1)[:, :vocab]
    return running, block_totals.sum(dim=-1, keepdim=True)


STRATEGY = Strategy(
    name="top_h",
    stage=Stage.TRUNCATION,
    summary="Keep ranks while the partial sum of -p ln p stays <= top_h * H(p); rank 1 always.",
    paper="Baghaei Potraghloo et al., Top-H Decoding: Adapting the Creativity and Coherence with "
    "Bounded Entropy in Text Generation, arXiv 2509.02510",
    parameters=(TOP_H,),
    is_active=lambda p: p.top_h > 0.0,
    keep=keep,
)

"""Sort-free selection of the boundary of a ranked prefix.

Many truncations keep "the highest-ranked tokens until some accumulated quantity reaches a
target": top-p (probability mass), typical sampling (mass in typicality order), top-k
(token count). Sorting the whole vocabulary costs ~10x a softmax pass on a CPU. Instead we
bucket each row's scores into a fixed histogram (relative to the row's best score), find the
bucket where the running total crosses the target, and sort only the few tokens inside that
bucket. The result is exact: the same boundary a full sort would find.

Off the CPU (CUDA) the histogram's ``scatter_add_`` would be float atomics (their order, and
so the sums, vary between runs) and sizing the bucket's sort reads a count back to the host:
there a stable descending sort of the row and a running sum in rank order find the same
boundary, deterministically and without a sync. The two sum in different orders, so a
target within float rounding of a running sum may fall on either side on the two devices.
"""

from __future__ import annotations

import torch

from samplerd.sampling.topk import top_values

_BINS_PER_UNIT = 64.0
_NUM_BINS = 2048  # covers 32 score units (nats for logits) below the best score; the rest share the last bin


def prefix_boundary(score: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                    best: torch.Tensor | None = None) -> torch.Tensor:
    """Score of the boundary rank ``j* = min{j : W_j >= target}`` of each row.

    Ranks sort ``score`` descending; ``W_j`` is the total ``weight`` of ranks ``<= j``.
    Excluded tokens must have ``score = -inf`` and ``weight = 0``. Keeping ``score >= result``
    then keeps the prefix up to ``j*`` together with the whole tie group of ``j*``.
    Rows whose total weight stays below ``target`` get ``-inf`` (keep everything).

    Args:
        score: ``[rows, V]`` float32, higher is better, at least one finite entry per row.
        weight: ``[rows, V]`` non-negative float32.
        target: ``[rows, 1]`` float32 in the units of ``weight``.
        best: each row's largest score, when the caller already has it.
    Returns:
        ``[rows, 1]`` float32 thresholds.
    """
    if score.device.type != "cpu":
        return _sorted_prefix_boundary(score, weight, target)
    if best is None:
        best = score.amax(dim=-1, keepdim=True)
    bins = torch.sub(best, score).mul_(_BINS_PER_UNIT).clamp_(max=_NUM_BINS - 1).long()  # -inf -> last bin
    histogram = torch.zeros(score.shape[0], _NUM_BINS, dtype=weight.dtype, device=score.device)
    histogram.scatter_add_(1, bins, weight)
    running = histogram.cumsum(dim=1)
    boundary_bin = (running < target).sum(dim=1, keepdim=True)
    reached = boundary_bin < _NUM_BINS
    boundary_bin = boundary_bin.clamp_(max=_NUM_BINS - 1)
    before = torch.where(
        boundary_bin > 0,
        running.gather(1, (boundary_bin - 1).clamp(min=0)),
        torch.zeros_like(target),
    )
    in_bin = bins == boundary_bin
    members = torch.count_nonzero(in_bin, dim=1).unsqueeze(1)
    width = max(int(members.max().item()), 1)
    candidates = torch.where(in_bin, score, float("-inf"))
    values, index = candidates.topk(width, dim=-1)
    inside = before + (weight.gather(1, index) * (values > float("-inf"))).cumsum(dim=1)
    # When rounding leaves the running sum just short of the target at the bin's last member,
    # the boundary is that member: clamped per row (not to the batch's widest bin, whose
    # padding is -inf), so that a row's answer never depends on the rows beside it.
    position = torch.minimum((inside < target).sum(dim=1, keepdim=True), (members - 1).clamp_(min=0))
    threshold = values.gather(1, position)
    return torch.where(reached, threshold, torch.full_like(threshold, float("-inf")))


def _sorted_prefix_boundary(score: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`prefix_boundary` by a stable sort of each row (no atomics, no host sync)."""
    ranked, order = score.sort(dim=-1, descending=True, stable=True)
    running = weight.gather(1, order).cumsum(dim=-1)
    boundary = (running < target).sum(dim=-1, keepdim=True)
    threshold = ranked.gather(1, boundary.clamp(max=score.shape[-1] - 1))
    return torch.where(boundary < score.shape[-1], threshold, torch.full_like(threshold, float("-inf")))


def kth_largest(values: torch.Tensor, k: torch.Tensor, largest: int | None = None) -> torch.Tensor:
    """The ``k``-th largest entry of each row (``k`` is ``[rows, 1]`` int64, ``1 <= k``).

    Rows with fewer than ``k`` finite entries get ``-inf``. ``largest`` is an upper bound of
    ``k`` known on the host (from the parameters); without it the CPU reads ``k``'s maximum
    and other devices sort the whole row. Small ``k`` searches only the blocks that can hold
    the answer (:func:`samplerd.sampling.topk.top_values`); large ``k`` uses :func:`prefix_boundary`
    with unit weights.
    """
    if largest is None:
        if values.device.type != "cpu":
            ranked = values.sort(dim=-1, descending=True).values
            kth = ranked.gather(1, (k - 1).clamp(max=values.shape[-1] - 1))
            return torch.where(k <= values.shape[-1], kth, torch.full_like(kth, float("-inf")))
        largest = int(k.max().item())
    if largest <= 256:
        top = top_values(values, largest)[0]
        return top.gather(1, (k - 1).clamp(max=top.shape[-1] - 1)).where(
            k <= top.shape[-1], torch.full_like(k, float("-inf"), dtype=values.dtype)
        )
    finite = values > float("-inf")
    return prefix_boundary(values, finite.to(values.dtype), k.to(values.dtype))

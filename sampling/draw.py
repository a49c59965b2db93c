"""Exact draws from unnormalised weights by inverse CDF, one uniform per draw.

Two levels keep it cheap and accurate: block sums (1024 tokens each) in float64 choose the
block, then a float64 running sum inside that block alone chooses the token. This avoids both
a full-vocabulary cumulative sum and ``torch.multinomial`` (which is slow on CPUs), and a
zero-weight (removed) token can never be chosen.
"""

from __future__ import annotations

import torch

BLOCK = 1024


def block_size(vocab: int) -> int:
    """:data:`BLOCK`, or the smallest power of two holding a smaller vocabulary."""
    return min(BLOCK, 1 << max(vocab - 1, 1).bit_length())


def block_sums(weights: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``[rows, ceil(V / block)]`` float64 sums of consecutive blocks of ``weights``."""
    rows, vocab = weights.shape
    whole = vocab // block
    parts = []
    if whole:
        parts.append(weights[:, : whole * block].reshape(rows, whole, block).sum(dim=-1))
    if vocab % block:
        parts.append(weights[:, whole * block :].sum(dim=-1, keepdim=True))
    return torch.cat(parts, dim=-1).double()


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token ids ``[rows, n]`` drawn with probability proportional to ``weights`` ``[rows, V]``.

    ``uniforms`` is ``[rows, n]`` float64 in ``[0, 1)``; every row needs a positive weight.
    """
    rows, vocab = weights.shape
    draws = uniforms.shape[1]
    width = block_size(vocab)
    sums = block_sums(weights, width)
    running_blocks = sums.cumsum(dim=-1)
    target = uniforms.to(running_blocks.device) * running_blocks[:, -1:]
    last_block = torch.where(sums > 0, torch.arange(sums.shape[1], device=sums.device), -1).amax(
        dim=-1, keepdim=True)
    block = torch.minimum(torch.searchsorted(running_blocks, target, right=True), last_block)
    before = torch.where(block > 0, running_blocks.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    columns = block.unsqueeze(-1) * width + torch.arange(width, device=weights.device)
    inside_vocab = columns < vocab
    values = weights.gather(1, columns.clamp(max=vocab - 1).reshape(rows, -1)).reshape(rows, draws, width)
    values = values.double() * inside_vocab
    running = values.cumsum(dim=-1) + before.unsqueeze(-1)
    offset = (running <= target.unsqueeze(-1)).sum(dim=-1)
    # Rounding between the block sums and the running sum can push past the block's end:
    # fall back to its last positive-weight token.
    last_positive = torch.where(values > 0, torch.arange(width, device=weights.device), -1).amax(dim=-1)
    offset = torch.where(offset >= width, last_positive, offset)
    offset = torch.minimum(offset, last_positive)
    return block * width + offset

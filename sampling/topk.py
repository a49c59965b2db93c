"""Top-k values and the first argmax of each row without scanning the row with topk/argmax.

On a CPU, ``torch.topk`` over a 128k vocabulary costs several softmax passes even for
k = 10, and ``torch.argmax`` is not vectorised. Both only need the few blocks of the row that
can hold the answer: the maximum of every block of 128 tokens is one fast vectorised
reduction, and the k largest entries of a row lie in the blocks whose maxima are among the k
largest block maxima (k blocks holding a value >= x leave no room above x for a token from
any other block). So only k blocks (k * 128 tokens) are searched.
"""

from __future__ import annotations

import torch

BLOCK = 128
_MIN_VOCAB = 8192  # below this a plain topk is as fast


def _blocks(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[rows, whole_blocks + (1 if a tail)]`` block maxima, and the number of whole blocks."""
    rows, vocab = values.shape
    whole = vocab // BLOCK
    values = values.contiguous()
    maxima = values.as_strided((rows, whole, BLOCK), (vocab, BLOCK, 1)).amax(dim=-1)
    if vocab % BLOCK:
        maxima = torch.cat([maxima, values[:, whole * BLOCK :].amax(dim=-1, keepdim=True)], dim=1)
    return maxima, whole


def _block_columns(block: torch.Tensor, vocab: int) -> torch.Tensor:
    """Column indices ``[..., BLOCK]`` of the given blocks, clamped into the vocabulary."""
    columns = block.unsqueeze(-1) * BLOCK + torch.arange(BLOCK, device=block.device)
    return columns.clamp_(max=vocab - 1)


def top_values(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row, descending, and their column indices.

    Equal to ``values.topk(k)`` up to which member of a tie group is reported.
    """
    rows, vocab = values.shape
    k = min(k, vocab)
    maxima, _ = _blocks(values) if vocab >= _MIN_VOCAB else (None, 0)
    if maxima is None or k * 4 > maxima.shape[1]:
        return values.topk(k, dim=-1)
    chosen = maxima.topk(k, dim=-1).indices
    columns = _block_columns(chosen, vocab).reshape(rows, -1)
    candidates = values.gather(1, columns)
    # A clamped tail column repeats column V-1; mask repeats so no token is counted twice.
    repeated = (chosen.unsqueeze(-1) * BLOCK + torch.arange(BLOCK, device=values.device) >= vocab).reshape(rows, -1)
    candidates = candidates.masked_fill(repeated, float("-inf"))
    top, position = candidates.topk(k, dim=-1)
    return top, columns.gather(1, position)


def first_argmax(values: torch.Tensor, row_max: torch.Tensor | None = None) -> torch.Tensor:
    """Index ``[rows, 1]`` of the first maximal entry of each row (as ``torch.argmax``)."""
    rows, vocab = values.shape
    if vocab < _MIN_VOCAB:
        return values.argmax(dim=-1, keepdim=True)
    if row_max is None:
        row_max = values.amax(dim=-1, keepdim=True)
    maxima, _ = _blocks(values)
    block = (maxima == row_max).to(torch.uint8).argmax(dim=-1, keepdim=True)
    columns = _block_columns(block, vocab)[:, 0, :]
    inside = (values.gather(1, columns) == row_max).to(torch.uint8).argmax(dim=-1, keepdim=True)
    return columns.gather(1, inside)

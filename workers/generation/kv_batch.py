"""The running batch's KV cache: rows of different lengths, left-padded to a common length.

Each sequence is prefilled alone (its prompt in one forward pass, its own ``DynamicCache``).
It then joins the running batch: its keys and values are left-padded with zeros to the
batch's cache length (or the batch is padded to its length) and concatenated on the batch
dimension. Every decode step feeds one token per row with an attention mask that hides each
row's padding columns and position ids that count only its real tokens, so each row
computes exactly the function it computes alone. Rows that finish are dropped by selecting
the others, and padding columns that every remaining row has are cut off again.

Only caches made of plain :class:`transformers.cache_utils.DynamicLayer` layers (full
attention, the default of GPT-2, Llama, Qwen, Mistral without sliding window...) can be
re-batched like this; :func:`supports_padding` says whether a model's cache qualifies.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def supports_padding(cache: Any) -> bool:
    """Whether ``cache`` is a DynamicCache made only of plain, full-attention DynamicLayers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    return (isinstance(cache, DynamicCache) and bool(layers)
            and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers))


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """``[B, H, L, D]`` -> ``[B, H, columns + L, D]`` with zeros in front."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor


class PaddedKVBatch:
    """A KV cache of ``len(self)`` rows sharing ``length`` columns; row ``i`` starts after
    ``pads[i]`` padding columns."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.pads: list[int] = []
        self.length = 0

    def __len__(self) -> int:
        return len(self.pads)

    def add(self, caches: list[Any], lengths: list[int]) -> None:
        """Append single-row caches (of ``lengths`` real tokens each) as the last rows."""
        if not caches:
            return
        new_length = max([self.length, *lengths])
        parts: list[tuple[Any, int]] = []
        if self.cache is not None:
            parts.append((self.cache, new_length - self.length))
        parts.extend((cache, new_length - n) for cache, n in zip(caches, lengths, strict=True))
        base = self.cache if self.cache is not None else caches[0]
        for index, layer in enumerate(base.layers):
            layer.keys = torch.cat([_left_pad(c.layers[index].keys, pad) for c, pad in parts], dim=0)
            layer.values = torch.cat([_left_pad(c.layers[index].values, pad) for c, pad in parts], dim=0)
        shift = new_length - self.length
        self.pads = [p + shift for p in self.pads] + [new_length - n for n in lengths]
        self.length = new_length
        self.cache = base

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order) and cut the padding they all share."""
        if len(rows) == len(self.pads) and rows == list(range(len(self.pads))):
            return
        if not rows:
            self.cache, self.pads, self.length = None, [], 0
            return
        pads = [self.pads[r] for r in rows]
        shared = min(pads)
        index = torch.tensor(rows, device=self.cache.layers[0].keys.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, shared:]
            layer.values = layer.values.index_select(0, index)[:, :, shared:]
        self.pads = [p - shared for p in pads]
        self.length -= shared

    def decode_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask ``[B, length + 1]`` and position ids ``[B, 1]`` for one new token per row."""
        pads = torch.tensor(self.pads, device=device)
        columns = torch.arange(self.length + 1, device=device)
        mask = (columns[None, :] >= pads[:, None]).long()
        positions = (self.length - pads)[:, None]
        return mask, positions

    def advanced(self, cache: Any) -> None:
        """Record the forward pass that appended one column (``cache`` is the model's output cache)."""
        self.cache = cache
        self.length += 1

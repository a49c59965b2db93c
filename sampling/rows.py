"""Per-row parameters of a batch as tensors, built once per stage from the row's ``SamplingParams``.

Kernels never see Python objects per row: they ask for ``rows.float("top_p")`` and get a
``[rows, 1]`` tensor on the batch's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from samplerd.sampling.rng import device_uniforms
from samplerd.sampling.transfer import upload


class RowParams:
    """The parameters, seeds, steps, token histories and mirostat state of the rows a stage works on."""

    def __init__(self, params: Sequence, seeds: np.ndarray, steps: np.ndarray, mirostat_mu: torch.Tensor,
                 histories: Sequence[tuple[int, ...]], device: torch.device) -> None:
        self.params = list(params)
        self.seeds = seeds
        self.steps = steps
        self.mirostat_mu = mirostat_mu  # float64 [rows, 1]
        self.histories = list(histories)
        self.device = device
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.params)

    def _column(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        key = (name, dtype)
        if key not in self._cache:
            first = self.params[0]
            if all(p is first for p in self.params):
                column = torch.full((len(self.params), 1), getattr(first, name), dtype=dtype)
            else:
                column = torch.tensor([[getattr(p, name)] for p in self.params], dtype=dtype)
            self._cache[key] = upload(column, self.device)
        return self._cache[key]

    def float(self, name: str) -> torch.Tensor:
        """``[rows, 1]`` float32 column of parameter ``name``."""
        return self._column(name, torch.float32)

    def int(self, name: str) -> torch.Tensor:
        """``[rows, 1]`` int64 column of parameter ``name``."""
        return self._column(name, torch.int64)

    @cached_property
    def min_keep(self) -> torch.Tensor:
        return self.int("min_tokens_to_keep")

    def uniforms(self, stream: int, count: int) -> torch.Tensor:
        """``[rows, count]`` float64 counter-based uniforms for ``stream`` (see :mod:`samplerd.sampling.rng`)."""
        return device_uniforms(self.seeds, self.steps, stream, count, self.device)

    def subset(self, positions: list[int], index: torch.Tensor) -> RowParams:
        """The rows at ``positions``, which ``index`` holds as an int64 tensor on the device."""
        return RowParams([self.params[i] for i in positions], self.seeds[positions], self.steps[positions],
                         self.mirostat_mu[index], [self.histories[i] for i in positions], self.device)

"""Host data onto the batch's device without making the host wait for the device.

A CUDA copy from pageable host memory is ``cudaMemcpyAsync`` followed by a wait for the
stream: the host waits for every queued kernel, as a read back would make it. From pinned
memory with ``non_blocking=True`` the copy is queued behind that work instead, and torch's
caching host allocator keeps the pinned buffer until the copy has run. The fused GPU chain
uploads its packed parameters this way; the eager pipeline's small per-batch uploads
(parameter columns, row indices, seeds and steps, penalty entries) do too.
"""

from __future__ import annotations

import torch


def upload(values: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``values``, a host tensor, on ``device``; on CUDA through pinned memory, not blocking."""
    if torch.device(device).type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)

"""Ray actors that run the sampler suite; the only package of samplerd that imports ray.

- :mod:`samplerd.workers.batch`: what a batch and its answer look like on the wire;
- :mod:`samplerd.workers.sampler_actor`: the sampler actor, batched sampling on one device;
- :mod:`samplerd.workers.path_steps`: path-aware top-p steps (``SampleStream``) on the sampler actor;
- :mod:`samplerd.workers.lm_actor`, :mod:`samplerd.workers.lm_replicas`: the language-model actors of ``Generate``;
- :mod:`samplerd.workers.pool`: N sampler actors, least-loaded routing, death detection, replacement;
- :mod:`samplerd.workers.socket_link`: batches over a link to each actor (Unix socket and shared-memory
  arena on the front end's node, TCP to other nodes), beside Ray;
- :mod:`samplerd.workers.region`, :mod:`samplerd.workers.cuda_ipc`: logits read from a client's shared memory
  (POSIX objects; GPU memory by CUDA IPC handle);
- :mod:`samplerd.workers.cluster`: joining or starting Ray;
- :mod:`samplerd.workers.config`: device names, batch transports and the pool's settings (no ray, no torch).
"""

import importlib
import os
from typing import Any

# Before anything loads torch (and OpenMP with it): idle OpenMP threads sleep instead of
# spinning between the fused kernels and torch's ops (see samplerd.sampling's __init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Public names and the module that defines each. They are imported on first use, so that
# ``samplerd.workers.config`` (device names, PoolConfig) can be imported without loading ray or torch.
_EXPORTS = {
    "BatchOutput": "samplerd.workers.batch",
    "GroupResult": "samplerd.workers.batch",
    "PathChoice": "samplerd.workers.batch",
    "PathGroup": "samplerd.workers.batch",
    "PathGroupResult": "samplerd.workers.batch",
    "PathJob": "samplerd.workers.batch",
    "RowError": "samplerd.workers.batch",
    "RowGroup": "samplerd.workers.batch",
    "stack_group": "samplerd.workers.batch",
    "take_job": "samplerd.workers.batch",
    "LinkLimits": "samplerd.workers.config",
    "PoolConfig": "samplerd.workers.config",
    "RegionError": "samplerd.workers.region",
    "RegionSlice": "samplerd.workers.region",
    "CudaRegionSlice": "samplerd.workers.cuda_ipc",
    "REGION_TYPES": "samplerd.workers.batch",
    "BatchFailedError": "samplerd.workers.pool",
    "NoLiveWorkerError": "samplerd.workers.pool",
    "SamplerPool": "samplerd.workers.pool",
    "WorkerInfo": "samplerd.workers.pool",
    "WorkerState": "samplerd.workers.pool",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value

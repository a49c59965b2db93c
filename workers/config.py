"""The worker settings: device names, batch transports, link limits and the pool's configuration.

Imports neither ray nor torch, so the front end's configuration, the command line and the
client can use the one definition of each value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Device names of the sampler and language-model actors; ``auto`` is ``cuda`` where the
#: machine (or, for ``PoolConfig``, the Ray cluster) has a GPU.
DEVICES = ("auto", "cpu", "cuda")
#: Weights dtypes of the language model (``auto``: float32 on cpu, bfloat16 on cuda).
MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16")

#: How batches reach the actors: ``socket``, over a link to each actor (:mod:`samplerd.workers.socket_link`:
#: a Unix socket on this node, TCP to other nodes; by Ray, as ``put``, where no link opens), or
#: ``put``, an actor call each, its batch stored once with ``ray.put``.
BATCH_TRANSPORTS = ("socket", "put")


@dataclass(frozen=True)
class LinkLimits:
    """What a link server allows its peers.

    admit_timeout_s: the whole handshake of a new connection (not each read) must end within it.
    max_connections: admitted connections served at once (one per front end; refused beyond).
    max_pending: connections still in their handshake; a new one beyond closes the oldest, so
        that peers without the token cannot keep a front end out.
    max_frame_bytes: the most bytes one frame may carry (value and in-stream arrays).
    frame_timeout_s: a peer that started a frame and sends nothing for this long is dropped.
    """

    admit_timeout_s: float = 5.0
    max_connections: int = 64
    max_pending: int = 64
    max_frame_bytes: int = 1 << 30
    frame_timeout_s: float = 60.0


@dataclass(frozen=True)
class PoolConfig:
    """How many sampler actors, on what device, with what resources.

    ``num_gpus_per_worker`` may be fractional (several actors share a GPU); None means 1 for
    ``device="cuda"``, and for ``device="auto"`` 1 when the cluster has GPUs, else 0.
    ``max_batches_per_worker`` batches may be in flight per actor. With 2, the next batch
    already waits in the actor's queue when one finishes; but it leaves with whatever arrived
    meanwhile, so batches are about half as large, each with its own fixed cost. On CPU nodes 1
    serves more rows per second, hence the default (``samplerd bench service`` at C=16 on 2
    cores: ~650 against ~540 requests/s with Ray calls; with links, single runs of 821 and 722
    against 866 and 914).
    """

    num_workers: int = 1
    device: str = "auto"
    num_gpus_per_worker: float | None = None
    num_cpus_per_worker: float = 1.0
    max_batches_per_worker: int = 1
    batch_transport: str = "socket"
    ray_address: str | None = None
    startup_timeout_s: float = 120.0
    health_interval_s: float = 2.0
    restart_backoff_s: float = 1.0
    link_limits: LinkLimits = field(default_factory=LinkLimits)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.num_gpus_per_worker is not None and self.num_gpus_per_worker < 0:
            raise ValueError(f"num_gpus_per_worker must be >= 0, got {self.num_gpus_per_worker}")
        if self.device == "cuda" and self.num_gpus_per_worker == 0:
            raise ValueError("device 'cuda' needs num_gpus_per_worker > 0: Ray hides GPUs from actors without")
        if self.num_cpus_per_worker <= 0:
            raise ValueError(f"num_cpus_per_worker must be > 0, got {self.num_cpus_per_worker}")
        if self.max_batches_per_worker < 1:
            raise ValueError(f"max_batches_per_worker must be >= 1, got {self.max_batches_per_worker}")
        if self.batch_transport not in BATCH_TRANSPORTS:
            raise ValueError(
                f"batch_transport must be one of {', '.join(BATCH_TRANSPORTS)}, got {self.batch_transport!r}"
            )

"""The configuration of one samplerd server (``samplerd serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from samplerd.workers.config import LinkLimits, PoolConfig


@dataclass(frozen=True)
class DispatcherConfig:
    """Batching and backpressure settings, and the worker pool's (:class:`samplerd.workers.config.PoolConfig`).

    A row waits at most ``batch_window_s`` for others to join its batch of at most
    ``max_batch_rows``, and not at all once ``full_batch_bytes`` of logits wait (their sampling
    alone outlasts the window: on CPU about 2 ms per MB). Once ``max_queue_rows`` rows wait, or
    the jobs admitted and not yet answered hold ``max_queue_bytes`` of logits, new jobs are refused.
    """

    pool: PoolConfig = field(default_factory=PoolConfig)
    max_batch_rows: int = 256
    batch_window_s: float = 0.002
    full_batch_bytes: int = 1024 * 1024
    max_queue_rows: int = 4096
    max_queue_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")
        if self.batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, got {self.batch_window_s}")
        if self.full_batch_bytes < 1:
            raise ValueError(f"full_batch_bytes must be >= 1, got {self.full_batch_bytes}")
        if self.max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be >= 1, got {self.max_queue_rows}")
        if self.max_queue_bytes < 1:
            raise ValueError(f"max_queue_bytes must be >= 1, got {self.max_queue_bytes}")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``samplerd serve`` configures (see ``samplerd.service.cli`` for each option's meaning)."""

    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9464
    # Defaults of the worker and batching options are those of PoolConfig and DispatcherConfig.
    workers: int = PoolConfig.num_workers
    device: str = PoolConfig.device
    num_gpus_per_worker: float | None = PoolConfig.num_gpus_per_worker
    max_batch_rows: int = DispatcherConfig.max_batch_rows
    batch_window_ms: float = DispatcherConfig.batch_window_s * 1000.0
    max_batches_per_worker: int = PoolConfig.max_batches_per_worker
    batch_transport: str = PoolConfig.batch_transport
    max_queue: int = DispatcherConfig.max_queue_rows
    link_admit_timeout_s: float = LinkLimits.admit_timeout_s
    link_frame_timeout_s: float = LinkLimits.frame_timeout_s
    link_max_frame_bytes: int = LinkLimits.max_frame_bytes
    link_max_connections: int = LinkLimits.max_connections
    max_queue_bytes: int = DispatcherConfig.max_queue_bytes
    max_message_bytes: int = 64 * 1024 * 1024
    max_tensor_elements: int = 16 * 1024 * 1024
    max_sessions: int = 1024
    max_sequences_per_session: int = 256
    session_idle_timeout_s: float = 300.0
    max_history_tokens: int = 131072
    max_session_tokens: int = 1 << 20
    max_sessions_per_client: int = 256
    max_shm_regions: int = 64
    max_shm_bytes: int = 4 * 1024**3
    model: str | None = None
    model_device: str = "auto"
    model_dtype: str = "auto"
    model_max_tokens: int = 4096
    model_replicas: int = 1
    model_gpus_per_replica: float | None = None  # None: 1 on cuda, auto: 1 when the cluster has a GPU
    ray_address: str | None = PoolConfig.ray_address
    grace_seconds: float = 10.0
    # Security (samplerd.service.security): TLS / mutual TLS, bearer tokens, the metrics interface.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    metrics_host: str | None = None  # None: the same interface as --host

    def dispatcher_config(self) -> DispatcherConfig:
        """The dispatcher's share of the configuration (``auto`` devices resolved here)."""
        device = resolve_device(self.device)
        pool = PoolConfig(
            num_workers=self.workers,
            device=device,
            num_gpus_per_worker=self.num_gpus_per_worker if device == "cuda" else 0.0,
            max_batches_per_worker=self.max_batches_per_worker,
            batch_transport=self.batch_transport,
            link_limits=LinkLimits(admit_timeout_s=self.link_admit_timeout_s,
                                   frame_timeout_s=self.link_frame_timeout_s,
                                   max_frame_bytes=self.link_max_frame_bytes,
                                   max_connections=self.link_max_connections,
                                   max_pending=self.link_max_connections),
            ray_address=self.ray_address,
        )
        return DispatcherConfig(pool=pool, max_batch_rows=self.max_batch_rows,
                                batch_window_s=self.batch_window_ms / 1000.0, max_queue_rows=self.max_queue,
                                max_queue_bytes=self.max_queue_bytes)


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC server or channel options setting both message size limits (gRPC's default of
    4 MiB would refuse 8 rows of a 128k vocabulary)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when this machine has a CUDA device, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

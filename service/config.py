"""The configuration of one samplerd server (``samplerd serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.dispatcher import DispatcherConfig

DEVICES = ("auto", "cpu", "cuda")
#: ``--model-dtype`` values (those of ``workers.generation.loader.DTYPES``, which imports torch).
MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16")
#: ``--batch-transport`` values (those of ``workers.pool.BATCH_TRANSPORTS``, which imports ray).
BATCH_TRANSPORTS = ("socket", "put")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``samplerd serve`` configures (see ``service.cli`` for each option's meaning)."""

    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9464
    workers: int = 1
    device: str = "auto"
    num_gpus_per_worker: float = 1.0
    max_batch_rows: int = 256
    batch_window_ms: float = 2.0
    max_batches_per_worker: int = 1
    batch_transport: str = "socket"
    max_queue: int = 4096
    max_message_bytes: int = 64 * 1024 * 1024
    max_tensor_elements: int = 16 * 1024 * 1024
    max_sessions: int = 1024
    max_sequences_per_session: int = 256
    session_idle_timeout_s: float = 300.0
    model: str | None = None
    model_device: str = "auto"
    model_dtype: str = "auto"
    model_max_tokens: int = 4096
    model_replicas: int = 1
    model_gpus_per_replica: float | None = None  # None: 1 on cuda, auto: 1 when the cluster has a GPU
    ray_address: str | None = None
    grace_seconds: float = 10.0
    # Security (service.security): TLS / mutual TLS, bearer tokens, the metrics interface.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    metrics_host: str | None = None  # None: the same interface as --host

    def dispatcher_config(self) -> DispatcherConfig:
        """The dispatcher's share of the configuration."""
        from service.dispatcher import DispatcherConfig

        device = resolve_device(self.device)
        return DispatcherConfig(
            num_workers=self.workers,
            device=device,
            num_gpus_per_worker=self.num_gpus_per_worker if device == "cuda" else 0.0,
            max_batch_rows=self.max_batch_rows,
            batch_window_s=self.batch_window_ms / 1000.0,
            max_batches_per_worker=self.max_batches_per_worker,
            batch_transport=self.batch_transport,
            max_queue_rows=self.max_queue,
            ray_address=self.ray_address,
        )


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

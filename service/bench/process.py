"""Run ``samplerd serve`` as a child process on loopback (for the tests and the benchmark)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_READY_RE = re.compile(r"samplerd: (?:listening|serving) grpc=(\S+):(\d+) metrics=(\d+)")


@dataclass
class ServerProcess:
    """A running ``samplerd serve`` child: its process, bound ports and recent output."""

    process: subprocess.Popen
    port: int
    metrics_port: int
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        """The gRPC target to dial."""
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 180.0) -> None:
        """Block until health reports SERVING; raise with the server's output otherwise."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        if self.process.poll() is not None and self.reader is not None:
            self.reader.join(5.0)  # the child's last words, usually the reason
        raise RuntimeError("samplerd did not become SERVING:\n" + "\n".join(self.output))

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for exit (SIGKILL after ``timeout_s``); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(*options: str, env: dict[str, str] | None = None, bind_timeout_s: float = 60.0) -> ServerProcess:
    """Start ``samplerd serve --host 127.0.0.1 --port 0 --metrics-port 0 *options``; return once
    its ports are bound (health is NOT_SERVING until the workers are up). Without
    ``--ray-address`` in ``options`` it starts its own local Ray instance."""
    command = [sys.executable, "-m", "samplerd.service.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0", *options]
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    output: deque[str] = deque(maxlen=200)
    bound = threading.Event()
    ports: list[int] = []

    def pump() -> None:
        # Keeps reading for the child's whole life, so a full pipe never blocks it.
        for line in process.stdout:
            output.append(line.rstrip())
            match = _READY_RE.search(line)
            if match and not bound.is_set():
                ports.extend((int(match.group(2)), int(match.group(3))))
                bound.set()
        bound.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if not bound.wait(bind_timeout_s) or not ports:
        process.kill()
        process.wait()
        raise RuntimeError("samplerd did not bind its ports:\n" + "\n".join(output))
    return ServerProcess(process, ports[0], ports[1], output, reader)


@contextlib.contextmanager
def serving(*options: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A ``samplerd serve`` child (see :func:`start_server`) that is SERVING for the ``with``
    block and terminated after it."""
    process = start_server(*options, env=env)
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()

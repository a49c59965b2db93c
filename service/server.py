"""The grpc.aio server: the ``Sampler`` servicer, health, reflection, metrics and shutdown.

Start-up order: the port is bound and health answers NOT_SERVING first, so probes get an
answer while Ray and the sampler workers start; health turns SERVING once the dispatcher is
ready. On SIGTERM/SIGINT health turns NOT_SERVING, the server stops accepting RPCs and
in-flight ones get ``grace_seconds`` to finish before the workers are stopped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from samplerd.sampling import SamplingError
from samplerd.service import catalog, oip
from samplerd.service.codec import Limits, decode_request, encode_response
from samplerd.service.config import ServerConfig, message_size_options, resolve_device
from samplerd.service.cuda_shared_memory import CudaSharedMemoryRegistry
from samplerd.service.dispatcher import Dispatcher, SampleJob
from samplerd.service.errors import RequestError, classify, invalid_argument, to_status
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc
from samplerd.service.generation import Generation
from samplerd.service.inline_logits import SplitSampleRequest, add_sampler_servicer
from samplerd.service.metrics import Metrics
from samplerd.service.ports import PortInUseError, check_port_free, port_error
from samplerd.service.reflection import own_pool
from samplerd.service.security import ShutdownGate, server_interceptors, server_port_credentials
from samplerd.service.session_stream import SessionStreams
from samplerd.service.sessions import SessionLimits
from samplerd.service.shared_memory import SharedAccess, SharedMemoryLimits, SharedMemoryRegistry

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sampler"].full_name
_HEALTH_REFRESH_S = 0.5


class SamplerServicer(pb_grpc.SamplerServicer):
    """The ``samplerd.v1.Sampler`` RPCs: decode and validate, submit to the dispatcher, answer."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics, limits: Limits,
                 sessions: SessionStreams | None = None, generation: Generation | None = None,
                 shared_memory: SharedMemoryRegistry | None = None) -> None:
        self._dispatcher = dispatcher
        self._shared_memory = shared_memory or SharedMemoryRegistry()
        self._metrics = metrics
        self._limits = limits
        self._strategies = catalog.list_strategies()
        self._sessions = sessions or SessionStreams(dispatcher, metrics, limits)
        self._generation = generation or Generation(metrics)  # None: no model (FAILED_PRECONDITION)

    async def Sample(self, request: SplitSampleRequest | pb.SampleRequest,
                     context: grpc.aio.ServicerContext) -> pb.SampleResponse:
        """Sample every row of the request's logits (see the .proto); registered through
        :func:`~samplerd.service.inline_logits.add_sampler_servicer`, it receives the request
        with its inline logits still where they arrived."""
        if isinstance(request, SplitSampleRequest):
            request, logits_data = request.message, request.logits_data
        else:
            logits_data = None
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._metrics.inflight.inc()
        try:
            shared = SharedAccess(self._shared_memory, self._shared_memory.owner(context))
            decoded = decode_request(request, self._limits, shared, actor_checks=True, logits_data=logits_data)
            deadline = _deadline(context)
            job = SampleJob(logits=decoded.logits, params=decoded.params, steps=decoded.steps, deadline=deadline)
            try:
                result = await self._dispatcher.submit(job)
            except SamplingError as error:
                if decoded.unchecked_field is not None and error.field == "logits":  # a bad row the actor found
                    raise invalid_argument(decoded.unchecked_field, error.reason) from None
                raise
            response = encode_response(result, decoded.params, decoded.request_id)
            self._metrics.queue_wait.observe(result.queue_wait_s)
            self._metrics.observe_rows(result, (p.n for p in decoded.params))
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # every failure is answered, with the code classify() picks
            refused = classify(error)
            code = refused.code
            await context.abort_with_status(to_status(refused))
        finally:
            self._metrics.inflight.dec()
            self._metrics.observe_request("Sample", code.name, time.perf_counter() - started)

    async def ListStrategies(
        self, request: pb.ListStrategiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStrategiesResponse:
        """Every strategy with its parameters, from the registry."""
        self._metrics.observe_request("ListStrategies", "OK", 0.0)  # a prebuilt answer: no time to speak of
        return self._strategies

    async def SampleStream(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        """A decoding session (see the .proto and :mod:`samplerd.service.session_stream`)."""
        await self._sessions.serve(request_iterator, context)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        """Text generation with the server's language model (see the .proto and :mod:`samplerd.service.generation`)."""
        await self._generation.serve(request, context)

    async def RegisterSharedMemory(self, request: pb.RegisterSharedMemoryRequest,
                                   context: grpc.aio.ServicerContext) -> pb.RegisterSharedMemoryResponse:
        """Register a shared-memory region of the caller (see the .proto and :mod:`samplerd.service.shared_memory`)."""
        await self._answer("RegisterSharedMemory", context, self._shared_memory.register,
                           self._shared_memory.owner(context), request.name, request.key, request.offset,
                           request.byte_size)
        return pb.RegisterSharedMemoryResponse()

    async def UnregisterSharedMemory(self, request: pb.UnregisterSharedMemoryRequest,
                                     context: grpc.aio.ServicerContext) -> pb.UnregisterSharedMemoryResponse:
        """Forget one of the caller's regions, or all of them."""
        await self._answer("UnregisterSharedMemory", context, self._shared_memory.unregister,
                           self._shared_memory.owner(context), request.name)
        return pb.UnregisterSharedMemoryResponse()

    async def SharedMemoryStatus(self, request: pb.SharedMemoryStatusRequest,
                                 context: grpc.aio.ServicerContext) -> pb.SharedMemoryStatusResponse:
        """The caller's regions."""
        regions = await self._answer("SharedMemoryStatus", context, self._shared_memory.status,
                                     self._shared_memory.owner(context), request.name)
        return pb.SharedMemoryStatusResponse(regions=[
            pb.RegisterSharedMemoryRequest(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
            for r in regions])

    async def _answer(self, method: str, context: grpc.aio.ServicerContext, call, *args):
        """``call(*args)``, its RequestError answered as the RPC's status; the request is counted."""
        code = "OK"
        try:
            return call(*args)
        except RequestError as error:
            code = error.code.name
            await context.abort_with_status(to_status(error))
        finally:
            self._metrics.observe_request(method, code, 0.0)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline on the ``time.monotonic()`` clock, or None; refuses expired ones."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work was queued")
    return time.monotonic() + remaining


class SamplerServer:
    """One running samplerd: gRPC server, metrics endpoint, dispatcher and workers."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        device = resolve_device(config.device)
        self.metrics = Metrics(device=device)
        self.dispatcher = Dispatcher(config.dispatcher_config())
        self.dispatcher.set_batch_observer(self.metrics.observe_batch)
        self.health = health.aio.HealthServicer()
        # Shared-memory regions (samplerd.service.shared_memory): per bearer token when auth is on.
        self.shared_memory = SharedMemoryRegistry(
            SharedMemoryLimits(config.max_shm_regions, config.max_shm_bytes),
            per_token=config.auth_token_file is not None)
        sessions = SessionStreams(self.dispatcher, self.metrics, Limits(config.max_tensor_elements), SessionLimits(
            config.max_sessions, config.max_sequences_per_session, config.session_idle_timeout_s,
            config.max_history_tokens, config.max_session_tokens, config.max_sessions_per_client), self.shared_memory)
        self.generation = Generation.from_config(config, self.metrics)  # --model: the language-model actor
        self.servicer = SamplerServicer(self.dispatcher, self.metrics, Limits(config.max_tensor_elements), sessions,
                                        self.generation, self.shared_memory)
        # so_reuseport off: a second server on a taken port must fail, not share it.
        self.server = grpc.aio.server(
            options=[*message_size_options(config.max_message_bytes), ("grpc.so_reuseport", 0)],
            interceptors=server_interceptors(config),  # bearer tokens, when configured
        )
        # Shutdown gate, and unparsable requests -> INVALID_ARGUMENT (samplerd.service.security).
        self.gate = ShutdownGate()
        self.gate.register(add_sampler_servicer, self.servicer, self.server)  # Sample: see inline_logits
        # The Open Inference Protocol (KServe v2 / Triton) on the same port: see samplerd.service.oip.
        # CUDA regions (Triton's CUDA extension, OIP only): served when the workers sample on GPUs.
        self.cuda_shared_memory = CudaSharedMemoryRegistry(
            SharedMemoryLimits(config.max_shm_regions, config.max_shm_bytes),
            unavailable=oip.cuda_unavailable(cuda_workers=resolve_device(config.device) == "cuda"))
        self.inference = oip.InferenceServicer(self.dispatcher, self.metrics, Limits(config.max_tensor_elements),
                                               max_response_bytes=config.max_message_bytes,
                                               shared_memory=self.shared_memory,
                                               cuda_shared_memory=self.cuda_shared_memory)
        self.gate.register(oip.add_to_server, self.inference, self.server)
        self.gate.register(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server, always_open=True)
        reflection.enable_server_reflection(
            (SERVICE_NAME, oip.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server,
            pool=own_pool((pb.DESCRIPTOR, oip.oip.DESCRIPTOR, health_pb2.DESCRIPTOR,
                           reflection_pb2.DESCRIPTOR)),  # samplerd's schemas only, not Ray's
        )
        self.port = 0
        self.metrics_port = 0
        self._refresher: asyncio.Task | None = None
        self._stopping = False

    async def bind(self) -> None:
        """Bind the gRPC and metrics ports and start answering; health is NOT_SERVING."""
        host, port = self.config.host, self.config.port
        check_port_free(host, port, "--port")
        credentials = server_port_credentials(self.config)  # TLS / mutual TLS, or None
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(f"{host}:{port}")
            else:
                self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:  # taken between the check and here
            raise PortInUseError(host, port, "--port") from None
        metrics_host = self.config.metrics_host or host
        try:
            self.metrics_port = self.metrics.serve(self.config.metrics_port, metrics_host)
        except OSError as error:
            raise port_error(error, metrics_host, self.config.metrics_port, "--metrics-port") from None
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def start_workers(self) -> None:
        """Start the dispatcher and its workers; health follows their readiness from then on."""
        await self.dispatcher.start()
        self._refresher = asyncio.create_task(self._refresh())
        await self.generation.start()  # after the dispatcher: Ray is connected; no-op without --model
        # What is allocated by now (torch, Ray, grpc, the model: ~230k objects) lives as long as
        # the process. Frozen, it is out of the cyclic collector's sight. Before, at 64 clients a
        # full collection came every ~7 s and scanned it all for ~190 ms, a stall that every
        # request in flight waited out (p99 ~200 ms against a p50 of 60); frozen, they take <1 ms.
        gc.freeze()

    async def stop(self) -> None:
        """NOT_SERVING, stop accepting, let in-flight RPCs finish within the grace period, stop
        the workers."""
        if self._stopping:
            return
        self._stopping = True
        self.gate.close()  # calls not picked up yet get UNAVAILABLE, not grpc's CANCELLED
        await self.health.enter_graceful_shutdown()
        await self.gate.drain(limit_s=min(2.0, self.config.grace_seconds))
        await self.server.stop(self.config.grace_seconds)
        if self._refresher is not None:
            self._refresher.cancel()
        await self.generation.stop()  # before the dispatcher, which may stop Ray
        await self.dispatcher.stop()
        self.shared_memory.clear()
        self.cuda_shared_memory.clear()

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def _readiness_line(self, ready: bool) -> str:
        alive = self.dispatcher.worker_states().get("alive", 0)
        device = resolve_device(self.config.device)
        if not ready:
            return f"samplerd: not ready ({alive} of {self.config.workers} sampler workers alive); health NOT_SERVING"
        model = f", language model {self.config.model}" if self.config.model else ""
        return f"samplerd: ready: {alive} sampler worker{'s' if alive != 1 else ''} on {device}{model}; health SERVING"

    async def _refresh(self) -> None:
        """Keep health and the queue/worker gauges in step with the dispatcher."""
        serving = None
        while not self._stopping:
            ready = self.dispatcher.ready() and self.generation.ready()  # workers up, and the model if any
            if ready != serving:
                status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                await self._set_health(status)
                if ready or serving is not None:  # not the initial NOT_SERVING, already announced
                    print(self._readiness_line(ready), flush=True)
                serving = ready
            self.metrics.queue_depth.set(self.dispatcher.queue_depth())
            self.metrics.set_workers(self.dispatcher.worker_states())
            await asyncio.sleep(_HEALTH_REFRESH_S)


async def serve(config: ServerConfig) -> None:
    """Run a server until SIGTERM or SIGINT, then shut it down gracefully.

    Once the ports are bound it prints ``samplerd: listening grpc=HOST:PORT metrics=PORT ...``
    (the bound ports, which is how port 0 is used: see :mod:`samplerd.service.bench.process`), and
    ``samplerd: ready: N sampler workers on DEVICE; health SERVING`` once calls can be answered.
    """
    # The front end's tensor work is small (views, stacking, slicing); torch's intra-op threads
    # would only spin between ops, taking CPU from the sampler actors on the same machine.
    torch.set_num_threads(1)
    server = SamplerServer(config)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await server.bind()
    print(f"samplerd: listening grpc={config.host}:{server.port} metrics={server.metrics_port} (starting "
          f"{config.workers} sampler worker{'s' if config.workers != 1 else ''}; health NOT_SERVING until "
          "they are up)", flush=True)
    starting = asyncio.create_task(server.start_workers())
    stopping = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await stopping
        else:
            starting.cancel()
    finally:
        stopping.cancel()
        log.info("shutting down (grace %.1fs)", config.grace_seconds)
        await server.stop()

"""``Generate``: prompt in, tokens out, with the server's own language model.

:class:`Generation` owns the language-model actors of ``samplerd serve --model DIR``
(``--model-replicas`` of them, :mod:`samplerd.workers.lm_replicas`; or knows there is none) and
answers ``Sampler/Generate``; the servicer's ``Generate`` only delegates to
:meth:`Generation.serve`. The proto contract is ``GenerateRequest`` / ``GenerateResponse``
in ``proto/samplerd/v1/sampler.proto``.

One call is one prompt. Concurrent calls are batched by the engine (continuous batching in
the actor's decode loop), so a client wanting several continuations opens several calls.

Request handling:

1. no model: FAILED_PRECONDITION, saying to start the server with ``--model DIR``;
2. the request is decoded and validated here (oneof prompt, token ids against the model's
   vocabulary, ``max_tokens`` against ``--model-max-tokens``, stop strings, sampling
   parameters) and by the engine (prompt length against the context, ``n``/``path_beams``,
   logit-bias ids); every violation is INVALID_ARGUMENT naming the proto field
   (``prompt_token_ids``, ``stop[2]``, ``params.top_p``, ...), except ``max_tokens`` over the
   server's limit, which is RESOURCE_EXHAUSTED like every other configured size limit;
3. each :class:`~samplerd.workers.generation.TokenEvent` becomes one ``GenerateResponse.token``
   message (and feeds the per-strategy metrics, ``samplerd_generated_tokens_total`` and the
   time-to-first-token / inter-token latency histograms), the
   :class:`~samplerd.workers.generation.FinishEvent` the final ``GenerateResponse.finish``;
4. a client that cancels, disconnects or passes its deadline cancels the handler's task; the
   events generator is closed (``aclosing``), which cancels the request on the actor and
   frees its batch slot at the next decode step. The deadline is also enforced here (not
   only by gRPC), so a generation never outlives it;
5. an engine failure mid-generation (finish reason ``error``) ends the stream with INTERNAL,
   a lost actor with UNAVAILABLE (at once: its replica is replaced); tokens already sent stand.

Every accepted call gets exactly one status; the metrics count each under ``Generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

import grpc

from samplerd.sampling import SamplingError
from samplerd.service.errors import RequestError, classify, from_sampling_error, invalid_argument, over_limit, to_status
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.params import from_proto
from samplerd.workers.generation import FinishEvent, GenerationRequest, InvalidGenerationRequest, TokenEvent
from samplerd.workers.lm_actor import LMActorConfig, ModelReplicaLost
from samplerd.workers.lm_replicas import LanguageModelReplicas
from samplerd.workers.pool import ACTOR_LOST

if TYPE_CHECKING:
    from samplerd.service.config import ServerConfig
    from samplerd.service.metrics import Metrics

log = logging.getLogger(__name__)

#: max_tokens when the request leaves it unset.
DEFAULT_MAX_TOKENS = 16
#: Bounds on the stop conditions and the caller's id (see GenerateRequest in the .proto).
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 1024
MAX_REQUEST_ID_BYTES = 256
#: How often the model's load (running / waiting sequences) and liveness are refreshed.
LOAD_REFRESH_S = 0.5

DEADLINE_CLOCK_SLACK_S = 0.25
NO_MODEL_MESSAGE = (
    "this server runs without a language model, so Generate is unavailable: start it with "
    "`samplerd serve --model DIR` (DIR: a local Hugging Face causal LM directory with its tokenizer; "
    "env SAMPLERD_MODEL)"
)

_FINISH_REASONS = {
    "length": pb.GenerateFinish.LENGTH,
    "stop": pb.GenerateFinish.STOP,
    "eos": pb.GenerateFinish.EOS,
    "cancelled": pb.GenerateFinish.CANCELLED,
}
# InvalidGenerationRequest fields that are sampling parameters (proto path params.<name>).
_PARAMS_FIELDS = frozenset({"n", "path_beams", "logit_bias", "dry_sequence_breakers"})
_LN2 = math.log(2.0)
# asyncio.timeout is Python 3.11+; on 3.10 the deadline is left to gRPC's own cancellation.
_timeout = getattr(asyncio, "timeout", None)


class Generation:
    """The language model of one server and the ``Generate`` handler.

    ``model`` None: no model (every call is FAILED_PRECONDITION, and :meth:`ready` is True so
    health depends on the sampler workers alone). Otherwise :meth:`start` creates the actor
    and waits for the model (Ray must be connected: start the dispatcher first), and
    :meth:`ready` is True while the actor answers.
    """

    def __init__(self, metrics: Metrics, model: LMActorConfig | None = None,
                 max_tokens_limit: int = 4096, replicas: int = 1) -> None:
        self._metrics = metrics
        self._model = model
        self._max_tokens_limit = max_tokens_limit
        self._replicas = replicas
        self._lm: LanguageModelReplicas | None = None
        self._alive = False
        self._monitor: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, metrics: Metrics) -> Generation:
        """The generation side of ``samplerd serve``: ``--model``, ``--model-device``,
        ``--model-dtype``, ``--model-max-tokens``, ``--model-replicas``, ``--model-gpus-per-replica``."""
        model = None
        if config.model is not None:
            model = LMActorConfig(model_dir=config.model, device=config.model_device, dtype=config.model_dtype,
                                  num_gpus=config.model_gpus_per_replica)
        return cls(metrics, model, config.model_max_tokens, config.model_replicas)

    @property
    def has_model(self) -> bool:
        """True when the server was started with a model."""
        return self._model is not None

    @property
    def client(self) -> LanguageModelReplicas | None:
        """The language-model replicas once the model is loaded (None without a model)."""
        return self._lm

    def ready(self) -> bool:
        """True when Generate can run: no model configured, or the model loaded and a replica alive."""
        return self._model is None or (self._lm is not None and self._alive and self._lm.ready())

    async def start(self) -> None:
        """Create the language-model actors and wait until the model is loaded (no-op without a
        model). Raises ``ModelLoadError`` (the directory holds no loadable model) or ``TimeoutError``."""
        if self._model is None:
            return
        started = time.perf_counter()
        lm = LanguageModelReplicas(self._model, self._replicas)
        await lm.start()
        self._lm = lm
        self._alive = True
        info = lm.info
        assert info is not None
        log.info("language model %s loaded in %.1fs (%d replica(s)): %s on %s (%s), V=%d, context %s, batching %s",
                 info.model_dir, time.perf_counter() - started, self._replicas, info.architecture, info.device,
                 info.dtype, info.vocab_size, info.max_positions, info.batching)
        self._monitor = asyncio.create_task(self._watch(), name="generation-monitor")

    async def stop(self) -> None:
        """Stop the actors (live generations end with UNAVAILABLE)."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._lm is not None:
            lm, self._lm = self._lm, None
            self._alive = False
            await lm.close()

    async def _watch(self) -> None:
        """Keep ``samplerd_generate_sequences`` and the actors' liveness up to date."""
        assert self._lm is not None
        while True:
            try:
                load = await asyncio.wait_for(self._lm.load(), timeout=10.0)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a dead or hung actor: health turns NOT_SERVING
                if self._alive:
                    log.error("no language-model actor answering: %s", error)
                self._alive = False
            else:
                self._alive = True
                self._metrics.generate_sequences.labels("running").set(load.get("running", 0))
                self._metrics.generate_sequences.labels("waiting").set(
                    load.get("waiting", 0) + load.get("submitted", 0))
            await asyncio.sleep(LOAD_REFRESH_S)

    # -- the RPC -----------------------------------------------------------------------------

    async def serve(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        """Answer one ``Generate`` call: stream its tokens, then the finish message."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        deadline = None
        self._metrics.inflight.inc()
        try:
            remaining = context.time_remaining()
            if remaining is not None:
                if remaining <= 0:
                    raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before generation started")
                deadline = time.monotonic() + remaining
            lm = self._lm
            if lm is None:
                if self._model is None:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, NO_MODEL_MESSAGE)
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the language model is not loaded (yet); retry")
            assert lm.info is not None
            generation = self.decode(request, lm.info.vocab_size)
            scope = _timeout(remaining) if _timeout is not None and remaining is not None else contextlib.nullcontext()
            async with scope:
                await self._stream(lm, generation, request, context, started)
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client's deadline passes, which it measures on
            # its own clock: a cancellation within a moment of our deadline is that deadline.
            expired = deadline is not None and time.monotonic() >= deadline - DEADLINE_CLOCK_SLACK_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # every failure is answered, with the code _refusal() picks
            refused = _refusal(error, request)
            code = refused.code
            await context.abort_with_status(to_status(refused))
        finally:
            self._metrics.inflight.dec()
            self._metrics.observe_request("Generate", code.name, time.perf_counter() - started)

    async def _stream(self, lm: LanguageModelReplicas, generation: GenerationRequest, request: pb.GenerateRequest,
                      context: grpc.aio.ServicerContext, started: float) -> None:
        """Write a message per token event, then the finish message. ``started``: when the call
        arrived (``time.perf_counter``), for the time to first token."""
        finish: FinishEvent | None = None
        last = None  # when the previous token was sent
        async with contextlib.aclosing(lm.generate(generation)) as events:
            async for event in events:
                if isinstance(event, TokenEvent):
                    self._metrics.observe_generated_token(event)
                    await context.write(token_response(request.request_id, event))
                    now = time.perf_counter()
                    self._metrics.observe_token_latency(event.strategy, now - (started if last is None else last),
                                                        first=last is None)
                    last = now
                else:
                    finish = event
        if finish is None:  # the engine always ends a stream with a FinishEvent
            raise RuntimeError("the generation stream ended without its finish event")
        if finish.finish_reason == "error":
            raise RequestError(grpc.StatusCode.INTERNAL, f"generation failed: {finish.error}")
        await context.write(pb.GenerateResponse(request_id=request.request_id, finish=finish_message(finish)))

    # -- decoding and validation ------------------------------------------------------------------

    def decode(self, request: pb.GenerateRequest, vocab_size: int) -> GenerationRequest:
        """The :class:`GenerationRequest` of ``request``; raises :class:`RequestError` naming the
        field (the engine checks the rest when the request is submitted)."""
        which = request.WhichOneof("prompt")
        prompt = prompt_ids = None
        if which is None:
            raise invalid_argument("prompt", "give the prompt as prompt_text or prompt_token_ids")
        if which == "prompt_text":
            if not request.prompt_text:
                raise invalid_argument("prompt_text", "prompt_text must not be empty (for unconditional "
                                       "generation send the model's BOS token id as prompt_token_ids)")
            prompt = request.prompt_text
        else:
            prompt_ids = tuple(request.prompt_token_ids.token_ids)
            if not prompt_ids:
                raise invalid_argument("prompt_token_ids", "prompt_token_ids must hold at least one token id")
            _check_ids("prompt_token_ids", prompt_ids, vocab_size)
        try:
            params = from_proto(request.params)
        except SamplingError as error:
            raise from_sampling_error(error, "params.") from None
        max_tokens = request.max_tokens if request.HasField("max_tokens") else DEFAULT_MAX_TOKENS
        if max_tokens < 1:
            raise invalid_argument("max_tokens", f"max_tokens must be >= 1, got {max_tokens}")
        if max_tokens > self._max_tokens_limit:
            raise over_limit("max_tokens", f"max_tokens {max_tokens} is over this server's limit of "
                             f"{self._max_tokens_limit} (--model-max-tokens)")
        if len(request.stop) > MAX_STOP_STRINGS:
            raise invalid_argument("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(request.stop)}")
        for i, stop in enumerate(request.stop):
            if not stop or len(stop) > MAX_STOP_STRING_CHARS:
                raise invalid_argument(f"stop[{i}]", f"stop strings must hold 1 to {MAX_STOP_STRING_CHARS} "
                                       f"characters, got {len(stop)}")
        if len(request.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise invalid_argument("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} stop token ids, "
                                   f"got {len(request.stop_token_ids)}")
        _check_ids("stop_token_ids", request.stop_token_ids, vocab_size)
        if len(request.request_id.encode()) > MAX_REQUEST_ID_BYTES:
            raise invalid_argument("request_id", f"request_id must be at most {MAX_REQUEST_ID_BYTES} bytes")
        # The caller's request_id is only echoed: the engine's own id keeps concurrent calls
        # with the same caller id apart.
        return GenerationRequest(prompt=prompt, prompt_token_ids=prompt_ids, params=params, max_tokens=max_tokens,
                                 stop=tuple(request.stop), stop_token_ids=tuple(request.stop_token_ids),
                                 ignore_eos=request.ignore_eos)


def _check_ids(field: str, ids, vocab_size: int) -> None:
    for i, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise invalid_argument(f"{field}[{i}]", f"token id {token} is outside the model's vocabulary "
                                   f"[0, {vocab_size})")


def _refusal(error: BaseException, request: pb.GenerateRequest) -> RequestError:
    """The status an exception answers as; engine field names become proto field paths."""
    if isinstance(error, InvalidGenerationRequest):
        field = error.field
        if field == "prompt":
            field = request.WhichOneof("prompt") or "prompt"
        elif field in _PARAMS_FIELDS:
            field = "params." + field
        return invalid_argument(field, error.reason)
    if isinstance(error, TimeoutError):  # our own deadline scope fired
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed during generation")
    if isinstance(error, ModelReplicaLost):
        return RequestError(grpc.StatusCode.UNAVAILABLE, str(error))
    if isinstance(error, ACTOR_LOST):
        return RequestError(grpc.StatusCode.UNAVAILABLE, f"the language-model worker is gone: {error}")
    return classify(error)


def token_response(request_id: str, event: TokenEvent) -> pb.GenerateResponse:
    """The ``GenerateResponse`` carrying a token event."""
    response = pb.GenerateResponse(request_id=request_id)
    fill_token(response.token, event)
    return response


def fill_token(message: pb.GeneratedToken, event: TokenEvent) -> None:
    """Set ``message`` from a token event. Field by field: this runs for every generated token,
    and it costs a seventh of building the messages from keyword arguments."""
    message.index = event.index
    message.token_id = event.token_id
    message.text = event.text
    message.logprob = event.logprob
    stats = message.stats
    stats.entropy = event.entropy
    stats.varentropy = event.varentropy
    stats.truncated_entropy = event.truncated_entropy
    stats.kept_tokens = event.kept_tokens
    stats.kept_mass = event.kept_mass
    stats.top_k_entropy = event.top_k_entropy
    stats.top_k_mass = event.top_k_mass
    stats.surprise.append(event.surprise)
    message.strategy = event.strategy
    for token_id, logprob in event.top_logprobs:
        message.top_logprobs.add(token_id=token_id, logprob=logprob)
    if event.mirostat_mu is not None:
        message.mirostat_mu = event.mirostat_mu


def finish_message(event: FinishEvent) -> pb.GenerateFinish:
    """The ``GenerateFinish`` of a finish event (not ``error``: that one is a status)."""
    stats = event.stats
    message = pb.GenerateFinish(
        reason=_FINISH_REASONS[event.finish_reason], text=event.text, output_text=event.output_text,
        token_ids=event.token_ids, prompt_tokens=event.prompt_tokens)
    if stats.tokens > 0:
        message.statistics.CopyFrom(pb.SessionStatistics(
            tokens=stats.tokens, mean_surprise_bits=stats.mean_surprise / _LN2, log_perplexity=stats.log_perplexity,
            mean_entropy=stats.mean_entropy, perplexity_entropy_gap=stats.detection_gap))
    else:
        message.statistics.SetInParent()  # all zero, as the .proto says
    if event.finish_reason == "stop" and event.stop_reason is not None:
        if isinstance(event.stop_reason, str):
            message.stop_string = event.stop_reason
        else:
            message.stop_token_id = int(event.stop_reason)
    return message

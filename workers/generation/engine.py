"""The generation engine: a Hugging Face causal LM, its own decode loop, continuous batching.

Pure Python and PyTorch, usable without Ray::

    engine = GenerationEngine("path/to/model")            # device/dtype "auto"
    result = engine.generate(GenerationRequest(prompt="Once", params=SamplingParams(temperature=0)))
    print(result.text, result.finish.finish_reason)

    engine.start()                                         # the decode loop in a background thread
    rid = engine.submit(GenerationRequest(prompt="Hi", max_tokens=32))
    events = engine.poll(rid, timeout_s=0.5)               # TokenEvents, then one FinishEvent

    engine.submit(GenerationRequest(prompt="Hi", request_id="a"), feed=True)
    engine.submit(GenerationRequest(prompt="Ho", request_id="b"), feed=True)
    events = engine.poll_feed(timeout_s=0.5)               # the events of "a" and "b", in order

A request submitted with ``feed=True`` has no outbox of its own: its events go to the engine's
one feed, which :meth:`GenerationEngine.poll_feed` drains for every such request at once. That
is how the language-model actor serves all its streams with one poll (see :mod:`samplerd.workers.lm_actor`).

The loop (:meth:`GenerationEngine.step`, run by :meth:`start`'s thread or by the caller):

1. take new requests and cancellations (a cancelled request ends here, with ``cancelled``);
2. admit waiting requests while the batch has room (``max_batch_size``): each new prompt is
   prefilled alone, in one forward pass with its own KV cache;
3. one forward pass over the running batch, one new token per row, through the batch's
   shared KV cache (:mod:`samplerd.workers.generation.kv_batch`: rows left-padded to a common length,
   masked, with their own position ids);
4. one :func:`sampling.sample` call over the last logits of all rows, prefilled and decoding
   alike, each row with its own SamplingParams, step counter (the index of the generated
   token) and SequenceState (prompt + generated history, mirostat's mu);
5. each row's token goes through its :class:`~samplerd.workers.generation.sequence.Sequence`
   (state advance, text, stop conditions); new rows join the batch, finished rows leave it.

So sequences join and leave between steps (continuous batching) and never wait for each
other. A sequence computes the same function whatever it is batched with: the prefill is
its own, the decode masks other rows' padding and uses its own positions, and the sampler
draws from a counter keyed by (seed, step) per row. Results are the same up to the last bits
of floating-point rounding (a batched matrix product may sum in a different order than a
single-row one), which changes a token only on an exact tie; ``batching="solo"`` forwards
each sequence on its own (bitwise batch-invariant, and slower) and is chosen automatically
for models whose cache cannot be padded (sliding-window or recurrent layers). There is no
chunked prefill: a long prompt delays the batch's next step by its prefill.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samplerd.sampling import SampleOutput, sample
from samplerd.workers.generation.kv_batch import PaddedKVBatch, supports_padding
from samplerd.workers.generation.loader import LoadedModel, ModelInfo, load_model
from samplerd.workers.generation.request import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    InvalidGenerationRequest,
    TokenEvent,
)
from samplerd.workers.generation.sequence import SampledRow, Sequence

_log = logging.getLogger(__name__)

#: ``batching`` values: ``padded`` batches every running sequence in one forward pass;
#: ``solo`` runs one forward pass per sequence; ``auto`` is padded when the model allows.
BATCHING = ("auto", "padded", "solo")


class UnknownRequestError(KeyError):
    """No live (or not yet collected) request has this id."""


@dataclass(frozen=True)
class GenerationResult:
    """A whole generation: its token events in order and its finish event."""

    tokens: list[TokenEvent]
    finish: FinishEvent

    @property
    def text(self) -> str:
        """The generated text."""
        return self.finish.output_text

    @property
    def token_ids(self) -> list[int]:
        """The generated token ids."""
        return list(self.finish.token_ids)


class _Outbox:
    """Events waiting for a request's reader."""

    def __init__(self, lock: threading.Lock) -> None:
        self.events: deque[GenerationEvent] = deque()
        self.ready = threading.Condition(lock)
        self.finished_at: float | None = None


class _RunningBatch:
    """Sequences that share one KV cache (one forward pass per step)."""

    def __init__(self) -> None:
        self.kv = PaddedKVBatch()
        self.sequences: list[Sequence] = []


class GenerationEngine:
    """A causal LM loaded from a local directory, generating for many requests at once.

    ``device``: ``auto`` | ``cpu`` | ``cuda``; ``dtype``: ``auto`` | ``float32`` | ``float16`` |
    ``bfloat16`` (see :mod:`samplerd.workers.generation.loader`); ``max_batch_size``: sequences decoded
    together (more wait, first come first served); ``batching``: see :data:`BATCHING`;
    ``finished_ttl_s``: how long events of a finished request wait for a reader before they
    are dropped. Raises :class:`~samplerd.workers.generation.loader.ModelLoadError` when the directory
    holds no loadable model.
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto", *,
                 max_batch_size: int = 32, batching: str = "auto", finished_ttl_s: float = 60.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self._loaded: LoadedModel = load_model(model_dir, device, dtype)
        self._model = self._loaded.model
        self._tokenizer = self._loaded.tokenizer
        self._device = self._loaded.device
        self._max_batch_size = max_batch_size
        self._finished_ttl_s = finished_ttl_s
        accepted = inspect.signature(self._model.forward).parameters
        self._keeps_logits = "logits_to_keep" in accepted
        # transformers >= 5.2x names the cache argument ``cache``; older releases ``past_key_values``.
        self._cache_argument = "cache" if "cache" in accepted else "past_key_values"
        self._tokenizer_lock = threading.Lock()
        self._vocab_size, padding_ok = self._probe()
        if batching == "padded" and not padding_ok:
            raise ValueError("this model's KV cache cannot be padded (sliding-window or recurrent layers); "
                             "use batching='solo' or 'auto'")
        if batching == "auto":
            batching = "padded" if padding_ok else "solo"
        self._batching = batching
        self.info = ModelInfo(
            model_dir=str(model_dir), architecture=type(self._model).__name__, device=str(self._device),
            dtype=str(self._loaded.dtype).removeprefix("torch."), vocab_size=self._vocab_size,
            max_positions=self._loaded.max_positions, eos_token_ids=self._loaded.eos_token_ids,
            batching=self._batching)

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._inbox: deque[Sequence] = deque()
        self._cancels: set[str] = set()
        self._outboxes: dict[str, _Outbox] = {}
        # The feed: events of the requests submitted with feed=True (their ids in _feed_live).
        self._feed: deque[GenerationEvent] = deque()
        self._feed_ready = threading.Condition(self._lock)
        self._feed_live: set[str] = set()
        self._feed_read_at = time.monotonic()
        self._step_lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._batches: list[_RunningBatch] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count()

    # ----------------------------------------------------------------- requests

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (a transformers tokenizer)."""
        return self._tokenizer

    def submit(self, request: GenerationRequest, *, feed: bool = False) -> str:
        """Queue a request; return its id. Raises InvalidGenerationRequest (a SamplingError)
        when it cannot run on this model. With ``feed`` its events go to the feed
        (:meth:`poll_feed`) instead of an outbox of its own (:meth:`poll`)."""
        prompt_ids = self._prompt_ids(request)
        self._check(request, prompt_ids)
        with self._lock:
            request_id = request.request_id or f"gen-{uuid.uuid4().hex[:12]}-{next(self._ids)}"
            if request_id in self._outboxes or request_id in self._feed_live:
                raise InvalidGenerationRequest("request_id", f"request_id {request_id!r} is already in use")
            sequence = Sequence(request_id, request, prompt_ids, self._decode, self._loaded.eos_token_ids,
                                self._loaded.max_positions)
            if feed:
                self._feed_live.add(request_id)
            else:
                self._outboxes[request_id] = _Outbox(self._lock)
            self._inbox.append(sequence)
            self._wakeup.notify_all()
        return request_id

    def cancel(self, request_id: str) -> bool:
        """Ask a request to stop; it ends with ``cancelled`` at the next step and frees its slot.

        Returns False when the request is unknown or already finished.
        """
        with self._lock:
            outbox = self._outboxes.get(request_id)
            live = request_id in self._feed_live or (outbox is not None and outbox.finished_at is None)
            if not live:
                return False
            self._cancels.add(request_id)
            self._wakeup.notify_all()
            return True

    def poll(self, request_id: str, timeout_s: float = 0.0) -> list[GenerationEvent]:
        """The request's events not read yet, waiting up to ``timeout_s`` for at least one.

        After the list that holds the :class:`FinishEvent` the request is forgotten, and a
        further poll raises :class:`UnknownRequestError`.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            outbox = self._outboxes.get(request_id)
            if outbox is None:
                raise UnknownRequestError(request_id)
            while not outbox.events:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                outbox.ready.wait(left)
            events = list(outbox.events)
            outbox.events.clear()
            if isinstance(events[-1], FinishEvent):
                del self._outboxes[request_id]
            return events

    def poll_feed(self, timeout_s: float = 0.0) -> list[GenerationEvent]:
        """The events of every request submitted with ``feed=True`` not read yet, in the order
        they were produced, waiting up to ``timeout_s`` for at least one. A request's
        :class:`FinishEvent` is its last; after it the request is forgotten."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._feed_read_at = time.monotonic()
            while not self._feed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._feed_ready.wait(left)
            events = list(self._feed)
            self._feed.clear()
            self._feed_read_at = time.monotonic()
            return events

    def stream(self, request: GenerationRequest, poll_timeout_s: float = 1.0) -> Iterator[GenerationEvent]:
        """Submit ``request`` and yield its events as they come; when no background loop runs,
        the caller's thread drives the engine. Closing the iterator early cancels the request."""
        request_id = self.submit(request)
        finished = False
        try:
            while not finished:
                if self.running:
                    events = self.poll(request_id, poll_timeout_s)
                else:
                    events = self.poll(request_id, 0.0)
                    if not events:
                        self.step()
                for event in events:
                    finished = isinstance(event, FinishEvent)
                    yield event
        finally:
            if not finished:
                self.cancel(request_id)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run ``request`` to the end and return all its events."""
        events = list(self.stream(request))
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        finish = events[-1]
        assert isinstance(finish, FinishEvent)
        return GenerationResult(tokens, finish)

    def load(self) -> dict[str, int]:
        """Requests running (in the batch), waiting for a slot, and submitted but not yet seen."""
        with self._lock:
            inbox = len(self._inbox)
        return {"running": sum(len(b.sequences) for b in self._batches), "waiting": len(self._waiting),
                "submitted": inbox}

    # ----------------------------------------------------------------- the loop

    @property
    def running(self) -> bool:
        """Whether the background decode loop runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Run the decode loop in a background thread (idempotent)."""
        if self.running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()

    def stop(self, cancel: bool = True) -> None:
        """Stop the background loop; with ``cancel`` every live request ends as ``cancelled``."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if cancel:
            with self._lock:
                self._cancels.update(rid for rid, box in self._outboxes.items() if box.finished_at is None)
                self._cancels.update(self._feed_live)
            self.step()

    def has_work(self) -> bool:
        """Whether a step would do anything."""
        with self._lock:
            pending = bool(self._inbox or self._cancels)
        return pending or bool(self._waiting) or any(b.sequences for b in self._batches)

    def run_until_idle(self) -> None:
        """Step until every submitted request has finished (for callers without the thread)."""
        while self.has_work():
            self.step()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._inbox and not self._cancels and not self._busy():
                    self._wakeup.wait(1.0)
                    self._drop_stale_outboxes()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # step() fails requests itself; never let the thread die
                _log.exception("generation step failed")

    def _busy(self) -> bool:
        return bool(self._waiting) or any(b.sequences for b in self._batches)

    def step(self) -> int:
        """One iteration of the loop (see the module docstring); returns the tokens sampled."""
        with self._step_lock, torch.inference_mode():
            self._take_inbox()
            admitted = self._admit()
            rows: list[Sequence] = []
            logits: list[torch.Tensor] = []
            for batch in list(self._batches):
                try:
                    logits.append(self._decode_step(batch))
                    rows.extend(batch.sequences)
                except Exception as error:
                    self._fail(batch.sequences, error)
                    self._batches.remove(batch)
            joining: list[tuple[Sequence, Any]] = []
            for sequence in admitted:
                try:
                    cache, last = self._prefill(sequence)
                except Exception as error:
                    self._fail([sequence], error)
                    continue
                joining.append((sequence, cache))
                logits.append(last)
                rows.append(sequence)
            if not rows:
                return 0
            sampled = self._sample(torch.cat(logits, dim=0), rows)
            events: list[tuple[Sequence, list[GenerationEvent]]] = []
            for sequence, row in zip(rows, sampled, strict=True):
                try:
                    if isinstance(row, Exception):
                        raise row
                    events.append((sequence, sequence.take(row)))
                except Exception as error:  # this sequence fails; the others go on
                    _log.error("generation failed for request %s: %s", sequence.request_id, _describe(error))
                    events.append((sequence, [sequence.finish("error", error=_describe(error))]))
            self._rebatch(joining)
            self._deliver(events)
            return len(rows)

    # ----------------------------------------------------------------- step parts

    def _take_inbox(self) -> None:
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            cancels, self._cancels = self._cancels, set()
            self._drop_stale_outboxes()
        if not cancels:
            return
        cancelled = [s for s in self._waiting if s.request_id in cancels]
        self._waiting = deque(s for s in self._waiting if s.request_id not in cancels)
        for batch in self._batches:
            keep = [i for i, s in enumerate(batch.sequences) if s.request_id not in cancels]
            cancelled.extend(s for s in batch.sequences if s.request_id in cancels)
            self._keep(batch, keep)
        self._batches = [b for b in self._batches if b.sequences]
        self._deliver([(s, [s.finish("cancelled")]) for s in cancelled])

    def _admit(self) -> list[Sequence]:
        room = self._max_batch_size - sum(len(b.sequences) for b in self._batches)
        admitted = []
        while self._waiting and room > 0:
            admitted.append(self._waiting.popleft())
            room -= 1
        return admitted

    def _prefill(self, sequence: Sequence) -> tuple[Any, torch.Tensor]:
        """The prompt in one forward pass with a fresh cache; returns the cache and the last logits [1, V]."""
        from transformers.cache_utils import DynamicCache

        ids = torch.tensor([sequence.prompt_ids], device=self._device)
        positions = torch.arange(ids.shape[1], device=self._device)[None, :]
        logits, cache = self._forward(ids, torch.ones_like(ids), positions, DynamicCache(config=self._model.config))
        return cache, logits[:, -1, :]

    def _decode_step(self, batch: _RunningBatch) -> torch.Tensor:
        """One token per row through the batch's cache; returns the logits [B, V]."""
        ids = torch.tensor([[s.last_token] for s in batch.sequences], device=self._device)
        mask, positions = batch.kv.decode_inputs(self._device)
        logits, cache = self._forward(ids, mask, positions, batch.kv.cache)
        batch.kv.advanced(cache)
        return logits[:, -1, :]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any) -> tuple[torch.Tensor, Any]:
        """One forward pass; returns the logits and the (updated) cache."""
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        extra[self._cache_argument] = cache
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        new_cache = getattr(out, "cache", None)
        return out.logits, new_cache if new_cache is not None else out.past_key_values

    def _sample(self, logits: torch.Tensor, rows: list[Sequence]) -> list[SampledRow | Exception]:
        params = [s.params for s in rows]
        steps = [s.step for s in rows]
        states = [s.state for s in rows]
        try:
            return _rows(sample(logits, params, steps, states))
        except Exception:  # isolate the row(s) at fault
            out: list[SampledRow | Exception] = []
            for i in range(len(rows)):
                try:
                    out.extend(_rows(sample(logits[i:i + 1], params[i:i + 1], steps[i:i + 1], states[i:i + 1])))
                except Exception as error:
                    out.append(error)
            return out

    def _rebatch(self, joining: list[tuple[Sequence, Any]]) -> None:
        """Drop finished rows, then let the newly prefilled sequences join."""
        for batch in self._batches:
            self._keep(batch, [i for i, s in enumerate(batch.sequences) if s.finished is None])
        self._batches = [b for b in self._batches if b.sequences]
        joining = [(s, c) for s, c in joining if s.finished is None]
        if not joining:
            return
        if self._batching == "solo":
            for sequence, cache in joining:
                batch = _RunningBatch()
                batch.kv.add([cache], [len(sequence.prompt_ids)])
                batch.sequences.append(sequence)
                self._batches.append(batch)
            return
        if not self._batches:
            self._batches.append(_RunningBatch())
        batch = self._batches[0]
        batch.kv.add([c for _, c in joining], [len(s.prompt_ids) for s, _ in joining])
        batch.sequences.extend(s for s, _ in joining)

    @staticmethod
    def _keep(batch: _RunningBatch, rows: list[int]) -> None:
        batch.kv.keep(rows)
        batch.sequences = [batch.sequences[i] for i in rows]

    def _fail(self, sequences: list[Sequence], error: Exception) -> None:
        _log.error("generation failed for %d request(s): %s", len(sequences), _describe(error))
        self._deliver([(s, [s.finish("error", error=_describe(error))]) for s in sequences])

    def _deliver(self, events: list[tuple[Sequence, list[GenerationEvent]]]) -> None:
        if not events:
            return
        now = time.monotonic()
        with self._lock:
            for sequence, produced in events:
                if sequence.request_id in self._feed_live:
                    self._feed.extend(produced)
                    if sequence.finished is not None:
                        self._feed_live.discard(sequence.request_id)
                    self._feed_ready.notify_all()
                    continue
                outbox = self._outboxes.get(sequence.request_id)
                if outbox is None:
                    continue
                outbox.events.extend(produced)
                if sequence.finished is not None:
                    outbox.finished_at = now
                outbox.ready.notify_all()

    def _drop_stale_outboxes(self) -> None:
        """Forget finished requests nobody read within ``finished_ttl_s``, and when nobody read
        the feed for as long, its events, cancelling its live requests (caller holds the lock)."""
        limit = time.monotonic() - self._finished_ttl_s
        if self._feed and self._feed_read_at < limit:
            _log.warning("nobody read the feed for %.0f s: its %d requests are cancelled",
                         self._finished_ttl_s, len(self._feed_live))
            self._feed.clear()
            self._cancels.update(self._feed_live)
            self._feed_read_at = time.monotonic()
        for request_id in [r for r, box in self._outboxes.items()
                           if box.finished_at is not None and box.finished_at < limit]:
            del self._outboxes[request_id]

    # ----------------------------------------------------------------- tokenizer and checks

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        with self._tokenizer_lock:
            ids = list(self._tokenizer(request.prompt)["input_ids"])
        if not ids:
            bos = getattr(self._tokenizer, "bos_token_id", None)
            if bos is None:
                raise InvalidGenerationRequest("prompt", "prompt is empty and the tokenizer has no BOS token "
                                               "to start from")
            ids = [int(bos)]
        return ids

    def _check(self, request: GenerationRequest, prompt_ids: list[int]) -> None:
        vocab = self._vocab_size
        bad = next((t for t in prompt_ids if t >= vocab), None)
        if bad is not None:
            raise InvalidGenerationRequest("prompt_token_ids", f"prompt_token_ids holds {bad}, outside the "
                                           f"vocabulary (V={vocab})")
        limit = self._loaded.max_positions
        if limit is not None and len(prompt_ids) > limit:
            raise InvalidGenerationRequest("prompt", f"prompt has {len(prompt_ids)} tokens; the model accepts "
                                           f"at most {limit}")
        for token, _ in request.params.logit_bias:
            if token >= vocab:
                raise InvalidGenerationRequest("logit_bias", f"logit_bias token {token} is outside the "
                                               f"vocabulary (V={vocab})")
        for token in request.params.dry_sequence_breakers:
            if token >= vocab:
                raise InvalidGenerationRequest("dry_sequence_breakers", f"dry_sequence_breakers token {token} "
                                               f"is outside the vocabulary (V={vocab})")

    def _probe(self) -> tuple[int, bool]:
        """Prefill one token: the logits' width (the vocabulary) and whether the cache can be padded."""
        from transformers.cache_utils import DynamicCache

        start = self._loaded.eos_token_ids[0] if self._loaded.eos_token_ids else 0
        ids = torch.tensor([[start]], device=self._device)
        with torch.inference_mode():
            logits, cache = self._forward(ids, torch.ones_like(ids), torch.zeros_like(ids),
                                          DynamicCache(config=self._model.config))
        return int(logits.shape[-1]), supports_padding(cache)


def _rows(out: SampleOutput) -> list[SampledRow]:
    """A SampleOutput as one :class:`SampledRow` per row (one transfer per field)."""
    stats = out.stats
    token_ids = out.token_ids[:, 0].tolist()
    columns = [out.logprobs[:, 0].tolist(), stats.surprise[:, 0].tolist(), stats.entropy.tolist(),
               stats.varentropy.tolist(), stats.truncated_entropy.tolist(), stats.kept_tokens.tolist(),
               stats.kept_mass.tolist(), stats.top_k_entropy.tolist(), stats.top_k_mass.tolist()]
    mu = out.mirostat_mu.tolist()
    top: list[tuple[tuple[int, float], ...]] = [()] * len(token_ids)
    if out.top_logprobs is not None:
        ids, logprobs = out.top_logprobs[0].tolist(), out.top_logprobs[1].tolist()
        top = [tuple((t, lp) for t, lp in zip(i, lp_row, strict=True) if t >= 0)
               for i, lp_row in zip(ids, logprobs, strict=True)]
    return [SampledRow(token_ids[r], *(float(c[r]) for c in columns[:5]), int(columns[5][r]),
                       *(float(c[r]) for c in columns[6:]), out.strategies[r], float(mu[r]), top[r])
            for r in range(len(token_ids))]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"

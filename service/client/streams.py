"""The streaming calls of :class:`samplerd.service.client.SamplerClient`: ``Generate`` as an iterator
of tokens, ``SampleStream`` as a session object with one method per message.

>>> for token in client.generate("Once upon a time", max_tokens=16, top_p=0.9, seed=7):
...     print(token.text, end="")                 # a samplerd.v1.GeneratedToken
>>> with client.session({"a": {}, "b": {"temperature": 0.7}}, top_p=0.9, seed=7) as session:
...     result = session.step(logits)             # logits [2, V]: rows of "a", "b"
...     result.rows["a"].token_ids
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from samplerd.service.client import params as client_params
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

if TYPE_CHECKING:
    from samplerd.service.client import RowSample


class GenerateStream:
    """The tokens of one ``Generate`` call, in order (``samplerd.v1.GeneratedToken`` messages).

    After the last token, :attr:`finish` holds the ``GenerateFinish`` message (why it stopped,
    the whole text, the session statistics). Errors are the call's ``grpc.RpcError``.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self.finish: pb.GenerateFinish | None = None

    def __iter__(self) -> Iterator[pb.GeneratedToken]:
        for message in self._call:
            if message.HasField("token"):
                yield message.token
            elif message.HasField("finish"):
                self.finish = message.finish

    @property
    def reason(self) -> str | None:
        """Why the generation stopped (``LENGTH``, ``STOP``, ``EOS``, ``CANCELLED``); None
        before the stream ended."""
        return None if self.finish is None else pb.GenerateFinish.FinishReason.Name(self.finish.reason)

    def text(self) -> str:
        """Read the stream to its end; the generated text."""
        for _token in self:
            pass
        return self.finish.output_text if self.finish is not None else ""

    def cancel(self) -> None:
        """Stop the generation (the server frees its batch slot)."""
        self._call.cancel()


def generate_request(prompt: str | Sequence[int], *, max_tokens: int | None = None, stop: Iterable[str] = (),
                     stop_token_ids: Iterable[int] = (), ignore_eos: bool = False, request_id: str = "",
                     **params: Any) -> pb.GenerateRequest:
    """The ``GenerateRequest`` for a prompt (text, or token ids) and sampling parameters."""
    request = pb.GenerateRequest(params=client_params.to_proto(params), stop=list(stop),
                                 stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos, request_id=request_id)
    if isinstance(prompt, str):
        request.prompt_text = prompt
    else:
        request.prompt_token_ids.token_ids.extend(int(t) for t in prompt)
    if max_tokens is not None:
        request.max_tokens = max_tokens
    return request


@dataclass(frozen=True)
class SessionStep:
    """The answer to one step: each sampled sequence's row, and the session's statistics."""

    step: int
    rows: dict[str, RowSample]
    results: list[pb.SequenceResult]  # the wire answer per sequence (paths, per-sequence statistics)
    statistics: pb.SessionStatistics


def open_message(sequences: Mapping[str, Mapping[str, Any]] | Sequence[str],
                 prompts: Mapping[str, Sequence[int]] | None, session_id: str,
                 params: Mapping[str, Any]) -> pb.SessionOpen:
    """The ``SessionOpen`` of a session: ``sequences`` are ids, or ids mapped to their own parameters."""
    own = sequences if isinstance(sequences, Mapping) else {sequence_id: {} for sequence_id in sequences}
    message = pb.SessionOpen(session_id=session_id, params=client_params.to_proto(dict(params)))
    for sequence_id, sequence_params in own.items():
        message.sequences.add(sequence_id=sequence_id,
                              params=client_params.to_proto(sequence_params, f"sequences[{sequence_id}]"),
                              prompt_token_ids=list((prompts or {}).get(sequence_id, ())))
    return message


def step_message(tensor: pb.Tensor | None, sequence_ids: Sequence[str],
                 forced: Mapping[str, Iterable[int]] | None) -> pb.SampleStreamRequest:
    """The ``SessionStep`` request: logits (already encoded) for ``sequence_ids``, and/or forced tokens."""
    message = pb.SessionStep()
    if tensor is not None:
        message.sequence_ids.extend(sequence_ids)
        message.logits.CopyFrom(tensor)
    for sequence_id, tokens in (forced or {}).items():
        message.forced.add(sequence_id=sequence_id, token_ids=[int(t) for t in tokens])
    return pb.SampleStreamRequest(step=message)


def session_step(answer: pb.SessionStepResult) -> SessionStep:
    """A :class:`SessionStep` from the wire answer to one step."""
    from samplerd.service.client import decode_row  # the client module imports this one

    rows = {result.sequence_id: decode_row(result.row) for result in answer.sequences}
    return SessionStep(step=answer.step, rows=rows, results=list(answer.sequences), statistics=answer.statistics)


class SampleSession:
    """One ``SampleStream`` call: :meth:`step` sends one step and returns its answer,
    :meth:`close` (or leaving the ``with`` block) ends the session. Not thread-safe.

    ``encode``: how logits become a ``Tensor`` (default inline bytes; a client with
    ``shared_memory=True`` passes its region's)."""

    def __init__(self, stub: Any, sequences: Mapping[str, Mapping[str, Any]] | Sequence[str], *,
                 prompts: Mapping[str, Sequence[int]] | None = None, session_id: str = "",
                 timeout: float | None = None, encode: Callable[[Any], pb.Tensor] | None = None,
                 **params: Any) -> None:
        from samplerd.service.client import encode_logits  # the client module imports this one

        self._encode = encode or encode_logits
        self._requests: queue.Queue = queue.Queue()
        self._closed: pb.SessionClosed | None = None
        message = open_message(sequences, prompts, session_id, params)
        self.sequence_ids = [sequence.sequence_id for sequence in message.sequences]
        self._call = stub.SampleStream(iter(self._requests.get, None), timeout=timeout)
        self.opened = self._send(pb.SampleStreamRequest(open=message)).opened

    def _send(self, request: pb.SampleStreamRequest) -> pb.SampleStreamResponse:
        self._requests.put(request)
        try:
            return next(self._call)
        except StopIteration:
            raise RuntimeError("the server ended the session stream") from None

    def step(self, logits: Any = None, sequence_ids: Sequence[str] | None = None,
             forced: Mapping[str, Iterable[int]] | None = None) -> SessionStep:
        """One step: ``logits`` [R, V] (numpy or torch) for ``sequence_ids`` (default: every
        sequence, in the order given at open), and/or tokens the caller chose itself."""
        if self._closed is not None:
            raise RuntimeError("the session is closed")
        tensor = self._encode(logits) if logits is not None else None
        request = step_message(tensor, self.sequence_ids if sequence_ids is None else sequence_ids, forced)
        return session_step(self._send(request).step)

    def close(self) -> pb.SessionClosed:
        """End the session; its final statistics (``SessionClosed``). Closing twice is a no-op."""
        if self._closed is None:
            try:
                self._closed = self._send(pb.SampleStreamRequest(close=pb.SessionClose())).closed
            finally:
                self._requests.put(None)  # half-close
        return self._closed

    def __enter__(self) -> SampleSession:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._requests.put(None)
            self._call.cancel()


class AsyncSampleSession:
    """:class:`SampleSession` on ``grpc.aio``: ``async with client.session(...) as session``,
    ``await session.step(logits)``, ``await session.close()``. One step at a time.

    ``lease``: an async context manager factory that puts logits in the client's shared-memory
    region for the duration of the step (``AsyncSamplerClient(shared_memory=True)``); else inline."""

    def __init__(self, stub: Any, sequences: Mapping[str, Mapping[str, Any]] | Sequence[str], *,
                 prompts: Mapping[str, Sequence[int]] | None = None, session_id: str = "",
                 timeout: float | None = None, lease: Callable[[Any], Any] | None = None, **params: Any) -> None:
        self._message = open_message(sequences, prompts, session_id, params)
        self.sequence_ids = [sequence.sequence_id for sequence in self._message.sequences]
        self._stub = stub
        self._timeout = timeout
        self._lease = lease
        self._call: Any = None
        self._closed: pb.SessionClosed | None = None
        self.opened: pb.SessionOpened | None = None

    async def open(self) -> AsyncSampleSession:
        """Start the stream and open the session (``async with`` does it)."""
        self._call = self._stub.SampleStream(timeout=self._timeout)
        self.opened = (await self._send(pb.SampleStreamRequest(open=self._message))).opened
        return self

    async def _send(self, request: pb.SampleStreamRequest) -> pb.SampleStreamResponse:
        await self._call.write(request)
        answer = await self._call.read()
        if answer is grpc.aio.EOF:
            raise RuntimeError("the server ended the session stream")
        return answer

    async def step(self, logits: Any = None, sequence_ids: Sequence[str] | None = None,
                   forced: Mapping[str, Iterable[int]] | None = None) -> SessionStep:
        """One step, as :meth:`SampleSession.step`."""
        from samplerd.service.client import encode_logits

        if self._closed is not None or self._call is None:
            raise RuntimeError("the session is not open")
        ids = self.sequence_ids if sequence_ids is None else sequence_ids
        if logits is None or self._lease is None:
            tensor = encode_logits(logits) if logits is not None else None
            return session_step((await self._send(step_message(tensor, ids, forced))).step)
        async with self._lease(logits) as tensor:
            return session_step((await self._send(step_message(tensor, ids, forced))).step)

    async def close(self) -> pb.SessionClosed:
        """End the session; its final statistics. Closing twice is a no-op."""
        if self._closed is None:
            try:
                self._closed = (await self._send(pb.SampleStreamRequest(close=pb.SessionClose()))).closed
            finally:
                await self._call.done_writing()
        return self._closed

    async def __aenter__(self) -> AsyncSampleSession:
        return await self.open()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            await self.close()
        elif self._call is not None:
            self._call.cancel()

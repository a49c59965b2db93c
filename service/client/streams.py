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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


class SampleSession:
    """One ``SampleStream`` call: :meth:`step` sends one step and returns its answer,
    :meth:`close` (or leaving the ``with`` block) ends the session. Not thread-safe."""

    def __init__(self, stub: Any, sequences: Mapping[str, Mapping[str, Any]] | Sequence[str], *,
                 prompts: Mapping[str, Sequence[int]] | None = None, session_id: str = "",
                 timeout: float | None = None, **params: Any) -> None:
        from samplerd.service.client import encode_logits  # the client module imports this one

        self._encode = encode_logits
        self._requests: queue.Queue = queue.Queue()
        self._closed: pb.SessionClosed | None = None
        own = sequences if isinstance(sequences, Mapping) else {sequence_id: {} for sequence_id in sequences}
        self.sequence_ids = list(own)
        message = pb.SessionOpen(session_id=session_id, params=client_params.to_proto(params))
        for sequence_id, sequence_params in own.items():
            message.sequences.add(sequence_id=sequence_id,
                                  params=client_params.to_proto(sequence_params, f"sequences[{sequence_id}]"),
                                  prompt_token_ids=list((prompts or {}).get(sequence_id, ())))
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
        from samplerd.service.client import decode_row

        if self._closed is not None:
            raise RuntimeError("the session is closed")
        message = pb.SessionStep()
        if logits is not None:
            message.sequence_ids.extend(self.sequence_ids if sequence_ids is None else sequence_ids)
            message.logits.CopyFrom(self._encode(logits))
        for sequence_id, tokens in (forced or {}).items():
            message.forced.add(sequence_id=sequence_id, token_ids=[int(t) for t in tokens])
        answer = self._send(pb.SampleStreamRequest(step=message)).step
        rows = {result.sequence_id: decode_row(result.row) for result in answer.sequences}
        return SessionStep(step=answer.step, rows=rows, results=list(answer.sequences), statistics=answer.statistics)

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


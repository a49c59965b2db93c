"""Incremental detokenisation with stop strings: token ids in, text pieces out.

The text of a generation is ``decode(generated ids)``; each token releases the new part of it.
Decoding everything at every step costs O(n) per token, so this uses the sliding window of
Hugging Face's text-generation-inference and vLLM: ``decode(ids[prefix:])`` minus
``decode(ids[prefix:read])``, where ``prefix`` only moves to points where the decoded text
ended on a complete character. That is the same text for byte-level BPE and SentencePiece
tokenizers (a token may complete a multi-byte character begun by earlier tokens: nothing is
released while the decoded text ends in U+FFFD). The window starts with a few prompt tokens,
so the first generated token keeps a leading space that SentencePiece drops at the start of
a decode.

Stop strings: the generation stops as soon as its text contains one, and the text is cut
before it. Text that might still become the start of a stop string is held back until it
is certain it is not one, so the released pieces never need to be taken back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

_REPLACEMENT = "\ufffd"
#: Prompt tokens decoded in front of the generated ones (enough for any tokenizer's merges).
_PROMPT_CONTEXT = 5


class Decoder(Protocol):
    """What is needed of a tokenizer: ``decode(ids) -> str``, special tokens skipped."""

    def __call__(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Piece:
    """What one token released: ``text``, and the stop string it completed (None if none)."""

    text: str
    stop: str | None = None


class IncrementalDetokenizer:
    """The text of one generation, token by token, with stop strings."""

    def __init__(self, decode: Decoder, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = decode(self._ids)
        self._stop = tuple(stop)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self.text = ""  # everything decoded so far (complete characters only)
        self.emitted = 0  # how much of ``text`` has been released
        self.stopped: str | None = None

    def add(self, token_id: int) -> Piece:
        """Add one generated token; return the text it releases and the stop string it hit."""
        if self.stopped is not None:
            raise RuntimeError("the generation already stopped")
        self._ids.append(int(token_id))
        window = self._decode(self._ids[self._prefix:])
        if len(window) > len(self._prefix_text) and not window.endswith(_REPLACEMENT):
            self.text += window[len(self._prefix_text):]
            self._prefix, self._read = self._read, len(self._ids)
            self._prefix_text = self._decode(self._ids[self._prefix:self._read])
        return self._release()

    def flush(self) -> str:
        """Release everything still held back (the generation ended without a stop string).

        Bytes that never formed a complete character are decoded as U+FFFD, as a full
        decode does.
        """
        if self.stopped is None:
            window = self._decode(self._ids[self._prefix:])
            if len(window) > len(self._prefix_text):
                self.text += window[len(self._prefix_text):]
                self._prefix, self._read = len(self._ids), len(self._ids)
                self._prefix_text = ""
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece

    @property
    def output_text(self) -> str:
        """The generated text so far (cut before the stop string when one was hit)."""
        return self.text

    def _release(self) -> Piece:
        if not self._stop:
            piece = self.text[self.emitted:]
            self.emitted = len(self.text)
            return Piece(piece)
        # A new stop string can only end in the new text; it may start up to longest-1 earlier.
        start = max(0, self.emitted - self._longest_stop + 1)
        hit, where = None, -1
        for s in self._stop:
            at = self.text.find(s, start)
            if at != -1 and (where == -1 or at < where):
                hit, where = s, at
        if hit is not None:
            self.text = self.text[:where]
            self.stopped = hit
            piece = self.text[self.emitted:]
            self.emitted = len(self.text)
            return Piece(piece, hit)
        safe = len(self.text) - self._held_back()
        piece = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return Piece(piece)

    def _held_back(self) -> int:
        """Length of the longest end of the text that is the start of a stop string."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

"""Incremental detokenisation: whole characters only, stop strings held back and cut."""

from __future__ import annotations

from samplerd.workers.generation.detokenizer import IncrementalDetokenizer


def chars(ids) -> str:
    """A character-level 'tokenizer': token id = code point."""
    return "".join(chr(i) for i in ids)


def feed(detokenizer: IncrementalDetokenizer, text: str) -> list[str]:
    pieces = []
    for c in text:
        piece = detokenizer.add(ord(c))
        pieces.append(piece.text)
        if piece.stop is not None:
            break
    return pieces


def test_multibyte_characters_are_released_whole(engine):
    text = "日本語 é ü 🙂 and ö"
    ids = engine.tokenizer(text)["input_ids"]
    single = [engine.tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in single), "the test needs tokens that split characters"
    detokenizer = IncrementalDetokenizer(engine._decode, engine.tokenizer("The")["input_ids"])
    pieces = [detokenizer.add(i).text for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detokenizer.flush() == text
    assert "" in pieces  # a token that only began a character released nothing


def test_text_that_may_start_a_stop_string_is_held_back():
    detokenizer = IncrementalDetokenizer(chars, [], stop=("XYZ",))
    assert feed(detokenizer, "abXY") == ["a", "b", "", ""]
    assert detokenizer.add(ord("c")).text == "XYc"  # not the stop string after all
    assert detokenizer.add(ord("X")).text == ""
    assert detokenizer.flush() == "X"
    assert detokenizer.output_text == "abXYcX"


def test_stop_string_across_tokens_is_cut():
    detokenizer = IncrementalDetokenizer(chars, [], stop=("lo w", "zz"))
    pieces = feed(detokenizer, "hello world")
    assert "".join(pieces) == "hel" and detokenizer.stopped == "lo w"
    assert detokenizer.output_text == "hel"


def test_stop_string_inside_one_token_and_the_earliest_wins():
    vocabulary = {1: "ab", 2: "cdSTOPef", 3: "END"}
    detokenizer = IncrementalDetokenizer(lambda ids: "".join(vocabulary[i] for i in ids), [], stop=("END", "STOP"))
    assert detokenizer.add(1).text == "ab"
    piece = detokenizer.add(2)
    assert (piece.text, piece.stop) == ("cd", "STOP")
    assert detokenizer.output_text == "abcd"


def test_prompt_context_keeps_the_first_leading_space():
    """SentencePiece-like decoding drops a leading space at the start of a decode; decoding
    with prompt context keeps the space of the first generated token."""
    words = {1: "▁Hello", 2: "▁world"}

    def decode(ids):
        return "".join(words[i] for i in ids).replace("▁", " ").lstrip(" ")

    detokenizer = IncrementalDetokenizer(decode, [1])
    assert detokenizer.add(2).text == " world"

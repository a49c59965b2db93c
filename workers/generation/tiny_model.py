"""A tiny GPT-2-style causal LM and byte-level BPE tokenizer, built from nothing.

Tests and the generation benchmark need a real Hugging Face model directory without a
model hub: :func:`build_tiny_model` trains a byte-level BPE tokenizer on a few lines of
text with the ``tokenizers`` library, makes a small :class:`~transformers.GPT2LMHeadModel`
with random weights drawn from a fixed seed, and saves both with ``save_pretrained``, so
that loading goes through ``from_pretrained(dir)`` exactly as it does for a user's model.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: The special token that is BOS, EOS and padding, as in GPT-2.
END_OF_TEXT = "<|endoftext|>"

_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "A language model assigns a probability to every next token.",
    "Sampling picks one token; greedy decoding picks the most probable one.",
    "Entropy measures how uncertain the model is about the next token.",
    "Temperature sharpens or flattens the distribution before truncation.",
    "Nucleus sampling keeps the smallest set of tokens whose mass exceeds p.",
    "Les modèles de langue aiment les accents: é, è, à, ç, ü, ö — et les emojis 🙂🚀.",
    "日本語のテキストも少しだけ。数字 0123456789 and symbols {}[]()<>!?",
)


def build_tiny_model(
    directory: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    initializer_range: float = 0.3,
) -> Path:
    """Build and save a tiny GPT-2 model and its tokenizer in ``directory``; return the path.

    The weights are random (``torch.manual_seed(seed)``), with a wide ``initializer_range``
    so that the next-token distributions are peaked and varied rather than flat. The same
    arguments always give the same model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        initializer_range=initializer_range,
        bos_token_id=end_id,
        eos_token_id=end_id,
        pad_token_id=end_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

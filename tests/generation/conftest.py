"""Fixtures for the generation tests: a tiny GPT-2 model directory and engines on it.

The model is built once per test session (random weights from a fixed seed, a byte-level
BPE tokenizer trained on a few lines), saved with ``save_pretrained`` and loaded back with
``from_pretrained(dir)``, the path a user's model takes. Torch runs one intra-op thread:
on a shared two-core machine more threads make every small operation wait for the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from samplerd.workers.generation import GenerationEngine
from samplerd.workers.generation.tiny_model import build_tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run torch with one intra-op thread in these modules (restored after each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny GPT-2 (2 layers, 64 wide, 256 positions) and its 400-token tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """The tiny model loaded with plain transformers, for reference loops."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    return model


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> GenerationEngine:
    """An engine on the tiny model, driven synchronously by the tests (no background thread)."""
    return GenerationEngine(tiny_model_dir, device="cpu", dtype="float32")

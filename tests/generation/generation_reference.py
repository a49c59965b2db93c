"""Reference decoding loops on plain transformers: full forward passes, no KV cache."""

from __future__ import annotations

import torch

from samplerd.sampling import SamplingParams, SequenceState, advance, sample


@torch.inference_mode()
def greedy_loop(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding the plain way: the whole sequence through the model, argmax, repeat."""
    ids = list(prompt_ids)
    for _ in range(max_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids):]


@torch.inference_mode()
def sampler_loop(model, prompt_ids: list[int], params: SamplingParams,
                 max_tokens: int) -> tuple[list[int], list[float]]:
    """The sampler applied offline: full forward, ``sample`` with the step and the sequence
    state (history = prompt + generated, mirostat mu), ``advance``. Returns tokens and mu."""
    ids = list(prompt_ids)
    state = SequenceState(history=tuple(prompt_ids))
    mus = []
    for step in range(max_tokens):
        logits = model(torch.tensor([ids])).logits[:, -1, :]
        out = sample(logits, params, step, [state])
        token = int(out.token_ids[0, 0])
        mu = float(out.mirostat_mu[0])
        state = advance(state, token, mu)
        ids.append(token)
        mus.append(mu)
    return ids[len(prompt_ids):], mus

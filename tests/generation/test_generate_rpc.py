"""Generate end to end: a real ``samplerd serve --model DIR`` process, real Ray, a real tiny GPT-2.

Everything goes through gRPC: greedy output against a plain transformers loop, seeded
reproducibility, stop strings and stop tokens, the order of the stream, cancellation and
deadlines freeing the model, request validation, and the metrics.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.client import field_violations
from samplerd.service.client.params import to_proto
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc
from samplerd.workers.generation.tiny_model import build_tiny_model

pytestmark = pytest.mark.e2e

#: Context length of the test model: long enough for a generation that takes seconds.
CONTEXT = 4096
#: The server's --model-max-tokens.
MAX_TOKENS_LIMIT = 4000

Finish = pb.GenerateFinish


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny GPT-2 (2 layers, 64 wide, CONTEXT positions) and its tokenizer, built here
    (random weights from a fixed seed, a byte-level BPE tokenizer trained on a few lines)."""
    return build_tiny_model(tmp_path_factory.mktemp("generate-tiny-gpt2"), n_positions=CONTEXT)


@pytest.fixture(scope="module")
def lm_server(model_dir: Path, ray_address: str) -> Iterator[ServerProcess]:
    """A real ``samplerd serve --model DIR`` child with one CPU sampler worker, joined to the test
    session's Ray instance (tests/conftest.py), SERVING."""
    process = start_server(
        "--workers", "1", "--device", "cpu", "--ray-address", ray_address, "--model", str(model_dir),
        "--model-device", "cpu", "--model-max-tokens", str(MAX_TOKENS_LIMIT), "--grace-seconds", "5",
        env={"PYTHONFAULTHANDLER": "1"},
    )
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def stub(lm_server: ServerProcess) -> Iterator[pb_grpc.SamplerStub]:
    """A Sampler stub on the model server."""
    with grpc.insecure_channel(lm_server.target) as channel:
        yield pb_grpc.SamplerStub(channel)


def generate(stub: pb_grpc.SamplerStub, timeout: float = 60, **fields) -> tuple[list[pb.GeneratedToken], Finish]:
    """One Generate call: its token messages and its finish message (checked to come last, once)."""
    params = fields.pop("params", None)
    if isinstance(params, dict):
        params = to_proto(params)
    ids = fields.pop("prompt_token_ids", None)
    request = pb.GenerateRequest(params=params, **fields)
    if ids is not None:
        request.prompt_token_ids.token_ids.extend(ids)
    request.request_id = request.request_id or "test"
    messages = list(stub.Generate(request, timeout=timeout))
    assert all(m.request_id == request.request_id for m in messages)
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds == ["token"] * (len(messages) - 1) + ["finish"]
    return [m.token for m in messages[:-1]], messages[-1].finish


def refused(stub: pb_grpc.SamplerStub, **fields) -> grpc.RpcError:
    """The error a Generate call ends with (it must send nothing before it)."""
    with pytest.raises(grpc.RpcError) as caught:
        generate(stub, timeout=30, **fields)
    return caught.value


def metrics_text(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if found == labels:
                return float(match.group(2))
    raise KeyError(f"{name}{labels} not in /metrics")


def wait_for_idle_model(server: ServerProcess, timeout_s: float) -> float:
    """Seconds until the model runs and queues nothing and no RPC is in flight (by /metrics)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        text = metrics_text(server)
        if (metric(text, "samplerd_generate_sequences", state="running") == 0
                and metric(text, "samplerd_generate_sequences", state="waiting") == 0
                and metric(text, "samplerd_inflight_requests") == 0):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the model is still busy {timeout_s} s later:\n{metrics_text(server)}")


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """The tiny model and its tokenizer loaded with plain transformers, in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@torch.inference_mode()
def greedy_loop(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding the plain way: the whole sequence through the model, argmax, repeat."""
    ids = list(prompt_ids)
    for _ in range(max_tokens):
        ids.append(int(torch.argmax(model(torch.tensor([ids])).logits[0, -1])))
    return ids[len(prompt_ids):]


GREEDY = {"temperature": 0.0}


# -- what is generated ---------------------------------------------------------------------------


def test_greedy_generate_equals_a_plain_transformers_greedy_loop(stub, reference) -> None:
    model, tokenizer = reference
    for prompt in ("The quick brown fox", "Entropy measures"):
        prompt_ids = tokenizer(prompt)["input_ids"]
        expected = greedy_loop(model, prompt_ids, 24)
        tokens, finish = generate(stub, prompt_text=prompt, params=GREEDY, max_tokens=24, ignore_eos=True)
        assert list(finish.token_ids) == expected
        assert finish.reason == Finish.LENGTH and finish.prompt_tokens == len(prompt_ids)
        assert finish.output_text == tokenizer.decode(expected, skip_special_tokens=True)
        assert {t.strategy for t in tokens} == {"greedy"}
        # The same prompt as token ids generates the same tokens.
        _, by_ids = generate(stub, prompt_token_ids=prompt_ids, params=GREEDY, max_tokens=24, ignore_eos=True)
        assert list(by_ids.token_ids) == expected


def test_seeded_sampling_is_reproducible_and_the_seed_matters(stub) -> None:
    params = {"temperature": 1.0, "top_p": 0.95, "seed": 1234}
    runs = [generate(stub, prompt_text="A language model", params=params, max_tokens=32, ignore_eos=True)[1]
            for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].output_text == runs[1].output_text
    other = generate(stub, prompt_text="A language model", params={**params, "seed": 99}, max_tokens=32,
                     ignore_eos=True)[1]
    assert other.token_ids != runs[0].token_ids


def test_stop_strings_and_stop_tokens_stop(stub) -> None:
    params = {"temperature": 1.0, "seed": 5}
    _, full = generate(stub, prompt_text="Sampling picks", params=params, max_tokens=48, ignore_eos=True)
    text = full.output_text
    assert len(text) > 12
    stop = text[8:11]  # its first occurrence ends generation; the text is cut before it
    tokens, finish = generate(stub, prompt_text="Sampling picks", params=params, max_tokens=48, ignore_eos=True,
                              stop=["never appears \u2603", stop])
    assert finish.reason == Finish.STOP and finish.stop_string == stop
    assert finish.output_text == text[:text.index(stop)]
    assert "".join(t.text for t in tokens) + finish.text == finish.output_text
    assert len(finish.token_ids) < len(full.token_ids)

    stop_id = full.token_ids[5]
    _, by_token = generate(stub, prompt_text="Sampling picks", params=params, max_tokens=48, ignore_eos=True,
                           stop_token_ids=[stop_id])
    first = list(full.token_ids).index(stop_id)
    assert by_token.reason == Finish.STOP and by_token.stop_token_id == stop_id
    assert list(by_token.token_ids) == list(full.token_ids[:first + 1])


def test_the_stream_is_in_order_and_adds_up_to_the_finish_message(stub) -> None:
    params = {"temperature": 0.8, "top_k": 50, "seed": 3, "top_logprobs": 3}
    tokens, finish = generate(stub, prompt_text="Les modèles 🙂", params=params, max_tokens=40, ignore_eos=True,
                              request_id="order-1")
    assert [t.index for t in tokens] == list(range(40)) and len(finish.token_ids) == 40
    assert [t.token_id for t in tokens] == list(finish.token_ids)
    assert "".join(t.text for t in tokens) + finish.text == finish.output_text
    for t in tokens:
        assert t.strategy == "top_k" and t.logprob <= 0 and len(t.top_logprobs) == 3
        assert 1 <= t.stats.kept_tokens <= 50 and len(t.stats.surprise) == 1 and t.stats.entropy >= 0
        assert not t.HasField("mirostat_mu")
    stats = finish.statistics
    mean_surprise = sum(t.stats.surprise[0] for t in tokens) / 40
    mean_entropy = sum(t.stats.entropy for t in tokens) / 40
    assert stats.tokens == 40
    assert stats.log_perplexity == pytest.approx(mean_surprise, rel=1e-4)
    assert stats.mean_surprise_bits == pytest.approx(mean_surprise / 0.6931471805599453, rel=1e-4)
    assert stats.mean_entropy == pytest.approx(mean_entropy, rel=1e-4)
    assert stats.perplexity_entropy_gap == pytest.approx(mean_surprise - mean_entropy, abs=1e-4)


def test_stateful_mirostat_runs_across_steps(stub) -> None:
    tokens, finish = generate(stub, prompt_text="The", params={"mirostat": 2, "mirostat_tau": 3.0, "seed": 8},
                              max_tokens=16, ignore_eos=True)
    assert finish.reason == Finish.LENGTH
    assert {t.strategy for t in tokens} == {"mirostat_v2"} and all(t.HasField("mirostat_mu") for t in tokens)
    assert len({round(t.mirostat_mu, 6) for t in tokens}) > 1  # mu moves with the observed surprise


def test_concurrent_calls_each_get_their_own_complete_stream(stub) -> None:
    results: dict[int, tuple] = {}

    def call(i: int) -> None:
        results[i] = generate(stub, prompt_text=f"Temperature {i}", params={"seed": i}, max_tokens=20,
                              ignore_eos=True, request_id=f"c{i}")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(6))
    for i, (_, finish) in results.items():  # batched with the others, yet seeded per request
        assert finish.token_ids == generate(stub, prompt_text=f"Temperature {i}", params={"seed": i},
                                            max_tokens=20, ignore_eos=True)[1].token_ids


# -- cancellation and deadlines ------------------------------------------------------------------


def test_a_cancelled_generation_frees_the_model(lm_server, stub) -> None:
    request = pb.GenerateRequest(prompt_text="The", max_tokens=MAX_TOKENS_LIMIT, ignore_eos=True)
    call = stub.Generate(request, timeout=120)
    for received, _ in enumerate(call):
        if received == 2:
            break
    started = time.monotonic()
    call.cancel()
    wait_for_idle_model(lm_server, timeout_s=10)
    # A following generation runs at once, and alone.
    _, finish = generate(stub, prompt_text="A", max_tokens=8, ignore_eos=True, timeout=30)
    assert finish.reason == Finish.LENGTH and len(finish.token_ids) == 8
    assert time.monotonic() - started < 10
    assert metric(metrics_text(lm_server), "samplerd_requests_total", method="Generate", code="CANCELLED") >= 1


def test_a_passed_deadline_stops_the_generation(lm_server, stub) -> None:
    request = pb.GenerateRequest(prompt_text="The", max_tokens=MAX_TOKENS_LIMIT, ignore_eos=True)
    received = 0
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.Generate(request, timeout=1.0):
            received += 1
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < received < MAX_TOKENS_LIMIT
    wait_for_idle_model(lm_server, timeout_s=10)
    assert metric(metrics_text(lm_server), "samplerd_requests_total", method="Generate",
                  code="DEADLINE_EXCEEDED") >= 1


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "field"), [
    ({}, "prompt"),
    ({"prompt_text": ""}, "prompt_text"),
    ({"prompt_token_ids": []}, "prompt_token_ids"),
    ({"prompt_token_ids": [1, 10**6]}, "prompt_token_ids[1]"),
    ({"prompt_token_ids": [1, -3]}, "prompt_token_ids[1]"),
    ({"prompt_token_ids": [1] * 5000}, "prompt_token_ids"),  # longer than the model's context
    ({"prompt_text": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt_text": "x", "params": {"top_p": 1.5}}, "params.top_p"),
    ({"prompt_text": "x", "params": {"n": 2}}, "params.n"),
    ({"prompt_text": "x", "params": {"logit_bias": {10**6: 1.0}}}, "params.logit_bias"),
    ({"prompt_text": "x", "stop": ["ok", ""]}, "stop[1]"),
    ({"prompt_text": "x", "stop_token_ids": [10**6]}, "stop_token_ids[0]"),
    ({"prompt_text": "x", "request_id": "r" * 300}, "request_id"),
])
def test_invalid_requests_are_invalid_argument_naming_the_field(stub, fields: dict, field: str) -> None:
    error = refused(stub, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [f for f, _ in field_violations(error)] == [field]


def test_max_tokens_over_the_server_limit_is_resource_exhausted(stub) -> None:
    error = refused(stub, prompt_text="x", max_tokens=MAX_TOKENS_LIMIT + 1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--model-max-tokens" in error.details()


# -- operations ----------------------------------------------------------------------------------


def test_generated_tokens_are_counted_by_strategy_on_metrics(lm_server, stub) -> None:
    before = metrics_text(lm_server)
    generate(stub, prompt_text="The quick", params={"top_p": 0.9, "seed": 1}, max_tokens=12, ignore_eos=True)
    after = metrics_text(lm_server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("samplerd_generated_tokens_total", strategy="top_p") == 12
    assert delta("samplerd_rows_total", strategy="top_p") == 12
    assert delta("samplerd_surprise_nats_count", strategy="top_p") == 12
    assert delta("samplerd_entropy_nats_count", strategy="top_p", stage="truncated") == 12
    assert delta("samplerd_kept_tokens_count", strategy="top_p") == 12
    assert delta("samplerd_requests_total", method="Generate", code="OK") == 1
    assert metric(after, "samplerd_generated_tokens_total", strategy="mirostat_v1") >= 0  # pre-created

"""SampleStream end to end: a real ``samplerd serve`` on loopback, joined to the test session's
Ray instance, one server for the module; logits from a fixed synthetic Zipf-like model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import ray
import torch
from session_helpers import (
    MESSAGE_BYTES,
    SessionClient,
    ZipfModel,
    field_of,
    metric_value,
    start_session_server,
    wait_for_metric,
)

from samplerd.sampling import SamplingParams, SequenceState, filter_logits, sample
from samplerd.sampling.strategies.path_top_p import path_aware_step
from samplerd.service.bench.process import ServerProcess
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.workers.pool import ACTOR_NAME_PREFIX

pytestmark = pytest.mark.e2e

MODEL = ZipfModel(vocab=1000)


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    process = start_session_server(ray_address)
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", MESSAGE_BYTES), ("grpc.max_receive_message_length", MESSAGE_BYTES)]
    with grpc.insecure_channel(server.target, options=options) as c:
        yield c


def run_session(channel: grpc.Channel, sequences: dict[str, dict], steps: int, prompts: dict | None = None,
                between_steps=None) -> tuple[dict[str, list[int]], pb.SessionClosed, list[pb.SessionStepResult]]:
    """Decode ``steps`` steps of every (ordinary) sequence on MODEL; the tokens per sequence."""
    client = SessionClient(channel)
    client.open(sequences, prompts=prompts)
    histories = {sid: list((prompts or {}).get(sid, ())) for sid in sequences}
    tokens: dict[str, list[int]] = {sid: [] for sid in sequences}
    answers = []
    for step in range(steps):
        if between_steps is not None:
            between_steps(step)
        ids = list(sequences)
        result = client.step(ids, np.stack([MODEL.logits(histories[sid]) for sid in ids]))
        answers.append(result)
        for sequence in result.sequences:
            token = sequence.row.token_ids[0]
            histories[sequence.sequence_id].append(token)
            tokens[sequence.sequence_id].append(token)
    return tokens, client.close(), answers


def test_mirostat_v2_session_converges_to_its_target_surprise(channel):
    tau = 3.0
    _, closed, answers = run_session(channel, {"a": {"mirostat": 2, "mirostat_tau": tau, "seed": 11}}, 200)
    statistics = closed.sequences[0].statistics
    assert statistics.tokens == 200
    assert abs(statistics.mean_surprise_bits - tau) < 0.1 * tau
    assert answers[-1].sequences[0].row.HasField("mirostat_mu")
    assert answers[-1].sequences[0].row.strategy == "mirostat_v2"


def test_session_statistics_are_log_perplexity_entropy_and_their_gap(channel):
    _, closed, answers = run_session(channel, {"a": {"seed": 1}, "b": {"seed": 2, "temperature": 0.7}}, 20)
    surprise = [s.row.stats.surprise[0] for a in answers for s in a.sequences]
    entropy = [s.row.stats.entropy for a in answers for s in a.sequences]
    pooled = closed.statistics
    assert pooled.tokens == 40 and closed.steps == 20
    assert pooled.log_perplexity == pytest.approx(np.mean(surprise), rel=1e-5)
    assert pooled.mean_entropy == pytest.approx(np.mean(entropy), rel=1e-5)
    assert pooled.perplexity_entropy_gap == pytest.approx(pooled.log_perplexity - pooled.mean_entropy, abs=1e-9)
    assert pooled.mean_surprise_bits == pytest.approx(pooled.log_perplexity / math.log(2), rel=1e-9)
    assert answers[-1].statistics == pooled
    assert [s.tokens for s in closed.sequences] == [20, 20]


SEEDED = {"top_p": {"top_p": 0.9, "seed": 3}, "miro": {"mirostat": 2, "mirostat_tau": 4.0, "seed": 4},
          "pen": {"repetition_penalty": 1.3, "min_p": 0.05, "seed": 5}}


@pytest.fixture(scope="module")
def reference_tokens(server: ServerProcess) -> dict[str, list[int]]:
    with grpc.insecure_channel(server.target) as channel:
        return run_session(channel, SEEDED, 30)[0]


def test_same_session_with_the_same_seeds_gives_identical_tokens(channel, reference_tokens):
    again, _, _ = run_session(channel, SEEDED, 30)
    assert again == reference_tokens
    assert len(set(reference_tokens["top_p"])) > 1


def test_killing_a_sampler_actor_mid_session_keeps_the_seeded_output(channel, server, reference_tokens):
    prefix = f"{ACTOR_NAME_PREFIX}{server.process.pid}-"
    killed: list[str] = []

    def live_actor_names() -> list[str]:
        named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
        return sorted((n for n in named if n not in killed), key=lambda n: int(n.rsplit("-", 1)[1]))

    def kill_first_actor(step: int) -> None:
        if step not in (10, 20):
            return
        # Both actors dead at once is UNAVAILABLE (nothing to retry on): the second kill waits
        # until the first one's replacement exists and is alive (the gauge refreshes every 0.5 s).
        deadline = time.monotonic() + 120
        while len(live_actor_names()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert wait_for_metric(server, "samplerd_workers", 2, timeout_s=120, state="alive") == 2
        first = live_actor_names()[0]
        namespace = next(a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == first)
        ray.kill(ray.get_actor(first, namespace=namespace), no_restart=True)
        killed.append(first)

    try:
        tokens, closed, _ = run_session(channel, SEEDED, 30, between_steps=kill_first_actor)
    except Exception:
        print("\n".join(server.output))
        raise
    assert tokens == reference_tokens
    assert closed.steps == 30 and len(killed) == 2


def test_penalties_change_the_distribution_exactly_as_sampling_does_offline(channel):
    own = {"repetition_penalty": 1.5, "frequency_penalty": 0.4, "presence_penalty": 0.3, "dry_multiplier": 0.8,
           "top_k": 50, "seed": 9}
    prompt = [5, 17, 5, 99, 250, 17]
    _, _, answers = run_session(channel, {"s": own}, 25, prompts={"s": prompt})
    params = SamplingParams(**own)
    history = list(prompt)
    changed = 0
    for step, answer in enumerate(answers):
        row = answer.sequences[0].row
        logits = torch.from_numpy(MODEL.logits(history))[None]
        offline = sample(logits, params, steps=step, states=[SequenceState(history=tuple(history))])
        assert row.token_ids[0] == int(offline.token_ids[0, 0])
        assert row.logprobs[0] == pytest.approx(float(offline.logprobs[0, 0]), abs=1e-5)
        assert row.stats.entropy == pytest.approx(float(offline.stats.entropy[0]), abs=1e-5)
        assert row.stats.kept_mass == pytest.approx(float(offline.stats.kept_mass[0]), abs=1e-5)
        assert row.stats.surprise[0] == pytest.approx(float(offline.stats.surprise[0, 0]), abs=1e-4)
        without = sample(logits, params, steps=step)
        changed += not math.isclose(float(without.stats.entropy[0]), row.stats.entropy, abs_tol=1e-4)
        history.append(row.token_ids[0])
    assert changed == len(answers)  # the history mattered at every step


def test_forced_tokens_extend_the_history_and_advance_the_step(channel):
    params = {"presence_penalty": 2.0, "seed": 21}
    client = SessionClient(channel)
    client.open({"s": params}, prompts={"s": [1, 2]})
    forced_only = client.step([], None, forced={"s": [7, 8]})
    assert list(forced_only.sequences) == []
    result = client.step(["s"], MODEL.logits([1, 2, 7, 8])[None])
    sequence = result.sequences[0]
    assert sequence.step == 2
    history = (1, 2, 7, 8)
    offline = sample(torch.from_numpy(MODEL.logits(list(history)))[None], SamplingParams(**params), steps=2,
                     states=[SequenceState(history=history)])
    assert sequence.row.token_ids[0] == int(offline.token_ids[0, 0])
    assert sequence.row.stats.entropy == pytest.approx(float(offline.stats.entropy[0]), abs=1e-5)
    closed = client.close()
    assert closed.sequences[0].tokens == 3
    assert closed.sequences[0].statistics.tokens == 1


def run_path_session(channel: grpc.Channel, params: dict, steps: int) -> list[pb.SequenceResult]:
    client = SessionClient(channel)
    client.open({"p": params})
    histories: list[list[int]] = [[]]
    answers = []
    for _ in range(steps):
        result = client.step(["p"], np.stack([MODEL.logits(h) for h in histories]))
        sequence = result.sequences[0]
        answers.append(sequence)
        histories = [histories[p.parent] + [p.token_id] for p in sequence.paths]
    client.close()
    return answers


def test_path_aware_session_returns_parents_and_reproducible_paths(server, channel):
    params = {"path_beams": 3, "top_p": 0.9, "path_top_p": 0.95, "seed": 13}
    kernel = ("samplerd_sample_duration_seconds_count", {"strategy": "path_top_p", "device": "cpu"})
    before = metric_value(server, kernel[0], **kernel[1])
    answers = run_path_session(channel, params, 8)
    # The steps ran on the sampler actor (its batches report their kernel time by strategy).
    assert metric_value(server, kernel[0], **kernel[1]) == before + 8
    # offline: filter_logits per path, then path_aware_step, with the same (seed, step)
    per_path = SamplingParams(top_p=0.9)
    histories: list[list[int]] = [[]]
    logprobs = [0.0]
    for step, sequence in enumerate(answers):
        assert sequence.row.strategy == "path_top_p" and sequence.step == step
        assert 1 <= len(sequence.paths) <= 3
        assert all(0 <= p.parent < len(histories) for p in sequence.paths)
        rows = torch.from_numpy(np.stack([MODEL.logits(h) for h in histories]))
        filtered = filter_logits(rows, per_path, step, [SequenceState(history=tuple(h)) for h in histories])
        chosen = path_aware_step(filtered, torch.tensor(logprobs, dtype=torch.float64), 3, 0.95, 13, step)
        assert [p.parent for p in sequence.paths] == chosen.parent.tolist()
        assert [p.token_id for p in sequence.paths] == chosen.token.tolist()
        for p in sequence.paths:
            assert p.path_logprob == pytest.approx(logprobs[p.parent] + p.token_logprob, abs=1e-9)
        assert list(sequence.row.token_ids) == [p.token_id for p in sequence.paths]
        histories = [histories[p.parent] + [p.token_id] for p in sequence.paths]
        logprobs = [p.path_logprob for p in sequence.paths]
    assert len(answers[-1].paths) > 1
    again = run_path_session(channel, params, 8)
    assert [list(s.paths) for s in again] == [list(s.paths) for s in answers]


def _error_of(channel: grpc.Channel, *messages: pb.SampleStreamRequest) -> grpc.RpcError:
    client = SessionClient(channel)
    with pytest.raises(grpc.RpcError) as caught:
        for message in messages:
            client.send(message)
    return caught.value


OPEN = pb.SampleStreamRequest(open=pb.SessionOpen(sequences=[pb.SequenceSpec(sequence_id="a")]))


def _step(ids: list[str], logits: np.ndarray | None = None) -> pb.SampleStreamRequest:
    from samplerd.service.client import encode_logits

    message = pb.SessionStep(sequence_ids=ids)
    if logits is not None:
        message.logits.CopyFrom(encode_logits(logits.astype(np.float32)))
    return pb.SampleStreamRequest(step=message)


@pytest.mark.parametrize(("messages", "field"), [
    ((_step(["a"], np.zeros((1, 8))),), "open"),
    ((OPEN, _step(["zzz"], np.zeros((1, 8)))), "step.sequence_ids[0]"),
    ((OPEN, _step(["a", "a"], np.zeros((2, 8)))), "step.sequence_ids[1]"),
    ((OPEN, _step(["a"], np.zeros((2, 8)))), "step.logits.shape"),
    ((OPEN, _step(["a"]),), "step.logits"),
    ((OPEN, _step(["a"], np.array([[0.0, np.nan, 1.0]]))), "step.logits.data"),
    ((OPEN, _step(["a"], np.zeros((1, 8))), _step(["a"], np.zeros((1, 9)))), "step.logits.shape"),
    ((OPEN, OPEN), "open"),
    ((pb.SampleStreamRequest(open=pb.SessionOpen(sequences=[
        pb.SequenceSpec(sequence_id="a", params=pb.SamplingParams(top_p=1.5))])),), "open.sequences[0].params.top_p"),
    ((pb.SampleStreamRequest(open=pb.SessionOpen(sequences=[
        pb.SequenceSpec(sequence_id="a"), pb.SequenceSpec(sequence_id="a")])),), "open.sequences[1].sequence_id"),
    ((pb.SampleStreamRequest(open=pb.SessionOpen(sequences=[
        pb.SequenceSpec(sequence_id="a", prompt_token_ids=[3, 8])])), _step(["a"], np.zeros((1, 8)))),
     "open.sequences[0].prompt_token_ids"),
    ((pb.SampleStreamRequest(open=pb.SessionOpen(sequences=[
        pb.SequenceSpec(sequence_id="a", params=pb.SamplingParams(logit_bias={20: 1.0}))])),
      _step(["a"], np.zeros((1, 8)))), "open.sequences[0].params.logit_bias"),
    ((OPEN, pb.SampleStreamRequest(step=pb.SessionStep(forced=[pb.ForcedTokens(sequence_id="a", token_ids=[-1])]))),
     "step.forced[0].token_ids"),
    ((OPEN, pb.SampleStreamRequest()), "kind"),
])
def test_invalid_messages_end_the_stream_with_invalid_argument_naming_the_field(channel, messages, field):
    error = _error_of(channel, *messages)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(error) == [field]

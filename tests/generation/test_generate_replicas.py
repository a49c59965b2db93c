"""``samplerd serve --model DIR --model-replicas 2`` end to end: one language-model actor killed
mid-generation ends its streams with UNAVAILABLE (never a hang), the other's streams finish,
and the server serves Generate again once the dead one is replaced."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc
from samplerd.workers.generation.tiny_model import build_tiny_model
from samplerd.workers.lm_actor import ACTOR_NAME_PREFIX

pytestmark = pytest.mark.e2e

CONTEXT = 4096


@pytest.fixture(scope="module")
def replicated_server(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[ServerProcess]:
    model_dir = build_tiny_model(tmp_path_factory.mktemp("replicas-tiny-gpt2"), n_positions=CONTEXT)
    process = start_server(
        "--workers", "1", "--device", "cpu", "--ray-address", ray_address, "--model", str(model_dir),
        "--model-device", "cpu", "--model-replicas", "2", "--model-max-tokens", str(CONTEXT - 16),
        "--grace-seconds", "2")
    try:
        process.wait_serving()
        yield process
    finally:
        process.terminate()


def server_actors(server: ServerProcess) -> list[dict]:
    """The named language-model actors of ``server`` (alive ones: Ray lists no dead named actors)."""
    import ray

    prefix = f"{ACTOR_NAME_PREFIX}{server.process.pid}-"
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def test_a_replica_killed_mid_generation_ends_its_streams_unavailable_and_is_replaced(
        replicated_server: ServerProcess, ray_connected: str) -> None:
    import ray

    actors = server_actors(replicated_server)
    assert len(actors) == 2
    outcomes: dict[int, object] = {}
    tokens = [0] * 4
    with grpc.insecure_channel(replicated_server.target) as channel:
        stub = pb_grpc.SamplerStub(channel)

        def consume(i: int) -> None:
            request = pb.GenerateRequest(prompt_text="The", max_tokens=CONTEXT - 16, ignore_eos=True)
            try:
                for message in stub.Generate(request, timeout=300):
                    tokens[i] += message.WhichOneof("event") == "token"
                outcomes[i] = grpc.StatusCode.OK
            except grpc.RpcError as error:
                outcomes[i] = error.code()

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(tokens) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert min(tokens) >= 2, tokens  # all four are generating, two on each replica
        victim = actors[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        killed_at = time.monotonic()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads)
        # Two streams lost their replica: UNAVAILABLE (retryable). The other two finished whole.
        assert sorted(outcomes.values(), key=str) == sorted(
            [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.UNAVAILABLE] * 2, key=str), outcomes

        while len(server_actors(replicated_server)) < 2 and time.monotonic() - killed_at < 120:
            time.sleep(0.2)
        names = {a["name"] for a in server_actors(replicated_server)}
        assert len(names) == 2 and victim["name"] not in names  # replaced by a new actor
        for _ in range(2):
            finish = list(stub.Generate(pb.GenerateRequest(prompt_text="A", max_tokens=4, ignore_eos=True),
                                        timeout=60))[-1].finish
            assert finish.reason == pb.GenerateFinish.LENGTH and len(finish.token_ids) == 4

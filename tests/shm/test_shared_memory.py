"""Logits by shared memory in ``samplerd.v1``: RegisterSharedMemory, Tensor.shared_memory, the
client's regions, and every way a client-owned region can go wrong.

One real ``samplerd serve`` (one CPU worker, joined to the session's Ray instance) serves the
module; regions are real POSIX shared-memory objects in /dev/shm.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import ServerProcess, serving
from samplerd.service.client import AsyncSamplerClient, SamplerClient, field_violations
from samplerd.service.client.shared_memory import SHM_DIR, SharedMemoryRegion
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

pytestmark = pytest.mark.e2e

PARAMS = {"top_p": 0.9, "min_p": 0.05, "top_k": 50, "temperature": 0.7, "seed": 11}
MAX_REGIONS = 24


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    with serving("--workers", "1", "--device", "cpu", "--ray-address", ray_address,
                 "--max-shm-regions", str(MAX_REGIONS), "--max-shm-bytes", str(64 << 20)) as process:
        yield process


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[SamplerClient]:
    with SamplerClient(server.target, timeout=60) as client:
        yield client
        client.stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest())  # nothing left for the next test


def logits_of(rows: int, vocab: int, dtype: torch.dtype = torch.float32, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=generator) * 3).to(dtype)


def library_tokens(logits: torch.Tensor) -> list[list[int]]:
    values = {k: v for k, v in PARAMS.items()}
    return sample(logits, SamplingParams(**values), 0).token_ids.tolist()


def shm_object(size: int) -> Path:
    """A fresh POSIX shared-memory object of ``size`` bytes (removed by the test's cleanup)."""
    path = SHM_DIR / f"samplerd-test-{os.getpid()}-{os.urandom(4).hex()}"
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def register(client: SamplerClient, name: str, key: str, byte_size: int, offset: int = 0) -> None:
    client.stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(name=name, key=key, offset=offset,
                                                                    byte_size=byte_size))


def reference(name: str, logits: torch.Tensor, offset: int = 0) -> pb.Tensor:
    dtype = {torch.float32: pb.Tensor.FP32, torch.float16: pb.Tensor.FP16, torch.bfloat16: pb.Tensor.BF16}
    nbytes = logits.numel() * logits.element_size()
    return pb.Tensor(dtype=dtype[logits.dtype], shape=list(logits.shape),
                     shared_memory=pb.SharedMemoryReference(region=name, offset=offset, byte_size=nbytes))


def write(path: Path, logits: torch.Tensor, offset: int = 0) -> None:
    raw = logits.view(torch.int16) if logits.dtype == torch.bfloat16 else logits
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(raw.numpy().tobytes())


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def still_serving(client: SamplerClient) -> None:
    logits = logits_of(2, 300)
    assert client.sample(logits.numpy(), **PARAMS).token_ids == library_tokens(logits)


# -- the data path ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sample_by_shared_memory_equals_the_library(client: SamplerClient, dtype: torch.dtype) -> None:
    logits = logits_of(8, 5000, dtype)
    with SharedMemoryRegion(client, 2 * logits.numel() * logits.element_size()) as region:
        tensor = region.put(logits, offset=logits.numel() * logits.element_size())  # not at the start
        assert not tensor.data and tensor.shared_memory.region == region.name
        result = client.sample(None, logits=tensor, **PARAMS)
    assert result.token_ids == library_tokens(logits)


def test_client_shared_memory_option_grows_its_region_and_removes_it_on_close(server: ServerProcess) -> None:
    small, large = logits_of(2, 1000), logits_of(16, 4000, seed=5)
    with SamplerClient(server.target, timeout=60, shared_memory=True) as client:
        assert client.sample(small.numpy(), **PARAMS).token_ids == library_tokens(small)
        assert client.sample(large.numpy(), **PARAMS).token_ids == library_tokens(large)
        regions = client.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()).regions
        assert len(regions) == 1 and regions[0].byte_size >= large.numel() * 4
        key = regions[0].key
        assert (SHM_DIR / key).exists()
    assert not (SHM_DIR / key).exists()
    with SamplerClient(server.target, timeout=60) as other:
        assert list(other.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()).regions) == []


def test_sample_stream_steps_by_shared_memory(client: SamplerClient) -> None:
    vocab = 2000
    open_message = pb.SampleStreamRequest(open=pb.SessionOpen(
        sequences=[pb.SequenceSpec(sequence_id=f"s{i}") for i in range(4)], params=pb.SamplingParams(top_k=20)))
    with SharedMemoryRegion(client, 4 * vocab * 4 * 3) as region:
        steps = [logits_of(4, vocab, seed=s) for s in range(3)]
        messages = [open_message] + [
            pb.SampleStreamRequest(step=pb.SessionStep(sequence_ids=[f"s{i}" for i in range(4)],
                                                       logits=region.put(step, offset=k * 4 * vocab * 4)))
            for k, step in enumerate(steps)]
        answers = list(client.stub.SampleStream(iter(messages), timeout=60))
    results = [a.step for a in answers if a.HasField("step")]
    assert len(results) == 3
    for result, step in zip(results, steps, strict=True):
        for sequence in result.sequences:
            row = int(sequence.sequence_id[1:])
            kept = set(torch.topk(step[row], 20).indices.tolist())
            assert set(sequence.row.token_ids) <= kept


def test_async_client_shared_memory_serves_concurrent_calls_each_in_its_own_range(server: ServerProcess) -> None:
    batches = [logits_of(rows, 3000, seed=s) for s, rows in enumerate((1, 4, 16, 2, 8, 32, 3, 5))]

    async def run() -> tuple[list, list, list]:
        async with AsyncSamplerClient(server.target, timeout=60, shared_memory=True) as client, \
                AsyncSamplerClient(server.target, timeout=60) as inline:
            by_region = await asyncio.gather(*(client.sample(b.numpy(), **PARAMS) for b in batches))
            by_message = await asyncio.gather(*(inline.sample(b.numpy(), **PARAMS) for b in batches))
            regions = (await client.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest())).regions
            return by_region, by_message, list(regions)

    by_region, by_message, regions = asyncio.run(run())
    assert [r.token_ids for r in by_region] == [r.token_ids for r in by_message]
    assert [r.token_ids for r in by_region] == [library_tokens(b) for b in batches]
    assert len(regions) == 1  # the regions it outgrew were removed when their last call ended
    assert not (SHM_DIR / regions[0].key).exists()  # and the last one on close
    with SamplerClient(server.target, timeout=60) as other:
        assert list(other.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()).regions) == []


SESSION_PARAMS = {"top_k": 40, "temperature": 0.8, "repetition_penalty": 1.3, "seed": 5}


def test_sessions_by_shared_memory_equal_inline_sessions(server: ServerProcess) -> None:
    steps = [logits_of(3, 2000, seed=s) for s in range(4)]
    sequences = ["a", "b", "c"]

    async def run_async(shared: bool) -> list[dict[str, list[int]]]:
        async with AsyncSamplerClient(server.target, timeout=60, shared_memory=shared) as client, \
                client.session(sequences, **SESSION_PARAMS) as session:
            return [{k: row.token_ids for k, row in (await session.step(step.numpy())).rows.items()}
                    for step in steps]

    def run_sync(shared: bool) -> list[dict[str, list[int]]]:
        with SamplerClient(server.target, timeout=60, shared_memory=shared) as client, \
                client.session(sequences, **SESSION_PARAMS) as session:
            tokens = [{k: row.token_ids for k, row in session.step(step.numpy()).rows.items()} for step in steps]
            regions = client.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()).regions
            assert len(regions) == (1 if shared else 0)
            return tokens

    inline = asyncio.run(run_async(False))
    assert asyncio.run(run_async(True)) == inline
    assert run_sync(True) == inline
    assert run_sync(False) == inline
    assert len({str(step) for step in inline}) > 1  # the steps differ: not a constant answer


def test_status_lists_the_callers_regions(client: SamplerClient) -> None:
    path = shm_object(4096)
    try:
        register(client, "status-a", "/" + path.name, 1024, offset=512)
        regions = client.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest(name="status-a")).regions
        assert [(r.name, r.key, r.offset, r.byte_size) for r in regions] == [("status-a", "/" + path.name, 512, 1024)]
        error = refused(lambda: client.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest(name="nope")))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = refused(lambda: register(client, "status-a", "/" + path.name, 16))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        path.unlink()


# -- a client-owned region going wrong: an error answer, and the server keeps serving ------------


def test_truncated_region_is_failed_precondition(client: SamplerClient) -> None:
    logits = logits_of(4, 1000)
    path = shm_object(logits.numel() * 4)
    try:
        write(path, logits)
        register(client, "shrinks", path.name, logits.numel() * 4)
        assert client.sample(None, logits=reference("shrinks", logits), **PARAMS).token_ids == library_tokens(logits)
        os.truncate(path, 100)
        error = refused(lambda: client.sample(None, logits=reference("shrinks", logits), **PARAMS))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "shrank" in error.details()
    finally:
        path.unlink()
    still_serving(client)


def test_removed_and_replaced_regions_are_failed_precondition(client: SamplerClient) -> None:
    logits = logits_of(4, 1000)
    path = shm_object(logits.numel() * 4)
    write(path, logits)
    register(client, "removed", path.name, logits.numel() * 4)
    path.unlink()
    error = refused(lambda: client.sample(None, logits=reference("removed", logits), **PARAMS))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "no longer exists" in error.details()
    replacement = path.with_name(path.name)
    with open(replacement, "wb") as file:  # same name, another object
        file.truncate(logits.numel() * 4)
    try:
        error = refused(lambda: client.sample(None, logits=reference("removed", logits), **PARAMS))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "replaced" in error.details()
    finally:
        replacement.unlink()
    still_serving(client)


def test_unregistered_foreign_and_too_small_references_are_invalid_argument(client: SamplerClient) -> None:
    logits = logits_of(4, 1000)
    with SharedMemoryRegion(client, logits.numel() * 4) as region:
        region.put(logits)
        too_far = reference(region.name, logits, offset=4)
        error = refused(lambda: client.sample(None, logits=too_far, **PARAMS))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error)[0][0] == "logits.shared_memory.byte_size"
        wrong_size = reference(region.name, logits)
        wrong_size.shared_memory.byte_size -= 4
        error = refused(lambda: client.sample(None, logits=wrong_size, **PARAMS))
        assert field_violations(error)[0][0] == "logits.shared_memory.byte_size"
        both = reference(region.name, logits)
        both.data = b"\0" * 16
        assert field_violations(refused(lambda: client.sample(None, logits=both, **PARAMS)))[0][0] == "logits.data"
        name = region.name
    error = refused(lambda: client.sample(None, logits=reference(name, logits), **PARAMS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == "logits.shared_memory.region"
    still_serving(client)


def test_a_bad_row_in_shared_memory_is_invalid_argument_naming_the_row(client: SamplerClient) -> None:
    logits = logits_of(4, 1000)
    logits[2, 7] = float("nan")
    with SharedMemoryRegion(client, logits.numel() * 4) as region:
        error = refused(lambda: client.sample(None, logits=region.put(logits), **PARAMS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    field, description = field_violations(error)[0]
    assert field == "logits.shared_memory" and "row 2" in description


def test_a_bad_row_in_a_large_inline_request_is_found_by_the_actor_and_named(client: SamplerClient) -> None:
    logits = logits_of(4, 300_000)  # 4.8 MB: over ACTOR_CHECKED_BYTES (1 MiB), checked where it is sampled
    logits[3, 10] = float("inf")
    error = refused(lambda: client.sample(logits.numpy(), **PARAMS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    field, description = field_violations(error)[0]
    assert field == "logits.data" and "row 3" in description and "+inf" in description
    still_serving(client)


@pytest.mark.parametrize("key", ["../etc/passwd", "/a/b", "..", "", "x" * 300, "/dev/shm/x", "a b"])
def test_keys_are_shm_names_only(client: SamplerClient, key: str) -> None:
    error = refused(lambda: register(client, "bad-key", key, 16))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(error)[0][0] == "key"


def test_registration_checks_the_object(client: SamplerClient, tmp_path: Path) -> None:
    path = shm_object(1000)
    link = SHM_DIR / f"samplerd-test-link-{os.getpid()}"
    try:
        assert field_violations(refused(lambda: register(client, "big", path.name, 1001)))[0][0] == "byte_size"
        assert field_violations(refused(lambda: register(client, "off", path.name, 10, offset=995)))[0][0] == \
            "byte_size"
        assert field_violations(refused(lambda: register(client, "zero", path.name, 0)))[0][0] == "byte_size"
        assert field_violations(refused(lambda: register(client, "none", "samplerd-no-such-object", 8)))[0][0] == \
            "key"
        assert field_violations(refused(lambda: register(client, "a/b", path.name, 8)))[0][0] == "name"
        secret = tmp_path / "secret"
        secret.write_bytes(b"x" * 64)
        link.symlink_to(secret)
        assert field_violations(refused(lambda: register(client, "link", link.name, 8)))[0][0] == "key"
        link.unlink()
        os.mkfifo(link)  # opening a FIFO for reading would block without O_NONBLOCK
        assert field_violations(refused(lambda: register(client, "fifo", link.name, 8)))[0][0] == "key"
    finally:
        path.unlink()
        link.unlink(missing_ok=True)


def test_region_limits_are_resource_exhausted(client: SamplerClient) -> None:
    path = shm_object(1 << 20)
    try:
        for i in range(MAX_REGIONS):
            register(client, f"r{i}", path.name, 16)
        error = refused(lambda: register(client, "one-too-many", path.name, 16))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-shm-regions" in error.details()
        client.stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest())
        big = SHM_DIR / (path.name + "-big")
        with open(big, "wb") as file:
            file.truncate(65 << 20)
        try:
            error = refused(lambda: register(client, "too-big", big.name, 65 << 20))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-shm-bytes" in error.details()
        finally:
            big.unlink()
    finally:
        path.unlink()


def test_unregister_while_requests_read_the_region(client: SamplerClient, server: ServerProcess) -> None:
    logits = logits_of(8, 4000)
    expected = library_tokens(logits)
    path = shm_object(logits.numel() * 4)
    write(path, logits)
    stop = threading.Event()
    outcomes: list[str] = []

    def churn() -> None:
        with SamplerClient(server.target, timeout=60) as other:
            while not stop.is_set():
                other.stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(name="churn"))
                try:
                    register(other, "churn", path.name, logits.numel() * 4)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.ALREADY_EXISTS

    def ask() -> None:
        with SamplerClient(server.target, timeout=60) as mine:
            for _ in range(10):
                try:
                    assert mine.sample(None, logits=reference("churn", logits), **PARAMS).token_ids == expected
                    outcomes.append("ok")
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
                    outcomes.append("unregistered")

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: ask(), range(4)))
    finally:
        stop.set()
        churner.join()
        path.unlink()
    assert len(outcomes) == 40
    still_serving(client)


def test_sixteen_concurrent_clients_each_with_their_own_region(server: ServerProcess) -> None:
    def one(index: int) -> bool:
        logits = logits_of(4, 3000, torch.float16, seed=100 + index)
        with SamplerClient(server.target, timeout=120) as client, \
                SharedMemoryRegion(client, logits.numel() * 2, name=f"client-{index}") as region:
            for _ in range(3):
                if client.sample(None, logits=region.put(logits), **PARAMS).token_ids != library_tokens(logits):
                    return False
        return True

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(16)))
    with SamplerClient(server.target, timeout=60) as client:
        assert list(client.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()).regions) == []


def test_the_server_holds_no_region_open_between_requests(client: SamplerClient, server: ServerProcess) -> None:
    logits = logits_of(2, 500)
    with SharedMemoryRegion(client, logits.numel() * 4) as region:
        client.sample(None, logits=region.put(logits), **PARAMS)
        open_files = [os.readlink(f"/proc/{server.process.pid}/fd/{fd}")
                      for fd in os.listdir(f"/proc/{server.process.pid}/fd")]
        assert not [f for f in open_files if f.startswith(str(SHM_DIR / "samplerd-"))]


# -- auth: regions belong to the token that registered them -----------------------------------


@pytest.fixture(scope="module")
def auth_server(ray_address: str, tmp_path_factory) -> Iterator[ServerProcess]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("token-a-1234\ntoken-b-5678\n")
    with serving("--workers", "1", "--device", "cpu", "--ray-address", ray_address,
                 "--auth-token-file", str(tokens), "--max-shm-regions", "2") as process:
        yield process


def test_with_auth_regions_belong_to_their_token(auth_server: ServerProcess) -> None:
    logits = logits_of(4, 1000)
    with SamplerClient(auth_server.target, timeout=60) as anonymous:
        error = refused(lambda: SharedMemoryRegion(anonymous, 64))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = refused(lambda: anonymous.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    with SamplerClient(auth_server.target, timeout=60, token="token-a-1234") as a, \
            SamplerClient(auth_server.target, timeout=60, token="token-b-5678") as b, \
            SharedMemoryRegion(a, logits.numel() * 4, name="shared-name") as region:
        tensor = region.put(logits)
        assert a.sample(None, logits=tensor, **PARAMS).token_ids == library_tokens(logits)
        assert list(b.stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest()).regions) == []
        error = refused(lambda: b.sample(None, logits=tensor, **PARAMS))
        assert field_violations(error)[0][0] == "logits.shared_memory.region"
        b.stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest())  # b's (none): a's stay
        assert a.sample(None, logits=tensor, **PARAMS).token_ids == library_tokens(logits)
        with SharedMemoryRegion(b, 64, name="shared-name"), SharedMemoryRegion(b, 64):  # b's own names and limit
            error = refused(lambda: SharedMemoryRegion(b, 64))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

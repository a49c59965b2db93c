"""Hostile input through the real gRPC server: a hypothesis fuzz of malformed requests, invalid
UTF-8, oversized messages, a pickle payload as tensor data; and the audit that no client-given
count drives an allocation before it is validated."""

from __future__ import annotations

import ast
import math
import pickle
import struct
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import SERVING, expected_tokens, health, make_logits, serve, tokens_of

from samplerd.sampling.registry import PARAMETERS
from samplerd.service.bench.process import ServerProcess
from samplerd.service.client import build_request
from samplerd.service.codec import Limits, decode_request
from samplerd.service.errors import RequestError
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

pytestmark = pytest.mark.e2e

MAX_MESSAGE_BYTES = 1 << 20
MAX_TENSOR_ELEMENTS = 100_000
REPO = Path(__file__).resolve().parents[2]
#: Codes that mean "the server failed", never right for bad input.
SERVER_FAULTS = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"}


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    process = serve(ray_address, "--workers", "1", "--max-message-bytes", str(MAX_MESSAGE_BYTES),
                    "--max-tensor-elements", str(MAX_TENSOR_ELEMENTS))
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def raw_sample(server: ServerProcess) -> Iterator:
    """``Sampler/Sample`` taking and answering raw bytes (no client-side parsing or checks)."""
    options = [("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", 8 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        yield channel.unary_unary("/samplerd.v1.Sampler/Sample")


def answer_code(call, data: bytes) -> str:
    """The status code name the server answers ``data`` with."""
    try:
        call(data, timeout=60)
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


# -- strategies ------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
NASTY_INTS = st.one_of(st.integers(-3, 300), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]), INT64)
NASTY_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, -math.inf, math.inf, -1.0, 0.0, 1e-320, 1e308, -0.0]),
)
SCALARS = {name: p.kind for name, p in PARAMETERS.items() if p.kind in ("float", "int", "optional_int")}


@st.composite
def sampling_params(draw) -> pb.SamplingParams:
    """A SamplingParams with random, mostly invalid, fields set."""
    message = pb.SamplingParams()
    for name in draw(st.lists(st.sampled_from(sorted(SCALARS)), max_size=6, unique=True)):
        if name == "seed":
            message.seed = draw(st.integers(0, 2**64 - 1))
        elif SCALARS[name] == "float":
            setattr(message, name, draw(NASTY_FLOATS))
        else:
            setattr(message, name, draw(NASTY_INTS))
    if draw(st.booleans()):
        size = draw(st.sampled_from([1, 10, 300, 5000]))
        if size < 20:
            message.logit_bias.update({draw(NASTY_INTS): draw(NASTY_FLOATS) for _ in range(size)})
        else:  # many entries: one drawn bias for all (drawing thousands would exhaust hypothesis)
            message.logit_bias.update(dict.fromkeys(range(size), draw(NASTY_FLOATS)))
    if draw(st.booleans()):
        size = draw(st.sampled_from([1, 10, 300]))
        message.dry_sequence_breakers.extend(draw(st.lists(NASTY_INTS, min_size=size, max_size=size)))
    return message


@st.composite
def tensors(draw) -> pb.Tensor:
    """Random dtypes (also unknown values), shapes (huge, negative, overflowing, any rank) and
    data (random bytes, or exactly sized random bytes: NaN and inf bit patterns included)."""
    tensor = pb.Tensor(dtype=draw(st.integers(-1, 6)))
    shape = draw(st.one_of(
        st.lists(st.integers(-5, 70), max_size=4),
        st.tuples(st.integers(1, 4), st.integers(1, 200)).map(list),
        st.lists(st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63), 3 * 10**18]), min_size=2, max_size=3),
    ))
    tensor.shape.extend(shape)
    itemsize = 4 if tensor.dtype == pb.Tensor.FP32 else 2
    product = math.prod(shape) if shape else 0
    if 0 < product <= 800 and draw(st.booleans()):
        tensor.data = draw(st.binary(min_size=product * itemsize, max_size=product * itemsize))
    else:
        tensor.data = draw(st.binary(max_size=512))
    return tensor


@st.composite
def malformed_requests(draw) -> bytes:
    """Serialized requests: structurally valid protobuf with hostile values, random bytes, or
    a request whose request_id is not UTF-8 (hand-built: proto strings refuse that in Python)."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "bytes", "utf8"]))
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    request = pb.SampleRequest(request_id=draw(st.text(max_size=20)))
    if draw(st.integers(0, 9)):
        request.logits.CopyFrom(draw(tensors()))
    if draw(st.booleans()):
        request.params.CopyFrom(draw(sampling_params()))
    rows = draw(st.sampled_from([0, 1, 3, 200]))
    for _ in range(rows if draw(st.booleans()) else 0):
        request.row_params.add().CopyFrom(draw(sampling_params()) if rows < 5 else pb.SamplingParams())
    if draw(st.booleans()):
        request.steps.extend(draw(st.lists(NASTY_INTS, max_size=5)))
    data = request.SerializeToString()
    if kind == "utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xfe\xfe"]))
        data += b"\x2a" + bytes([len(bad)]) + bad  # field 5 (request_id), wire type 2: the last one wins
    return data


def valid_case(i: int) -> tuple[bytes, list[list[int]]]:
    logits = make_logits(2, 100, seed=i)
    values = {"top_k": 20, "seed": i}
    return build_request(logits, **values).SerializeToString(), expected_tokens(logits, values)


# -- tests -----------------------------------------------------------------------------------


def test_fuzzed_malformed_requests_never_fault_the_server(server: ServerProcess, raw_sample) -> None:
    """Hypothesis-generated hostile requests: the answer is never INTERNAL/UNKNOWN, the server
    stays up and keeps serving valid requests (checked every 10 cases) with the right tokens."""
    codes: Counter = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(malformed_requests())
    def case(data: bytes) -> None:
        code = answer_code(raw_sample, data)
        codes[code] += 1
        assert code not in SERVER_FAULTS, (code, data[:200])
        if sum(codes.values()) % 10 == 0:
            request, expected = valid_case(sum(codes.values()))
            response = pb.SampleResponse.FromString(raw_sample(request, timeout=60))
            assert tokens_of(response) == expected

    case()
    assert server.process.poll() is None
    assert health(server.target) == SERVING
    print(f"fuzz: {sum(codes.values())} malformed requests, answers {dict(codes)}")
    assert sum(codes.values()) >= 200
    assert codes["INVALID_ARGUMENT"] > 0


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"abc\x80"])
def test_invalid_utf8_request_id_is_invalid_argument(raw_sample, bad: bytes) -> None:
    """A request_id that is not UTF-8 (raw bytes on the wire) answers INVALID_ARGUMENT, not UNKNOWN."""
    data, _ = valid_case(1)
    assert answer_code(raw_sample, data + b"\x2a" + bytes([len(bad)]) + bad) == "INVALID_ARGUMENT"


def test_a_stream_message_that_does_not_parse_is_invalid_argument(server: ServerProcess) -> None:
    """Unparsable bytes in a SampleStream, first or after a valid message, answer
    INVALID_ARGUMENT (as they do for Sample), not INTERNAL."""
    valid = pb.SampleStreamRequest(open=pb.SessionOpen(sequences=[pb.SequenceSpec(sequence_id="a")]))
    valid = valid.SerializeToString()
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream("/samplerd.v1.Sampler/SampleStream")
        for messages in ([b"\xff\xff\xff"], [valid, b"\x0a\xff\xff\xff\x0f"]):
            with pytest.raises(grpc.RpcError) as refused:
                list(stream(iter(messages), timeout=60))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert "does not parse" in refused.value.details()


def test_oversized_message_is_resource_exhausted_and_server_keeps_serving(raw_sample) -> None:
    """A message over --max-message-bytes is RESOURCE_EXHAUSTED; the next valid request is served."""
    logits = np.zeros((1, MAX_MESSAGE_BYTES // 4 + 1000), dtype=np.float32)
    assert answer_code(raw_sample, build_request(logits).SerializeToString()) == "RESOURCE_EXHAUSTED"
    garbage = b"\x1a" + b"\xff\xff\xff\x07" + bytes(2 * MAX_MESSAGE_BYTES)  # a huge field, not even valid
    assert answer_code(raw_sample, garbage) == "RESOURCE_EXHAUSTED"
    data, expected = valid_case(2)
    assert tokens_of(pb.SampleResponse.FromString(raw_sample(data, timeout=60))) == expected


class _Exploit:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_as_tensor_data_is_only_read_as_floats(raw_sample, tmp_path: Path) -> None:
    """Tensor bytes that are a pickle (which would create a file when unpickled) are read as the
    declared FP32 values and nothing else: the request is answered and no file appears."""
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Exploit(str(marker)))
    payload += b"\x00" * (-len(payload) % 4)
    floats = np.frombuffer(payload, dtype="<f4")
    request = pb.SampleRequest(
        logits=pb.Tensor(dtype=pb.Tensor.FP32, shape=[1, floats.size], data=payload), params=pb.SamplingParams(seed=3)
    )
    code = answer_code(raw_sample, request.SerializeToString())
    assert code in ("OK", "INVALID_ARGUMENT")  # INVALID_ARGUMENT: some bit patterns are NaN
    assert not marker.exists()
    decoded = decode_request(request, Limits(MAX_TENSOR_ELEMENTS)) if np.isfinite(floats).all() else None
    if decoded is not None:
        assert decoded.logits.dtype is torch.float32
        assert decoded.logits.numpy().tobytes() == payload


def test_no_source_unpickles_or_evaluates_anything() -> None:
    """Audit of service/ and workers/: no pickle/marshal/dill loads, no torch.load, no eval/exec,
    no np.load that allows pickles. (Ray pickles what the front end itself builds, after
    validation; client bytes only ever reach ``np.frombuffer`` with the declared dtype.) There is
    no unpickler: the batch link's format (workers/wire.py) cannot build objects
    (tests/workers/test_link_hostile.py fuzzes it)."""
    banned = {("pickle", "loads"), ("pickle", "load"), ("cloudpickle", "loads"), ("marshal", "loads"),
              ("dill", "loads"), ("torch", "load"), ("pickle", "Unpickler")}
    found = []
    unpicklers = []
    for path in [*REPO.glob("service/**/*.py"), *REPO.glob("workers/**/*.py")]:
        if "generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base) == "pickle.Unpickler" for base in node.bases):
                methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
                unpicklers.append((str(path.relative_to(REPO)), node.name, "find_class" in methods))
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                    found.append(f"{path}:{node.lineno} {func.id}")
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    if (func.value.id, func.attr) in banned:
                        found.append(f"{path}:{node.lineno} {func.value.id}.{func.attr}")
                    if (func.value.id, func.attr) == ("np", "load") and not any(
                        k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                        for k in node.keywords
                    ):
                        found.append(f"{path}:{node.lineno} np.load without allow_pickle=False")
    assert not found, found
    assert unpicklers == []
    codec = (REPO / "service" / "codec.py").read_text()
    assert "np.frombuffer(data, dtype=raw_dtype)" in codec  # tensor bytes are only viewed as numbers


# -- allocations driven by client-given counts -----------------------------------------------


def peak_traced_bytes(request: pb.SampleRequest) -> tuple[int, str]:
    """Peak Python allocation while decoding ``request`` (it must be refused), and the field."""
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as refused:
            decode_request(request, Limits(MAX_TENSOR_ELEMENTS))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, refused.value.violations[0].field if refused.value.violations else ""


def small_logits() -> pb.Tensor:
    return pb.Tensor(dtype=pb.Tensor.FP32, shape=[1, 4], data=struct.pack("<4f", 1, 2, 3, 4))


@pytest.mark.parametrize("case", ["logit_bias", "dry_sequence_breakers", "row_logit_bias", "shape"])
def test_client_counts_are_checked_before_anything_is_allocated(case: str) -> None:
    """A 500 000-entry logit_bias map or breaker list, or a shape of 1 000 000 dimensions, is
    refused before it is copied into Python objects (peak Python allocation < 1 MiB; a copy
    would take tens of MiB)."""
    request = pb.SampleRequest(logits=small_logits())
    big = 500_000
    if case == "logit_bias":
        request.params.logit_bias.update({i: 1.0 for i in range(big)})
    elif case == "dry_sequence_breakers":
        request.params.dry_sequence_breakers.extend(range(big))
    elif case == "row_logit_bias":
        request.row_params.add().logit_bias.update({i: 1.0 for i in range(big)})
    else:
        del request.logits.shape[:]
        request.logits.shape.extend([1] * 1_000_000)
    peak, field = peak_traced_bytes(request)
    print(f"{case}: refused on {field}, peak Python allocation {peak / 1024:.0f} KiB")
    assert peak < 2**20

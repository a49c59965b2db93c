"""The contract: the .proto against the registry, the generated code, the parameter mapping."""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from service_cases import ACTIVATING

from samplerd.sampling import SamplingError, SamplingParams
from samplerd.sampling.registry import PARAMETERS, STRATEGIES
from samplerd.service import catalog, params
from samplerd.service.client import params as client_params
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

# The stub generator is a contributor's script beside proto/, not part of the installed package.
_GENERATOR = Path(__file__).resolve().parents[2] / "proto" / "generate.py"
_spec = importlib.util.spec_from_file_location("proto_generate", _GENERATOR)
protogen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protogen)

PROTO_TYPES = {
    "float": FieldDescriptor.TYPE_DOUBLE,
    "int": FieldDescriptor.TYPE_INT64,
    "optional_int": FieldDescriptor.TYPE_UINT64,
}
FIELDS = pb.SamplingParams.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_every_registry_parameter_has_a_proto_field_of_its_kind(name: str) -> None:
    assert name in FIELDS, f"proto SamplingParams lacks field {name}"
    field = FIELDS[name]
    kind = PARAMETERS[name].kind
    if kind in PROTO_TYPES:
        assert field.type == PROTO_TYPES[kind]
        assert field.has_presence, f"{name} must be proto3 optional: unset has to differ from zero"
    elif kind == "token_ids":
        assert field.is_repeated and field.type == FieldDescriptor.TYPE_INT64
    else:
        assert field.message_type is not None and field.message_type.GetOptions().map_entry


def test_proto_has_no_parameter_the_registry_lacks() -> None:
    assert set(FIELDS) == set(PARAMETERS)


def test_every_proto_field_is_commented() -> None:
    source = (protogen.PROTO_ROOT / "samplerd/v1/sampler.proto").read_text().splitlines()
    for number, line in enumerate(source):
        stripped = line.strip()
        if stripped.endswith(";") and "=" in stripped and not stripped.startswith(("option", "//", "rpc")):
            assert source[number - 1].strip().startswith("//"), f"line {number + 1} has no comment: {stripped}"


@pytest.mark.parametrize("name", sorted(n for n, p in PARAMETERS.items() if p.kind in PROTO_TYPES))
def test_every_scalar_parameter_comment_states_the_registry_range(name: str) -> None:
    source = (protogen.PROTO_ROOT / "samplerd/v1/sampler.proto").read_text().splitlines()
    (line,) = [i for i, text in enumerate(source) if re.match(rf"\s*optional \w+ {name} = \d+;", text)]
    comment = []
    while source[line - 1].strip().startswith("//"):
        line -= 1
        comment.insert(0, source[line].strip().removeprefix("//").strip())
    assert PARAMETERS[name].range_text() in " ".join(comment), f"{name}: comment lacks {PARAMETERS[name].range_text()}"


def test_committed_generated_code_is_current() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stale = protogen.stale_files(protogen.generate(Path(tmp)))
    assert not stale, f"stale generated code {stale}: run python proto/generate.py"


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generated = protogen.generate(Path(tmp))
    protogen.write(generated, tmp_path)
    assert protogen.stale_files(generated, tmp_path) == []
    target = tmp_path / "samplerd/v1/sampler_pb2.py"
    target.write_text(target.read_text().replace("top_p", "top_q"))
    assert protogen.stale_files(generated, tmp_path) == [Path("samplerd/v1/sampler_pb2.py")]


def test_generated_code_imports_from_its_package() -> None:
    text = (protogen.GENERATED_ROOT / "samplerd/v1/sampler_pb2_grpc.py").read_text()
    assert "from samplerd.service.generated.samplerd.v1 import sampler_pb2" in text


def test_every_strategy_has_an_activating_parameter_set() -> None:
    assert set(ACTIVATING) == {s.name for s in STRATEGIES}
    for name, values in ACTIVATING.items():
        assert name in SamplingParams(**values).active_strategies()


def test_params_round_trip_through_the_proto() -> None:
    values = {"temperature": 0.0, "top_k": 0, "top_p": 0.25, "seed": 2**64 - 1, "logit_bias": {5: -1.5},
              "dry_sequence_breakers": (1, 2), "n": 3}
    decoded = params.from_proto(client_params.to_proto(values))
    assert decoded == SamplingParams(**values)


def test_unset_fields_take_the_registry_defaults() -> None:
    assert params.from_proto(pb.SamplingParams()) == SamplingParams()


def test_row_params_merge_over_the_shared_params() -> None:
    shared = SamplingParams(top_p=0.8, seed=1, logit_bias={1: 2.0})
    row = params.from_proto(client_params.to_proto({"seed": 9}), shared)
    assert (row.top_p, row.seed, row.logit_bias) == (0.8, 9, ((1, 2.0),))


def test_invalid_proto_value_raises_sampling_error_naming_the_field() -> None:
    with pytest.raises(SamplingError) as caught:
        params.from_proto(client_params.to_proto({"top_k": -3}))
    assert caught.value.field == "top_k"


def test_list_strategies_is_generated_from_the_registry() -> None:
    answer = catalog.list_strategies()
    assert {s.name for s in answer.strategies} == {s.name for s in STRATEGIES}
    top_p = next(s for s in answer.strategies if s.name == "top_p")
    (parameter,) = [p for p in top_p.parameters if p.name == "top_p"]
    declared = PARAMETERS["top_p"]
    assert (parameter.type, parameter.range, parameter.default) == ("float", declared.range_text(), "1.0")
    assert top_p.paper and top_p.summary and top_p.stage == "TRUNCATION"

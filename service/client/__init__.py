"""The samplerd client: grpc, protobuf and numpy only (no torch, numba or Ray).

``from samplerd.service.client import SamplerClient``; :class:`SampleSession` and
:class:`GenerateStream` come from ``client.session(...)`` and ``client.generate(...)``;
:class:`SharedMemoryRegion` passes logits by shared memory.
"""

from samplerd.service.client.params import ParameterError
from samplerd.service.client.sampler import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AsyncSamplerClient,
    RowSample,
    SamplerClient,
    SampleResult,
    build_request,
    decode_response,
    decode_row,
    encode_logits,
    field_violations,
    wire_array,
)
from samplerd.service.client.shared_memory import AsyncSharedMemoryRegion, SharedMemoryRegion
from samplerd.service.client.streams import (
    AsyncSampleSession,
    GenerateStream,
    SampleSession,
    SessionStep,
    generate_request,
)

__all__ = [
    "AsyncSampleSession",
    "AsyncSamplerClient",
    "AsyncSharedMemoryRegion",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GenerateStream",
    "ParameterError",
    "RowSample",
    "SampleResult",
    "SampleSession",
    "SamplerClient",
    "SessionStep",
    "SharedMemoryRegion",
    "build_request",
    "decode_response",
    "decode_row",
    "encode_logits",
    "field_violations",
    "generate_request",
    "wire_array",
]

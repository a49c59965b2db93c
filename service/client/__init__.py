"""The samplerd client: grpc, protobuf and numpy only (no torch, numba or Ray).

``from samplerd.service.client import SamplerClient``.
"""

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

__all__ = [
    "AsyncSamplerClient",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RowSample",
    "SampleResult",
    "SamplerClient",
    "build_request",
    "decode_response",
    "decode_row",
    "encode_logits",
    "field_violations",
    "wire_array",
]

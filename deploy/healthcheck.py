"""Container health check: exit 0 when samplerd's grpc.health.v1 service answers SERVING.

Used by the Dockerfile's HEALTHCHECK; reads the port from SAMPLERD_PORT (default 50051).
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    """Check the overall health of the server on localhost; 0 if SERVING, else 1."""
    target = f"localhost:{os.environ.get('SAMPLERD_PORT', '50051')}"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as error:
            print(f"{target}: {error.code().name}", file=sys.stderr)
            return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())

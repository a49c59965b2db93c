"""What gRPC reflection may show: samplerd's own services, not every schema in the process.

grpc's reflection answers file and symbol lookups from the default descriptor pool, which
holds every .proto any imported library loaded (Ray's GCS and autoscaler services among them:
a fingerprint of the Ray version). Reflection here reads a pool of its own that holds only the
files of the services served, with their imports.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor


def own_pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool with ``files`` and everything they import, nothing else."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool

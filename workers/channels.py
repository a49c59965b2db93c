"""Batch channels: one reusable buffer in Ray's object store per batch an actor may have in flight.

Storing each batch with ``ray.put`` creates, seals, reads and frees one plasma object per batch,
through the raylet and Ray's reference counting: for a 1 MB batch on 2 cores that is ~2.5 ms of
CPU across three processes (front end ~1 ms, raylet ~1.2 ms, actor ~0.3 ms) on top of the actor
call. A shared-memory channel (``ray.experimental.channel``) is a mutable object in the same
object store: the front end serialises the batch into it in place (the logits bytes are copied
once, out of band, as with ``ray.put``) and a small actor call tells the actor which channel to
read. The actor reads the batch zero-copy; the buffer stays held while the arrays it read are
alive, so the actor must not keep them past the call. For the same 1 MB batch this costs
~1.8 ms of CPU in all and half the wall time (measured with Ray 2.60 on 2 cores).

The channel's reader never waits for data: the batch is written before the call that reads it is
sent, so the read returns at once (Ray's channel reads busy-poll while they wait, which is why
samplerd does not use compiled graphs, whose readers wait, spinning, all the time). A write
waits until the actor let go of the previous batch, which it did before its previous call
returned; a write that still waits after :data:`WRITE_TIMEOUT_S` means the channel is broken:
the pool retires it (as it does a channel whose call failed) and sends that batch, and those
that find no usable channel of the actor later, with ``ray.put``.

Everything here is optional: :func:`open_channels` returns None where channels are not available
(Ray without the experimental API, a Ray client connection) and the pool then stores each batch
with ``ray.put`` as before; so does a batch larger than a channel (:data:`CHANNEL_BYTES`).
"""

from __future__ import annotations

import logging
from typing import Any

import ray
import ray.util.client

from workers.cluster import resolve

_log = logging.getLogger(__name__)

#: Each channel's buffer, fixed. Ray never frees a channel's buffer (not when the channel is
#: closed or dropped, not when its actor dies: measured with Ray 2.60), and it grows a channel by
#: allocating a new buffer and keeping the old one (growing one to 59 MB in 1 MB steps held
#: 1.7 GB of the object store). So channels are made once at this size and never grown: a batch
#: that does not fit goes by ``ray.put``, whose fixed cost is small beside copying that much.
#: 8 MiB holds 64 rows of a 32k vocabulary in fp32, 16 rows of a 128k one.
CHANNEL_BYTES = 8 << 20

#: How long a write may wait for the actor to release the previous batch (see the module). A
#: free channel is never held, so this only bounds the damage of a bug: small batches are
#: written on the event loop.
WRITE_TIMEOUT_S = 2.0

#: How long opening an actor's channels may take (two small actor calls).
OPEN_TIMEOUT_S = 30.0

#: How long the actor's read may wait for the batch: it was written before the call was sent.
READ_TIMEOUT_S = 10.0


class ChannelBrokenError(RuntimeError):
    """A channel could not take a batch within :data:`WRITE_TIMEOUT_S`."""


def _actor_node_id(actor_self: Any) -> str:
    """Runs inside the actor (through ``__ray_call__``): the id of the node it lives on."""
    return ray.get_runtime_context().get_node_id()


async def open_channels(actor: Any, count: int) -> list[Any] | None:
    """``count`` channels from this process (the writer) to ``actor``, registered on the actor
    (``SamplerActor.attach_channels``); None, with a warning, where channels are not available.

    A front end connected through the Ray client (``ray://``, as in the Kubernetes deployment)
    is not a Ray node, has no object store to write into, and gets None.
    """
    if ray.util.client.ray.is_connected():
        _log.info("connected through the Ray client: batches go by ray.put, not shared-memory channels")
        return None
    try:
        from ray.experimental.channel.shared_memory_channel import Channel

        node_id = await resolve(actor.__ray_call__.remote(_actor_node_id), OPEN_TIMEOUT_S)
        channels = [Channel(None, [(actor, node_id)], CHANNEL_BYTES) for _ in range(count)]
        await resolve(actor.attach_channels.remote(channels), OPEN_TIMEOUT_S)
    except Exception as error:  # an optional speed-up: any failure means "use ray.put"
        _log.warning("no shared-memory batch channels to the sampler actor (%s); batches go by ray.put", error)
        return None
    return channels


def write(channel: Any, value: Any, nbytes: int) -> bool:
    """Serialise ``value`` (holding ``nbytes`` of array data) into ``channel``; False, with the
    channel untouched, when it does not fit in :data:`CHANNEL_BYTES`; :class:`ChannelBrokenError`
    when the actor did not release the previous value in time. Safe to call from a worker thread."""
    if nbytes > CHANNEL_BYTES:
        return False
    # Serialised here, as the channel would, to see the size first: the channel would grow.
    serialized = ray._private.worker.global_worker.get_serialization_context().serialize(value)
    if serialized.total_bytes + len(serialized.metadata) > CHANNEL_BYTES:
        return False
    try:
        channel.write(serialized, timeout=WRITE_TIMEOUT_S)
    except Exception as error:
        raise ChannelBrokenError(f"batch channel did not take the batch: {error}") from error
    return True


def read(channel: Any) -> Any:
    """The value last written into ``channel`` (on the actor)."""
    return channel.read(timeout=READ_TIMEOUT_S)


def register_reader(channel: Any) -> None:
    """Make this process (the actor) a reader of ``channel``."""
    channel.ensure_registered_as_reader()

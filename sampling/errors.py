"""The one error type of the sampler suite.

Every invalid parameter or logits tensor raises :class:`SamplingError`, which names the
offending field, so a caller (the gRPC front end) can map it to INVALID_ARGUMENT with a
field violation without parsing messages.
"""

from __future__ import annotations


class SamplingError(ValueError):
    """Invalid sampling input: ``field`` names what is wrong, ``reason`` says why.

    ``str(error)`` is the reason, which always starts with the field name, e.g.
    ``top_p must be in (0, 1], got 1.5``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason

    def prefixed(self, prefix: str) -> SamplingError:
        """The same error with ``prefix`` put before the field (e.g. ``row_params[3].``)."""
        return SamplingError(prefix + self.field, prefix + self.reason)

"""An on/off switch per thread, for the fused fast paths (on unless a ``with`` block says otherwise)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ThreadSwitch:
    """``switch.is_enabled()``; ``with switch.enabled(False): ...`` turns it off in this thread only."""

    def __init__(self) -> None:
        self._state = threading.local()

    def is_enabled(self) -> bool:
        """Whether the switch is on in this thread (default True)."""
        return getattr(self._state, "enabled", True)

    @contextmanager
    def enabled(self, flag: bool = True) -> Iterator[None]:
        """The switch set to ``flag`` in this thread for the ``with`` block (tests, benchmarks)."""
        before = self.is_enabled()
        self._state.enabled = flag
        try:
            yield
        finally:
            self._state.enabled = before

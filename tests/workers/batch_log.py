"""A dispatcher batch observer that records every executed batch (shared by the worker tests)."""

from __future__ import annotations


class BatchLog:
    """A batch observer that records every executed batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, dict[str, float], str]] = []

    def __call__(self, rows: int, kernel_seconds_by_strategy: dict[str, float], device: str) -> None:
        self.batches.append((rows, kernel_seconds_by_strategy, device))

    @property
    def rows(self) -> list[int]:
        """Rows of each executed batch, in order."""
        return [rows for rows, _, _ in self.batches]

"""The client's own room: it imports grpc, protobuf and numpy only (its errors: tests/service/test_client_errors.py)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_client_loads_neither_torch_nor_numba_nor_ray() -> None:
    script = ("import sys\nimport samplerd.service.client\n"
              "print(sorted({'torch', 'numba', 'ray'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"

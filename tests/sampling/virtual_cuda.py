"""A virtual CUDA device for tests on a machine without one.

:class:`VirtualCuda` is a :class:`torch.overrides.TorchFunctionMode`: inside it, a tensor
made with ``device="cuda"`` (or moved there with ``.to`` / ``.cuda()``) is a CPU tensor
tagged as living on ``cuda:0`` — its ``.device`` says so, and every tensor computed from
it is tagged too. Every op then has its devices checked as a CUDA build checks them (a CPU
tensor mixed with a cuda one is an error unless it is a 0-dim scalar or an index), and
every read of a cuda tensor by the host is counted as a sync (``.item()``, ``.tolist()``,
``bool()`` / ``int()`` / ``float()`` of a tensor, ``.cpu()`` / ``.to("cpu")``,
``nonzero``, boolean-mask indexing, ...), and so is every blocking upload of host data
(``.to("cuda")`` / ``.cuda()`` without ``non_blocking=True``, ``torch.tensor(..., device="cuda")``):
CUDA copies from pageable memory with ``cudaMemcpyAsync`` and then waits for the stream, so
the host waits for all queued work as a read would make it. The op is recorded, not raised,
so one run reports every mismatch; ``.numpy()`` of a cuda tensor is recorded as a mismatch
(CUDA raises there).

What it cannot see: work inside C++ that never returns to Python (custom kernels), and
whether an op has a CUDA kernel at all.
"""

from __future__ import annotations

import traceback
from collections import Counter
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda:0")
_TAG = "_virtual_cuda"

# Reads of a tensor's values by the host: each is a device -> host sync on CUDA.
_SYNC_METHODS = frozenset({
    "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "nonzero",
    "argwhere", "masked_select", "unique", "unique_consecutive", "equal", "allclose", "is_nonzero",
    "__array__", "numpy", "repeat_interleave",
})
# Factories that copy host data: with a cuda device, a blocking upload.
_FACTORIES_FROM_HOST_DATA = frozenset({"tensor", "as_tensor", "new_tensor"})
# Functions whose tensors are allowed on another device: indices, and host-side metadata.
_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})
_FACTORIES_WITH_DEVICE = frozenset({
    "zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "rand", "randn", "randint", "linspace",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "eye", "empty_strided",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "scalar_tensor", "logspace", "tril_indices",
})


def is_cuda(tensor: torch.Tensor) -> bool:
    return getattr(tensor, _TAG, False)


def _tag(value, on_cuda: bool):
    if isinstance(value, torch.Tensor):
        if on_cuda:
            setattr(value, _TAG, True)
        elif hasattr(value, _TAG):
            delattr(value, _TAG)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _tag(item, on_cuda)
    elif hasattr(value, "_fields"):  # torch.return_types
        for item in value:
            _tag(item, on_cuda)
    return value


def _tensors(value, out):
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _tensors(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _tensors(item, out)
    return out


def _host_index(index) -> bool:
    """Whether an index holds a host tensor (not a 0-dim one) or a Python list of ints."""
    if isinstance(index, torch.Tensor):
        return index.dim() > 0 and not is_cuda(index)
    if isinstance(index, list):
        return True
    if isinstance(index, tuple):
        return any(_host_index(item) for item in index)
    return False


def _device_kind(device) -> str | None:
    """'cuda' / 'cpu' for a device-like argument, None for anything else."""
    if isinstance(device, torch.device):
        return device.type
    if isinstance(device, str) and device.split(":")[0] in ("cuda", "cpu"):
        return device.split(":")[0]
    return None


def _name(func) -> str:
    name = getattr(func, "__name__", str(func))
    if name in ("__get__", "__set__"):
        return "property:" + getattr(getattr(func, "__self__", None), "__name__", "?")
    return name


class VirtualCuda(TorchFunctionMode):
    """See the module docstring. ``syncs`` counts host reads by op name, ``mismatches``
    lists the cross-device ops (each with the innermost project frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.mismatches: list[str] = []

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())

    def _where(self) -> str:
        for frame in reversed(traceback.extract_stack()[:-3]):
            if "/sampling/" in frame.filename or "/workers/" in frame.filename:
                return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.name}:{frame.lineno}"
        return "?"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        if name == "property:device":
            return CUDA if is_cuda(args[0]) else torch.device("cpu")
        if name == "property:is_cuda":
            return is_cuda(args[0])
        inputs = _tensors(args, []) + _tensors(kwargs, [])
        on_cuda = any(is_cuda(t) for t in inputs)
        if name == "pin_memory":
            return args[0]  # no pinned memory without CUDA; a host-side detail
        if name in ("to", "cuda", "cpu"):
            return self._move(func, name, args, kwargs)
        target = None
        if "device" in kwargs:
            target = _device_kind(kwargs["device"])
            if target == "cuda":
                kwargs["device"] = "cpu"
        if name in _SYNC_METHODS and on_cuda:
            if name in ("numpy", "__array__"):
                self.mismatches.append(f"{name} of a cuda tensor at {self._where()}")
            self.syncs[name] += 1
        elif name == "__getitem__" and on_cuda and any(t.dtype == torch.bool for t in _tensors(args[1:], [])):
            self.syncs["boolean mask index"] += 1
        elif name in _INDEXING and on_cuda and _host_index(args[1:]):
            self.syncs["blocking upload"] += 1  # torch copies a host index to the device
        if name not in _INDEXING:
            devices = {is_cuda(t) for t in inputs if t.dim() > 0}
            if len(devices) > 1:
                self.mismatches.append(f"{name} mixes cpu and cuda tensors at {self._where()}")
        result = func(*args, **kwargs)
        if name.startswith("property:") or name in ("from_numpy", "numpy", "__array__"):
            return result
        if name in _SYNC_METHODS and not isinstance(result, torch.Tensor) and not isinstance(result, tuple):
            return result
        if target is not None and name in _FACTORIES_WITH_DEVICE:
            if target == "cuda" and name in _FACTORIES_FROM_HOST_DATA:
                self.syncs["blocking upload"] += 1
            return _tag(result, target == "cuda")
        return _tag(result, on_cuda)

    def _move(self, func, name, args, kwargs):
        """``.to`` / ``.cuda()`` / ``.cpu()``: a move to the other device is a new tensor; a
        move to the host is a sync."""
        tensor = args[0]
        target = {"cuda": "cuda", "cpu": "cpu"}.get(name)
        if "device" in kwargs:
            target = _device_kind(kwargs.pop("device")) or target
        rest = []
        for arg in args[1:]:
            kind = _device_kind(arg)
            if kind is None and isinstance(arg, torch.Tensor):
                kind = "cuda" if is_cuda(arg) else "cpu"
                rest.append(arg.dtype)
            if kind is not None:
                target = kind
                continue
            rest.append(arg)
        if name == "cuda":
            kwargs = {key: value for key, value in kwargs.items() if key == "non_blocking"}
            func = torch.Tensor.to
        result = func(tensor, *rest, **kwargs)
        if target is None:
            return _tag(result, is_cuda(tensor))
        if (target == "cuda") != is_cuda(tensor):
            if target == "cpu":
                self.syncs["cpu" if name == "cpu" else "to(cpu)"] += 1
            elif not kwargs.get("non_blocking", False):
                self.syncs["blocking upload"] += 1
            if result is tensor:
                result = tensor.clone()
        return _tag(result, target == "cuda")

    @contextmanager
    def suspended(self):
        """Run real (CPU) code inside, unseen: e.g. a Triton kernel under the interpreter."""
        with torch._C.DisableTorchFunction():
            yield

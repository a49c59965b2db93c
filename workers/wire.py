"""The batch link's value format: plain data and arrays, never code.

A pickle names the functions to call to rebuild it, and even an allow-list of numpy's own
reconstructors let a forged dtype build an array of attacker-chosen pointers. This format can
only describe: None, bools, 64-bit integers, floats, text, bytes, lists, tuples, frozensets,
dicts, numpy arrays whose dtype is one of :data:`DTYPES` (a closed list of plain numeric types,
little endian) and instances of a closed list of dataclasses (``types``), rebuilt from their
attributes without running any code of theirs. Arrays travel out of band: the value names a
buffer by index, with the dtype code and shape, and the decoder checks that the buffer holds
exactly that many bytes.

Layout of the encoded value (little endian): one tag byte per value, then

- ``INT``: int64; ``UINT``: uint64 (for seeds of 2**63 and more); ``FLOAT``: float64;
- ``STR`` / ``BYTES``: uint32 length and the bytes (text in UTF-8);
- ``LIST`` / ``TUPLE`` / ``FROZENSET``: uint32 count and the items; ``DICT``: count and
  key, value pairs; ``INT_LIST`` / ``INT_TUPLE``: a list or tuple of integers (token
  histories, steps) as a uint32 count and int64 values, converted in one go; ``STR_LIST`` /
  ``STR_TUPLE``: a count, the uint32 byte length of each text, then the texts;
- ``ARRAY``: dtype code (uint8), ndim (uint8), each dimension (uint64), buffer index (uint32);
- ``RECORD``: type index (uint16) and the values of its attributes in the type's order;
  ``REF``: uint32 index of a record decoded earlier in the same value (equal records are sent
  once: a batch's rows mostly share their parameters).

The decoder refuses (:class:`WireError`) anything else: unknown tags, counts larger than the
bytes left, nesting deeper than :data:`MAX_DEPTH`, trailing bytes, unhashable dict keys.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

(NONE, TRUE, FALSE, INT, UINT, FLOAT, STR, BYTES, LIST, TUPLE, FROZENSET, DICT, ARRAY, RECORD, REF, INT_LIST,
 INT_TUPLE, STR_LIST, STR_TUPLE) = range(19)
#: The only array dtypes that travel, by code.
DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(name) for name in (
    "<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "?"))
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}
MAX_DEPTH = 32
MAX_NDIM = 8
_U8, _U16, _U32, _I64, _U64, _F64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<q", "<Q", "<d"))
#: An array's dtype code and ndim, then per ndim its dimensions and buffer index.
_ARRAY_HEAD = struct.Struct("<BB")
_ARRAY_TAILS = tuple(struct.Struct(f"<{ndim}QI") for ndim in range(MAX_NDIM + 1))


class WireError(ValueError):
    """A value that cannot be encoded, or bytes that do not decode to one."""


class Codec:
    """Encodes and decodes values made of plain data, arrays and instances of ``types`` (both
    ends must list the same types in the same order)."""

    def __init__(self, types: Iterable[type] = ()) -> None:
        self._types = tuple(types)
        self._index = {cls: i for i, cls in enumerate(self._types)}
        self._attributes = tuple(_attributes(cls) for cls in self._types)

    # -- encoding --------------------------------------------------------------------------

    def encode(self, value: Any) -> tuple[bytes, list[memoryview]]:
        """The encoded value and the raw bytes of its arrays, in buffer order."""
        out = bytearray()
        buffers: list[memoryview] = []
        self._encode(value, out, buffers, {}, 0)
        return bytes(out), buffers

    def _encode(self, value: Any, out: bytearray, buffers: list[memoryview], records: dict, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise WireError(f"values nest deeper than {MAX_DEPTH}")
        kind = type(value)
        if kind is float:  # the common plain types first, by identity (this runs per field of every row)
            out.append(FLOAT)
            out += _F64.pack(value)
        elif kind is int:
            self._encode_int(value, out)
        elif value is None:
            out.append(NONE)
        elif kind is bool or kind is np.bool_:
            out.append(TRUE if value else FALSE)
        elif kind is str:
            data = value.encode()
            out.append(STR)
            out += _U32.pack(len(data))
            out += data
        elif kind in self._index:
            self._encode_record(value, out, buffers, records, depth)
        elif isinstance(value, np.ndarray):
            self._encode_array(value, out, buffers)
        elif isinstance(value, (list, tuple)):
            self._encode_sequence(value, out, buffers, records, depth)
        elif isinstance(value, np.integer):
            self._encode_int(int(value), out)
        elif isinstance(value, (float, np.floating)):
            out.append(FLOAT)
            out += _F64.pack(float(value))
        elif isinstance(value, (bytes, bytearray)):
            out.append(BYTES)
            out += _U32.pack(len(value))
            out += value
        elif isinstance(value, (frozenset, set)):
            out.append(FROZENSET)
            out += _U32.pack(len(value))
            for item in value:
                self._encode(item, out, buffers, records, depth + 1)
        elif isinstance(value, dict):
            out.append(DICT)
            out += _U32.pack(len(value))
            for key, item in value.items():
                self._encode(key, out, buffers, records, depth + 1)
                self._encode(item, out, buffers, records, depth + 1)
        else:
            raise WireError(f"{kind.__module__}.{kind.__qualname__} may not travel over a batch link")

    @staticmethod
    def _encode_int(number: int, out: bytearray) -> None:
        if -(1 << 63) <= number < (1 << 63):
            out.append(INT)
            out += _I64.pack(number)
        elif 0 <= number < (1 << 64):
            out.append(UINT)
            out += _U64.pack(number)
        else:
            raise WireError(f"integer {number} does not fit 64 bits")

    def _encode_sequence(self, value: list | tuple, out: bytearray, buffers: list[memoryview], records: dict,
                         depth: int) -> None:
        is_list = isinstance(value, list)
        if value and _all_ints(value):
            out.append(INT_LIST if is_list else INT_TUPLE)
            out += _U32.pack(len(value))
            out += np.array(value, dtype="<i8").tobytes()
        elif value and all(type(item) is str for item in value):
            encoded = [item.encode() for item in value]
            out.append(STR_LIST if is_list else STR_TUPLE)
            out += _U32.pack(len(value))
            out += np.array([len(item) for item in encoded], dtype="<u4").tobytes()
            out += b"".join(encoded)
        else:
            out.append(LIST if is_list else TUPLE)
            out += _U32.pack(len(value))
            for item in value:
                self._encode(item, out, buffers, records, depth + 1)

    def _encode_record(self, value: Any, out: bytearray, buffers: list[memoryview], records: dict,
                       depth: int) -> None:
        try:
            key = (type(value), value)
            seen = records.get(key)
        except TypeError:  # unhashable (it holds arrays): sent in full each time
            key, seen = None, None
        if seen is not None:
            out.append(REF)
            out += _U32.pack(seen)
            return
        index = self._index[type(value)]
        out.append(RECORD)
        out += _U16.pack(index)
        state = vars(value)
        for name in self._attributes[index]:
            self._encode(state[name], out, buffers, records, depth + 1)
        if key is not None:
            records[key] = len(records)
        else:
            records[object()] = len(records)  # keeps the numbering in step with the decoder

    @staticmethod
    def _encode_array(array: np.ndarray, out: bytearray, buffers: list[memoryview]) -> None:
        code = _DTYPE_CODES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
        if code is None:
            raise WireError(f"arrays of dtype {array.dtype} may not travel over a batch link")
        if array.ndim > MAX_NDIM:
            raise WireError(f"arrays of more than {MAX_NDIM} dimensions may not travel over a batch link")
        flat = np.ascontiguousarray(array, dtype=DTYPES[code]).reshape(-1)
        out.append(ARRAY)
        out += _ARRAY_HEAD.pack(code, array.ndim)
        out += _ARRAY_TAILS[array.ndim].pack(*array.shape, len(buffers))
        buffers.append(memoryview(flat.view(np.uint8)))

    # -- decoding --------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview, buffers: Sequence[Any]) -> Any:
        """The value encoded in ``data`` whose arrays are in ``buffers``; :class:`WireError`
        for anything that is not exactly one well-formed value."""
        reader = _Reader(memoryview(data).cast("B"), buffers, self._types, self._attributes)
        value = reader.value(0)
        if reader.at != len(reader.data):
            raise WireError(f"{len(reader.data) - reader.at} bytes after the value")
        return value


def _all_ints(values: list | tuple) -> bool:
    """Whether every item is a plain int that fits int64 (bools are not: they come back as bools)."""
    return all(type(item) is int for item in values) and -(1 << 63) <= min(values) and max(values) < (1 << 63)


def _attributes(cls: type) -> tuple[str, ...]:
    """The attributes an instance of ``cls`` carries: its dataclass fields and, for classes
    whose ``__post_init__`` derives more, those too (read off a default instance)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} is not a dataclass")
    names = [f.name for f in dataclasses.fields(cls)]
    try:
        extra = [name for name in vars(cls()) if name not in names]
    except TypeError:  # no default instance: its fields are all it has
        extra = []
    return tuple(names + extra)


class _Reader:
    __slots__ = ("data", "at", "buffers", "types", "attributes", "records")

    def __init__(self, data: memoryview, buffers: Sequence[Any], types: tuple[type, ...],
                 attributes: tuple[tuple[str, ...], ...]) -> None:
        self.data = data
        self.at = 0
        self.buffers = buffers
        self.types = types
        self.attributes = attributes
        self.records: list[Any] = []

    def take(self, size: int) -> memoryview:
        end = self.at + size
        if end > len(self.data):
            raise WireError("the value ends early")
        chunk = self.data[self.at:end]
        self.at = end
        return chunk

    def unpack(self, layout: struct.Struct) -> Any:
        at = self.at
        if at + layout.size > len(self.data):
            raise WireError("the value ends early")
        self.at = at + layout.size
        return layout.unpack_from(self.data, at)[0]

    def unpack_all(self, layout: struct.Struct) -> tuple:
        at = self.at
        if at + layout.size > len(self.data):
            raise WireError("the value ends early")
        self.at = at + layout.size
        return layout.unpack_from(self.data, at)

    def count(self, least_bytes_each: int) -> int:
        count = self.unpack(_U32)
        if count * least_bytes_each > len(self.data) - self.at:
            raise WireError(f"a count of {count} is more than the bytes left can hold")
        return count

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"values nest deeper than {MAX_DEPTH}")
        tag = self.unpack(_U8)
        if tag == NONE:
            return None
        if tag == TRUE:
            return True
        if tag == FALSE:
            return False
        if tag == INT:
            return self.unpack(_I64)
        if tag == UINT:
            return self.unpack(_U64)
        if tag == FLOAT:
            return self.unpack(_F64)
        if tag == STR:
            try:
                return str(self.take(self.count(1)), "utf-8")
            except UnicodeDecodeError:
                raise WireError("text that is not UTF-8") from None
        if tag == BYTES:
            return bytes(self.take(self.count(1)))
        if tag in (INT_LIST, INT_TUPLE):
            count = self.count(8)
            items = np.frombuffer(self.take(8 * count), dtype="<i8").tolist()
            return items if tag == INT_LIST else tuple(items)
        if tag in (STR_LIST, STR_TUPLE):
            count = self.count(4)
            lengths = np.frombuffer(self.take(4 * count), dtype="<u4").tolist()
            blob = bytes(self.take(sum(lengths)))
            items, at = [], 0
            try:
                for length in lengths:
                    items.append(blob[at:at + length].decode())
                    at += length
            except UnicodeDecodeError:
                raise WireError("text that is not UTF-8") from None
            return items if tag == STR_LIST else tuple(items)
        if tag in (LIST, TUPLE, FROZENSET):
            items = [self.value(depth + 1) for _ in range(self.count(1))]
            if tag == LIST:
                return items
            if tag == TUPLE:
                return tuple(items)
            return frozenset(self._hashable(items))
        if tag == DICT:
            pairs = [(self.value(depth + 1), self.value(depth + 1)) for _ in range(self.count(2))]
            return dict(zip(self._hashable([k for k, _ in pairs]), (v for _, v in pairs), strict=True))
        if tag == ARRAY:
            return self.array()
        if tag == RECORD:
            return self.record(depth)
        if tag == REF:
            index = self.unpack(_U32)
            if index >= len(self.records):
                raise WireError(f"reference to record {index} of {len(self.records)}")
            return self.records[index]
        raise WireError(f"unknown tag {tag}")

    @staticmethod
    def _hashable(items: list[Any]) -> list[Any]:
        for item in items:
            try:
                hash(item)
            except TypeError:
                raise WireError(f"a {type(item).__name__} cannot be a set item or dict key") from None
        return items

    def array(self) -> np.ndarray:
        code, ndim = self.unpack_all(_ARRAY_HEAD)
        if code >= len(DTYPES):
            raise WireError(f"unknown dtype code {code}")
        if ndim > MAX_NDIM:
            raise WireError(f"an array of {ndim} dimensions")
        *shape, index = self.unpack_all(_ARRAY_TAILS[ndim])
        if index >= len(self.buffers):
            raise WireError(f"buffer {index} of {len(self.buffers)}")
        buffer = self.buffers[index]
        dtype = DTYPES[code]
        elements = 1
        for size in shape:
            elements *= size
        nbytes = memoryview(buffer).nbytes
        if elements * dtype.itemsize != nbytes:
            raise WireError(f"an array of shape {tuple(shape)} and dtype {dtype} needs {elements * dtype.itemsize} "
                            f"bytes, its buffer holds {nbytes}")
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    def record(self, depth: int) -> Any:
        index = self.unpack(_U16)
        if index >= len(self.types):
            raise WireError(f"unknown record type {index}")
        cls = self.types[index]
        values = {name: self.value(depth + 1) for name in self.attributes[index]}
        instance = object.__new__(cls)  # as pickle does: attributes restored, no code of the class runs
        instance.__dict__.update(values)
        self.records.append(instance)
        return instance

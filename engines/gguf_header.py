"""Read one string from a GGUF file's metadata without loading the file.

The metadata key/value pairs sit right after the header; `general.architecture` is among the
first. gguf's GGUFReader parses every tensor's description too (15 s for Gemma 3 270M here),
which is too slow for a check that should answer before any slow step.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# GGUF value types -> size in bytes of a fixed-size value (strings and arrays are walked).
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """The file is not a GGUF file this reader understands."""


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise GGUFHeaderError("the file ends inside its metadata")
    return data


def _u32(stream: BinaryIO) -> int:
    value: int = struct.unpack("<I", _read(stream, 4))[0]
    return value


def _u64(stream: BinaryIO) -> int:
    value: int = struct.unpack("<Q", _read(stream, 8))[0]
    return value


def _string(stream: BinaryIO) -> str:
    return _read(stream, _u64(stream)).decode("utf-8", errors="replace")


def _skip(stream: BinaryIO, value_type: int) -> None:
    if value_type == _STRING:
        stream.seek(_u64(stream), 1)
    elif value_type == _ARRAY:
        item_type, count = _u32(stream), _u64(stream)
        if item_type in _FIXED_SIZES:
            stream.seek(_FIXED_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _skip(stream, item_type)
    elif value_type in _FIXED_SIZES:
        stream.seek(_FIXED_SIZES[value_type], 1)
    else:
        raise GGUFHeaderError(f"unknown GGUF value type {value_type}")


def metadata_string(path: Path, key: str) -> str | None:
    """The string stored under `key`, or None when the file has no such key."""
    with path.open("rb") as stream:
        if _read(stream, 4) != b"GGUF":
            raise GGUFHeaderError(f"{path} is not a GGUF file (no GGUF header)")
        version = _u32(stream)
        if version < 2:
            raise GGUFHeaderError(f"{path} is GGUF version {version}; version 2 or later needed")
        _u64(stream)  # tensor count
        for _ in range(_u64(stream)):
            name, value_type = _string(stream), _u32(stream)
            if name == key and value_type == _STRING:
                return _string(stream)
            _skip(stream, value_type)
    return None

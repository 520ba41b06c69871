"""A GGUF "shape twin": a real model's header (metadata, tokenizer, chat template, tensor list)
with seeded random weights of the same types and shapes.

The real SmolLM2 GGUF (98 MB) cannot travel to the GPU machine (64 MiB for everything), but its
header (1.8 MB) can. The twin runs exactly the kernels the real model runs, on the same shapes
and quantisation types, so its tokens per second are the real model's; its text is noise.
Standard library only: the GPU machine may have nothing else.

Usage:
  python -m bench.gpu.twin skeleton MODEL.gguf SKELETON   # here: cut the header off the model
  python -m bench.gpu.twin write SKELETON TWIN.gguf       # there: header + random weights
"""

from __future__ import annotations

import argparse
import gzip
import random
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

# GGUF value types -> size in bytes of a fixed-size value (strings and arrays are walked).
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINT32, _STRING, _ARRAY = 4, 8, 9
# ggml types -> (values per block, bytes per block), for the types a twin can fill.
_F32, _F16, _Q4_0, _Q4_1, _Q8_0 = 0, 1, 2, 3, 8
_BLOCKS = {_F32: (1, 4), _F16: (1, 2), _Q4_0: (32, 18), _Q4_1: (32, 20), _Q8_0: (32, 34)}
_TYPE_NAMES = {_F32: "F32", _F16: "F16", _Q4_0: "Q4_0", _Q4_1: "Q4_1", _Q8_0: "Q8_0"}
# Weights drawn uniformly from [-SPREAD, SPREAD]: a standard deviation of 0.02, like a fresh init.
SPREAD = 0.02 * 3**0.5


class GGUFLayoutError(ValueError):
    """The file is not a GGUF file this module can read or fill."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def values(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        if self.ggml_type not in _BLOCKS:
            raise GGUFLayoutError(f"{self.name}: ggml type {self.ggml_type} is not supported here")
        per_block, block_bytes = _BLOCKS[self.ggml_type]
        return self.values // per_block * block_bytes


@dataclass(frozen=True)
class Layout:
    data_offset: int  # where the tensor data starts in the file (the header's length)
    alignment: int
    tensors: tuple[Tensor, ...]

    @property
    def data_bytes(self) -> int:
        last = max(self.tensors, key=lambda tensor: tensor.offset)
        return last.offset + last.nbytes


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise GGUFLayoutError("the file ends inside its header")
    return data


def _unpack(stream: BinaryIO, fmt: str) -> int:
    value: int = struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]
    return value


def _string(stream: BinaryIO) -> str:
    return _read(stream, _unpack(stream, "<Q")).decode("utf-8", errors="replace")


def _skip(stream: BinaryIO, value_type: int) -> None:
    if value_type == _STRING:
        _read(stream, _unpack(stream, "<Q"))
    elif value_type == _ARRAY:
        item_type, count = _unpack(stream, "<I"), _unpack(stream, "<Q")
        if item_type in _FIXED_SIZES:
            _read(stream, _FIXED_SIZES[item_type] * count)
        else:
            for _ in range(count):
                _skip(stream, item_type)
    elif value_type in _FIXED_SIZES:
        _read(stream, _FIXED_SIZES[value_type])
    else:
        raise GGUFLayoutError(f"unknown GGUF value type {value_type}")


def _open(path: Path) -> BinaryIO:
    """The file, or what it holds when it is gzipped (`.gz`: skeletons travel compressed)."""
    if path.suffix == ".gz":
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def read_layout(path: Path) -> Layout:
    """The header's length and the tensor list (reads the header only)."""
    with _open(path) as stream:
        if _read(stream, 4) != b"GGUF":
            raise GGUFLayoutError(f"{path} is not a GGUF file")
        if (version := _unpack(stream, "<I")) < 2:
            raise GGUFLayoutError(f"{path} is GGUF version {version}; 2 or later needed")
        tensor_count, kv_count = _unpack(stream, "<Q"), _unpack(stream, "<Q")
        alignment = 32
        for _ in range(kv_count):
            key, value_type = _string(stream), _unpack(stream, "<I")
            if key == "general.alignment" and value_type == _UINT32:
                alignment = _unpack(stream, "<I")
            else:
                _skip(stream, value_type)
        tensors = []
        for _ in range(tensor_count):
            name = _string(stream)
            shape = tuple(_unpack(stream, "<Q") for _ in range(_unpack(stream, "<I")))
            ggml_type, offset = _unpack(stream, "<I"), _unpack(stream, "<Q")
            tensors.append(Tensor(name, shape, ggml_type, offset))
        data_offset = -(-stream.tell() // alignment) * alignment
    return Layout(data_offset, alignment, tuple(tensors))


def cut_skeleton(model: Path, skeleton: Path) -> Layout:
    """Write the model's header (everything before the tensor data) to `skeleton` (gzipped
    when its name ends in `.gz`)."""
    layout = read_layout(model)
    unsupported = {t.ggml_type for t in layout.tensors} - set(_BLOCKS)
    if unsupported:
        raise GGUFLayoutError(f"{model}: no twin for ggml types {sorted(unsupported)}")
    with model.open("rb") as source:
        header = source.read(layout.data_offset)
    if skeleton.suffix == ".gz":
        skeleton.write_bytes(gzip.compress(header, compresslevel=9, mtime=0))
    else:
        skeleton.write_bytes(header)
    return layout


def _f16(value: float) -> bytes:
    return struct.pack("<e", value)


def _blocks(header: bytes, quant_bytes: int, count: int, rng: random.Random) -> Iterator[bytes]:
    """`count` blocks of one fixed scale header and random quants, in chunks of ~1 MiB."""
    per_chunk = max(1, (1 << 20) // (len(header) + quant_bytes))
    for start in range(0, count, per_chunk):
        n = min(per_chunk, count - start)
        quants = rng.randbytes(n * quant_bytes)
        yield b"".join(header + quants[i * quant_bytes : (i + 1) * quant_bytes] for i in range(n))


def tensor_data(tensor: Tensor, rng: random.Random) -> Iterator[bytes]:
    """Random weights of `tensor`'s type; 1-D float tensors (the norms) are ones."""
    if tensor.ggml_type in (_F32, _F16):
        code = "f" if tensor.ggml_type == _F32 else "e"
        if len(tensor.shape) == 1:
            yield struct.pack(f"<{tensor.values}{code}", *([1.0] * tensor.values))
            return
        values = [rng.uniform(-SPREAD, SPREAD) for _ in range(tensor.values)]
        if code == "f":
            yield array("f", values).tobytes()
        else:
            yield struct.pack(f"<{tensor.values}e", *values)
        return
    blocks = tensor.values // 32
    if tensor.ggml_type == _Q4_0:  # d, then 32 nibbles: value = d * (q - 8)
        yield from _blocks(_f16(SPREAD / 8), 16, blocks, rng)
    elif tensor.ggml_type == _Q4_1:  # d, m, then 32 nibbles: value = d * q + m
        yield from _blocks(_f16(2 * SPREAD / 15) + _f16(-SPREAD), 16, blocks, rng)
    elif tensor.ggml_type == _Q8_0:  # d, then 32 int8: value = d * q
        yield from _blocks(_f16(SPREAD / 127), 32, blocks, rng)
    else:
        raise GGUFLayoutError(f"{tensor.name}: ggml type {tensor.ggml_type} is not supported")


def write_twin(skeleton: Path, twin: Path, seed: int = 0) -> Layout:
    """The skeleton's header followed by seeded random weights at the header's offsets."""
    layout = read_layout(skeleton)
    with _open(skeleton) as stream:
        header = stream.read(layout.data_offset)
    rng = random.Random(seed)
    with twin.open("wb") as out:
        out.write(header)
        for tensor in sorted(layout.tensors, key=lambda t: t.offset):
            position = out.tell() - layout.data_offset
            if position > tensor.offset:
                raise GGUFLayoutError(f"{tensor.name}: tensors overlap in {skeleton}")
            out.write(b"\0" * (tensor.offset - position))
            written = sum(out.write(chunk) for chunk in tensor_data(tensor, rng))
            if written != tensor.nbytes:
                raise GGUFLayoutError(f"{tensor.name}: wrote {written} of {tensor.nbytes} bytes")
        end = out.tell() - layout.data_offset
        out.write(b"\0" * (-end % layout.alignment))
    return layout


def describe(layout: Layout) -> str:
    sizes: dict[str, int] = {}
    for tensor in layout.tensors:
        name = _TYPE_NAMES.get(tensor.ggml_type, str(tensor.ggml_type))
        sizes[name] = sizes.get(name, 0) + tensor.nbytes
    parts = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sorted(sizes.items()))
    return (
        f"{len(layout.tensors)} tensors, header {layout.data_offset / 2**20:.2f} MiB, "
        f"data {layout.data_bytes / 2**20:.1f} MiB ({parts})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("skeleton", help="cut a GGUF model's header off")
    cut.add_argument("model", type=Path)
    cut.add_argument("skeleton", type=Path)
    write = commands.add_parser("write", help="write a twin from a skeleton")
    write.add_argument("skeleton", type=Path)
    write.add_argument("twin", type=Path)
    write.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        if args.command == "skeleton":
            layout = cut_skeleton(args.model, args.skeleton)
        else:
            layout = write_twin(args.skeleton, args.twin, args.seed)
    except (OSError, GGUFLayoutError) as error:
        print(f"twin: {error}", file=sys.stderr)
        return 1
    print(describe(layout))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading a safetensors file (checkpoint weights, a saved hook) without trusting it.

A weights file is data, never a reason to allocate what it says. Its header (an 8-byte
little-endian length, then that much JSON naming each tensor's dtype, shape and byte range)
is read and bounded here first; the shapes the model expects (built on the meta device, so
nothing is allocated) are compared with it; only a file that fits is loaded. Whatever is
wrong is a ValueError saying what, for the caller to name the file in its own error."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's name -> shape, from a header checked against the file's own size."""
    with path.open("rb") as f:
        size = path.stat().st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"is {size} bytes, too short for a safetensors file (truncated?)")
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"is not a safetensors file: its header length says {length} "
                             f"bytes, the file has {size} (truncated, or another format such "
                             "as a pickle?)")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"has a corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("has a corrupt safetensors header (not a JSON object)")
    data_bytes = size - 8 - length
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(_is_count(n) for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(_is_count(n) for n in offsets) and offsets[0] <= offsets[1] <= data_bytes
                and entry.get("dtype") in _ITEM_BYTES
                and offsets[1] - offsets[0] == math.prod(shape) * _ITEM_BYTES[entry["dtype"]]):
            raise ValueError(f"has a corrupt safetensors header (tensor {name[:80]!r}: dtype, "
                             "shape and byte range disagree, or lie beyond the file)")
        shapes[name] = tuple(shape)
    return shapes


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_checked(path: Path, expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of ``path``, once its header names exactly the tensors of ``expected``
    (a meta-device state_dict will do) with the same shapes; ValueError saying what differs."""
    shapes = read_header(path)
    problems = sorted(
        [f"missing {k}" for k in expected.keys() - shapes.keys()]
        + [f"unexpected {k[:80]}" for k in shapes.keys() - expected.keys()]
        + [f"{k} has shape {shapes[k]}, expected {tuple(expected[k].shape)}"
           for k in expected.keys() & shapes.keys() if shapes[k] != tuple(expected[k].shape)])
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError("does not hold the tensors its settings describe: "
                         + "; ".join(problems[:3]) + more)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot be read ({exc})") from None

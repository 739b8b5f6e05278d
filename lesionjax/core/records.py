"""The shard schema: the one contract between ``data_prep`` and the training pipeline.

A shard is an ArrayRecord file holding one record per axial slice. A record is

    b"LJR1" | uint32 little-endian header length | header (UTF-8 JSON) | payload

The header names the case, the slice index and, for every array, its dtype, shape and byte
offset in the payload. Decoding is ``np.frombuffer`` on slices of the record: no pickle, no
copies beyond what the caller asks for, readable from any language.

Arrays of a slice record (H, W = in-plane size of the shard):

    image   (H, W, C) uint8   one channel per intensity window (see ``windows.py``)
    mask    (H, W)    uint8   binary lesion mask {0, 1}
    labels  (6,)      uint8   per-slice labels in ``labels.SLICE_LABELS`` order
    icm     (H, W)    uint8   optional intracranial-cavity mask {0, 1}
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"LJR1"
SCHEMA_VERSION = 2  # 2: the manifest holds the preprocessing plan and each volume's grid chain
_HEADER_LEN = struct.Struct("<I")


def encode_record(case_id: str, slice_index: int, arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serializes named arrays of one slice into a record (C order, native little-endian)."""
    specs = []
    chunks = []
    offset = 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        specs.append(
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        )
        chunks.append(array.tobytes())
        offset += array.nbytes
    header = json.dumps(
        {"case": case_id, "slice": int(slice_index), "arrays": specs}, separators=(",", ":")
    ).encode()
    return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header, *chunks])


def decode_record(record: bytes) -> dict[str, Any]:
    """Inverse of ``encode_record``: {"case": str, "slice": int, <name>: np.ndarray, ...}.

    Arrays are read-only views into ``record``.
    """
    if record[:4] != MAGIC:
        raise ValueError(f"not a lesionjax slice record (magic {record[:4]!r} != {MAGIC!r})")
    (header_len,) = _HEADER_LEN.unpack_from(record, 4)
    start = 8 + header_len
    header = json.loads(record[8:start])
    out: dict[str, Any] = {"case": header["case"], "slice": header["slice"]}
    for spec in header["arrays"]:
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        out[spec["name"]] = np.frombuffer(
            record, dtype=dtype, count=count, offset=start + spec["offset"]
        ).reshape(spec["shape"])
    return out

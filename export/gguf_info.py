"""Read back what a GGUF file holds: its metadata and the type of every tensor.

gguf.GGUFReader builds numpy views of every vocabulary string and merge, which takes tens of
seconds for a real vocabulary; this reads the same header sequentially and keeps only scalars,
strings and the tensor table (big arrays are skipped and reported by length)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import gguf

# GGUF value type -> struct format of one scalar
SCALARS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.UINT64: "<Q", gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d", gguf.GGUFValueType.BOOL: "<?",
}
SMALL_ARRAY = 64


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "<Q")).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: gguf.GGUFValueType) -> Any:
    if vtype == gguf.GGUFValueType.STRING:
        return _string(f)
    if vtype in SCALARS:
        return _read(f, SCALARS[vtype])
    if vtype == gguf.GGUFValueType.ARRAY:
        item_type = gguf.GGUFValueType(_read(f, "<I"))
        count = _read(f, "<Q")
        if count <= SMALL_ARRAY:
            return [_value(f, item_type) for _ in range(count)]
        if item_type == gguf.GGUFValueType.STRING:
            for _ in range(count):
                f.seek(_read(f, "<Q"), 1)
        else:
            f.seek(struct.calcsize(SCALARS[item_type]) * count, 1)
        return {"array_length": count}
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_header(path: Path) -> tuple[dict[str, Any], list[dict]]:
    """(metadata, tensors) where tensors are {name, type, shape, offset} with shape in ggml order
    and offset from the start of the data section (metadata["data_start"] in the file)."""
    with open(path, "rb") as f:
        if _read(f, "<I") != gguf.GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        _read(f, "<I")  # version
        n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
        metadata = {}
        for _ in range(n_kv):
            key = _string(f)
            metadata[key] = _value(f, gguf.GGUFValueType(_read(f, "<I")))
        tensors = []
        for _ in range(n_tensors):
            name = _string(f)
            shape = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
            qtype = gguf.GGMLQuantizationType(_read(f, "<I"))
            offset = _read(f, "<Q")
            tensors.append({"name": name, "type": qtype.name, "shape": shape, "offset": offset})
        alignment = int(metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        metadata["data_start"] = (f.tell() + alignment - 1) // alignment * alignment
    return metadata, tensors


def tensor_arrays(path: Path) -> dict[str, tuple[str, Any]]:
    """name -> (type name, the tensor's bytes or values as a read-only memory map: [rows, bytes
    per row] for quantized types, [rows, columns] for float ones), without gguf.GGUFReader's
    seconds of vocabulary parsing."""
    import numpy as np

    metadata, tensors = read_header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for t in tensors:
        kind = gguf.GGMLQuantizationType[t["type"]]
        block, size = gguf.GGML_QUANT_SIZES[kind]
        rows = int(np.prod(t["shape"][1:], dtype=np.int64))
        row_bytes = t["shape"][0] // block * size
        start = metadata["data_start"] + t["offset"]
        data = raw[start:start + rows * row_bytes].reshape(rows, row_bytes)
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = data.view(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)
        out[t["name"]] = (t["type"], data)
    return out


def describe_gguf(path: Path) -> dict:
    """The tensor types llama.cpp actually wrote (counted), the file type, and the vocabulary
    keys a runtime relies on."""
    metadata, tensors = read_header(path)
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t["type"]] = counts.get(t["type"], 0) + 1
    file_type = metadata.get("general.file_type")
    try:
        file_type = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        pass
    return {"tensor_types": dict(sorted(counts.items())), "tensors": len(tensors), "file_type": file_type,
            "architecture": metadata.get("general.architecture"),
            "tokenizer_pre": metadata.get("tokenizer.ggml.pre")}

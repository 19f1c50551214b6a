"""Where the tensors are in an artifact the packed file stores: the ``raw_data`` of every
ONNX TensorProto (subgraphs included, found by walking the protobuf wire format) and
the uncompressed storages of a TorchScript zip archive."""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from typing import Iterator

from slimtune.search._packed_tensors import PackedFileError

#: ONNX TensorProto.DataType -> numpy dtype (others are kept raw).
ONNX_DTYPES = {1: "<f4", 2: "|u1", 3: "|i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "|u1", 10: "<f2",
               11: "<f8", 12: "<u4", 13: "<u8"}


@dataclass(frozen=True)
class Region:
    """Where one tensor's data lies in the artifact."""

    offset: int
    length: int
    name: str
    dtype: str | None  # None: unknown (try several readings)
    shape: tuple[int, ...] | None


# -- where the tensors are ----------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise PackedFileError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, value or start, end)`` of one protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield field, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise PackedFileError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise PackedFileError("protobuf message overruns its length")


# ONNX message fields that hold tensors or graphs (onnx.proto field numbers).
_MODEL_GRAPH, _GRAPH_NODE, _GRAPH_INIT, _NODE_ATTR = 7, 1, 5, 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_T_DIMS, _T_TYPE, _T_NAME, _T_RAW, _T_LOCATION = 1, 2, 8, 9, 14


def _onnx_tensor(buf: bytes, start: int, end: int) -> Region | None:
    dims: list[int] = []
    dtype, name, raw, location = 0, "", None, 0
    for field, wire, a, b in _fields(buf, start, end):
        if field == _T_DIMS:
            if wire == 0:
                dims.append(a)
            else:
                pos = a
                while pos < b:
                    d, pos = _varint(buf, pos)
                    dims.append(d)
        elif field == _T_TYPE and wire == 0:
            dtype = a
        elif field == _T_NAME and wire == 2:
            name = buf[a:b].decode("utf-8", "replace")
        elif field == _T_RAW and wire == 2:
            raw = (a, b)
        elif field == _T_LOCATION and wire == 0:
            location = a
    if raw is None or raw[1] == raw[0] or location != 0:
        return None
    dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
    return Region(raw[0], raw[1] - raw[0], name, ONNX_DTYPES.get(dtype), tuple(dims))


def _onnx_graph(buf: bytes, start: int, end: int) -> Iterator[Region]:
    for field, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if field == _GRAPH_INIT:
            region = _onnx_tensor(buf, a, b)
            if region is not None:
                yield region
        elif field == _GRAPH_NODE:
            for nf, nw, na, nb in _fields(buf, a, b):
                if nf != _NODE_ATTR or nw != 2:
                    continue
                for af, aw, aa, ab in _fields(buf, na, nb):
                    if aw != 2:
                        continue
                    if af in (_ATTR_T, _ATTR_TENSORS):
                        region = _onnx_tensor(buf, aa, ab)
                        if region is not None:
                            yield region
                    elif af in (_ATTR_G, _ATTR_GRAPHS):
                        yield from _onnx_graph(buf, aa, ab)


def onnx_regions(model: bytes) -> list[Region]:
    """The ``raw_data`` of every tensor of a serialized ONNX model, subgraphs included."""
    regions: list[Region] = []
    for field, wire, a, b in _fields(model, 0, len(model)):
        if field == _MODEL_GRAPH and wire == 2:
            regions.extend(_onnx_graph(model, a, b))
    return regions


def zip_regions(archive: bytes) -> list[Region]:
    """The uncompressed tensor storages (``.../data/<n>``) of a TorchScript zip archive."""
    regions = []
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if info.compress_type != zipfile.ZIP_STORED or len(parts) < 2 or parts[-2] != "data" or not info.file_size:
                continue
            head = info.header_offset
            name_len, extra_len = struct.unpack("<HH", archive[head + 26:head + 30])
            start = head + 30 + name_len + extra_len
            regions.append(Region(start, info.file_size, info.filename, None, None))
    return regions


def find_regions(artifact: bytes, artifact_format: str) -> list[Region]:
    """The tensors of an ``onnx`` or ``torchscript`` artifact (sorted, non-overlapping)."""
    if artifact_format == "onnx":
        regions = onnx_regions(artifact)
    elif artifact[:4] == b"PK\x03\x04":
        regions = zip_regions(artifact)
    else:
        regions = []
    regions.sort(key=lambda r: r.offset)
    for prev, cur in zip(regions, regions[1:]):
        if cur.offset < prev.offset + prev.length:
            raise PackedFileError(f"tensors {prev.name!r} and {cur.name!r} overlap in the artifact")
    return regions

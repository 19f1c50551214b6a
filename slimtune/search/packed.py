"""The packed model file (``model.slim``): the timed artifact in its compact, lossless form.

``size_bytes`` of a measurement is ``len(pack(artifact))``: the length of this file,
which :meth:`slimtune.studies.Candidate.export` writes with ``format="packed"`` and
:func:`load_packed` turns back into the exact artifact that was timed (the same bytes:
an ONNX model or a TorchScript archive), with nothing but ``numpy`` and the standard
library.  Every tensor is stored in the smallest of a few encodings that decodes to
*its exact bytes* (each choice is verified by decoding before it is kept):

- ``raw``: the bytes as they are.
- ``int``: integers (int8 b-bit weights, int32 biases, zero points, shapes) minus their
  minimum, bit-packed at the minimal width that holds their range (4-bit weights in
  ``[-7, 7]`` take 4 bits, all-zero zero points 0 bits).
- ``fp16``: float32 values that fp16 holds exactly (16-bit weights).
- ``grid``: float32 values that lie on a per-channel integer grid
  (``value = float32(q) * scale[channel]``, e.g. b-bit weights left in float):
  the integers bit-packed as ``int``, one scale per channel (fp16 when exact, else fp32).
- ``sparse`` (a flag on any of the above): a bitmask of the non-zero elements
  (``ceil(n / 8)`` bytes) followed by only the non-zeros in that encoding (weight
  pruning).  Float zeros that are ``-0.0`` (pruned weights times a negative folded
  BatchNorm factor) keep their sign: one bit per output channel when a channel's
  zeros share it (``zero_signs: "channel"``), else one bit per zero (``"each"``).

Layout (all integers little-endian)::

    offset 0   b"SLIM"                      magic
           4   u8   format version (1)
           5   u32  length B of the block
           9   zlib(block): u32 length H of the header, H bytes of header JSON,
                            then the skeleton
         9+B   tensor payloads, back to back, in header order

The **skeleton** is the artifact with every tensor's data cut out (everything else —
the graph, the ``If`` subgraphs of early-exit models, names, protobuf lengths, the
TorchScript code and pickles — stays byte for byte).  The **header** JSON holds
``artifact_format``, ``artifact_bytes``, ``sha256`` (of the artifact), ``meta``
(e.g. ``bits``) and ``tensors``: per tensor its ``name``, ``dtype``, ``shape``,
``offset``/``length`` (where its data goes back into the artifact) and ``encoding``
(``kind``, ``sparse``, bit ``width``, integer ``offset``, grid ``axis``...), its
payload taking ``encoding["bytes"]`` bytes.  Restoring = decoding each payload and
splicing it back at its offset; the result is checked against ``sha256``.

Where the tensors are: in ONNX models, the ``raw_data`` of every TensorProto
(initializers, including those inside ``If``/``Loop`` subgraphs, and Constant node
values), found by walking the protobuf wire format; in TorchScript (zip) archives,
the uncompressed ``data/<n>`` storage entries, whose dtype is not recorded beside
them, so each is tried as int8/int32/int64/float32 and the smallest exact encoding
is kept.

Example:
    >>> data = pack(compiled.artifact, artifact_format="onnx", bits=4)
    >>> artifact, meta = unpack(data)          # artifact == compiled.artifact
    >>> import onnxruntime as ort
    >>> session = ort.InferenceSession(load_packed("model.slim").artifact)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

MAGIC = b"SLIM"
VERSION = 1
SUFFIX = ".slim"
_PREFIX = struct.Struct("<4sBI")

#: ONNX TensorProto.DataType -> numpy dtype (others are kept raw).
ONNX_DTYPES = {1: "<f4", 2: "|u1", 3: "|i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "|u1", 10: "<f2",
               11: "<f8", 12: "<u4", 13: "<u8"}
#: How an untyped storage (TorchScript) may be read.
_GUESSES = ("|i1", "<i4", "<i8", "<f4")
#: Grid sizes tried for float tensors: symmetric qmax of 8, 6, 4 and 2 bits.
_QMAX = (127, 31, 7, 1)


class PackedFileError(ValueError):
    """A packed file that cannot be read (not one, truncated, corrupt)."""


class Unpacked(NamedTuple):
    artifact: bytes
    meta: dict[str, Any]


@dataclass(frozen=True)
class Region:
    """Where one tensor's data lies in the artifact."""

    offset: int
    length: int
    name: str
    dtype: str | None  # None: unknown (try several readings)
    shape: tuple[int, ...] | None


# -- bit packing ------------------------------------------------------------------
def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Non-negative integers (< 2**width) at ``width`` bits each, little-endian bit order."""
    if width == 0 or values.size == 0:
        return b""
    nbytes = (width + 7) // 8
    as_bytes = values.astype("<u8").reshape(-1, 1).view(np.uint8)[:, :nbytes]
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :width]
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_uint(data: bytes, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` uint64 values."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * width, bitorder="little")
    full = np.zeros((count, 64), dtype=np.uint8)
    full[:, :width] = bits.reshape(count, width)
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view("<u8").copy()


# -- tensor encodings ---------------------------------------------------------------
def _int_stream(values: np.ndarray) -> tuple[dict[str, Any], bytes] | None:
    """Integers minus their minimum at the minimal width (None if the range needs > 64 bits)."""
    if values.size == 0:
        return {"offset": 0, "width": 0}, b""
    lo, hi = int(values.min()), int(values.max())
    width = (hi - lo).bit_length()
    if width > 64:
        return None
    shifted = (values.astype(np.int64) - np.int64(lo)).view(np.uint64) if lo >= -(2 ** 63) else None
    if shifted is None:
        return None
    return {"offset": lo, "width": width}, pack_uint(shifted, width)


def _int_values(spec: Mapping[str, Any], data: bytes, count: int, dtype: np.dtype) -> np.ndarray:
    u = unpack_uint(data, count, int(spec["width"]))
    return (u.view(np.int64) + np.int64(spec["offset"])).astype(dtype)


def _channels(shape: tuple[int, ...], axis: int, index: np.ndarray) -> np.ndarray:
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return (index // inner) % shape[axis]


def _grid_scales(values: np.ndarray, shape: tuple[int, ...], axis: int, qmax: int) -> np.ndarray | None:
    """Per-channel float32 scales putting every value of ``values`` (dense, float32) on
    ``float32(q) * scale`` with ``|q| <= qmax``, or None."""
    moved = np.moveaxis(values.reshape(shape), axis, 0).reshape(shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    base = (amax / np.float32(qmax)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        tries = [base, base.astype(np.float16).astype(np.float32), np.nextafter(base, np.float32(np.inf)),
                 np.nextafter(base, np.float32(-np.inf))]
    scales = np.ones(shape[axis], dtype=np.float32)
    for c in range(shape[axis]):
        row = moved[c]
        if not row.any():
            continue
        for cand in tries:
            s = cand[c]
            if not (np.isfinite(s) and s > 0):
                continue
            q = np.clip(np.rint(row / s), -qmax, qmax).astype(np.float32)
            if (q * s).view(np.uint32).tobytes() == row.view(np.uint32).tobytes():
                scales[c] = s
                break
        else:
            return None
    return scales


def _zero_signs(arr: np.ndarray, zero: np.ndarray, shape: tuple[int, ...] | None) -> tuple[dict[str, Any], bytes]:
    """How to restore ``-0.0`` among the zeros of a float tensor (BatchNorm folding
    multiplies pruned zeros by negative factors): nothing when there is none, one sign
    bit per output channel when every zero of a channel has the same sign, else one
    bit per zero."""
    negative = zero & np.signbit(arr)
    if not negative.any():
        return {}, b""
    if shape is not None and len(shape) >= 1 and shape[0] > 0:
        per_channel_neg = negative.reshape(shape[0], -1)
        per_channel_zero = zero.reshape(shape[0], -1)
        signs = per_channel_neg.any(axis=1)
        if np.array_equal(per_channel_neg, per_channel_zero & signs[:, None]):
            return {"zero_signs": "channel"}, np.packbits(signs, bitorder="little").tobytes()
    return {"zero_signs": "each"}, np.packbits(negative[zero], bitorder="little").tobytes()


def _candidates(arr: np.ndarray, shape: tuple[int, ...] | None) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Every applicable encoding of ``arr`` (1-D, typed) as ``(spec, payload)``."""
    dtype = arr.dtype
    yield {"kind": "raw"}, arr.tobytes()
    views: list[tuple[dict[str, Any], bytes, np.ndarray, np.ndarray]] = [({}, b"", arr, np.arange(arr.size))]
    if dtype.kind == "f":
        nonzero = ~(arr == 0)  # NaNs are values; -0.0 is a zero with its sign kept aside
    else:
        nonzero = arr.view(np.dtype(f"<u{dtype.itemsize}") if dtype.itemsize > 1 else np.uint8) != 0
    if arr.size and int(nonzero.sum()) < arr.size:
        signs, sign_bytes = _zero_signs(arr, ~nonzero, shape) if dtype.kind == "f" else ({}, b"")
        head = np.packbits(nonzero, bitorder="little").tobytes() + sign_bytes
        views.append(({"sparse": True, **signs}, head, arr[nonzero], np.flatnonzero(nonzero)))
    for extra, head, values, index in views:
        sparse = bool(extra)
        if sparse:
            yield {"kind": "raw", **extra}, head + values.tobytes()
        if dtype.kind in "iu":
            stream = _int_stream(values)
            if stream is not None:
                yield {"kind": "int", "sparse": sparse, **extra, **stream[0]}, head + stream[1]
        if dtype == np.float32:
            with np.errstate(over="ignore", invalid="ignore"):
                half = values.astype(np.float16)
            if half.astype(np.float32).view(np.uint32).tobytes() == values.view(np.uint32).tobytes():
                yield {"kind": "fp16", "sparse": sparse, **extra}, head + half.astype("<f2").tobytes()
            if shape is not None and len(shape) >= 2 and values.size:
                for spec, payload in _grid_candidates(arr, shape, sparse, head, values, index):
                    yield {**spec, **extra}, payload


def _grid_candidates(arr: np.ndarray, shape: tuple[int, ...], sparse: bool, head: bytes, values: np.ndarray,
                     index: np.ndarray) -> Iterator[tuple[dict[str, Any], bytes]]:
    for axis in (0, 1):
        for qmax in _QMAX:
            scales = _grid_scales(arr, shape, axis, qmax)
            if scales is None:
                continue
            q = np.rint(values / scales[_channels(shape, axis, index)]).astype(np.int64)
            stream = _int_stream(q)
            if stream is None:
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                half = scales.astype(np.float16)
            exact = half.astype(np.float32).view(np.uint32).tobytes() == scales.view(np.uint32).tobytes()
            scale_bytes = half.astype("<f2").tobytes() if exact else scales.astype("<f4").tobytes()
            yield ({"kind": "grid", "sparse": sparse, "axis": axis, "scale_dtype": "<f2" if exact else "<f4",
                    **stream[0]}, head + scale_bytes + stream[1])
            break  # the coarsest grid that fits this axis was found


def decode_tensor(spec: Mapping[str, Any], payload: bytes, dtype: str, count: int,
                  shape: tuple[int, ...] | None) -> bytes:
    """The exact bytes of a tensor of ``count`` elements from its encoded payload."""
    dt = np.dtype(dtype)
    kind = spec.get("kind")
    pos = 0
    negative = None
    if spec.get("sparse"):
        pos = (count + 7) // 8
        nonzero = np.unpackbits(np.frombuffer(payload[:pos], dtype=np.uint8), count=count,
                                bitorder="little").astype(bool)
        index = np.flatnonzero(nonzero)
        signs = spec.get("zero_signs")
        if signs == "channel":
            if not shape:
                raise PackedFileError("per-channel zero signs need the tensor's shape")
            nbits = shape[0]
        elif signs == "each":
            nbits = count - index.size
        elif signs is not None:
            raise PackedFileError(f"unknown zero-sign encoding {signs!r}")
        if signs is not None:
            bits = np.unpackbits(np.frombuffer(payload[pos:pos + (nbits + 7) // 8], dtype=np.uint8), count=nbits,
                                 bitorder="little").astype(bool)
            pos += (nbits + 7) // 8
            negative = np.zeros(count, dtype=bool)
            if signs == "channel":
                negative = np.repeat(bits, count // shape[0]) & ~nonzero
            else:
                negative[~nonzero] = bits
    else:
        nonzero, index = None, np.arange(count)
    n = index.size
    body = payload[pos:]
    if kind == "raw":
        values = np.frombuffer(body, dtype=dt, count=n)
    elif kind == "int":
        values = _int_values(spec, body, n, dt)
    elif kind == "fp16":
        values = np.frombuffer(body, dtype="<f2", count=n).astype(dt)
    elif kind == "grid":
        if shape is None:
            raise PackedFileError("a grid-encoded tensor needs its shape")
        axis, sdt = int(spec["axis"]), np.dtype(spec["scale_dtype"])
        channels = shape[axis]
        scales = np.frombuffer(body[:channels * sdt.itemsize], dtype=sdt).astype(np.float32)
        q = _int_values(spec, body[channels * sdt.itemsize:], n, np.int64).astype(np.float32)
        values = (q * scales[_channels(shape, axis, index)]).astype(dt)
    else:
        raise PackedFileError(f"unknown tensor encoding {kind!r}")
    if nonzero is None:
        return np.ascontiguousarray(values, dtype=dt).tobytes()
    out = np.zeros(count, dtype=dt)
    out[nonzero] = values
    if negative is not None:
        out[negative] = -out[negative]  # -0.0
    return out.tobytes()


def encode_tensor(data: bytes, dtype: str | None, shape: tuple[int, ...] | None) -> tuple[dict[str, Any], bytes]:
    """The smallest encoding of ``data`` that decodes to exactly ``data``.

    ``dtype`` None (an untyped storage) tries every reading in ``_GUESSES`` that
    divides its length; the chosen reading is stored in the spec.
    """
    readings = [dtype] if dtype is not None else [d for d in _GUESSES if len(data) % np.dtype(d).itemsize == 0]
    typed = dtype is not None and len(data) % np.dtype(dtype).itemsize == 0
    best: tuple[dict[str, Any], bytes] = ({"kind": "raw", "dtype": dtype if typed else "|u1"}, data)
    for reading in readings:
        dt = np.dtype(reading)
        if len(data) % dt.itemsize:
            continue
        arr = np.frombuffer(data, dtype=dt)
        tshape = shape if shape is not None and int(np.prod(shape, dtype=np.int64)) == arr.size else None
        for spec, payload in _candidates(arr, tshape):
            if len(payload) >= len(best[1]):
                continue
            spec = {**spec, "dtype": reading}
            if decode_tensor(spec, payload, reading, arr.size, tshape) == data:  # lossless, or not chosen
                best = (spec, payload)
    spec, payload = best
    return {**spec, "bytes": len(payload)}, payload


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


# -- the container ------------------------------------------------------------------
def pack(artifact: bytes, *, artifact_format: str, bits: int | None = None,
         meta: Mapping[str, Any] | None = None) -> bytes:
    """The packed file of ``artifact`` (deterministic: the same input gives the same bytes).

    Args:
        artifact: the exact bytes the runtime loads (ONNX model or TorchScript archive).
        artifact_format: ``onnx`` or ``torchscript``.
        bits: the weight bits the model represents (recorded in the header).
        meta: further JSON-able facts to record (they count in the file's length).
    """
    artifact = bytes(artifact)
    regions = find_regions(artifact, artifact_format)
    tensors, payloads, skeleton, pos = [], [], [], 0
    for region in regions:
        piece = artifact[region.offset:region.offset + region.length]
        spec, payload = encode_tensor(piece, region.dtype, region.shape)
        tensors.append({"name": region.name, "offset": region.offset, "length": region.length,
                        "shape": list(region.shape) if region.shape is not None else None, "encoding": spec})
        payloads.append(payload)
        skeleton.append(artifact[pos:region.offset])
        pos = region.offset + region.length
    skeleton.append(artifact[pos:])
    header = {"artifact_format": artifact_format, "artifact_bytes": len(artifact),
              "sha256": hashlib.sha256(artifact).hexdigest(),
              "meta": {**({"bits": int(bits)} if bits is not None else {}), **dict(meta or {})}, "tensors": tensors}
    header_json = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    block = zlib.compress(struct.pack("<I", len(header_json)) + header_json + b"".join(skeleton), 9)
    return _PREFIX.pack(MAGIC, VERSION, len(block)) + block + b"".join(payloads)


def _read_header(data: bytes) -> tuple[dict[str, Any], bytes, int]:
    """``(header, skeleton, payload start)``; raises :class:`PackedFileError`."""
    if len(data) < _PREFIX.size or data[:4] != MAGIC:
        raise PackedFileError(f"not a slimtune packed file: it starts with {bytes(data[:4])!r}, not {MAGIC!r}")
    _, version, block_len = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise PackedFileError(f"packed file format version {version} is not supported (this slimtune reads {VERSION})")
    end = _PREFIX.size + block_len
    if len(data) < end:
        raise PackedFileError(f"truncated packed file: {len(data):,} bytes, its header block alone needs {end:,}")
    try:
        block = zlib.decompress(data[_PREFIX.size:end])
        (header_len,) = struct.unpack_from("<I", block)
        header = json.loads(block[4:4 + header_len].decode("utf-8"))
    except (zlib.error, struct.error, ValueError) as exc:
        raise PackedFileError(f"corrupt packed file: its header block cannot be read ({exc})") from None
    return header, block[4 + header_len:], end


def unpack(data: bytes) -> Unpacked:
    """The exact artifact (checked against the sha256 in the header) and the header's facts.

    ``meta`` holds the header's ``meta`` plus ``artifact_format`` and ``artifact_bytes``.
    """
    data = bytes(data)
    header, skeleton, pos = _read_header(data)
    try:
        tensors = list(header["tensors"])
        need = pos + sum(int(t["encoding"]["bytes"]) for t in tensors)
        restored = len(skeleton) + sum(int(t["length"]) for t in tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise PackedFileError(f"corrupt packed file: its tensor table is incomplete ({exc!r})") from None
    if len(data) != need:
        raise PackedFileError(f"{'truncated' if len(data) < need else 'corrupt'} packed file: {len(data):,} bytes, "
                              f"expected {need:,}")
    if restored != header.get("artifact_bytes"):
        raise PackedFileError(f"corrupt packed file: skeleton and tensors make {restored:,} bytes, the header says "
                              f"{header.get('artifact_bytes')!r}")
    out, cut, written = [], 0, 0
    for t in tensors:
        spec = t["encoding"]
        size = int(spec["bytes"])
        shape = tuple(t["shape"]) if t.get("shape") is not None else None
        count = int(t["length"]) // np.dtype(spec["dtype"]).itemsize
        try:
            piece = decode_tensor(spec, data[pos:pos + size], spec["dtype"], count, shape)
        except (ValueError, KeyError, TypeError) as exc:
            raise PackedFileError(f"corrupt packed file: tensor {t.get('name')!r} cannot be decoded ({exc})") from None
        if len(piece) != int(t["length"]):
            raise PackedFileError(f"corrupt packed file: tensor {t.get('name')!r} decodes to {len(piece)} bytes, "
                                  f"expected {t['length']}")
        gap = int(t["offset"]) - written
        if gap < 0 or cut + gap > len(skeleton):
            raise PackedFileError(f"corrupt packed file: tensor {t.get('name')!r} lies outside the artifact")
        out += [skeleton[cut:cut + gap], piece]
        cut += gap
        written += gap + len(piece)
        pos += size
    out.append(skeleton[cut:])
    artifact = b"".join(out)
    if len(artifact) != header.get("artifact_bytes") or hashlib.sha256(artifact).hexdigest() != header.get("sha256"):
        raise PackedFileError("corrupt packed file: the restored artifact does not match the sha256 in its header")
    meta = {**header.get("meta", {}), "artifact_format": header.get("artifact_format"),
            "artifact_bytes": len(artifact)}
    return Unpacked(artifact, meta)


def describe(data: bytes) -> list[dict[str, Any]]:
    """The tensor table of a packed file (name, shape, length, encoding), for inspection."""
    header, _, _ = _read_header(bytes(data))
    return [dict(t) for t in header.get("tensors", [])]


def packed_size(artifact: bytes, *, artifact_format: str, bits: int | None = None) -> int:
    """``len(pack(...))``: the ``size_bytes`` of a measurement."""
    return len(pack(artifact, artifact_format=artifact_format, bits=bits))


def load_packed(path: "str | os.PathLike[str]") -> Unpacked:
    """Read a ``.slim`` file: ``(artifact bytes, meta)``.

    Example:
        >>> import onnxruntime as ort
        >>> artifact, meta = load_packed("model.slim")
        >>> session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackedFileError(f"cannot read packed file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return unpack(data)
    except PackedFileError as exc:
        raise PackedFileError(f"{path}: {exc}") from None


__all__ = ["MAGIC", "VERSION", "SUFFIX", "PackedFileError", "Unpacked", "pack", "unpack", "load_packed",
           "describe", "packed_size", "encode_tensor", "decode_tensor", "find_regions"]


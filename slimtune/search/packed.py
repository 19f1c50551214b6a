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
- ``codebook``: values that take few distinct values (weights shared by a knob that
  declares a codebook :class:`~slimtune.spaces.WeightEncoding`, e.g. weight clustering):
  the distinct values once (per tensor, ``axis`` null, or per output channel, ``axis``
  0) and an index per element, bit-packed at ``ceil(log2(entries))`` bits.  Tried only
  when the artifact's weights are declared so (``pack(..., encoding=...)``); a file that
  uses it is format version 2.
- ``sparse`` (a flag on any of the above): a bitmask of the non-zero elements
  (``ceil(n / 8)`` bytes) followed by only the non-zeros in that encoding (weight
  pruning).  Float zeros that are ``-0.0`` (pruned weights times a negative folded
  BatchNorm factor) keep their sign: one bit per output channel when a channel's
  zeros share it (``zero_signs: "channel"``), else one bit per zero (``"each"``).

Layout (all integers little-endian)::

    offset 0   b"SLIM"                      magic
           4   u8   format version (1; 2 when a tensor uses ``codebook``)
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
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from slimtune.search._packed_regions import Region, find_regions, onnx_regions, zip_regions  # noqa: F401
from slimtune.search._packed_tensors import (  # noqa: F401 - the format's public pieces
    MAX_CODEBOOK,
    PackedFileError,
    decode_tensor,
    encode_tensor,
    pack_uint,
    unpack_uint,
)

MAGIC = b"SLIM"
VERSION = 1
#: The format version of a file with ``codebook`` tensors (readers take both).
CODEBOOK_VERSION = 2
SUFFIX = ".slim"
_PREFIX = struct.Struct("<4sBI")


class Unpacked(NamedTuple):
    artifact: bytes
    meta: dict[str, Any]


# -- the container ------------------------------------------------------------------
def pack(artifact: bytes, *, artifact_format: str, bits: int | None = None,
         meta: Mapping[str, Any] | None = None, encoding: Mapping[str, Any] | None = None) -> bytes:
    """The packed file of ``artifact`` (deterministic: the same input gives the same bytes).

    Args:
        artifact: the exact bytes the runtime loads (ONNX model or TorchScript archive).
        artifact_format: ``onnx`` or ``torchscript``.
        bits: the weight bits the model represents (recorded in the header).
        meta: further JSON-able facts to record (they count in the file's length).
        encoding: how a knob stores the weights beyond their bits
            (:meth:`slimtune.spaces.WeightEncoding.to_dict`): ``codebook`` tries the
            codebook encodings; recorded in the header's ``meta``.
    """
    artifact = bytes(artifact)
    codebook = bool(encoding) and encoding.get("kind") == "codebook"
    regions = find_regions(artifact, artifact_format)
    tensors, payloads, skeleton, pos = [], [], [], 0
    for region in regions:
        piece = artifact[region.offset:region.offset + region.length]
        spec, payload = encode_tensor(piece, region.dtype, region.shape, codebook)
        tensors.append({"name": region.name, "offset": region.offset, "length": region.length,
                        "shape": list(region.shape) if region.shape is not None else None, "encoding": spec})
        payloads.append(payload)
        skeleton.append(artifact[pos:region.offset])
        pos = region.offset + region.length
    skeleton.append(artifact[pos:])
    header = {"artifact_format": artifact_format, "artifact_bytes": len(artifact),
              "sha256": hashlib.sha256(artifact).hexdigest(),
              "meta": {**({"bits": int(bits)} if bits is not None else {}),
                       **({"weight_encoding": dict(encoding)} if encoding else {}), **dict(meta or {})},
              "tensors": tensors}
    header_json = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    block = zlib.compress(struct.pack("<I", len(header_json)) + header_json + b"".join(skeleton), 9)
    version = CODEBOOK_VERSION if any(t["encoding"]["kind"] == "codebook" for t in tensors) else VERSION
    return _PREFIX.pack(MAGIC, version, len(block)) + block + b"".join(payloads)


def _read_header(data: bytes) -> tuple[dict[str, Any], bytes, int]:
    """``(header, skeleton, payload start)``; raises :class:`PackedFileError`."""
    if len(data) < _PREFIX.size or data[:4] != MAGIC:
        raise PackedFileError(f"not a slimtune packed file: it starts with {bytes(data[:4])!r}, not {MAGIC!r}")
    _, version, block_len = _PREFIX.unpack_from(data)
    if version not in (VERSION, CODEBOOK_VERSION):
        raise PackedFileError(f"packed file format version {version} is not supported (this slimtune reads "
                              f"{VERSION} and {CODEBOOK_VERSION})")
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


def packed_size(artifact: bytes, *, artifact_format: str, bits: int | None = None,
                encoding: Mapping[str, Any] | None = None) -> int:
    """``len(pack(...))``: the ``size_bytes`` of a measurement."""
    return len(pack(artifact, artifact_format=artifact_format, bits=bits, encoding=encoding))


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


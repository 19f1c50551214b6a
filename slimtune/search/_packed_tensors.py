"""Tensor encodings of the packed model file: each tensor's bytes in the smallest of a
few lossless encodings (see :mod:`slimtune.search.packed` for the list and the file
layout).  Every choice is verified by decoding before it is kept."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

#: How an untyped storage (TorchScript) may be read.
_GUESSES = ("|i1", "<i4", "<i8", "<f4")
#: Grid sizes tried for float tensors: symmetric qmax of 8, 6, 4 and 2 bits.
_QMAX = (127, 31, 7, 1)
#: Codebooks are tried only up to this many entries (an 8-bit index).
MAX_CODEBOOK = 256


class PackedFileError(ValueError):
    """A packed file that cannot be read (not one, truncated, corrupt)."""


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


def _codebook_candidates(values: np.ndarray, shape: tuple[int, ...] | None, index: np.ndarray, sparse: bool,
                         head: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """``values`` as a codebook of their distinct values (the whole tensor's, then each
    output channel's) plus bit-packed indices, where few enough distinct values occur."""
    if not values.size:
        return
    table, inverse = np.unique(values, return_inverse=True)
    if len(table) <= MAX_CODEBOOK:
        width = max(len(table) - 1, 0).bit_length()
        yield ({"kind": "codebook", "sparse": sparse, "axis": None, "entries": len(table), "width": width},
               head + table.tobytes() + pack_uint(inverse.astype(np.uint64), width))
    if shape is None or len(shape) < 2 or shape[0] < 2:
        return
    channels = _channels(shape, 0, index)
    rows = [np.unique(values[channels == c], return_inverse=True) for c in range(shape[0])]
    entries = max(len(t) for t, _ in rows)
    if entries > MAX_CODEBOOK:
        return
    width = max(entries - 1, 0).bit_length()
    tables = np.zeros((shape[0], entries), dtype=values.dtype)
    codes = np.zeros(values.size, dtype=np.uint64)
    for c, (t, inv) in enumerate(rows):
        tables[c, :len(t)] = t
        codes[channels == c] = inv
    yield ({"kind": "codebook", "sparse": sparse, "axis": 0, "entries": entries, "width": width},
           head + tables.tobytes() + pack_uint(codes, width))


def _candidates(arr: np.ndarray, shape: tuple[int, ...] | None,
                codebook: bool = False) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Every applicable encoding of ``arr`` (1-D, typed) as ``(spec, payload)``
    (``codebook``: the codebook encodings too)."""
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
        if codebook and dtype.kind in "iuf":
            for spec, payload in _codebook_candidates(values, shape, index, sparse, head):
                yield {**spec, **extra}, payload
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
    elif kind == "codebook":
        entries, axis = int(spec["entries"]), spec.get("axis")
        if axis is None:
            table = np.frombuffer(body[:entries * dt.itemsize], dtype=dt)
            values = table[unpack_uint(body[entries * dt.itemsize:], n, int(spec["width"])).astype(np.int64)]
        else:
            if not shape or int(axis) != 0:
                raise PackedFileError("a per-channel codebook needs the tensor's shape (axis 0)")
            size = shape[0] * entries * dt.itemsize
            tables = np.frombuffer(body[:size], dtype=dt).reshape(shape[0], entries)
            codes = unpack_uint(body[size:], n, int(spec["width"])).astype(np.int64)
            values = tables[_channels(shape, 0, index), codes]
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


def encode_tensor(data: bytes, dtype: str | None, shape: tuple[int, ...] | None,
                  codebook: bool = False) -> tuple[dict[str, Any], bytes]:
    """The smallest encoding of ``data`` that decodes to exactly ``data``.

    ``dtype`` None (an untyped storage) tries every reading in ``_GUESSES`` that
    divides its length; the chosen reading is stored in the spec.  ``codebook`` tries
    the codebook encodings too.
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
        for spec, payload in _candidates(arr, tshape, codebook):
            if len(payload) >= len(best[1]):
                continue
            spec = {**spec, "dtype": reading}
            if decode_tensor(spec, payload, reading, arr.size, tshape) == data:  # lossless, or not chosen
                best = (spec, payload)
    spec, payload = best
    return {**spec, "bytes": len(payload)}, payload

"""CPU features that decide how int8 kernels compute, and whether they can saturate.

ONNX Runtime's x86 int8 GEMM/conv kernels for uint8 activations times int8 weights
("U8S8") multiply with ``VPMADDUBSW`` on CPUs with AVX2, or AVX-512 without VNNI: it
adds each pair of neighbouring byte products into a *saturating* 16-bit integer, so two
products of 255 x 127 (64,770) are clamped to 32,767.  With VNNI (``VPDPBUSD``) or AMX
the sums are 32-bit and exact; ARM and x86 without AVX2 (Linux build) are exact too.
ONNX Runtime's quantization docs name the remedies: 7-bit weights (``reduce_range``)
or uint8 weights (U8U8, whose kernels widen to 16 bits before multiplying).  A weight
grid within +-64 can never saturate (2 x 255 x 64 = 32,640), which is why sub-8-bit
grids (at most +-31) were exact on such a CPU while 8-bit ones were not.

Example:
    >>> u8s8_can_saturate(("avx2", "fma"), "x86_64")
    True
    >>> u8s8_can_saturate(("avx2", "avx512f", "avx512_vnni"), "x86_64")
    False
"""

from __future__ import annotations

import functools
import platform
import subprocess
from typing import Iterable

#: The CPU flags that decide which int8 kernels run (x86 and ARM names as Linux spells them).
INT8_FEATURES = (
    "sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "amx_tile",
    "asimd", "asimddp", "i8mm", "sve", "sme",
)
#: Any of these gives 32-bit int8 dot products on x86 (no 16-bit intermediate).
VNNI_FEATURES = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")
#: The largest weight magnitude whose U8S8 pair sums fit int16: 2 * 255 * 64 = 32,640.
SAFE_U8S8_WEIGHT = 64

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_MAC_NAMES = {"SSE4.1": "sse4_1", "AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
              "AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni"}


def is_x86(machine: str | None = None) -> bool:
    """Whether ``machine`` (default: this one, ``platform.machine()``) is an x86 CPU."""
    return (machine or platform.machine()).lower() in _X86


def _linux_flags() -> set[str] | None:
    """Flags from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def _mac_flags() -> set[str] | None:
    """Flags from ``sysctl`` on macOS (x86 feature lists; Apple silicon has dot products)."""
    if platform.system() != "Darwin":
        return None
    if not is_x86():
        return {"asimd", "asimddp"}  # every Apple silicon core has NEON and the dot product instructions
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {_MAC_NAMES.get(word, word.lower()) for word in out.split()}


@functools.lru_cache(maxsize=1)
def cpu_features() -> tuple[str, ...] | None:
    """The :data:`INT8_FEATURES` this CPU has, sorted; ``None`` where they cannot be read
    (e.g. Windows), in which case :func:`u8s8_can_saturate` assumes the worst on x86."""
    flags = _linux_flags()
    if flags is None:
        flags = _mac_flags()
    if flags is None:
        return None
    return tuple(sorted(f for f in INT8_FEATURES if f in flags))


def u8s8_can_saturate(features: Iterable[str] | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's U8S8 int8 kernels can saturate on this CPU: x86 with AVX2 or
    AVX-512 but no VNNI/AMX.  Unknown x86 features count as saturating (the safe answer:
    it only costs the speed of the U8U8 kernels); non-x86 CPUs never saturate.

    Args:
        features: CPU flags (default: :func:`cpu_features` of this machine).
        machine: ``platform.machine()`` spelling (default: this machine).
    """
    if not is_x86(machine):
        return False
    if features is None:
        if machine is not None:
            raise ValueError(f"`features` must be given with `machine`, but got machine={machine!r} and no features.")
        features = cpu_features()
        if features is None:
            return True
    flags = set(features)
    if flags & set(VNNI_FEATURES):
        return False
    return bool(flags & {"avx2", "avx512f", "avx512bw"})

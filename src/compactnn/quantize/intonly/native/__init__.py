"""Native (C) kernels of the fast integer engine: compiled lazily on the running machine, loaded with ctypes.

``kernels.c``, ``conv.c`` and ``ops.c`` (beside this file; types in ``kernels.h``, SIMD helpers in ``vnni.h``)
hold the integer-only kernels: a direct convolution / linear layer with the fused TFLite requantization and
optionally a fused residual Add (AVX-512 VNNI ``vpdpbusd`` when the compiler targets it, else portable loops),
pooling, the quantized add, concat and layout changes; ``io.c`` holds the float input quantize and output
dequantize. No torch header is included, so the build takes about a second with the system C compiler (``$CC`` or
``cc``): ``-O3 -march=native -std=c11``, plus ``-fopenmp`` when that links.

The shared object is cached in ``$COMPACTNN_CACHE/native`` (default ``$XDG_CACHE_HOME/compactnn/native``, else
``~/.cache/compactnn/native``) under a name keyed by the SHA-256 of the source, the compiler's version, the flags
and the CPU's flags, so a different machine or source rebuilds. It is written to a temporary file and renamed into
place (atomic; two processes that race both build and one rename wins, each loading a complete file).

``COMPACTNN_NATIVE`` selects: ``auto`` (default: native when it builds), ``0``/``off`` (the pure-torch engine),
``generic`` (the portable C loops even on a VNNI machine; for tests). Without a compiler the engine falls back
to torch silently (``load()`` returns None; :func:`status` says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["HEADERS", "SOURCES", "AddFuse", "Conv", "Requant", "load", "mode", "status"]

SOURCES = [Path(__file__).with_name(f) for f in ("kernels.c", "conv.c", "ops.c")]  # the integer program: no float
HEADERS = [Path(__file__).with_name(f) for f in ("kernels.h", "vnni.h")]  # included by them; no float type either
IO_SOURCE = Path(__file__).with_name("io.c")  # the float input quantize / output dequantize (outside the program)
_cache: dict[str, object] = {}
_why: dict[str, str] = {}

_I64, _P = ctypes.c_int64, ctypes.c_void_p


class Requant(ctypes.Structure):
    """Per-channel requantization constants (pointers to int64 arrays of a multiple of 16 channels)."""

    _fields_ = [(k, _P) for k in ("bias", "m0", "left", "right", "half", "neg")] + [
        (k, _I64) for k in ("zp", "qmin", "qmax", "fast", "fneg")] + [(k, _P) for k in ("b32", "fm", "fc", "fs")]


class AddFuse(ctypes.Structure):
    """A TFLite Add fused into a conv's epilogue (see ``kernels.h``)."""

    _fields_ = [("table", _P)] + [(k, _I64) for k in (
        "conv_is_a", "fast", "zs", "zr", "ls", "ms", "cs", "ss", "ns", "mr", "cr", "sr", "nr", "my", "cy", "sy", "ny",
        "alpha_s", "alpha_r", "mhs", "mls", "k0s", "kns", "shs", "mhr", "mlr", "k0r", "knr", "shr", "qmin", "qmax")]


class Conv(ctypes.Structure):
    """Geometry, packed weights and requantization of a conv (or linear) layer; see ``kernels.c``."""

    _fields_ = [(k, _I64) for k in ("h", "w", "c", "o", "ho", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
                                    "nseg", "seglen", "zin")] + [("wp", _P), ("rq", Requant), ("add", _P)]


def mode() -> str:
    """``COMPACTNN_NATIVE``: ``auto``, ``off`` or ``generic``."""
    v = os.environ.get("COMPACTNN_NATIVE", "auto").strip().lower()
    return "off" if v in ("0", "off", "false", "no", "torch") else "generic" if v == "generic" else "auto"


def cache_dir() -> Path:
    base = os.environ.get("COMPACTNN_CACHE")
    if base:
        return Path(base) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "compactnn" / "native"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compile(cc: str, flags: list[str], out: Path) -> bool:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, *map(str, SOURCES), str(IO_SOURCE), "-lm"],
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            return False
        os.replace(tmp, out)  # atomic: a racing process loads either its own file or a complete one
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(kind: str):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        _why[kind] = "no C compiler found (set CC)"
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        _why[kind] = f"cannot run {cc}: {err}"
        return None
    base = ["-O3", "-march=native", "-std=c11"] + (["-DCNN_GENERIC"] if kind == "generic" else [])
    src = b"".join(p.read_bytes() for p in (*SOURCES, *HEADERS, IO_SOURCE))
    for flags in (base + ["-fopenmp"], base):
        key = hashlib.sha256(b"\0".join([src, version.encode(), " ".join(flags).encode(), _cpu_flags().encode(),
                                         platform.machine().encode()])).hexdigest()[:20]
        path = cache_dir() / f"kernels-{key}.so"
        try:
            if not path.exists() and not _compile(cc, flags, path):
                continue
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as err:
            _why[kind] = f"building the native kernels failed: {err}"
            continue
        _declare(lib)
        _why[kind] = f"{path.name}: simd={'vnni' if lib.cnn_simd() == 2 else 'generic'}, openmp={bool(lib.cnn_openmp())}"
        return lib
    _why.setdefault(kind, f"{cc} could not compile the native kernels")
    return None


def _declare(lib) -> None:
    i64, p, i = _I64, _P, ctypes.c_int
    sig = {
        "cnn_conv": (i, [p, i64, p, p, p, p, i]),
        "cnn_conv_pool2": (i, [p, i64, p, p, p, i]),
        "cnn_conv_grouped": (i, [p, i64, i64, p, p, p, i]),
        "cnn_maxpool": (None, [p, p] + [i64] * 12 + [i]),
        "cnn_avgpool": (None, [p, p] + [i64] * 10 + [i]),
        "cnn_add": (None, [p, p, p, i64, p, i]),
        "cnn_lut_copy": (None, [p, p, i64, i64, i64, i64, p]),
        "cnn_nhwc_to_nchw": (None, [p, p, i64, i64, i64]),
        "cnn_nchw_to_nhwc": (None, [p, p, i64, i64, i64]),
        "cnn_quantize_f32": (None, [p, p, i64, ctypes.c_double, i64]),
        "cnn_dequantize_u8": (None, [p, p, i64, ctypes.c_double, i64]),
        "cnn_simd": (i, []),
        "cnn_openmp": (i, []),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


def load(kind: str | None = None):
    """The loaded kernel library (built on first use), or None when disabled or it cannot be built.

    Args:
        kind: ``"auto"`` or ``"generic"``; default from ``COMPACTNN_NATIVE`` (``off`` returns None).
    """
    kind = mode() if kind is None else kind
    if kind == "off":
        return None
    if kind not in _cache:
        _cache[kind] = _build(kind)
    return _cache[kind]


def status(kind: str | None = None) -> str:
    """One line saying which kernels :func:`load` gives and why (for reports and bug hunting)."""
    kind = mode() if kind is None else kind
    if kind == "off":
        return "native kernels off (COMPACTNN_NATIVE)"
    load(kind)
    return _why.get(kind, "not built")

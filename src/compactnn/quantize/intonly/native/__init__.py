"""Native (C) kernels of the fast integer engine: compiled lazily on the running machine, loaded with ctypes.

``kernels.c``, ``conv.c`` and ``ops.c`` (beside this file; types in ``kernels.h``, SIMD helpers in ``vnni.h``)
hold the integer-only kernels: a direct convolution / linear layer with the fused TFLite requantization and
optionally a fused residual Add (AVX-512 VNNI ``vpdpbusd`` when the compiler targets it, else portable loops),
pooling, the quantized add, concat and layout changes; ``io.c`` holds the float input quantize and output
dequantize, ``assign.c`` the nearest-centroid search of PQ's k-means (:mod:`compactnn.pq.kmeans`) and ``adc.c``
the exhaustive ADC search of :class:`compactnn.pq.PQIndex` (both on the vector types of ``floatvec.h``). No torch
header is included, so the build takes about a second with the system C compiler (``$CC`` or ``cc``):
``-O3 -march=native -std=c11``, plus ``-fopenmp`` when that links.

The shared object is cached in ``$COMPACTNN_CACHE/native`` (default ``$XDG_CACHE_HOME/compactnn/native``, else
``~/.cache/compactnn/native``) under a name keyed by the SHA-256 of the source, the compiler's version, the flags
and the CPU's flags, so a different machine or source rebuilds. The cache is guarded against planted or swapped
files (a cached ``.so`` runs as the user who loads it):

- **the folder**: created with mode 0700 (every level compactnn creates); it is opened with ``O_NOFOLLOW`` (no
  symlink) and refused, with one line (a warning; the torch engine then runs), unless it is a directory owned by
  the current user and not writable by group or others. All later file operations go through that open folder
  (``dir_fd``), so the folder checked is the folder used;
- **writing**: the compiler writes to an unpredictable temporary name (``mkstemp``, mode 0600) in that folder; the
  SHA-256 of the bytes is recorded in a sidecar ``kernels-<key>.so.sha256`` (also written to a temporary name and
  renamed), and the ``.so`` is renamed into place (atomic: two racing processes each load a complete file);
- **loading**: the ``.so`` is opened (``O_NOFOLLOW``), checked to be a regular file owned by the user and not
  group/world-writable, read whole, and its SHA-256 compared with the sidecar's; only those verified bytes are
  loaded, from an anonymous in-memory file (``memfd_create``; elsewhere a fresh ``mkstemp`` copy in the checked
  folder), so nothing can swap the file between the check and ``dlopen``. A file whose hash does not match (a
  planted ``.so`` with the right name, a crash leftover) is never loaded: the kernels are rebuilt over it.

``COMPACTNN_NATIVE`` selects: ``auto`` (default: native when it builds: the AVX-512 VNNI kernels on a CPU that has
them, else the AVX2 kernels, else portable C loops), ``0``/``off`` (the pure-torch engine), and, to force one path
(tests, benchmarks): ``vnni``, ``avx2`` (built with ``-march=haswell``, so on any AVX2 CPU) or ``generic`` (the
portable loops). Without a compiler the engine falls back
to torch silently (``load()`` returns None; :func:`status` says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

__all__ = ["HEADERS", "SOURCES", "AddFuse", "CacheError", "Conv", "Requant", "cache_dir", "load", "mode",
           "open_cache_dir", "status"]

SOURCES = [Path(__file__).with_name(f) for f in ("kernels.c", "conv.c", "ops.c")]  # the integer program: no float
HEADERS = [Path(__file__).with_name(f) for f in ("kernels.h", "vnni.h")]  # included by them; no float type either
#: float code outside the integer program: the input quantize / output dequantize; PQ k-means' nearest centroid and
#: PQ's ADC search
FLOAT_SOURCES = [Path(__file__).with_name(f) for f in ("io.c", "assign.c", "adc.c")]
FLOAT_HEADERS = [Path(__file__).with_name("floatvec.h")]  # included by assign.c and adc.c
_cache: dict[str, object] = {}
_memfds: list[int] = []
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
                                    "nseg", "seglen", "zin")] + [("wp", _P), ("rq", Requant), ("add", _P),
                                                                  ("rqn", Requant), ("leaky", _I64), ("raw", _I64),
                                                                  ("wp16", _P), ("u7", _I64)]


KINDS = ("auto", "vnni", "avx2", "generic")
#: cnn_simd() of each kernel path
SIMD = {2: "vnni", 1: "avx2", 0: "generic"}


def mode() -> str:
    """``COMPACTNN_NATIVE``: ``auto``, ``off``, ``vnni``, ``avx2`` or ``generic``."""
    v = os.environ.get("COMPACTNN_NATIVE", "auto").strip().lower()
    return "off" if v in ("0", "off", "false", "no", "torch") else v if v in KINDS else "auto"


def _cpu_has(flag: str) -> bool:
    return flag in _cpu_flags().split()


def cache_dir() -> Path:
    base = os.environ.get("COMPACTNN_CACHE")
    if base:
        return Path(base) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "compactnn" / "native"


class CacheError(Exception):
    """The cache folder or a cached file cannot be trusted (one line: why)."""


def _euid() -> int:
    return os.geteuid()


def _check_owned(st: os.stat_result, what: str, kind: str) -> None:
    """``st`` must be a ``kind`` ("dir"/"file") owned by the current user and not writable by group or others."""
    is_kind = stat.S_ISDIR(st.st_mode) if kind == "dir" else stat.S_ISREG(st.st_mode)
    if not is_kind:
        raise CacheError(f"{what} is not a {'directory' if kind == 'dir' else 'regular file'}")
    if st.st_uid != _euid():
        raise CacheError(f"{what} is owned by uid {st.st_uid}, not by the current user (uid {_euid()})")
    if st.st_mode & 0o022:
        raise CacheError(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                         "chmod 700 it or set COMPACTNN_CACHE to a private folder")


def open_cache_dir(path: Path | None = None) -> int:
    """Create (0700) and open the cache folder; returns its fd after the owner/mode checks. Raises CacheError."""
    path = cache_dir() if path is None else Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise CacheError(f"cannot create the native cache folder {d}: {err.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise CacheError(f"cannot open the native cache folder {path} (a symlink is refused): {err.strerror}") from None
    try:
        _check_owned(os.fstat(fd), f"the native cache folder {path}", "dir")
    except CacheError:
        os.close(fd)
        raise
    return fd


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_verified(dir_fd: int, name: str) -> bytes | None:
    """The bytes of cached ``name`` if it is a regular file we own, not group/world-writable, whose SHA-256 equals
    the recorded one (``name.sha256``); None when it is missing or does not verify (never to be loaded)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        try:
            _check_owned(os.fstat(fd), f"cached {name}", "file")
        except CacheError:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(64 << 20)
        recorded = _read_small(dir_fd, name + ".sha256")
    finally:
        os.close(fd)
    return data if recorded is not None and recorded == _sha256(data) else None


def _read_small(dir_fd: int, name: str) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        _check_owned(os.fstat(fd), name, "file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(128).decode("ascii", "replace").strip()
    except CacheError:
        return None
    finally:
        os.close(fd)


def _write_atomic(dir_fd: int, dir_path: Path, name: str, data: bytes) -> None:
    """Write ``data`` to ``name`` in the open folder: an unpredictable temporary name (0600), then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dir_path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(os.path.basename(tmp), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_bytes(data: bytes, dir_path: Path):
    """``ctypes.CDLL`` of exactly these (verified) bytes: from an anonymous memory file, else a private copy."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("compactnn-kernels", 0)
        # kept open for the life of the process: dlopen matches libraries by path, so a reused fd number would
        # hand back the library loaded first
        _memfds.append(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return ctypes.CDLL(f"/proc/self/fd/{fd}")
    fd, tmp = tempfile.mkstemp(prefix=".load.", suffix=".so", dir=dir_path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return ctypes.CDLL(tmp)
    finally:
        os.unlink(tmp)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compile(cc: str, flags: list[str], dir_fd: int, dir_path: Path, name: str) -> bytes | None:
    """Compile into the open cache folder under an unpredictable name, record its SHA-256, rename it into place;
    returns the compiled bytes (None when the compiler fails)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp.so", dir=dir_path)
    os.close(fd)
    try:
        r = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, *map(str, SOURCES + FLOAT_SOURCES), "-lm"],
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            return None
        tfd = os.open(os.path.basename(tmp), os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        with os.fdopen(tfd, "rb") as fh:
            data = fh.read()
        _write_atomic(dir_fd, dir_path, name + ".sha256", _sha256(data).encode() + b"\n")
        os.replace(os.path.basename(tmp), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return data
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
    try:
        dir_fd = open_cache_dir()
    except CacheError as err:
        _why[kind] = f"native kernels off: {err}"
        warnings.warn(f"compactnn: {_why[kind]}", RuntimeWarning, stacklevel=3)
        return None
    dir_path = cache_dir()
    if kind == "avx2" and not _cpu_has("avx2"):
        _why[kind] = "this CPU has no AVX2"
        os.close(dir_fd)
        return None
    if kind == "vnni" and not _cpu_has("avx512_vnni"):
        _why[kind] = "this CPU has no AVX-512 VNNI"
        os.close(dir_fd)
        return None
    # avx2: the AVX2 kernels whatever the CPU has beyond (-march=haswell: no AVX-512, so no VNNI path)
    arch = "-march=haswell" if kind == "avx2" else "-march=native"
    base = ["-O3", arch, "-std=c11"] + (["-DCNN_GENERIC"] if kind == "generic" else [])
    src = b"".join(p.read_bytes() for p in (*SOURCES, *HEADERS, *FLOAT_SOURCES, *FLOAT_HEADERS))
    try:
        for flags in (base + ["-fopenmp"], base):
            key = hashlib.sha256(b"\0".join([src, version.encode(), " ".join(flags).encode(),
                                             _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:20]
            name = f"kernels-{key}.so"
            try:
                data = _read_verified(dir_fd, name)
                if data is None:  # missing, or present but not verified: never loaded, rebuilt over
                    data = _compile(cc, flags, dir_fd, dir_path, name)
                if data is None:
                    continue
                lib = _load_bytes(data, dir_path)
            except (OSError, subprocess.SubprocessError) as err:
                _why[kind] = f"building the native kernels failed: {err}"
                continue
            _declare(lib)
            simd = SIMD.get(lib.cnn_simd(), "?")
            if kind in ("vnni", "avx2") and simd != kind:
                _why[kind] = f"{name}: the compiler did not produce the {kind} kernels (got {simd})"
                return None
            _why[kind] = f"{name}: simd={simd}, openmp={bool(lib.cnn_openmp())}"
            return lib
    finally:
        os.close(dir_fd)
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
        "cnn_gather": (None, [p, p, i64, i64, i64, p, i64, i]),
        "cnn_softmax": (None, [p, p, i64, i64, p, i64, i64, i]),
        "cnn_gather2_table": (None, [p, p, p, i64, i64, i64, i64, p, p, p, i]),
        "cnn_gather_channels": (None, [p, p, i64, i64, i64, i64]),
        "cnn_conv_groups": (i, [p, i64, i64, i64, i64, p, p, p, i]),
        "cnn_scatter_channels": (None, [p, p, i64, i64, i64, i64]),
        "cnn_nhwc_to_nchw": (None, [p, p, i64, i64, i64]),
        "cnn_nchw_to_nhwc": (None, [p, p, i64, i64, i64]),
        "cnn_quantize_f32": (None, [p, p, i64, ctypes.c_double, i64, i64]),
        "cnn_dequantize_u8": (None, [p, p, i64, ctypes.c_double, i64]),
        "cnn_l2_argmin": (i, [p, p, p, i64, i64, i64, i64, i64, p, p, i]),
        "cnn_adc_search": (i, [p, p, i64, i64, i64, i64, i64, p, p, i]),
        "cnn_simd": (i, []),
        "cnn_openmp": (i, []),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


def load(kind: str | None = None):
    """The loaded kernel library (built on first use), or None when disabled or it cannot be built.

    Args:
        kind: ``"auto"``, ``"vnni"``, ``"avx2"`` or ``"generic"``; default from ``COMPACTNN_NATIVE`` (``off``
            returns None).
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

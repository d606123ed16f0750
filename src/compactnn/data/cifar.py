"""CIFAR-10 from its "python version" batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

The batches are Python pickles, the data set's own published format. They are read **without any pickle
machinery**: :func:`parse_batch` is a small interpreter of the few pickle opcodes that such a batch uses (protocols
2 to 5, as written by Python 2 + numpy 1 for the published files, or by ``pickle.dump`` today), over plain values
only: dicts, lists, tuples, ints, bools, None, str and bytes. The handful of globals a numpy array needs
(``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``, numpy's protocol-5 ``_frombuffer`` and ``_codecs.encode``, which protocol-2 pickles written by
Python 3 use for bytes) are *names the parser recognizes*, never looked up or called: it accepts exactly the
argument and state tuples that describe a C-ordered uint8 array of the given shape, whose bytes come from the file
(so a batch can never make it allocate much more than its own size), and ``encode(text, "latin1")``. Every other
opcode or global, any other dtype or structure is refused with one line. At most :data:`MAX_OBJECTS` values are
made, and only regular files of at most :data:`MAX_BATCH` bytes are opened.

Each batch is a dict with ``b"data"`` (uint8, ``(N, 3072)``: 1024 red, then green, then blue values of a 32x32 image
in row-major order) and ``b"labels"`` (N ints in 0..9). Inputs are scaled to [0, 1] and normalized per channel with
the usual CIFAR-10 training-set statistics: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).

Batch files in the user cache (which compactnn downloads and unpacks) are checked against the published MD5 of each
batch (the values torchvision lists); files in a folder the user gives are the user's own and are not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import read_regular
from .bundle import ArrayDataset, DataBundle, PathLike, register_dataset
from .fetch import Resource, cache_dir, locate

SUBFOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html (no SHA-256 is published).
ARCHIVE = Resource(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    md5="c58f30108f718f92721af3b95e74349a",
)
#: MD5 of each batch of the published archive (as listed by torchvision.datasets.CIFAR10).
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
}
MAX_BATCH = 1 << 28
MAX_OBJECTS = 200_000


class _Bad(Exception):
    """A batch that is not exactly the expected structure (turned into a DataError naming the file)."""


_GLOBALS = {
    ("_codecs", "encode"): "encode",
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct", ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer", ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype",
}
_U8_STATE = (3, "|", None, None, None, -1, -1, 0)


class _Global:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _DType:
    """``numpy.dtype("u1")`` as the parser sees it; ``ok`` once its state tuple was checked."""

    __slots__ = ("ok",)

    def __init__(self):
        self.ok = False


class _Array:
    """``_reconstruct(ndarray, (0,), b"b")``: an array waiting for its BUILD state (``value`` after that)."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = None


def _text(v):
    return v.decode("latin-1") if type(v) is bytes else v


def _is_false(v):
    return v is False or (type(v) is int and v == 0)


def _is_true(v):
    return v is True or (type(v) is int and v == 1)


def _uint8(data, shape) -> np.ndarray:
    if not (type(shape) is tuple and 1 <= len(shape) <= 4 and all(type(d) is int and 0 <= d < 2**31 for d in shape)):
        raise _Bad("array shape is malformed")
    if type(data) is not bytes or len(data) != int(np.prod(shape, dtype=object)):
        raise _Bad("array data does not match its shape")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _reduce(func, args):
    if not isinstance(func, _Global) or type(args) is not tuple:
        raise _Bad("REDUCE on something other than an allowed global")
    name = func.name
    if name == "encode":
        if len(args) == 2 and type(args[0]) is str and _text(args[1]) in ("latin1", "latin-1"):
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                raise _Bad("_codecs.encode of text outside latin-1") from None
    elif name == "dtype":
        if len(args) == 3 and _text(args[0]) == "u1" and _is_false(args[1]) and _is_true(args[2]):
            return _DType()
        raise _Bad("only uint8 arrays are allowed")
    elif name == "reconstruct":
        if len(args) == 3 and isinstance(args[0], _Global) and args[0].name == "ndarray" and args[1] == (0,) \
                and type(args[1][0]) is int and _text(args[2]) == "b":
            return _Array()
    elif name == "frombuffer":
        if len(args) == 4 and isinstance(args[1], _DType) and args[1].ok and _text(args[3]) == "C":
            return _uint8(args[0], args[2])
    raise _Bad(f"unexpected call of {name}")


def _build(obj, state):
    if isinstance(obj, _DType) and not obj.ok:
        if type(state) is tuple and len(state) == 8 and tuple(_text(v) for v in state) == _U8_STATE \
                and all(type(v) is int for v in (state[0], *state[5:])):
            obj.ok = True
            return
        raise _Bad("dtype state is not that of uint8")
    if isinstance(obj, _Array) and obj.value is None:
        if type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1 \
                and isinstance(state[2], _DType) and state[2].ok and _is_false(state[3]):
            obj.value = _uint8(state[4], state[1])
            return
        raise _Bad("array state is not that of a C-ordered uint8 array")
    raise _Bad("BUILD on something other than a new array or dtype")


def parse_batch(raw: bytes):
    """Parse a pickled CIFAR batch without pickle: returns the top-level dict with arrays for the numpy values.

    Raises ``_Bad`` (one line) for anything but the expected structure; see the module docstring.
    """
    stack: list = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    made = 0
    at, end = 0, len(raw)

    def take(n):
        nonlocal at
        if n < 0 or at + n > end:
            raise _Bad("the file ends in the middle of a value")
        out = raw[at:at + n]
        at += n
        return out

    def u(fmt):
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    def push(v):
        nonlocal made
        made += 1
        if made > MAX_OBJECTS:
            raise _Bad(f"more than {MAX_OBJECTS:,} values")
        stack.append(v)

    def pop():
        if not stack or (marks and len(stack) <= marks[-1]):
            raise _Bad("stack underflow")
        return stack.pop()

    def pop_mark():
        if not marks:
            raise _Bad("no MARK")
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def top():
        if not stack or (marks and len(stack) <= marks[-1]):
            raise _Bad("stack underflow")
        return stack[-1]

    def setitems(d, items):
        if type(d) is not dict or len(items) % 2:
            raise _Bad("SETITEM(S) on something other than a dict")
        for k, v in zip(items[::2], items[1::2]):
            if type(k) not in (str, bytes, int):
                raise _Bad("dict key of a disallowed type")
            d[k] = v

    if raw[:1] != b"\x80" or len(raw) < 2 or not 2 <= raw[1] <= 5:
        raise _Bad("not a pickle of protocol 2 to 5")
    at = 2
    while True:
        op = take(1)
        if op == b".":
            break
        if op == b"\x95":
            take(8)
        elif op == b"}":
            push({})
        elif op == b"]":
            push([])
        elif op == b")":
            push(())
        elif op == b"(":
            marks.append(len(stack))
            if len(marks) > 64:
                raise _Bad("MARKs nest too deep")
        elif op in (b"q", b"r", b"\x94"):
            idx = u("<B") if op == b"q" else u("<I") if op == b"r" else len(memo)
            if len(memo) >= MAX_OBJECTS and idx not in memo:
                raise _Bad("memo too large")
            memo[idx] = top()
        elif op in (b"h", b"j"):
            idx = u("<B") if op == b"h" else u("<I")
            if idx not in memo:
                raise _Bad("GET of an unknown memo entry")
            push(memo[idx])
        elif op in (b"U", b"T", b"C", b"B", b"\x8e", b"\x96"):
            n = {b"U": "<B", b"C": "<B", b"T": "<i", b"B": "<I", b"\x8e": "<Q", b"\x96": "<Q"}[op]
            push(bytes(take(u(n))))
        elif op in (b"X", b"\x8c", b"\x8d"):
            n = u({b"X": "<I", b"\x8c": "<B", b"\x8d": "<Q"}[op])
            try:
                push(bytes(take(n)).decode("utf-8"))
            except UnicodeDecodeError:
                raise _Bad("text is not UTF-8") from None
        elif op == b"K":
            push(u("<B"))
        elif op == b"M":
            push(u("<H"))
        elif op == b"J":
            push(u("<i"))
        elif op == b"\x8a":
            n = u("<B")
            if n > 8:
                raise _Bad("integer too long")
            push(int.from_bytes(take(n), "little", signed=True))
        elif op == b"N":
            push(None)
        elif op == b"\x88":
            push(True)
        elif op == b"\x89":
            push(False)
        elif op == b"t":
            push(tuple(pop_mark()))
        elif op in (b"\x85", b"\x86", b"\x87"):
            n = op[0] - 0x84
            items = [pop() for _ in range(n)][::-1]
            push(tuple(items))
        elif op == b"a":
            v = pop()
            lst = top()
            if type(lst) is not list:
                raise _Bad("APPEND to something other than a list")
            lst.append(v)
        elif op == b"e":
            items = pop_mark()
            lst = top()
            if type(lst) is not list:
                raise _Bad("APPENDS to something other than a list")
            lst.extend(items)
        elif op == b"s":
            v, k = pop(), pop()
            setitems(top(), [k, v])
        elif op == b"u":
            items = pop_mark()
            setitems(top(), items)
        elif op in (b"c", b"\x93"):
            if op == b"c":
                nl = raw.find(b"\n", at, at + 200)
                nl2 = raw.find(b"\n", nl + 1, nl + 200) if nl >= 0 else -1
                if nl < 0 or nl2 < 0:
                    raise _Bad("malformed GLOBAL")
                module, name = raw[at:nl].decode("latin-1"), raw[nl + 1:nl2].decode("latin-1")
                at = nl2 + 1
            else:
                name, module = pop(), pop()
            key = (module, name) if type(module) is str and type(name) is str else None
            if key not in _GLOBALS:
                raise _Bad(f"global {str(module)[:60]}.{str(name)[:60]} is not allowed in a CIFAR batch")
            push(_Global(_GLOBALS[key]))
        elif op == b"R":
            args, func = pop(), pop()
            push(_reduce(func, args))
        elif op == b"b":
            state = pop()
            _build(top(), state)
        else:
            raise _Bad(f"pickle opcode {op!r} at byte {at - 1} is not allowed in a CIFAR batch")
    if len(stack) != 1 or marks:
        raise _Bad("the pickle does not end with exactly one value")
    return stack[0]


def read_batch(path: PathLike, md5: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file into ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file.
        md5: if given, the file's MD5 must equal it (the published checksum of that batch).
    """
    path = Path(path)

    def head(first: bytes) -> None:
        if first[:1] != b"\x80":
            raise DataError(f"{path} is not a valid CIFAR-10 python batch (not a pickle); download the data set again")

    raw = read_regular(path, "CIFAR-10 batch", DataError, MAX_BATCH, check_head=head)
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise DataError(f"{path} does not match the published MD5 {md5} of {path.name}; it is damaged or not the "
                        f"original: delete it and download the data set again")
    try:
        batch = parse_batch(raw)
    except _Bad as err:
        raise DataError(f"{path} is not a valid CIFAR-10 python batch ({err}); download the data set again") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, expected a dict with data and labels")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if isinstance(data, _Array):
        data = data.value
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path} 'data' is {got}, expected a uint8 array of shape (N, 3072)")
    if type(labels) is not list or not all(type(v) is int for v in labels):
        raise DataError(f"{path} 'labels' is not a list of ints; expected one label per image")
    labels = np.asarray(labels, dtype=np.int64) if labels else np.zeros(0, dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(f"{path} has {len(data)} images but {labels.size} labels; expected one label per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{path} has labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def find_batches(folder: Path) -> Path | None:
    """The folder holding all six batch files: ``folder`` itself or its ``cifar-10-batches-py``; else ``None``."""
    for candidate in (folder, folder / SUBFOLDER):
        if all((candidate / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return candidate
    return None


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> ArrayDataset:
    x = images.astype(np.float32)
    for c in range(3):
        x[:, c] *= np.float32(1.0 / (255.0 * STD[c]))
        x[:, c] -= np.float32(MEAN[c] / STD[c])
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(labels))


def _unpack(cache: Path) -> None:
    """Extract the downloaded archive's batches into ``cache/cifar-10-batches-py`` (atomically), then delete it."""
    archive = cache / ARCHIVE.filename
    if find_batches(cache) is not None or not archive.exists():
        return
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(SUBFOLDER + "/")]
            tar.extractall(work, members=members, filter="data")
        os.replace(work / SUBFOLDER, cache / SUBFOLDER)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot unpack {archive} ({err}); delete it and retry") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    archive.unlink()


@register_dataset("cifar10", "CIFAR-10 small colour images in 10 classes (50000 train / 10000 test, 3x32x32)")
def load_cifar10(root: PathLike | None = None, download: bool = True) -> DataBundle:
    """CIFAR-10 from its python batches (search order in :mod:`compactnn.data.fetch`), normalized per channel.

    Args:
        root: a folder holding the batch files, or their ``cifar-10-batches-py`` subfolder (searched first).
        download: download and unpack the archive into the user cache if the batches are found nowhere.
    """
    hint = f"download and unpack {ARCHIVE.urls[0]} into $COMPACTNN_DATA/cifar10 or pass root=..."
    folder = locate("cifar10", root, find_batches, download_ok=download, resources=[ARCHIVE], hint=hint,
                    prepare=_unpack)  # fmt: skip
    managed = Path(folder).resolve().is_relative_to(cache_dir("cifar10").resolve())

    def read(name):
        return read_batch(folder / name, md5=BATCH_MD5[name] if managed else None)

    parts = [read(f) for f in TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read(TEST_FILE)
    return DataBundle("cifar10", _to_dataset(train_x, train_y), _to_dataset(test_x, test_y), 10, (3, 32, 32),
                      list(CLASSES))  # fmt: skip

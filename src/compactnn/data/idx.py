"""IDX files (the MNIST format) and the MNIST and Fashion-MNIST data sets.

An IDX file is a 4-byte magic ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in
big-endian row-major order. Files may be gzip-compressed; compression is detected from the gzip magic bytes
``1f 8b``, not from the file name. Images are ``(N, 28, 28)`` uint8 (magic ``0x00000803``) and labels ``(N,)`` uint8
(magic ``0x00000801``).

Inputs are scaled to [0, 1] and normalized with each data set's usual training-set constants (the values used by
torchvision's examples and most papers): MNIST mean 0.1307, std 0.3081; Fashion-MNIST mean 0.2860, std 0.3530.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import open_regular
from .bundle import ArrayDataset, DataBundle, PathLike, register_dataset
from .fetch import DEBIAN_DIRS, Resource, cache_dir, locate

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v): k for k, v in IDX_DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"

FILES = {  # part -> base file name (a ".gz" or raw file of that name is accepted)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip

# Published MD5 checksums (no SHA-256 is published for either data set).
# Fashion-MNIST: the table in https://github.com/zalandoresearch/fashion-mnist README ("Get the Data").
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# MNIST: the checksums torchvision.datasets.MNIST.resources lists for the original files and its mirror.
_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# SHA-256 of the four decompressed Fashion-MNIST files, measured from Debian's dataset-fashion-mnist package (its
# .gz files are compressed differently from the published ones, so their MD5s differ; the content is what counts).
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def _managed(name: str, files: dict[str, Path]) -> bool:
    """Whether the files sit where compactnn puts or expects published copies (user cache, Debian folder); files
    in a folder the user names are the user's own and are not checksum-checked."""
    folder = next(iter(files.values())).parent.resolve()
    managed = [cache_dir(name)] + ([DEBIAN_DIRS[name]] if name in DEBIAN_DIRS else [])
    return any(folder == Path(m).resolve() for m in managed)


def _magic_text(code: int, ndim: int) -> str:
    return f"0x0000{code:02X}{ndim:02X}"


#: Largest IDX file read (on disk) and largest data area (decompressed); MNIST's largest file is 47 MB raw.
MAX_IDX_FILE = 1 << 30
MAX_IDX_DATA = 1 << 27


def _check_head(path: Path, head: bytes, ndim: int | None, dtype_code: int | None) -> tuple[int, int]:
    if ndim is not None and dtype_code is not None:
        expect = _magic_text(dtype_code, ndim)
    else:
        expect = "00 00 <dtype code 08/09/0B/0C/0D/0E> <ndim>"
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        raise DataError(f"{path} is not an IDX file: its magic is 0x{head[:4].hex().upper() or 'empty'}, expected {expect}")
    code, dims_n = head[2], head[3]
    if (ndim is not None and dims_n != ndim) or (dtype_code is not None and code != dtype_code):
        raise DataError(f"{path} has IDX magic {_magic_text(code, dims_n)}, expected {expect}")
    return code, dims_n


def _data_size(path: Path, dims: tuple[int, ...], dtype: np.dtype) -> int:
    need = 1
    for d in dims:  # Python ints: a product that would wrap a fixed-width int (to 0) is seen as the huge number it is
        need *= d
    need *= dtype.itemsize
    if need > MAX_IDX_DATA:
        raise DataError(f"{path} declares shape {tuple(dims)} ({need:,} bytes of data), more than the "
                        f"{MAX_IDX_DATA:,} an IDX file may hold here; the file is corrupted")
    return need


def read_idx(path: PathLike, ndim: int | None = None, dtype_code: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array, checking its header and size.

    Only a regular file of at most :data:`MAX_IDX_FILE` bytes is opened. The magic and the dims are checked first;
    the data size follows from the dims (exact integer product, at most :data:`MAX_IDX_DATA` bytes) and a gzip
    stream is decompressed only up to that size plus one byte, so a gzip bomb cannot allocate more.

    Args:
        path: the file.
        ndim: the number of dimensions the caller expects (3 for images, 1 for labels); ``None`` accepts any.
        dtype_code: the IDX dtype code the caller expects (``0x08`` for uint8); ``None`` accepts any.
    """
    path = Path(path)
    with open_regular(path, "IDX file", DataError, MAX_IDX_FILE) as reader:
        first = reader.read_at(0, min(reader.size, 1 << 16))
        if first[:2] == GZIP_MAGIC:
            return _read_gzip(path, reader, ndim, dtype_code)
        code, dims_n = _check_head(path, first, ndim, dtype_code)
        header = 4 + 4 * dims_n
        if reader.size < header:
            raise DataError(f"{path} is truncated: its header needs {header} bytes, got {reader.size}")
        dims = struct.unpack(f">{dims_n}I", first[4:header])
        dtype = np.dtype(IDX_DTYPES[code])
        need = _data_size(path, dims, dtype)
        got = reader.size - header
        if got != need:
            what = "truncated" if got < need else "longer than its header says"
            raise DataError(f"{path} is {what}: expected {need} bytes of data for shape {tuple(dims)}, got {got}")
        buf = reader.read_at(header, need)
    if len(buf) != need:
        raise DataError(f"{path} changed while it was read; try again")
    return np.frombuffer(buf, dtype=dtype, count=need // dtype.itemsize).reshape(dims)


def _read_gzip(path: Path, reader, ndim: int | None, dtype_code: int | None) -> np.ndarray:
    inflate = zlib.decompressobj(wbits=31)
    offset = 0
    pending = b""

    def more(limit: int) -> bytes:
        """Up to ``limit`` more decompressed bytes (fewer only at the end of the stream)."""
        nonlocal offset, pending
        out = []
        got = 0
        while got < limit:
            if inflate.eof or (offset >= reader.size and not inflate.unconsumed_tail):
                break  # (at the end of the stream zlib may keep an unconsumed tail: never feed it again)
            if inflate.unconsumed_tail:
                chunk = inflate.decompress(inflate.unconsumed_tail, limit - got)
            else:
                data = reader.read_at(offset, 1 << 20)
                offset += len(data)
                chunk = inflate.decompress(data, limit - got)
            out.append(chunk)
            got += len(chunk)
        return b"".join(out)

    try:
        head = more(4)
        code, dims_n = _check_head(path, head, ndim, dtype_code)
        dims_raw = more(4 * dims_n)
        if len(dims_raw) < 4 * dims_n:
            raise DataError(f"{path} is truncated: its header needs {4 + 4 * dims_n} bytes, got {4 + len(dims_raw)}")
        dims = struct.unpack(f">{dims_n}I", dims_raw)
        dtype = np.dtype(IDX_DTYPES[code])
        need = _data_size(path, dims, dtype)
        buf = bytearray(need)
        view = memoryview(buf)
        at = 0
        while at < need:
            chunk = more(min(need - at, 1 << 22))
            if not chunk:
                break
            view[at:at + len(chunk)] = chunk
            at += len(chunk)
        extra = more(1)
    except zlib.error as err:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({err}); download it again") from None
    if at < need:
        if not inflate.eof:
            raise DataError(f"{path} is a corrupt or truncated gzip file (the stream ends early); download it again")
        raise DataError(f"{path} is truncated: expected {need} bytes of data for shape {tuple(dims)}, got {at}")
    if extra:
        raise DataError(f"{path} is longer than its header says: more than {need} bytes of data for shape "
                        f"{tuple(dims)}")
    if not inflate.eof:
        raise DataError(f"{path} is a corrupt or truncated gzip file (no end of stream); download it again")
    if inflate.unconsumed_tail or inflate.unused_data or offset < reader.size:
        raise DataError(f"{path} has bytes after the end of its gzip stream; the file is corrupted")
    return np.frombuffer(bytes(buf), dtype=dtype, count=need // dtype.itemsize).reshape(dims)


def write_idx(path: PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (atomically: a temp file in the same folder, then renamed).

    Args:
        path: the file to write.
        array: uint8, int8, int16, int32, float32 or float64 data with at least one dimension.
        compress: gzip the file; ``None`` compresses when ``path`` ends in ``.gz``.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder(">"))
    if code is None or array.ndim == 0:
        raise DataError(f"cannot write a {array.dtype} array of {array.ndim} dims as IDX; use uint8/int*/float*")
    data = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    data += np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (``name.gz`` or raw ``name``), or ``None`` if any is missing."""
    found = {}
    for part, base in FILES.items():
        for candidate in (folder / f"{base}.gz", folder / base):
            if candidate.is_file():
                found[part] = candidate
                break
        else:
            return None
    return found


def _normalized(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    x = images.astype(np.float32)
    x *= np.float32(1.0 / (255.0 * std))
    x -= np.float32(mean / std)
    return torch.from_numpy(x.reshape(len(x), 1, *x.shape[1:]))


def _verified(path: Path, array: np.ndarray, md5s: dict[str, str], contents: dict[str, str]) -> np.ndarray:
    """Check a managed file against its published MD5 (of the .gz) or the known SHA-256 of its decompressed
    content; DataError if neither matches. Files not named in either table pass."""
    base = path.name.removesuffix(".gz")
    if f"{base}.gz" not in md5s and base not in contents:
        return array
    if path.suffix == ".gz" and md5s.get(path.name):
        digest = hashlib.md5()
        with open_regular(path, "IDX file", DataError, MAX_IDX_FILE) as reader:
            for at in range(0, reader.size, 1 << 24):
                digest.update(reader.read_at(at, 1 << 24))
        if digest.hexdigest() == md5s[path.name]:
            return array
    if base in contents:
        head = struct.pack(f">BBBB{array.ndim}I", 0, 0, _CODES[array.dtype], array.ndim, *array.shape)
        if hashlib.sha256(head + array.tobytes()).hexdigest() == contents[base]:
            return array
    raise DataError(f"{path} does not match the published checksum of {path.name}; it is damaged or not the "
                    f"original: delete it and get the data set again")


def _load_split(files: dict[str, Path], split: str, mean: float, std: float, num_classes: int,
                check: tuple[dict, dict] | None = None) -> ArrayDataset:
    images = read_idx(files[f"{split}_images"], ndim=3, dtype_code=0x08)
    labels = read_idx(files[f"{split}_labels"], ndim=1, dtype_code=0x08)
    if check is not None:
        images = _verified(files[f"{split}_images"], images, *check)
        labels = _verified(files[f"{split}_labels"], labels, *check)
    if len(images) != len(labels):
        raise DataError(
            f"{files[f'{split}_labels']} has {len(labels)} labels but {files[f'{split}_images']} has "
            f"{len(images)} images; the files belong to different sets"
        )
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{files[f'{split}_labels']} has label {int(labels.max())}, expected 0..{num_classes - 1}")
    return ArrayDataset(_normalized(images, mean, std), torch.from_numpy(labels.astype(np.int64)))


def load_idx_bundle(name: str, files: dict[str, Path], mean: float, std: float,
                    classes: list[str] | None = None, num_classes: int = 10,
                    check: tuple[dict, dict] | None = None) -> DataBundle:  # fmt: skip
    """Build a :class:`DataBundle` from four IDX files (keys as in :data:`FILES`).

    Args:
        name: the bundle's name.
        files: the paths of the train/test images and labels.
        mean: the normalization mean (of pixels scaled to [0, 1]).
        std: the normalization standard deviation.
        classes: class names by label.
        num_classes: number of classes; labels must be below it.
        check: ``(md5 of each .gz, SHA-256 of each decompressed file)`` to verify the files against.
    """
    train = _load_split(files, "train", mean, std, num_classes, check)
    test = _load_split(files, "test", mean, std, num_classes, check)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{name} train images are {tuple(train.x.shape[2:])} but test images are "
                        f"{tuple(test.x.shape[2:])}; the files belong to different sets")  # fmt: skip
    shape = tuple(int(s) for s in train.x.shape[1:])
    return DataBundle(name, train, test, num_classes, shape, classes)  # type: ignore[arg-type]


def _resources(md5s: dict[str, str], bases: tuple[str, ...]) -> list[Resource]:
    return [Resource(f, tuple(b + f for b in bases), md5=m) for f, m in md5s.items()]


@register_dataset("fashion-mnist", "Zalando's Fashion-MNIST clothing images (60000 train / 10000 test, 1x28x28)")
def load_fashion_mnist(root: PathLike | None = None, download: bool = True) -> DataBundle:
    """Fashion-MNIST from IDX files (search order in :mod:`compactnn.data.fetch`), normalized 0.2860/0.3530.

    Args:
        root: a folder holding the four IDX files (searched first).
        download: download them into the user cache if they are found nowhere.
    """
    hint = (
        "get it with `apt-get install dataset-fashion-mnist`, or put the four *-ubyte.gz files from "
        f"{_FASHION_URL} in $COMPACTNN_DATA/fashion-mnist or pass root=..."
    )
    files = locate("fashion-mnist", root, find_idx_files, download_ok=download,
                   resources=_resources(_FASHION_MD5, (_FASHION_URL,)), hint=hint)  # fmt: skip
    check = (_FASHION_MD5, _FASHION_SHA256) if _managed("fashion-mnist", files) else None
    return load_idx_bundle("fashion-mnist", files, 0.2860, 0.3530, FASHION_CLASSES, check=check)


@register_dataset("mnist", "LeCun's MNIST handwritten digits (60000 train / 10000 test, 1x28x28)")
def load_mnist(root: PathLike | None = None, download: bool = True) -> DataBundle:
    """MNIST from IDX files (search order in :mod:`compactnn.data.fetch`), normalized 0.1307/0.3081.

    Args:
        root: a folder holding the four IDX files (searched first).
        download: download them into the user cache if they are found nowhere.
    """
    hint = (
        f"put the four *-ubyte.gz files from {_MNIST_URLS[0]} in $COMPACTNN_DATA/mnist or pass root=..."
    )
    files = locate("mnist", root, find_idx_files, download_ok=download,
                   resources=_resources(_MNIST_MD5, _MNIST_URLS), hint=hint)  # fmt: skip
    check = (_MNIST_MD5, {}) if _managed("mnist", files) else None
    return load_idx_bundle("mnist", files, 0.1307, 0.3081, [str(d) for d in range(10)], check=check)

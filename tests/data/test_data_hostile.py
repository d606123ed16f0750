"""Hostile data files from the hardening audit (issue 17): IDX and CIFAR readers refuse them with one DataError line
without reading or allocating much, and never run or build anything a file names."""

import gzip
import os
import pickle
import resource
import struct
import zlib

import numpy as np
import pytest

from compactnn.data import cifar, idx
from compactnn.errors import DataError


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fails(fn, path, match):
    with pytest.raises(DataError, match=match) as err:
        fn(path)
    assert "\n" not in str(err.value)
    return str(err.value)


# ---------------------------------------------------------------------------------------------------- IDX
def test_idx_gzip_bomb_is_capped_by_the_header(tmp_path):
    path = tmp_path / "bomb.gz"
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 60000, 28, 28)
    body = [comp.compress(header)] + [comp.compress(bytes(1 << 20)) for _ in range(192)]  # 192 MiB of zeros
    path.write_bytes(b"".join(body) + comp.flush())
    assert path.stat().st_size < 1_000_000
    before = rss_mb()
    fails(idx.read_idx, path, "is longer than its header says: more than 47040000 bytes")
    assert rss_mb() - before < 150


def test_idx_header_claiming_too_much(tmp_path):
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, 2**31, 2**16, 2**16)))
    fails(idx.read_idx, path, r"declares shape \(2147483648, 65536, 65536\) .* more than the 134,217,728")


def test_idx_dims_whose_product_wraps_to_zero(tmp_path):
    path = tmp_path / "wrap"
    path.write_bytes(struct.pack(">BBBBIIII", 0, 0, 8, 4, 2**16, 2**16, 2**16, 2**16))
    fails(idx.read_idx, path, r"declares shape \(65536, 65536, 65536, 65536\) \(18,446,744,073,709,551,616 bytes")


def test_idx_huge_file_is_not_read_before_the_magic(tmp_path):
    path = tmp_path / "huge"
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(1_500_000_000)  # sparse file
    before = rss_mb()
    fails(idx.read_idx, path, "more than the 1,073,741,824 an IDX file may have")
    with open(path, "r+b") as f:
        f.truncate(900_000_000)
    fails(idx.read_idx, path, "is not an IDX file: its magic is 0x504B0304")
    assert rss_mb() - before < 50


def test_idx_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    fails(idx.read_idx, tmp_path / "fifo", "not a regular file")


# ---------------------------------------------------------------------------------------------------- CIFAR
def write(tmp_path, blob, name="data_batch_1"):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def test_object_dtype_batch_is_refused(tmp_path):
    # the audit's segfault: an object array filled from raw bytes, with only the formerly allowed globals
    arr = np.array([None, None], dtype=object)
    blob = pickle.dumps({b"data": arr, b"labels": []}, protocol=2)
    fails(cifar.read_batch, write(tmp_path, blob), r"only uint8 arrays are allowed")
    blob = blob.replace(b"O8", b"u1")  # a uint8 dtype with an object array's state
    fails(cifar.read_batch, write(tmp_path, blob), r"not a valid CIFAR-10 python batch")


def test_build_on_an_allowed_function_is_refused(tmp_path):
    # BUILD on _reconstruct (mutating its __defaults__ in the old unpickler)
    blob = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n}X\x0c\x00\x00\x00__defaults__N\x86b."
    fails(cifar.read_batch, write(tmp_path, blob), r"BUILD on something other than a new array")


def test_reduce_cannot_allocate_beyond_the_file(tmp_path):
    # _reconstruct + a shape of 400 M elements with 3 bytes of data (the audit's 2.4 GB from 30 KB files)
    good = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, protocol=2)
    blob = good.replace(b"K\x01M\x00\x0c\x86", b"J\x00\x00\x00\x10M\x00\x0c\x86")
    assert blob != good
    before = rss_mb()
    fails(cifar.read_batch, write(tmp_path, blob), r"array data does not match its shape")
    assert rss_mb() - before < 50


def test_many_values_are_refused(tmp_path):
    blob = b"\x80\x02]" + b"(" + b"N" * 300_000 + b"e."
    fails(cifar.read_batch, write(tmp_path, blob), r"more than 200,000 values")


@pytest.mark.parametrize("blob, match", [
    (b"\x80\x02cos\nsystem\n(X\x02\x00\x00\x00idtR.", r"global os\.system is not allowed"),
    (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.", r"global builtins\.eval is not allowed"),
    (b"\x80\x02X\x01\x00\x00\x00aX\x01\x00\x00\x00bb.", r"BUILD on something other"),
    (b"\x80\x02c__builtin__\nobject\n)\x81.", r"global __builtin__\.object"),
    (b"\x80\x02)\x81.", r"pickle opcode b'\\x81'"),
    (b"\x80\x02}(]]u.", r"dict key of a disallowed type"),
    (b"\x80\x02X\xff\xff\xff\x7fab.", r"ends in the middle of a value"),
    (b"\x80\x02h\x05.", r"GET of an unknown memo entry"),
    (b"cos\nsystem\n.", r"not a pickle"),
    (b"\x80\x02]q\x00h\x00a.", r"'data' is NoneType|holds a list"),
])
def test_hostile_pickles(tmp_path, blob, match):
    fails(cifar.read_batch, write(tmp_path, blob), match)


def test_python2_style_batch_is_read(tmp_path):
    """The published batches: protocol 2 from Python 2 (SHORT_BINSTRING keys, BINSTRING data, int dtype flags)."""
    data = bytes(range(256)) * 12
    blob = (b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00"
            b"\x85U\x01b\x87Rq\x05(K\x01K\x01M\x00\x0c\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|"
            b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbK\x00T" + struct.pack("<i", len(data)) + data +
            b"tbU\x06labelsq\x08]q\tK\x07aU\tfilenamesq\n]U\x05a.pngaU\x0bbatch_labelU\x02b1u.")
    images, labels = cifar.read_batch(write(tmp_path, blob))
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [7]
    assert images.reshape(-1).tobytes() == data


def test_no_pickle_machinery_in_the_reader():
    import inspect

    source = inspect.getsource(cifar)
    assert "import pickle" not in source and "Unpickler" not in source and "pickle.load" not in source


def test_idx_gzip_with_trailing_bytes_does_not_spin(tmp_path):
    # found by the fuzzer: at the end of the stream zlib keeps an "unconsumed tail" that the old loop fed forever
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + bytes(5)) + bytes(16))
    fails(idx.read_idx, path, "has bytes after the end of its gzip stream")

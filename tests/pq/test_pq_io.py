"""Vector files (.fvecs/.ivecs/.bvecs, .npy) and PQ index save/load, on files the tests write."""

import numpy as np
import pytest
import torch

from compactnn.errors import DataError, PackError
from compactnn.pq import PQIndex
from compactnn.pq.io import load_index, read_npy, read_vecs, save_index, write_vecs


def _le_records(x, dtype):
    """The SIFT layout written by hand (not by write_vecs): int32 d, then d values, little-endian."""
    out = b""
    for row in x:
        out += np.int32(len(row)).astype("<i4").tobytes() + np.asarray(row, dtype=dtype).tobytes()
    return out


@pytest.mark.parametrize("kind,dtype", [("fvecs", "<f4"), ("ivecs", "<i4"), ("bvecs", "u1")])
def test_vecs_read_what_the_layout_says(tmp_path, kind, dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((7, 5)) * 200).astype(dtype)
    path = tmp_path / f"a.{kind}"
    path.write_bytes(_le_records(x, dtype))
    got = read_vecs(path)
    assert got.shape == (7, 5) and np.array_equal(got, x)
    assert np.array_equal(read_vecs(path, limit=3), x[:3])
    write_vecs(tmp_path / f"b.{kind}", x)
    assert (tmp_path / f"b.{kind}").read_bytes() == path.read_bytes()


def test_vecs_size_checks(tmp_path):
    x = np.arange(12, dtype="<f4").reshape(3, 4)
    good = _le_records(x, "<f4")
    cases = {
        "trunc.fvecs": (good[:-3], "whole number"),
        "short.fvecs": (good[:2], "too short"),
        "dim.fvecs": (np.int32(-5).tobytes() + good[4:], "dimension -5"),
        "mixed.fvecs": (good[:20] + np.int32(3).tobytes() + good[24:], "vector 1 has dimension 3"),
    }
    for name, (data, text) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as err:
            read_vecs(tmp_path / name)
        assert text in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(DataError, match="unknown vector file type"):
        read_vecs(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        read_vecs(tmp_path / "missing.fvecs")


def test_npy_reader_checks_length_and_refuses_objects(tmp_path):
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(read_npy(tmp_path / "a.npy"), a)
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-4])
    with pytest.raises(DataError, match="truncated"):
        read_npy(tmp_path / "t.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="numeric"):
        read_npy(tmp_path / "o.npy")
    (tmp_path / "n.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a valid .npy"):
        read_npy(tmp_path / "n.npy")


@pytest.mark.parametrize("method", ["pq", "opq-parametric"])
def test_index_save_load_round_trip(tmp_path, method):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen)
    index = PQIndex.build(x, 4, bits=4, method=method, iterations=5, quiet=True)
    path = tmp_path / "i.cnz"
    manifest = save_index(index, path)
    assert manifest["metadata"]["kind"] == "pq-index" and manifest["metadata"]["ntotal"] == 300
    back = load_index(path)
    assert torch.equal(back.codes, index.codes) and back.codes.dtype == torch.uint8
    assert torch.equal(back.quantizer.codebooks, index.quantizer.codebooks)
    assert back.quantizer.method == method
    q = torch.randn(5, 16, generator=gen)
    for mode in ("adc", "sdc"):
        d1, i1 = index.search(q, 7, mode=mode)
        d2, i2 = back.search(q, 7, mode=mode)
        assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_load_index_refuses_other_files(tmp_path):
    import compactnn as cn

    cn.pack.save(torch.nn.Linear(2, 2), tmp_path / "m.cnz")
    with pytest.raises(PackError, match="not a PQ index"):
        load_index(tmp_path / "m.cnz")
    (tmp_path / "junk.cnz").write_bytes(b"junk")
    with pytest.raises(PackError):
        load_index(tmp_path / "junk.cnz")


def test_readers_refuse_fifos_and_folders_without_blocking(tmp_path):
    import os

    from compactnn.errors import DataError
    from compactnn.pq.io import read_npy, read_vecs

    fifo = tmp_path / "v.fvecs"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_vecs(fifo)
    with pytest.raises(DataError, match="is a folder"):
        read_npy(tmp_path)

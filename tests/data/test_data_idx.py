"""The IDX reader/writer and the MNIST / Fashion-MNIST loaders, on tiny files written by the tests."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import compactnn.data as cd
from compactnn.data import fetch, idx
from compactnn.errors import DataError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No env var, no Debian folder, an empty user cache, and no network."""
    monkeypatch.delenv("COMPACTNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch.DEBIAN_DIRS, "fashion-mnist", tmp_path / "no-debian")

    def no_network(url, timeout=60.0):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(fetch, "open_url", no_network)


def write_set(folder, n_train=12, n_test=5, gz=True, seed=0, hw=(28, 28)):
    """Four IDX files like MNIST's; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for part, base in idx.FILES.items():
        cd.write_idx(folder / (base + (".gz" if gz else "")), arrays[part])
    return arrays


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip(tmp_path, dtype, name):
    arr = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    cd.write_idx(tmp_path / name, arr)
    back = cd.read_idx(tmp_path / name)
    assert back.shape == arr.shape and back.dtype.kind == arr.dtype.kind
    np.testing.assert_array_equal(back, arr)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\0\0")


def test_header_bytes_follow_the_spec(tmp_path):
    cd.write_idx(tmp_path / "l", np.array([3, 1, 4], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])
    cd.write_idx(tmp_path / "i", np.array([[258]], dtype=np.int16))
    assert (tmp_path / "i").read_bytes() == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2])


def test_compression_is_detected_by_magic_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    cd.write_idx(tmp_path / "gz-without-suffix", arr, compress=True)
    cd.write_idx(tmp_path / "raw.gz", arr, compress=False)
    np.testing.assert_array_equal(cd.read_idx(tmp_path / "gz-without-suffix"), arr)
    np.testing.assert_array_equal(cd.read_idx(tmp_path / "raw.gz"), arr)


def test_wrong_magic_names_file_and_expected_magic(tmp_path):
    bad = tmp_path / "bad-images"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 20)
    with pytest.raises(DataError, match=r"bad-images is not an IDX file: its magic is 0x12340803, expected 0x00000803"):
        cd.read_idx(bad, ndim=3, dtype_code=0x08)
    labels = tmp_path / "labels"
    cd.write_idx(labels, np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"labels has IDX magic 0x00000801, expected 0x00000803"):
        cd.read_idx(labels, ndim=3, dtype_code=0x08)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file"):
        cd.read_idx(empty)


def test_truncated_file_says_expected_and_got_bytes(tmp_path):
    path = tmp_path / "t.gz"
    data = struct.pack(">BBBBIII", 0, 0, 8, 3, 2, 4, 4) + bytes(20)
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match=r"t.gz is truncated: expected 32 bytes of data for shape \(2, 4, 4\), got 20"):
        cd.read_idx(path)
    short_header = tmp_path / "h"
    short_header.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="header needs 16 bytes, got 6"):
        cd.read_idx(short_header)


def test_extra_bytes_and_corrupt_gzip(tmp_path):
    long = tmp_path / "long"
    long.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 2) + bytes(3))
    with pytest.raises(DataError, match="longer than its header says: expected 2 bytes .* got 3"):
        cd.read_idx(long)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 2) + bytes(2))[:-6])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        cd.read_idx(broken)
    with pytest.raises(DataError, match="no such file"):
        cd.read_idx(tmp_path / "missing")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,mean,std", [("mnist", 0.1307, 0.3081), ("fashion-mnist", 0.2860, 0.3530)])
def test_load_from_root(tmp_path, gz, name, mean, std):
    arrays = write_set(tmp_path / "d", gz=gz)
    data = cd.load(name, root=tmp_path / "d", download=False)
    assert data.name == name and data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert len(data.train) == 12 and len(data.test) == 5
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    np.testing.assert_array_equal(data.train.y.numpy(), arrays["train_labels"])
    expect = (arrays["test_images"] / 255.0 - mean) / std
    np.testing.assert_allclose(data.test.x.numpy()[:, 0], expect, atol=1e-5)
    if name == "fashion-mnist":
        assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10


def test_label_count_mismatch(tmp_path):
    write_set(tmp_path, n_train=12)
    cd.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz has 11 labels but .* has 12 images"):
        cd.load("mnist", root=tmp_path, download=False)


def test_label_out_of_range(tmp_path):
    write_set(tmp_path, n_test=5)
    cd.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 10], np.uint8))
    with pytest.raises(DataError, match="has label 10, expected 0..9"):
        cd.load("mnist", root=tmp_path, download=False)


def test_wrong_file_in_place_of_images(tmp_path):
    write_set(tmp_path)
    cd.write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(12, np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz has IDX magic 0x00000801, expected 0x00000803"):
        cd.load("fashion-mnist", root=tmp_path, download=False)


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setitem(fetch.DEBIAN_DIRS, "fashion-mnist", REAL_FASHION)
    data = cd.load("fashion-mnist", download=False)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert data.train.x.shape == (60000, 1, 28, 28) and data.input_shape == (1, 28, 28)
    assert np.bincount(data.test.y.numpy()).tolist() == [1000] * 10
    assert abs(float(data.train.x.mean())) < 0.01 and abs(float(data.train.x.std()) - 1.0) < 0.01

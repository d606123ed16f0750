"""CIFAR-10 from a tiny fake batches folder written by the tests, and the restricted unpickler."""

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

import compactnn.data as cd
from compactnn.data import cifar, fetch
from compactnn.errors import DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPACTNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(url, timeout=60.0):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(fetch, "open_url", no_network)


def write_batches(folder, per_batch=4, n_test=3, protocol=pickle.DEFAULT_PROTOCOL):
    """Batches shaped like the real ones: dicts with b"data" (N, 3072) uint8 and b"labels" lists."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, n in [*((f, per_batch) for f in cifar.TRAIN_FILES), (cifar.TEST_FILE, n_test)]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = batch
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_fake_cifar(tmp_path, protocol):
    written = write_batches(tmp_path, protocol=protocol)
    data = cd.load("cifar10", root=tmp_path, download=False)
    assert data.name == "cifar10" and data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    assert data.train.x.shape == (20, 3, 32, 32) and data.test.x.shape == (3, 3, 32, 32)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    expect_y = sum((written[f][b"labels"] for f in cifar.TRAIN_FILES), [])
    assert data.train.y.tolist() == expect_y
    raw = written["data_batch_2"][b"data"][1].reshape(3, 32, 32)  # row 5 of the train set
    expect = (raw / 255.0 - np.array(cifar.MEAN)[:, None, None]) / np.array(cifar.STD)[:, None, None]
    np.testing.assert_allclose(data.train.x[5].numpy(), expect, atol=1e-5)
    assert data.train.x[5, 0, 0, 1] == pytest.approx((raw[0, 0, 1] / 255 - 0.4914) / 0.2470, abs=1e-5)


def test_subfolder_and_env_var(tmp_path, monkeypatch):
    write_batches(tmp_path / "d" / "cifar-10-batches-py")
    assert len(cd.load("cifar10", root=tmp_path / "d", download=False).train) == 20
    monkeypatch.setenv("COMPACTNN_DATA", str(tmp_path / "d"))
    assert len(cd.load("cifar10", download=False).test) == 3


def test_legacy_numpy_global_name_is_accepted(tmp_path):
    """The real batches (pickled by Python 2 and numpy 1) name numpy.core.multiarray._reconstruct."""
    arr = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072) % 251
    blob = pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    (tmp_path / "b").write_bytes(blob)
    images, labels = cifar.read_batch(tmp_path / "b")
    np.testing.assert_array_equal(images.reshape(2, 3072), arr)
    assert labels.tolist() == [1, 2]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": []}))
    with pytest.raises(DataError, match=r"not a valid CIFAR-10 python batch \(global (posix|os|nt)\.system is not allowed"):
        cifar.read_batch(bad)
    assert not marker.exists()
    with pytest.raises(cifar._Bad, match="builtins.eval"):
        cifar.parse_batch(b"\x80\x02cbuiltins\neval\n(S'1'\ntR.")
    with pytest.raises(cifar._Bad, match="unexpected call of encode"):
        cifar.parse_batch(b"\x80\x02c_codecs\nencode\n(X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13tR.")


@pytest.mark.parametrize(
    "batch,match",
    [
        ([1, 2], "holds a list, expected a dict"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "has 2 images but 1 labels"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, r"'data' is uint8 \(2, 100\), expected"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "only uint8 arrays are allowed"),
        ({b"labels": [1]}, "'data' is NoneType"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "labels outside 0..9"),
    ],
)
def test_malformed_batches(tmp_path, batch, match):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=match):
        cifar.read_batch(path)


def test_truncated_batch(tmp_path):
    write_batches(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="test_batch is not a valid CIFAR-10 python batch"):
        cd.load("cifar10", root=tmp_path, download=False)


def test_not_found_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 data not found; looked in .*cache/compactnn/cifar10.*download=False.*cifar-10-python.tar.gz"):
        cd.load("cifar10", root=tmp_path / "x", download=False)


def test_download_unpacks_archive_into_cache(tmp_path, monkeypatch):
    write_batches(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    blob = archive.read_bytes()
    resource = fetch.Resource(cifar.ARCHIVE.filename, cifar.ARCHIVE.urls, md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(cifar, "ARCHIVE", resource)
    monkeypatch.setattr(fetch, "open_url", lambda url, timeout=60.0: io.BytesIO(blob))
    src = tmp_path / "src" / "cifar-10-batches-py"
    sums = {f: hashlib.md5((src / f).read_bytes()).hexdigest() for f in cifar.BATCH_MD5}
    monkeypatch.setattr(cifar, "BATCH_MD5", {**sums, "test_batch": "0" * 32})
    with pytest.raises(DataError, match="test_batch does not match the published MD5 0000"):
        cd.load("cifar10")  # cache files are checked against the published checksums
    monkeypatch.setattr(cifar, "BATCH_MD5", sums)
    data = cd.load("cifar10")
    assert len(data.train) == 20
    cache = tmp_path / "cache" / "compactnn" / "cifar10"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]  # archive and temp folder removed


def test_published_archive_checksum():
    assert cifar.ARCHIVE.md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.ARCHIVE.urls == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)

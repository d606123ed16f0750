"""Where the file-based loaders look, and downloading with checksums (the network is always faked)."""

import hashlib
import io
import urllib.error

import numpy as np
import pytest

import compactnn.data as cd
from compactnn.data import fetch, idx
from compactnn.errors import DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPACTNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch.DEBIAN_DIRS, "fashion-mnist", tmp_path / "debian")

    def no_network(url, timeout=60.0):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(fetch, "open_url", no_network)
    # the fake sets written below stand in for the published files in the cache and Debian folders: no checksums
    # (test_managed_files_are_checksum_verified puts them back)
    monkeypatch.setattr(idx, "_managed", lambda name, files: False)


MANAGED = idx._managed


def test_managed_files_are_checksum_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "_managed", MANAGED)
    monkeypatch.setattr(idx, "_FASHION_MD5", {})
    write_set(tmp_path / "debian", 5)
    write_set(tmp_path / "root", 3)
    base = "train-labels-idx1-ubyte"
    content = (tmp_path / "debian" / f"{base}.gz").read_bytes()
    import gzip

    sha = {base: hashlib.sha256(gzip.decompress(content)).hexdigest()}
    monkeypatch.setattr(idx, "_FASHION_SHA256", sha)
    assert len(cd.load("fashion-mnist", download=False).train) == 5  # content checksum matches
    monkeypatch.setattr(idx, "_FASHION_SHA256", {base: "0" * 64})
    with pytest.raises(DataError, match=f"debian/{base}.gz does not match the published checksum"):
        cd.load("fashion-mnist", download=False)
    monkeypatch.setattr(idx, "_FASHION_MD5", {f"{base}.gz": hashlib.md5(content).hexdigest()})
    assert len(cd.load("fashion-mnist", download=False).train) == 5  # the .gz MD5 matches
    monkeypatch.setattr(idx, "_FASHION_MD5", {})
    assert len(cd.load("fashion-mnist", root=tmp_path / "root", download=False).train) == 3  # user's own folder


def test_real_debian_fashion_mnist_passes_its_checksums():
    import os

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist is not installed")
    from pathlib import Path

    folder = Path("/usr/share/datasets/fashion-mnist")
    labels = cd.read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    real = {"t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"}
    assert idx._verified(folder / "t10k-labels-idx1-ubyte.gz", labels, {}, real) is labels


def write_set(folder, n_train):
    """Four tiny IDX files whose train size tells the folders apart."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train_images": (n_train, 4, 4), "train_labels": (n_train,), "test_images": (2, 4, 4), "test_labels": (2,)}
    for part, base in idx.FILES.items():
        cd.write_idx(folder / f"{base}.gz", np.ones(sizes[part], np.uint8))


def files_in(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_cache_dir_honours_xdg(tmp_path, monkeypatch):
    assert fetch.cache_dir("mnist") == tmp_path / "cache" / "compactnn" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.cache_dir("mnist") == tmp_path / "home" / ".cache" / "compactnn" / "mnist"


def test_search_order_root_env_debian_cache(tmp_path, monkeypatch):
    write_set(tmp_path / "root", 3)
    write_set(tmp_path / "env" / "fashion-mnist", 4)
    write_set(tmp_path / "debian", 5)
    write_set(tmp_path / "cache" / "compactnn" / "fashion-mnist", 6)
    monkeypatch.setenv("COMPACTNN_DATA", str(tmp_path / "env"))
    assert len(cd.load("fashion-mnist", root=tmp_path / "root", download=False).train) == 3
    assert len(cd.load("fashion-mnist", download=False).train) == 4
    monkeypatch.delenv("COMPACTNN_DATA")
    assert len(cd.load("fashion-mnist", download=False).train) == 5
    monkeypatch.setitem(fetch.DEBIAN_DIRS, "fashion-mnist", tmp_path / "gone")
    assert len(cd.load("fashion-mnist", download=False).train) == 6


def test_env_subfolder_beats_env_itself_and_root_subfolder_is_searched(tmp_path, monkeypatch):
    write_set(tmp_path / "env", 7)
    monkeypatch.setenv("COMPACTNN_DATA", str(tmp_path / "env"))
    assert len(cd.load("mnist", download=False).train) == 7
    write_set(tmp_path / "env" / "mnist", 8)
    assert len(cd.load("mnist", download=False).train) == 8
    write_set(tmp_path / "r" / "mnist", 9)
    assert len(cd.load("mnist", root=tmp_path / "r", download=False).train) == 9
    assert fetch.search_dirs("mnist", tmp_path / "r")[:4] == [
        tmp_path / "r", tmp_path / "r" / "mnist", tmp_path / "env" / "mnist", tmp_path / "env"
    ]


def test_incomplete_folder_is_skipped(tmp_path):
    write_set(tmp_path / "root", 3)
    (tmp_path / "root" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_set(tmp_path / "debian", 5)
    assert len(cd.load("fashion-mnist", root=tmp_path / "root", download=False).train) == 5


def test_not_found_without_download_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        cd.load("fashion-mnist", root=tmp_path / "mine", download=False)
    msg = str(err.value)
    assert "\n" not in msg and "download=False" in msg
    for folder in [tmp_path / "mine", tmp_path / "mine" / "fashion-mnist", tmp_path / "debian",
                   tmp_path / "cache" / "compactnn" / "fashion-mnist"]:  # fmt: skip
        assert str(folder) in msg
    assert "$COMPACTNN_DATA is not set" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_network_failure_says_where_and_how(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(fetch, "open_url", offline)
    with pytest.raises(DataError) as err:
        cd.load("mnist")
    msg = str(err.value)
    assert "mnist data not found; looked in" in msg and "no route to host" in msg and "\n" not in msg
    assert str(tmp_path / "cache" / "compactnn" / "mnist") in msg and "COMPACTNN_DATA" in msg
    assert files_in(tmp_path / "cache") == []


def test_checksum_mismatch_discards_the_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "open_url", lambda url, timeout=60.0: io.BytesIO(b"not the real file"))
    wrong = hashlib.md5(b"not the real file").hexdigest()
    with pytest.raises(DataError, match=f"failed its checksum \\(md5 expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d, got {wrong}\\)"):
        cd.load("fashion-mnist")
    assert files_in(tmp_path / "cache") == []


def serve(monkeypatch, folder, base_urls_failing=()):
    """Fake the network: URLs ending in a file name in ``folder`` return its bytes."""
    calls = []

    def fake(url, timeout=60.0):
        calls.append(url)
        if url.startswith(tuple(base_urls_failing)):
            raise urllib.error.URLError("mirror down")
        return io.BytesIO((folder / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(fetch, "open_url", fake)
    return calls


def md5s(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_download_into_cache_then_reuse(tmp_path, monkeypatch):
    write_set(tmp_path / "server", 4)
    monkeypatch.setattr(idx, "_FASHION_MD5", md5s(tmp_path / "server"))
    calls = serve(monkeypatch, tmp_path / "server")
    data = cd.load("fashion-mnist")
    assert len(data.train) == 4 and len(calls) == 4
    assert all(u.startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/") for u in calls)
    cache = tmp_path / "cache" / "compactnn" / "fashion-mnist"
    assert files_in(cache) == sorted(f"{b}.gz" for b in idx.FILES.values())
    assert len(cd.load("fashion-mnist").train) == 4 and len(calls) == 4  # second load: no download


def test_download_falls_back_to_next_mirror(tmp_path, monkeypatch):
    write_set(tmp_path / "server", 3)
    monkeypatch.setattr(idx, "_MNIST_MD5", md5s(tmp_path / "server"))
    calls = serve(monkeypatch, tmp_path / "server", base_urls_failing=(idx._MNIST_URLS[0],))
    assert len(cd.load("mnist").train) == 3
    assert len(calls) == 8 and sum(u.startswith(idx._MNIST_URLS[1]) for u in calls) == 4


def test_download_with_sha256(tmp_path, monkeypatch):
    payload = b"abc" * 1000
    monkeypatch.setattr(fetch, "open_url", lambda url, timeout=60.0: io.BytesIO(payload))
    good = fetch.Resource("f.bin", ("https://x/f.bin",), sha256=hashlib.sha256(payload).hexdigest())
    assert fetch.download(good, tmp_path / "d").read_bytes() == payload
    bad = fetch.Resource("g.bin", ("https://x/g.bin",), sha256="0" * 64)
    with pytest.raises(DataError, match="sha256 expected 0000"):
        fetch.download(bad, tmp_path / "d")
    assert files_in(tmp_path / "d") == ["f.bin"]
    with pytest.raises(ValueError, match="needs a published sha256 or md5"):
        fetch.Resource("h", ("u",))


def test_unwritable_cache_is_a_data_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.raises(DataError, match="cannot create the cache folder .*XDG_CACHE_HOME"):
        cd.load("mnist")

"""`compactnn pq build` / `compactnn pq search`: the happy path and every bad input ending in one line, exit 2."""

import numpy as np
import pytest
import torch

from compactnn.cli import main
from compactnn.pq import exact_search, load_index, recall_at
from compactnn.pq.io import write_vecs


def cli(*args):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code or 0


def error_line(capsys, code):
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pqcli")
    gen = np.random.default_rng(0)
    base = (gen.normal(size=(600, 8)) @ gen.normal(size=(8, 16))).astype(np.float32)
    queries = (gen.normal(size=(20, 8)) @ gen.normal(size=(8, 16))).astype(np.float32)
    np.save(d / "base.npy", base)
    np.save(d / "queries.npy", queries)
    return d, base, queries


@pytest.mark.parametrize("method", ["pq", "opq", "spectral"])
def test_build_then_search(files, tmp_path, method, capsys):
    d, base, queries = files
    index_file, ids_file = tmp_path / "i.cnz", tmp_path / "ids.npy"
    assert cli("pq", "build", d / "base.npy", "--method", method, "--bytes", 4, "--out", index_file, "-q",
               "--iterations", 5) == 0
    assert cli("pq", "search", index_file, d / "queries.npy", "-k", 7, "--out", ids_file) == 0
    ids = np.load(ids_file, allow_pickle=False)
    assert ids.dtype == np.int64 and ids.shape == (20, 7)
    _, expect = load_index(index_file).search(torch.from_numpy(queries), 7)
    assert np.array_equal(ids, expect.numpy())
    _, truth = exact_search(torch.from_numpy(base), torch.from_numpy(queries), 1)
    assert recall_at(torch.from_numpy(ids), truth, 7) >= 0.5  # 4 bytes for 8-dim-rank data: most are found
    assert "wrote" in capsys.readouterr().out


def test_ivf_build_and_search(files, tmp_path):
    d, base, queries = files
    assert cli("pq", "build", d / "base.npy", "--method", "pq", "--bytes", 4, "--ivf", 4, "--out",
               tmp_path / "v.cnz", "-q", "--iterations", 4) == 0
    assert cli("pq", "search", tmp_path / "v.cnz", d / "queries.npy", "-k", 5, "--nprobe", 4, "--out",
               tmp_path / "ids.npy") == 0
    ids = np.load(tmp_path / "ids.npy", allow_pickle=False)
    _, expect = load_index(tmp_path / "v.cnz").search(torch.from_numpy(queries), 5, nprobe=4)
    assert ids.shape == (20, 5) and np.array_equal(ids, expect.numpy())


def test_build_reads_fvecs(files, tmp_path):
    _, base, _ = files
    write_vecs(tmp_path / "b.fvecs", base)
    assert cli("pq", "build", tmp_path / "b.fvecs", "--method", "pq", "--bytes", 2, "--out", tmp_path / "i.cnz",
               "-q", "--iterations", 2) == 0
    assert load_index(tmp_path / "i.cnz").ntotal == 600


def test_bad_inputs_give_one_line(files, tmp_path, capsys):
    d, base, queries = files
    index_file = tmp_path / "i.cnz"
    assert cli("pq", "build", d / "base.npy", "--method", "pq", "--bytes", 4, "--out", index_file, "-q",
               "--iterations", 2) == 0
    capsys.readouterr()
    nan = base.copy()
    nan[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    (tmp_path / "trunc.npy").write_bytes((d / "base.npy").read_bytes()[:-10])
    np.save(tmp_path / "q9.npy", queries[:, :9])
    out = tmp_path / "x.cnz"
    cases = [
        (("pq", "build", tmp_path / "nan.npy", "--bytes", 4, "--out", out), "NaN"),
        (("pq", "build", d / "base.npy", "--bytes", 5, "--out", out), "divides"),
        (("pq", "build", d / "base.npy", "--method", "lsh", "--out", out), "--method"),
        (("pq", "build", tmp_path / "obj.npy", "--out", out), "numeric"),
        (("pq", "build", tmp_path / "trunc.npy", "--out", out), "truncated"),
        (("pq", "build", tmp_path / "missing.npy", "--out", out), "no such file"),
        (("pq", "build", d / "base.npy", "--out", index_file), "exists"),
        (("pq", "search", index_file, d / "queries.npy", "-k", 601, "--out", tmp_path / "a.npy"), "larger than"),
        (("pq", "search", index_file, tmp_path / "q9.npy", "-k", 3, "--out", tmp_path / "a.npy"), "dimension 9"),
        (("pq", "search", d / "base.npy", d / "queries.npy", "--out", tmp_path / "a.npy"), "not a .cnz"),
    ]
    for args, text in cases:
        line = error_line(capsys, cli(*args))
        assert text in line, (args, line)
    assert not out.exists() and not (tmp_path / "a.npy").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind

"""Sensitivity sweep: each layer pruned alone, weights restored, CSV/PNG written atomically, CLI entry point."""

import copy
import csv

import pytest
import torch

import compactnn as cn
from compactnn.errors import ConfigError, ModelError, OutputError
from compactnn.prune.sensitivity import run_sensitivity_cli, sensitivity, write_sensitivity


@pytest.fixture(scope="module")
def trained():
    bundle = cn.data.load("digits")
    torch.manual_seed(0)
    m = cn.models.create("lenet300", data=bundle, hidden=(32, 16))
    cn.train.fit(m, bundle, epochs=3, lr=0.1, batch_size=64, quiet=True)
    return m, bundle


def test_rows_match_manual_pruning_and_weights_restored(trained):
    m, bundle = trained
    before = copy.deepcopy(m.state_dict())
    rows = sensitivity(m, bundle, levels=(0.5, 0.9), quiet=True)
    assert len(rows) == 3 * 3
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    dense = cn.train.evaluate(m, bundle)["accuracy"]
    assert [r["accuracy"] for r in rows if r["level"] == 0.0] == [dense] * 3
    row = next(r for r in rows if r["layer"] == "fc1" and r["level"] == 0.9)
    assert row["sparsity"] == pytest.approx(0.9, abs=1e-3) and row["params"] == 64 * 32
    ref = copy.deepcopy(m)
    w = ref.fc1.weight.data
    thr = w.abs().flatten().sort(descending=True).values[round(0.1 * w.numel()) - 1]
    w[w.abs() < thr] = 0
    assert row["accuracy"] == cn.train.evaluate(ref, bundle)["accuracy"]
    assert row["accuracy"] < dense


def test_structured_zeroes_whole_filters(trained):
    m, bundle = trained
    rows = sensitivity(m, bundle, levels=(0.25,), layers=["fc2"], structured=True, quiet=True)
    assert [r["layer"] for r in rows] == ["fc2", "fc2"]
    assert rows[1]["sparsity"] == pytest.approx(4 / 16)
    norms = m.fc2.weight.detach().abs().sum(1)
    ref = copy.deepcopy(m)
    gone = norms.argsort()[:4]
    ref.fc2.weight.data[gone] = 0
    ref.fc2.bias.data[gone] = 0
    assert rows[1]["accuracy"] == cn.train.evaluate(ref, bundle)["accuracy"]


def test_write_and_cli(trained, tmp_path):
    m, bundle = trained
    cn.pack.save(m, tmp_path / "m.cnz")
    out = run_sensitivity_cli(tmp_path / "m.cnz", "digits", tmp_path / "sens", levels=(0.3, 0.6), quiet=True)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(out["rows"]) == 9
    assert table[0]["layer"] == "fc1" and float(table[1]["level"]) == 0.3
    assert not [p for p in (tmp_path / "sens").iterdir() if p.name.startswith(".")]  # no temp files left
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        write_sensitivity(out["rows"], tmp_path / "file")


def test_bad_levels_and_layers(trained):
    m, bundle = trained
    for bad in ((1.0,), (), (-0.1, 0.5), "x"):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            sensitivity(m, bundle, levels=bad)
    with pytest.raises(ModelError, match="'nope'"):
        sensitivity(m, bundle, layers=["nope"])

"""The command line: the main job end to end on a tiny recipe, and every bad input ending in one line, exit 2."""

import json
import os
import subprocess
import sys

import pytest
import torch

from compactnn import pack, train
from compactnn import data as cn_data
from compactnn.cli import main

TINY = """
seed: 0
data: {name: digits}
model: {name: lenet300}
train: {epochs: 3, lr: 0.05, batch_size: 64}
stages:
  - {method: magnitude-prune, sparsity: 0.8, finetune: {epochs: 1, lr: 0.01}}
  - {method: kmeans-quantize, bits: 4, finetune: null}
report: {latency: false}
"""


def cli(*args):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code or 0


def error_line(capsys, code):
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


@pytest.fixture
def recipe_file(tmp_path):
    def make(text, name="r.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return make


def test_run_writes_everything_and_the_packed_model_is_the_reported_one(tmp_path, recipe_file, capsys):
    out = tmp_path / "run"
    assert cli("run", recipe_file(TINY), "--out", str(out), "--quiet") == 0
    printed = capsys.readouterr().out
    assert "packed bytes" in printed and "accuracy" in printed
    assert sorted(p.name for p in out.iterdir()) == [".compactnn-output", "model.cnz", "report.json", "report.md",
                                                     "report.png"]
    report = json.loads((out / "report.json").read_text())
    for key in ("model", "data", "baseline", "compressed", "ratio", "stages", "layers"):
        assert key in report
    assert [s["method"] for s in report["stages"]] == ["magnitude-prune", "kmeans-quantize"]
    assert report["compressed"]["packed_bytes"] == os.path.getsize(out / "model.cnz")
    assert report["ratio"]["size"] == pytest.approx(
        report["baseline"]["packed_bytes"] / report["compressed"]["packed_bytes"], rel=1e-3)
    assert report["compressed"]["nonzero"] <= 0.25 * report["baseline"]["params"]
    model = pack.load(out / "model.cnz")
    acc = train.evaluate(model, cn_data.load("digits"))["accuracy"]
    assert acc == pytest.approx(report["compressed"]["accuracy"], abs=1e-9)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_shows_methods_models_and_datasets(capsys):
    assert cli("list") == 0
    out = capsys.readouterr().out
    for name in ("magnitude-prune", "kmeans-quantize", "lenet300", "resnet20", "digits", "fashion-mnist"):
        assert name in out


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: [unclosed", "not valid YAML"),
        ("model: {name: lenet300}\ncolour: red\n", "unknown key 'colour'"),
        ("model: {name: lenet300}\nstages: [{method: shrink}]\n", "unknown method 'shrink'; valid methods are"),
        ("model: {name: lenet300}\ntrain: {lr: fast}\n", "train.lr: expected float"),
        ("model: {name: lenet300}\nstages: [{method: kmeans-quantize, bits: 0}]\n", "bits"),
        ("data: {name: digits}\n", "missing required field 'model'"),
        ("model: {name: lenet301}\ntrain: null\n", "unknown model 'lenet301'"),
        ("model: {name: lenet300}\ndata: {name: imagenet}\n", "unknown data set 'imagenet'"),
    ],
)
def test_bad_recipes_exit_2_with_one_line_and_no_output(tmp_path, recipe_file, capsys, text, message):
    out = tmp_path / "out"
    line = error_line(capsys, cli("run", recipe_file(text), "--out", str(out)))
    assert message in line
    assert not out.exists()


def test_failure_during_the_run_leaves_no_partial_output(tmp_path, recipe_file, capsys):
    text = TINY.replace("bits: 4, finetune: null", "bits: 4, finetune: null, layers: ['no_such_layer*']")
    out = tmp_path / "out"
    line = error_line(capsys, cli("run", recipe_file(text), "--out", str(out), "--quiet"))
    assert "no_such_layer*" in line
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def test_non_empty_output_needs_force(tmp_path, recipe_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = error_line(capsys, cli("run", recipe_file(TINY), "--out", str(out)))
    assert "--force" in line
    assert (out / "keep.txt").read_text() == "mine"


def test_missing_recipe_and_missing_cnz(tmp_path, capsys):
    assert "not found" in error_line(capsys, cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")))
    assert str(tmp_path / "nope.cnz") in error_line(capsys, cli("report", str(tmp_path / "nope.cnz")))


def test_data_not_found_says_where_it_looked(tmp_path, recipe_file, capsys, monkeypatch):
    monkeypatch.setenv("COMPACTNN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPACTNN_OFFLINE", "1")
    text = f"model: {{name: lenet300}}\ndata: {{name: mnist, root: {tmp_path / 'nowhere'}}}\n"
    line = error_line(capsys, cli("run", recipe_file(text), "--out", str(tmp_path / "o")))
    assert str(tmp_path / "nowhere") in line and str(tmp_path / "env") in line


@pytest.mark.parametrize("damage", ["magic", "truncate", "flip"])
def test_damaged_cnz_at_the_cli(tmp_path, capsys, damage):
    path = tmp_path / "m.cnz"
    pack.save(torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 4)), path)
    blob = bytearray(path.read_bytes())
    if damage == "magic":
        blob[:4] = b"NOPE"
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    error_line(capsys, cli("report", str(path)))


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: lenet300}\nstages: [{method: shrink}]\n")
    proc = subprocess.run([sys.executable, "-m", "compactnn", "run", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "unknown method 'shrink'" in proc.stderr
    assert "Traceback" not in proc.stderr


class NotPackable(torch.nn.Module):
    """A user's own class: not on the allow-list, so loading it needs a skeleton."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def test_cnz_with_unknown_codec_or_foreign_class_at_the_cli(tmp_path, capsys):
    from cnz_forge import rewrite_manifest

    path = tmp_path / "codec.cnz"
    pack.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), path)
    rewrite_manifest(path, lambda m: m["tensors"]["0.weight"].update(codec="bogus"))
    assert "unknown codec 'bogus'" in error_line(capsys, cli("report", str(path)))
    path = tmp_path / "foreign.cnz"
    pack.save(NotPackable(), path)
    assert "not on the allow-list" in error_line(capsys, cli("eval", str(path)))


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_bad_idx_files_at_the_cli(tmp_path, recipe_file, capsys, damage):
    from compactnn.data.idx import write_idx
    import numpy as np

    root = tmp_path / "fm"
    root.mkdir()
    names = {"train-images-idx3-ubyte": np.zeros((20, 28, 28), np.uint8), "train-labels-idx1-ubyte": np.zeros(20, np.uint8),
             "t10k-images-idx3-ubyte": np.zeros((10, 28, 28), np.uint8), "t10k-labels-idx1-ubyte": np.zeros(10, np.uint8)}
    for name, array in names.items():
        write_idx(root / name, array)
    bad = root / "train-images-idx3-ubyte"
    raw = bad.read_bytes()
    bad.write_bytes(b"\x00\x00\x09\x03" + raw[4:] if damage == "magic" else raw[: len(raw) - 100])
    text = f"model: {{name: lenet300}}\ndata: {{name: fashion-mnist, root: {root}}}\ntrain: null\n"
    line = error_line(capsys, cli("run", recipe_file(text), "--out", str(tmp_path / "o")))
    assert "train-images-idx3-ubyte" in line
    assert ("magic" in line) if damage == "magic" else ("truncated" in line or "expected" in line)
    assert not (tmp_path / "o").exists()


def test_sensitivity_command_writes_csv_and_plot(tmp_path, capsys):
    from compactnn import models

    path = tmp_path / "m.cnz"
    pack.save(models.create("lenet300", data=cn_data.load("digits")), path)
    assert cli("sensitivity", str(path), "--out", str(tmp_path / "s"), "--levels", "0.5,0.9", "--quiet") == 0
    csv = (tmp_path / "s" / "sensitivity.csv").read_text().splitlines()
    assert len(csv) == 1 + 3 * 3  # header, then 3 layers x (the unpruned reference + 2 levels)
    assert (tmp_path / "s" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "--levels" in error_line(capsys, cli("sensitivity", str(path), "--out", str(tmp_path / "t"), "--levels", "a,b"))
    assert "[0, 1)" in error_line(capsys, cli("sensitivity", str(path), "--out", str(tmp_path / "u"), "--levels", "1.5"))

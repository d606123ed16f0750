"""Hostile recipes and output paths from the hardening audit (issue 17): one line, exit 2, checked before any work,
no partial or lost output."""

import errno
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from compactnn import files, outputs, pack, recipe
from compactnn.cli import main
from compactnn.errors import ConfigError, ModelError, OutputError

TINY = """
seed: 0
data: {name: digits}
model: {name: lenet300, args: {hidden: [16, 8]}}
train: {epochs: 1, lr: 0.05, batch_size: 64}
stages: []
report: {latency: false}
"""


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


@pytest.fixture
def write(tmp_path):
    def make(text, name="r.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything trains: every error below must come before training starts."""
    from compactnn import train

    def boom(*a, **k):
        raise AssertionError("training started before the error was found")

    monkeypatch.setattr(train, "fit", boom)


# ------------------------------------------------------------------------------------------------- YAML
LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_billion_laughs_is_refused_quickly_without_expanding(write, capsys):
    path = write(LAUGHS + "model: {name: lenet300}\n")
    assert len(LAUGHS) < 400
    start = time.perf_counter()
    msg = error_line(capsys, cli("run", path, "--out", path.parent / "o"))
    assert "expands to more than 100,000 values through YAML aliases" in msg and len(msg) < 300
    assert time.perf_counter() - start < 5


def test_laughs_inside_a_field_do_not_reach_the_message(write, capsys):
    path = write(LAUGHS.replace("i: &i", "z: &i") + "model: {name: lenet300, args: {hidden: *c}}\n")
    msg = error_line(capsys, cli("run", path, "--out", path.parent / "o"))
    assert len(msg) < 300


def test_recursive_alias_and_deep_nesting(write, capsys):
    msg = error_line(capsys, cli("run", write("a: &a [*a]\n"), "--out", "o"))
    assert "not valid YAML" in msg or "recursive" in msg
    msg = error_line(capsys, cli("run", write("[" * 100_000), "--out", "o"))
    assert "nests" in msg or "not valid YAML" in msg


def test_recipe_fifo_and_huge_file(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.yaml")
    assert "not a regular file" in error_line(capsys, cli("run", tmp_path / "fifo.yaml", "--out", tmp_path / "o"))
    with open(tmp_path / "big.yaml", "wb") as f:
        f.truncate(2 << 20)
    assert "more than the 1,048,576" in error_line(capsys, cli("run", tmp_path / "big.yaml", "--out", tmp_path / "o"))


@pytest.mark.parametrize("text, message", [
    ("model: {name: lenet300}\ntrain: {epochs: 1e30}", "train.epochs: expected int in [0, 100000]"),
    ("model: {name: lenet300}\ntrain: {batch_size: 1e30}", "train.batch_size: expected int"),
    ("model: {name: lenet300}\nseed: 1180591620717411303424", "seed must be in [0, 4.29497e+09]"),
    ("model: {name: lenet300}\ntrain: {lr: 1e308}", "train.lr: expected float in (0, 100]"),
    ("model: {name: lenet300}\nstages: [{method: [a]}]", "unknown method ['a']"),
    ("model: {name: lenet300}\nstages: [{method: magnitude-prune, sparsity: 0.5, finetune: {epochs: -1}}]",
     "finetune.epochs must be in [0, 100000]"),
    ("model: {name: lenet300}\nreport: {repeats: 0}", "report.repeats must be in [1, 10000]"),
])
def test_recipe_values_out_of_bounds(write, capsys, no_training, text, message):
    assert message in error_line(capsys, cli("run", write(text), "--out", write("", "x").parent / "o"))


@pytest.mark.parametrize("args, message", [
    ("{hidden: abc}", "LeNet300 takes two hidden widths|cannot be built with args"),
    ("{hidden: [1000000, 1000000]}", "parameters, more than 268,435,456"),
    ("{hidden: [-3, 4]}", "hidden"),
])
def test_model_args_fail_before_training(write, capsys, no_training, tmp_path, args, message):
    import re

    text = TINY.replace("{hidden: [16, 8]}", args)
    msg = error_line(capsys, cli("run", write(text), "--out", tmp_path / "o"))
    assert re.search(message, msg), msg
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------- outputs
def test_out_under_a_file(write, capsys, no_training):
    path = write(TINY, "fast.yaml")
    msg = error_line(capsys, cli("run", path, "--out", f"{path}/sub"))
    assert "fast.yaml is a file, not a folder" in msg


def test_out_in_proc(write, capsys, no_training):
    msg = error_line(capsys, cli("run", write(TINY), "--out", "/proc/compactnn-x"))
    assert "cannot write /proc/compactnn-x" in msg


def test_force_never_replaces_the_working_directory_or_its_parents(write, capsys, no_training, tmp_path,
                                                                   monkeypatch):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    (work / "precious").write_text("keep")
    monkeypatch.chdir(work)
    path = write(TINY)
    for out in (".", "..", str(work)):
        assert "working directory" in error_line(capsys, cli("run", path, "--out", out, "--force"))
    assert (work / "precious").read_text() == "keep"


def test_force_replaces_only_compactnn_outputs(write, capsys, no_training, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    msg = error_line(capsys, cli("run", write(TINY), "--out", mine, "--force"))
    assert "was not written by compactnn" in msg and (mine / "thesis.tex").exists()


def test_train_out_folder_with_force(tmp_path, capsys, no_training):
    (tmp_path / "d").mkdir()
    msg = error_line(capsys, cli("train", "--out", tmp_path / "d", "--force", "--epochs", "1"))
    assert "is a folder; give a file path" in msg


def test_concurrent_writer_fails_with_one_line(write, capsys, no_training, tmp_path):
    out = tmp_path / "o"
    with outputs.output_lock(out):
        msg = error_line(capsys, cli("run", write(TINY), "--out", out))
    assert "another compactnn process is writing" in msg


def test_run_output_is_replaced_crash_safely(tmp_path, write):
    r = recipe.load_recipe(write(TINY))
    out = tmp_path / "o"
    recipe.run(r, out, quiet=True)
    assert (out / outputs.MARKER).exists()
    first = (out / "model.cnz").read_bytes()
    with pytest.raises(OutputError, match="not empty"):
        recipe.run(r, out, quiet=True)
    # a second run whose publication dies: the old output is all still there
    tmp = outputs.new_dir_beside(out)
    (tmp / "model.cnz").write_bytes(b"new")
    outputs.publish_dir(tmp, out)
    assert (out / "model.cnz").read_bytes() == b"new" and (out / outputs.MARKER).exists()
    assert not tmp.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".o.tmp")) == []
    recipe.run(r, out, force=True, quiet=True)
    assert (out / "model.cnz").read_bytes() == first


def test_exchange_keeps_an_output_at_every_instant(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "x").write_text("old")
    if not outputs._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (b / "x").read_text() == "new" and (a / "x").read_text() == "old"


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device; nothing was written"):
        pack.save(nn.Linear(2, 2), tmp_path / "m.cnz")
    assert os.listdir(tmp_path) == []


def test_disk_full_during_a_run_keeps_the_old_output(tmp_path, write, monkeypatch, capsys):
    path = write(TINY)
    out = tmp_path / "o"
    recipe.run(recipe.load_recipe(path), out, quiet=True)
    before = sorted(p.name for p in out.iterdir())

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    msg = error_line(capsys, cli("run", path, "--out", out, "--force", "--quiet"))
    assert "No space left on device" in msg
    assert sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.tmp")]


# ------------------------------------------------------------------------------------------------- eval / report
def test_eval_wraps_forward_errors(tmp_path, capsys):
    from compactnn import models
    from compactnn.data import write_idx

    net = models.create("lenet300", input_shape=(1, 8, 8), num_classes=10, hidden=(8, 8))
    pack.save(net, tmp_path / "m.cnz")
    root = tmp_path / "fm"
    root.mkdir()
    for base, shape in [("train-images-idx3-ubyte", (4, 28, 28)), ("train-labels-idx1-ubyte", (4,)),
                        ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))]:
        write_idx(root / f"{base}.gz", np.zeros(shape, np.uint8))
    msg = error_line(capsys, cli("eval", tmp_path / "m.cnz", "--data", "fashion-mnist", "--data-root", root))
    assert "cannot be evaluated on fashion-mnist (input shape (1, 28, 28))" in msg


def test_report_refuses_a_forged_input_shape(tmp_path, capsys):
    from cnz_forge import rewrite_manifest

    pack.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), tmp_path / "m.cnz", metadata={"input_shape": [4]})
    rewrite_manifest(tmp_path / "m.cnz", lambda m: m["metadata"].update(input_shape=[1, 1e6, 1e6]))
    msg = error_line(capsys, cli("report", tmp_path / "m.cnz"))
    assert "input_shape must be a list of 1 to 5 positive ints" in msg


def test_recipe_errors_never_show_huge_values():
    with pytest.raises(ConfigError) as err:
        recipe.parse_recipe({"model": {"name": "lenet300"}, "seed": [[list(range(100))] * 40] * 40})
    assert len(str(err.value)) < 300
    with pytest.raises(ModelError):
        recipe.create_model(recipe.ModelSpec(name="lenet300", args={"hidden": "abc"}), None, 0)

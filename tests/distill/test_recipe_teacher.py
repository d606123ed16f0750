"""The recipe's ``teacher:`` key: trained once on the recipe's data, given to every stage that names none, and
shown in the report (and at the CLI) beside the student's accuracy."""

import json

import pytest
import torch

from compactnn.cli import main
from compactnn.config import FineTune
from compactnn.distill import DifferentiableQuantize, QuantizedDistill
from compactnn.errors import ConfigError
from compactnn.prune import MagnitudePrune
from compactnn.recipe import parse_recipe, with_teacher

RECIPE = """
seed: 0
data: {name: digits}
model: {name: lenet300}
train: {epochs: 2, lr: 0.05, batch_size: 64}
teacher: {model: lenet300, args: {}, train: {epochs: 3, lr: 0.05}}
stages:
  - {method: magnitude-prune, sparsity: 0.5, finetune: {epochs: 1, lr: 0.01}}
  - {method: quantized-distill, bits: 4, finetune: {epochs: 1}}
report: {latency: false}
"""


def test_recipe_teacher_fills_every_stage_that_names_none():
    teacher = torch.nn.Linear(2, 2)
    prune = with_teacher(MagnitudePrune(sparsity=0.5, finetune=FineTune(epochs=1)), teacher)
    assert prune.finetune.teacher is teacher
    own = QuantizedDistill(bits=4, teacher="mine.cnz")
    assert with_teacher(own, teacher) is own  # a stage's own teacher wins
    dq = with_teacher(DifferentiableQuantize(bits=2), teacher)
    assert dq.teacher is teacher and dq.finetune.teacher is None
    assert with_teacher(MagnitudePrune(sparsity=0.5, finetune=None), teacher).finetune is None
    with pytest.raises(ConfigError, match="teacher: key"):
        parse_recipe({"model": {"name": "lenet300"}, "train": {"teacher": "t.cnz"}})


def test_recipe_with_teacher_reports_its_accuracy(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["run", str(path), "--out", str(out), "--quiet"])
    assert (done.value.code or 0) == 0
    printed = capsys.readouterr().out
    assert "accuracy of teacher (lenet300)" in printed
    report = json.loads((out / "report.json").read_text())
    methods = [s["method"] for s in report["stages"]]
    assert methods == ["teacher (lenet300)", "magnitude-prune", "quantized-distill"]
    assert 0.5 < report["stages"][0]["accuracy"] <= 1.0
    assert "teacher (lenet300)" in (out / "report.md").read_text()


def test_cli_distill_trains_a_student_and_prints_both_accuracies(tmp_path, capsys, digits):
    import compactnn as cn

    teacher = cn.models.create("lenet300", data=digits, seed=0)
    cn.train.fit(teacher, digits, epochs=3, lr=0.05, quiet=True)
    cn.pack.save(teacher, tmp_path / "t.cnz")
    out = tmp_path / "s.cnz"
    args = ["distill", "--teacher", str(tmp_path / "t.cnz"), "--student", "lenet300", "--epochs", "2", "--out",
            str(out)]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert (done.value.code or 0) == 0
    printed = capsys.readouterr().out
    assert "teacher t.cnz: accuracy" in printed and "student lenet300: accuracy" in printed
    assert cn.train.evaluate(cn.pack.load(out), digits)["accuracy"] > 0.5
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["distill", "--teacher", str(tmp_path / "nope.cnz"), "--out", str(tmp_path / "x.cnz")])
    assert done.value.code == 2 and "not found" in capsys.readouterr().err

"""Recipes: parsing, checking, and the errors for malformed ones."""

import pytest

from compactnn import recipe
from compactnn.config import FineTune
from compactnn.errors import ConfigError, OutputError

GOOD = """
data: {name: digits}
model: {name: lenet300}
train: {epochs: 2, lr: 0.05, optimizer: adam}
stages:
  - {method: magnitude-prune, sparsity: 0.9, finetune: {epochs: 1}}
  - {method: kmeans-quantize, bits: 4}
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_recipe_parses_and_inherits_train_settings(tmp_path):
    r = recipe.load_recipe(write(tmp_path, GOOD))
    assert r.model.name == "lenet300" and r.data.name == "digits"
    assert r.train.epochs == 2 and r.train.optimizer == "adam"
    prune, quant = r.stages
    assert type(prune).method == "magnitude-prune" and prune.sparsity == 0.9
    # unset fine-tuning fields come from train:, set ones are kept, lr is a tenth of train's, epochs are the stage's
    assert prune.finetune.epochs == 1 and prune.finetune.optimizer == "adam"
    assert prune.finetune.batch_size == r.train.batch_size and prune.finetune.lr == pytest.approx(0.005)
    assert quant.finetune.epochs is None and quant.finetune.fit_kwargs()["epochs"] == 5
    assert type(quant).method == "kmeans-quantize" and quant.bits == 4


def test_demo_recipe_parses():
    r = recipe.load_recipe("recipes/demo.yaml")
    assert [type(s).method for s in r.stages] == ["magnitude-prune", "kmeans-quantize"]
    assert isinstance(r.stages[0].finetune, FineTune)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: {name: lenet300\nstages: [", "is not valid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("model: {name: lenet300}\nmodle: {name: x}\n", "unknown key 'modle'; valid keys are"),
        ("model: {name: lenet300}\nstages: [{method: prune-it}]\n", "unknown method 'prune-it'; valid methods are"),
        ("model: {name: lenet300}\ntrain: {epochs: ten}\n", "train.epochs: expected int in [0, 100000] | null, got 'ten'"),
        ("model: {name: lenet300}\nstages: [{method: magnitude-prune}]\n", "missing required field 'sparsity'"),
        ("data: {name: digits}\n", "missing required field 'model'"),
        ("model: {}\n", "missing required field 'name'"),
        ("model: {name: lenet300}\nstages: {method: magnitude-prune}\n", "stages: expected a list"),
        ("model: {name: lenet300}\nstages: [{method: magnitude-prune, sparsity: 1.0}]\n", "sparsity"),
    ],
)
def test_bad_recipes_give_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        recipe.load_recipe(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        recipe.load_recipe(tmp_path / "nope.yaml")


def test_output_dir_rules(tmp_path):
    assert recipe.check_output_dir(tmp_path / "new", force=False) == tmp_path / "new"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputError, match="not empty; choose another --out or pass --force"):
        recipe.check_output_dir(tmp_path / "full", force=False)
    with pytest.raises(OutputError, match="was not written by compactnn"):  # --force replaces only our outputs
        recipe.check_output_dir(tmp_path / "full", force=True)
    (tmp_path / "full" / ".compactnn-output").write_text("")
    recipe.check_output_dir(tmp_path / "full", force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        recipe.check_output_dir(tmp_path / "file", force=True)


def test_a_recipe_run_twice_gives_identical_reports(tmp_path):
    """The recipe's seed fixes the initial weights (models.create(seed=)), the training and the stages, so two runs
    give the same report, apart from wall-clock times."""
    import json

    text = """
model: {name: lenet300, args: {hidden: [32, 16]}}
train: {epochs: 1, lr: 0.05, batch_size: 64}
stages:
  - {method: magnitude-prune, sparsity: 0.5, finetune: {epochs: 1}}
report: {latency: false}
seed: 3
"""
    r = recipe.load_recipe(write(tmp_path, text))
    reports = []
    for out in ("a", "b"):
        recipe.run(r, tmp_path / out, quiet=True)
        rep = json.loads((tmp_path / out / "report.json").read_text())
        for stage in rep["stages"]:
            stage.pop("seconds")
        reports.append(rep)
    assert reports[0] == reports[1]
    assert (tmp_path / "a" / "model.cnz").read_bytes() == (tmp_path / "b" / "model.cnz").read_bytes()

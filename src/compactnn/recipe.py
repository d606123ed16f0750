"""Recipes: a YAML file that names the data, the model, its training and the compression stages.

A recipe holds nothing that Python cannot say: each section is a dataclass and each stage is a method config::

    data: {name: digits}
    model: {name: lenet300}
    train: {epochs: 30, lr: 0.1}
    stages:
      - {method: magnitude-prune, sparsity: 0.9, schedule: agp, finetune: {epochs: 10}}
      - {method: kmeans-quantize, bits: 4}

:func:`load_recipe` checks every key and type before any work starts; :func:`run` does the work and writes
``model.cnz``, ``report.json``, ``report.md`` and ``report.png`` to the output folder, all at once at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from .api import from_dict
from .config import Checked, FineTune, MethodConfig, Range, Seed, TeacherSpec, build, check, short
from .errors import ConfigError, OutputError
from .files import public_mode


@dataclass(frozen=True)
class DataSpec(Checked):
    """Which data set to load; ``root`` overrides where its files are looked for."""

    label = "data"
    name: str = "digits"
    root: str | None = None


@dataclass(frozen=True)
class ModelSpec(Checked):
    """Which registry model to build; ``args`` are passed to its factory."""

    label = "model"
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportSpec(Checked):
    """What the report measures besides sizes: latency at batch 1 and 256 (median of ``repeats`` runs)."""

    label = "report"
    latency: bool = True
    repeats: Annotated[int, Range(1, 10_000)] = 20


#: The recipe's ``train:`` when the recipe does not say: :func:`compactnn.train.fit`'s defaults.
DEFAULT_TRAIN = FineTune(epochs=10, lr=0.1)


@dataclass(frozen=True)
class Recipe(Checked):
    """A whole job. ``model`` is required; ``train`` may be null to compress an untrained model (smoke runs).

    ``train`` is a :class:`FineTune`: the reference model's training, whose settings also fill every stage's unset
    fine-tuning fields (:meth:`FineTune.inherit`). ``seed`` seeds the model's initial weights and its training.

    ``teacher`` (a ``.cnz`` path or ``{model: resnet56, train: {...}}``, trained on the recipe's data) is the teacher
    of every stage that does not name its own: a method with a ``teacher`` field gets it there, any other method's
    fine-tuning distils from it (:attr:`FineTune.teacher`). The report shows its accuracy as a first stage row.
    """

    label = "recipe"
    model: ModelSpec
    data: DataSpec = DataSpec()
    train: FineTune | None = DEFAULT_TRAIN
    stages: tuple[MethodConfig, ...] = ()
    report: ReportSpec = ReportSpec()
    seed: Seed = 0
    teacher: str | TeacherSpec | None = None

    def validate(self) -> None:
        check(self.train is None or self.train.teacher is None,
              "train.teacher: the reference model trains on the labels; put the teacher in the recipe's teacher: key")


def with_teacher(config: MethodConfig, teacher: Any) -> MethodConfig:
    """``config`` with ``teacher`` filled where it names none: its own ``teacher`` field if it has one, else the
    ``teacher`` of each of its FineTunes."""
    fields = {f.name for f in dataclasses.fields(config)}
    if "teacher" in fields:
        return config if getattr(config, "teacher") is not None else dataclasses.replace(config, teacher=teacher)
    fills = {f.name: dataclasses.replace(getattr(config, f.name), teacher=teacher) for f in dataclasses.fields(config)
             if isinstance(getattr(config, f.name), FineTune) and getattr(config, f.name).teacher is None
             and getattr(config, f.name).loss is None}
    return dataclasses.replace(config, **fills) if fills else config


def _inherit_train(config: MethodConfig, train: FineTune | None) -> MethodConfig:
    """Fill the unset fields of every FineTune of a stage from the recipe's ``train`` (see FineTune.inherit)."""
    if train is None:
        return config
    fills = {f.name: getattr(config, f.name).inherit(train) for f in dataclasses.fields(config)
             if isinstance(getattr(config, f.name), FineTune)}
    return dataclasses.replace(config, **fills) if fills else config


def parse_recipe(values: Any, where: str = "recipe") -> Recipe:
    """Build a :class:`Recipe` from parsed YAML, with one-line errors for every malformed part."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping with keys data, model, train, stages; got {short(values)}")
    values = dict(values)
    stages = values.pop("stages", [])
    if not isinstance(stages, list):
        raise ConfigError(f"{where}: stages: expected a list of {{method: ...}} mappings, got {short(stages)}")
    try:
        recipe = build(Recipe, values, "")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    configs = tuple(
        _inherit_train(from_dict(s, f"{where} stages[{i}]"), recipe.train) for i, s in enumerate(stages)
    )
    return dataclasses.replace(recipe, stages=configs)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} not found; give the path of a YAML recipe such as recipes/demo.yaml") from None
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe {path} cannot be read as text: {err}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe {path} is not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    return parse_recipe(values, where=path.name)


def check_output_dir(out: str | os.PathLike, force: bool) -> Path:
    """Refuse a non-empty output folder unless ``force``; done before any work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"output folder {out} exists and is not empty; choose another --out or pass --force")
    return out


def publish_dir(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder ``tmp`` to ``out``, replacing what was there."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def run(recipe: Recipe, out: str | os.PathLike, *, force: bool = False, quiet: bool | None = None) -> dict:
    """Run ``recipe`` and write its outputs to ``out``. Returns the report as a dict (report.json's content)."""
    import torch

    from . import data as cn_data
    from . import models, pack, report, train
    from .api import compress

    out = check_output_dir(out, force)
    torch.manual_seed(recipe.seed)
    bundle = cn_data.load(recipe.data.name, root=recipe.data.root)
    model = models.create(recipe.model.name, data=bundle, seed=recipe.seed, **recipe.model.args)
    if recipe.train is not None:
        settings = {k: v for k, v in dataclasses.asdict(recipe.train).items() if v is not None}
        model = train.fit(model, bundle, **{"seed": recipe.seed, **settings}, quiet=quiet)

    latency, repeats = recipe.report.latency, recipe.report.repeats
    before = report.summarize(model, bundle, latency=latency, repeats=repeats, name=recipe.model.name)
    stages, current = [], model
    teacher = None
    if recipe.teacher is not None:
        from .distill import load_teacher

        start = time.perf_counter()
        teacher = load_teacher(recipe.teacher, bundle)
        name = recipe.teacher if isinstance(recipe.teacher, str) else recipe.teacher.model
        stages.append({"method": f"teacher ({name})", "seconds": round(time.perf_counter() - start, 3),
                       "accuracy": train.evaluate(teacher, bundle)["accuracy"]})
    for config in recipe.stages:
        config = with_teacher(config, teacher) if teacher is not None else config
        start = time.perf_counter()
        current = compress(current, config, data=bundle)
        seconds = time.perf_counter() - start
        acc = train.evaluate(current, bundle)["accuracy"]
        stages.append({"method": type(config).method, "seconds": round(seconds, 3), "accuracy": acc})
    after = report.summarize(current, bundle, baseline=before, latency=latency, repeats=repeats,
                             name=recipe.model.name)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    public_mode(tmp, folder=True)
    try:
        meta = {"model": recipe.model.name, "data": recipe.data.name, "input_shape": list(bundle.input_shape)}
        pack.save(current, tmp / "model.cnz", metadata=meta)
        after.totals["packed_bytes"] = os.path.getsize(tmp / "model.cnz")  # the file as written, metadata included
        after.write(tmp, stages=stages, model_name=recipe.model.name, data_name=recipe.data.name)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return after.to_dict(stages=stages, model_name=recipe.model.name, data_name=recipe.data.name)

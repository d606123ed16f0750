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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from . import outputs
from .api import from_dict
from .config import Checked, FineTune, MethodConfig, Range, Seed, TeacherSpec, build, check, short
from .errors import CompactnnError, ConfigError, ModelError, OutputError
from .files import read_regular


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


MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def _yaml_size(node) -> int:
    """Number of values ``node`` stands for once every alias is expanded (shared subtrees counted each time they are
    used), computed without expanding anything; ConfigError for a recursive alias or too many values."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack = [(node, False)]
    while stack:
        n, done = stack.pop()
        key = id(n)
        if isinstance(n, yaml.MappingNode):
            kids = [x for pair in n.value for x in pair]
        elif isinstance(n, yaml.SequenceNode):
            kids = n.value
        else:
            kids = []
        if done:
            active.discard(key)
            total = 1 + sum(sizes[id(k)] for k in kids)
            if total > MAX_YAML_VALUES:
                raise ConfigError(f"expands to more than {MAX_YAML_VALUES:,} values through YAML aliases; a recipe "
                                  f"is a few settings, write it out")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise ConfigError("holds a recursive YAML alias (a value that contains itself)")
        active.add(key)
        stack.append((n, True))
        stack.extend((x, False) for x in kids)
    return sizes.get(id(node), 0)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with limits: aliases may not expand the document past :data:`MAX_YAML_VALUES` values
    (billion laughs; counted on the node graph, nothing is expanded), no recursive aliases, nesting as deep as
    Python's recursion allows. Errors are one ConfigError line that never shows the (expanded) values."""
    depth = deepest = 0
    for ch in text:  # PyYAML's scanner is quadratic in unclosed flow brackets: refuse deep ones before it runs
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    if deepest > MAX_YAML_DEPTH:
        raise ConfigError(f"{where} nests [ ] / {{ }} more than {MAX_YAML_DEPTH} deep; a recipe is a few levels of "
                          f"settings")
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _yaml_size(node)
        return loader.construct_document(node)
    except ConfigError as err:
        raise ConfigError(f"{where} {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())[:160]
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply; a recipe is a few levels of settings") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file (a regular file of at most 1 MiB, parsed by :func:`parse_yaml`)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ConfigError(f"recipe {path} not found; give the path of a YAML recipe such as recipes/demo.yaml")
    raw = read_regular(path, "YAML recipe", ConfigError, MAX_RECIPE_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe {path} cannot be read as text: {err}") from None
    values = parse_yaml(text, f"recipe {path}")
    return parse_recipe(values, where=path.name)


MAX_PARAMS = 1 << 28


def create_model(spec: ModelSpec, bundle, seed: int):
    """Build the recipe's model with one-line errors. Its size is first counted on the ``meta`` device (no memory),
    so huge ``args`` (more than :data:`MAX_PARAMS` parameters) are refused before anything is allocated, and factory
    errors from bad args (``hidden: abc``) become :class:`ModelError` lines."""
    import torch

    from . import models

    def build():
        try:
            return models.create(spec.name, data=bundle, seed=seed, **dict(spec.args))
        except CompactnnError:
            raise
        except (TypeError, ValueError, RuntimeError, OverflowError, IndexError, KeyError, MemoryError) as err:
            msg = " ".join(str(err).split())[:160]
            raise ModelError(f"model {spec.name} cannot be built with args {short(dict(spec.args))}: "
                             f"{type(err).__name__}: {msg}") from None

    try:
        with torch.device("meta"):
            probe = build()
        count = sum(p.numel() for p in probe.parameters())
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - a factory that cannot run on the meta device is built for real below
        count = 0
    if count > MAX_PARAMS:
        raise ModelError(f"model {spec.name} with args {short(dict(spec.args))} has {count:,} parameters, more than "
                         f"{MAX_PARAMS:,}; use smaller args")
    return build()


def check_output_dir(out: str | os.PathLike, force: bool) -> Path:
    """Check the output folder before any work starts (see :func:`compactnn.outputs.check_output_dir`)."""
    return outputs.check_output_dir(out, force)


def publish_dir(tmp: Path, out: Path, force: bool = True) -> None:
    """Make the finished folder ``tmp`` the output ``out`` (crash-safe; :func:`compactnn.outputs.publish_dir`)."""
    outputs.publish_dir(tmp, out, force)


def run(recipe: Recipe, out: str | os.PathLike, *, force: bool = False, quiet: bool | None = None) -> dict:
    """Run ``recipe`` and write its outputs to ``out``. Returns the report as a dict (report.json's content)."""
    out = check_output_dir(out, force)
    with outputs.output_lock(out):
        return _run_locked(recipe, out, force, quiet)


def _run_locked(recipe: Recipe, out: Path, force: bool, quiet: bool | None) -> dict:
    import torch

    from . import data as cn_data
    from . import pack, report, train
    from .api import compress

    check_output_dir(out, force)  # again, now that this process holds the output's lock
    if isinstance(recipe.teacher, str):  # a teacher file is checked before anything trains
        pack.read_manifest(recipe.teacher)
    torch.manual_seed(recipe.seed)
    bundle = cn_data.load(recipe.data.name, root=recipe.data.root)
    model = create_model(recipe.model, bundle, recipe.seed)
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

    tmp = outputs.new_dir_beside(out)
    try:
        meta = {"model": recipe.model.name, "data": recipe.data.name, "input_shape": list(bundle.input_shape)}
        pack.save(current, tmp / "model.cnz", metadata=meta)
        after.totals["packed_bytes"] = os.path.getsize(tmp / "model.cnz")  # the file as written, metadata included
        after.write(tmp, stages=stages, model_name=recipe.model.name, data_name=recipe.data.name)
        publish_dir(tmp, out, force)
    except OutputError as err:  # name the output, not the temporary folder beside it
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(str(err).replace(str(tmp), str(out))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return after.to_dict(stages=stages, model_name=recipe.model.name, data_name=recipe.data.name)

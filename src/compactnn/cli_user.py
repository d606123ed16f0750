"""CLI parts for users' own models: ``--import`` (make your module classes loadable) and ``plan`` (a dry run)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from torch import nn

from .errors import CompactnnError


def import_user_classes(spec: str) -> list[str]:
    """Import ``spec`` (a module name on ``sys.path`` or a ``.py`` file) and put every ``nn.Module`` subclass it
    defines on the pack allow-list, so ``report``/``eval``/``sensitivity`` can load models built from them.

    You name the code to run here, on the command line; a packed file never can.
    """
    from .pack.spec import packable

    try:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise CompactnnError(f"--import {spec}: no such file")
            name = path.stem
            sys.path.insert(0, str(path.parent))
            module = importlib.import_module(name)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(spec)
    except CompactnnError:
        raise
    except Exception as err:  # the user's own code: any error is reported in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CompactnnError(f"--import {spec}: importing it failed ({type(err).__name__}: {first})") from None
    found = []
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__:
            packable(value)
            found.append(value.__qualname__)
    if not found:
        raise CompactnnError(f"--import {spec}: it defines no nn.Module class")
    return found


def plan(
    recipe: Path = typer.Argument(..., help="YAML recipe"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as one JSON object"),
) -> None:
    """Dry run: which layers each stage of a recipe touches, at what setting, and what it skips and why."""
    from . import data as cn_data
    from . import models
    from .plan import plan as make_plan
    from .recipe import load_recipe

    parsed = load_recipe(recipe)
    bundle = cn_data.load(parsed.data.name, root=parsed.data.root)
    model = models.create(parsed.model.name, data=bundle, seed=parsed.seed, **parsed.model.args)
    result = make_plan(model, parsed.stages)
    print(json.dumps(result.to_dict()) if as_json else str(result))


def mount(app: typer.Typer) -> None:
    """Add ``plan`` and the global ``--import`` option to ``app``."""

    @app.callback()
    def _options(
        imports: Optional[list[str]] = typer.Option(
            None, "--import", help="a module name or .py file whose nn.Module classes your packed models use "
                                   "(repeatable)"),
    ) -> None:
        for spec in imports or ():
            import_user_classes(spec)

    app.command("plan")(plan)

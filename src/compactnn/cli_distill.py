"""``compactnn distill``: train a student against a teacher and print both accuracies."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import OutputError


def distill(
    teacher: Path = typer.Option(..., "--teacher", help="the teacher, a packed model (.cnz)"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the trained student (.cnz)"),
    student: str = typer.Option("lenet5", help="registry model name of the student (trained from scratch), or a .cnz"),
    data: str = typer.Option("digits", help="data set name (see `compactnn list datasets`)"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding the data set's files"),
    epochs: int = typer.Option(10),
    lr: float = typer.Option(0.05),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw"),
    temperature: float = typer.Option(4.0, help="distillation temperature T"),
    alpha: float = typer.Option(0.9, help="weight of the distillation term (1 - alpha weighs cross-entropy)"),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
) -> None:
    """Knowledge distillation: train the student against the teacher (Hinton's loss) and pack it."""
    from rich.console import Console

    from . import data as cn_data
    from . import models, pack, train
    from .api import compress
    from .config import FineTune
    from .distill import Distill, load_teacher

    if out.exists() and not force:
        raise OutputError(f"{out} exists; choose another --out or pass --force")
    bundle = cn_data.load(data, root=data_root)
    net = pack.load(student) if student.endswith(".cnz") else models.create(student, data=bundle, seed=seed)
    teacher_model = load_teacher(str(teacher))
    config = Distill(teacher=teacher_model, temperature=temperature, alpha=alpha,
                     finetune=FineTune(epochs=epochs, lr=lr, optimizer=optimizer, seed=seed))
    result = compress(net, config, data=bundle, inplace=True)
    t_acc = train.evaluate(teacher_model, bundle)["accuracy"]
    s_acc = train.evaluate(result, bundle)["accuracy"]
    pack.save(result, out, metadata={"model": student, "data": data, "input_shape": list(bundle.input_shape),
                                     "teacher": str(teacher)})
    Console().print(f"teacher {teacher.name}: accuracy {t_acc:.4f}; student {student}: accuracy {s_acc:.4f}; "
                    f"wrote {out} ({out.stat().st_size:,} bytes)")


def mount(app: typer.Typer) -> None:
    """Add ``distill`` to ``app``."""
    app.command("distill")(distill)

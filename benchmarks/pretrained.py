"""Trained reference models shared by benchmarks, cached as .cnz files so each is trained once per machine.

The cache lives in ``$XDG_CACHE_HOME/compactnn/bench`` (default ``~/.cache/compactnn/bench``), never in the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import compactnn as cn


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "compactnn" / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pretrained(name: str, bundle, epochs: int, lr: float = 0.05, batch_size: int = 128, seed: int = 0,
               optimizer: str = "sgd", **model_kwargs):
    """Registry model ``name`` trained on ``bundle`` with these settings; loaded from the cache when present.

    ``seed`` fixes everything: the initial weights (``models.create(seed=)``) and the training's data order."""
    tag = f"{name}-{bundle.name}-e{epochs}-lr{lr}-b{batch_size}-{optimizer}-s{seed}-init"
    if model_kwargs:
        tag += "-" + "-".join(f"{k}{v}" for k, v in sorted(model_kwargs.items()))
    path = cache_dir() / f"{tag}.cnz"
    if path.exists():
        return cn.pack.load(path)
    model = cn.models.create(name, data=bundle, seed=seed, **model_kwargs)
    print(f"training {tag} (cached afterwards in {path})", flush=True)
    cn.train.fit(model, bundle, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, optimizer=optimizer)
    cn.pack.save(model, path, metadata={"model": name, "data": bundle.name, "epochs": epochs})
    return model

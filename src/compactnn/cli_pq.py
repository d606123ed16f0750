"""``compactnn pq``: build a product-quantization index from vectors and search it.

    compactnn pq build VECTORS.npy --method pq|opq|spectral --bytes B --out INDEX.cnz
    compactnn pq search INDEX.cnz QUERIES.npy -k K --out IDS.npy

Vectors are a 2-D numeric ``.npy`` (read without pickle, its length checked against its header) or a
``.fvecs``/``.bvecs``/``.ivecs`` file. ``search`` writes an int64 ``.npy`` of shape ``(queries, K)``, nearest first
(an IVF index, ``build --ivf NLIST``, pads with -1 when the probed lists hold fewer than K vectors).
Outputs are written whole (temporary file, then rename). Bad input ends in one line (exit 2) through
:func:`compactnn.cli.main`.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import typer

from .errors import ConfigError, OutputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Product quantization: build an index from vectors, search it (ADC/SDC).")

METHOD_HELP = "pq, opq (non-parametric), opq-parametric or spectral (biresolution spectral PQ)"


def read_vectors(path: Path, what: str):
    """A 2-D float32 tensor from ``.npy`` / ``.fvecs`` / ``.bvecs`` / ``.ivecs`` (a 1-D ``.npy`` is one vector)."""
    import torch

    from .pq.io import VECS, read_npy, read_vecs
    from .pq.quantizer import check_vectors

    suffix = path.suffix.lstrip(".").lower()
    a = read_vecs(path) if suffix in VECS else read_npy(path, what)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    return check_vectors(torch.from_numpy(a.astype("float32", copy=False)), what)


def _free(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputError(f"{out} exists; choose another --out or pass --force")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {out.parent} does not exist; create it first")


@app.command()
def build(
    vectors: Path = typer.Argument(..., help="base vectors: a 2-D .npy (n, d), or .fvecs/.bvecs/.ivecs"),
    out: Path = typer.Option(..., "--out", "-o", help="the index file to write (.cnz)"),
    method: str = typer.Option("spectral", "--method", help=METHOD_HELP),
    nbytes: int = typer.Option(8, "--bytes", help="bytes per vector = subspaces (8-bit codes); must divide d"),
    iterations: int = typer.Option(25, help="Lloyd steps of the final codebook training"),
    train_size: int = typer.Option(0, help="train on this many (seeded) vectors; 0 = all"),
    ivf: int = typer.Option(0, "--ivf", help="IVF-ADC with this many inverted lists (0 = exhaustive index)"),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Train a product quantizer on the vectors, encode them, and save the index."""
    import torch
    from rich.console import Console

    from .pq import IVFPQIndex, PQIndex
    from .pq.io import save_index
    from .pq.quantizer import METHODS, check_shape

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if nbytes < 1:
        raise ConfigError(f"--bytes must be a positive int, got {nbytes}")
    if iterations < 0 or train_size < 0 or ivf < 0:
        raise ConfigError("--iterations, --train-size and --ivf must be >= 0")
    _free(out, force)
    x = read_vectors(vectors, "vectors")
    check_shape(x.shape[1], nbytes, 8)
    sample = x
    if 0 < train_size < x.shape[0]:
        sample = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:train_size]]
    t = time.perf_counter()
    if ivf:
        index = IVFPQIndex.build(x, ivf, nbytes, 8, method, iterations=iterations, seed=seed,
                                 quiet=True if quiet else None)
        part = x[:20000]
        mse = float(((index.decode(torch.arange(part.shape[0])) - part) ** 2).sum(1).double().mean())
    else:
        index = PQIndex.build(x, nbytes, 8, method, train_on=sample, iterations=iterations, seed=seed,
                              quiet=True if quiet else None)
        mse = index.quantizer.mse(x[:20000])
    took = time.perf_counter() - t
    manifest = save_index(index, out, metadata={"source": vectors.name, "build_seconds": round(took, 3)})
    Console().print(f"{method} index of {index.ntotal:,} vectors, d={index.dim}, {nbytes} bytes each "
                    f"({index.dim * 4 / nbytes:.0f}x smaller than float32); reconstruction MSE {mse:.4g}; "
                    f"built in {took:.1f} s; wrote {out} ({manifest['file_bytes']:,} bytes)")


@app.command()
def search(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="an index written by `compactnn pq build`"),
    queries: Path = typer.Argument(..., help="query vectors: a 2-D .npy (q, d), or .fvecs/.bvecs/.ivecs"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the ids (.npy, int64, (queries, K))"),
    k: int = typer.Option(10, "-k", "--k", help="neighbours per query"),
    mode: str = typer.Option("adc", help="adc (asymmetric: exact query) or sdc (symmetric: encoded query)"),
    nprobe: int = typer.Option(8, help="IVF indexes: inverted lists visited per query"),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
) -> None:
    """Search an index: the K nearest base vectors of every query, nearest first."""
    import numpy as np
    from rich.console import Console

    from .files import atomic_write_bytes
    from .pq import IVFPQIndex
    from .pq.io import load_index

    if mode not in ("adc", "sdc"):
        raise ConfigError(f"--mode must be adc or sdc, got {mode!r}")
    _free(out, force)
    index = load_index(index_file)
    q = read_vectors(queries, "queries")
    t = time.perf_counter()
    if isinstance(index, IVFPQIndex):
        if mode != "adc":
            raise ConfigError("an IVF index is searched with ADC only; drop --mode sdc")
        _, ids = index.search(q, k, nprobe=nprobe)
    else:
        _, ids = index.search(q, k, mode=mode)
    took = time.perf_counter() - t
    buf = io.BytesIO()
    np.save(buf, ids.numpy().astype(np.int64), allow_pickle=False)
    atomic_write_bytes(out, buf.getvalue())
    Console().print(f"searched {q.shape[0]:,} queries against {index.ntotal:,} vectors ({mode}, k={k}) in "
                    f"{took * 1e3 / q.shape[0]:.3f} ms per query; wrote {out}")


__all__ = ["app", "read_vectors"]

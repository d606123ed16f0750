"""The coverage matrix: nine users' models (benchmarks/user_models.py) x every registered method, plus the pack
round trip (skeleton load), the report and the integer model's ONNX export.

Each model trains briefly on digits (Adam), then every method runs with its registry ``example`` setting (one
fine-tune epoch). A cell is the test accuracy after compression, or the one-line message of a library error
(``unsupported: ...``). A cell is never allowed to be a crash (any other exception, counted and shown as
``CRASH``) or a silent skip: for a weight-level method asked for a sparsity, fewer zeros than asked over the
model's weights of >= 2 dims without a warning is shown as ``SILENT``.

    python benchmarks/coverage.py              # all nine models, every method -> docs/results/coverage.{md,json}
    python benchmarks/coverage.py --quick      # 2 epochs of training, for a fast look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compactnn as cn  # noqa: E402
from compactnn.api import config_class, from_dict  # noqa: E402
from compactnn.errors import CompactnnError  # noqa: E402
from user_models import MODELS  # noqa: E402

WEIGHT_LEVEL = {"magnitude-prune", "lc", "clip-q", "kmeans-quantize"}


def _message(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters() if p.dim() >= 2]


def train(name: str, data, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name]()
    return cn.train.fit(model, data, epochs=epochs, lr=3e-3, optimizer="adam", batch_size=64, seed=seed, quiet=True)


#: Extra columns: a registered method under another setting than its registry example.
VARIANTS = {"integer-only mixed": {"method": "integer-only", "mode": "calibrate", "calibration_batches": 1,
                                   "mixed": True}}


def method_config(method: str):
    if method in VARIANTS:
        return from_dict(dict(VARIANTS[method]))
    example = dict(config_class(method).example or {})
    if "finetune" in example and example["finetune"] is not None:
        example["finetune"] = {**example["finetune"], "epochs": 1}
    return from_dict({"method": method, **example})


def run_cell(model: nn.Module, method: str, data) -> dict:
    config = method_config(method)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = cn.compress(model, config, data=data)
        except CompactnnError as err:
            return {"status": "unsupported", "text": f"unsupported: {_message(err)}"}
        except Exception as err:  # noqa: BLE001 - a crash is what this benchmark counts
            return {"status": "crash", "text": f"CRASH {type(err).__name__}: {_message(err)}"}
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    skipped = getattr(out, "compactnn_skipped", {})
    cell = {"status": "ok", "seconds": round(time.perf_counter() - start, 2), "warnings": said,
            "skipped": len(skipped)}
    try:
        cell["accuracy"] = float(cn.train.evaluate(out, data)["accuracy"])
    except Exception as err:  # noqa: BLE001
        return {"status": "crash", "text": f"CRASH in evaluate {type(err).__name__}: {_message(err)}"}
    sparsity = getattr(config, "sparsity", None)
    if method in WEIGHT_LEVEL and isinstance(sparsity, float):
        weights = _weights(out)
        zeros = sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))
        cell["zeros"] = round(zeros, 3)
        if zeros < 0.9 * sparsity and not said:
            cell["status"] = "silent"
    cell["text"] = f"{cell['accuracy']:.3f}" + (f" ({len(skipped)} skipped, warned)" if skipped else "")
    if cell["status"] == "silent":
        cell["text"] = f"SILENT {cell['text']} zeros {cell['zeros']}"
    cell["model"] = out
    return cell


def pack_cell(name: str, model: nn.Module) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.cnz"
        try:
            cn.pack.save(model, path)
            back = cn.pack.load(path, model=MODELS[name]())
        except CompactnnError as err:
            return {"status": "unsupported", "text": f"unsupported: {_message(err)}"}
        except Exception as err:  # noqa: BLE001
            return {"status": "crash", "text": f"CRASH {type(err).__name__}: {_message(err)}"}
    x = torch.randn(4, 1, 8, 8)
    model.eval(), back.eval()
    same = torch.equal(model(x), back(x))
    return {"status": "ok" if same else "crash", "text": "identical" if same else "DIFFERENT outputs"}


def report_cell(model: nn.Module, data) -> dict:
    try:
        rep = cn.report.summarize(model, data)
    except CompactnnError as err:
        return {"status": "unsupported", "text": f"unsupported: {_message(err)}"}
    except Exception as err:  # noqa: BLE001
        return {"status": "crash", "text": f"CRASH {type(err).__name__}: {_message(err)}"}
    return {"status": "ok", "text": f"{rep.totals['macs']:,} MACs"}


def onnx_cell(integer_cell: dict, data) -> dict:
    if integer_cell.get("status") != "ok":
        return {"status": "n/a", "text": "n/a (no integer model)"}
    from compactnn.quantize.intonly.export import export_file

    with tempfile.TemporaryDirectory() as tmp:
        try:
            cn.pack.save(integer_cell["model"], Path(tmp) / "q.cnz")
            export_file(Path(tmp) / "q.cnz", Path(tmp) / "q.onnx", mode="exact")
            import numpy as np
            import onnxruntime as ort

            sess = ort.InferenceSession(str(Path(tmp) / "q.onnx"), providers=["CPUExecutionProvider"])
            x = data.test.x[:256].numpy().astype(np.float32)
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            acc = float((got.argmax(1) == data.test.y[:256].numpy()).mean())
        except CompactnnError as err:
            return {"status": "unsupported", "text": f"unsupported: {_message(err)}"}
        except Exception as err:  # noqa: BLE001
            return {"status": "crash", "text": f"CRASH {type(err).__name__}: {_message(err)}"}
    return {"status": "ok", "text": f"ORT acc {acc:.3f} (256 test)"}


def matrix(models: list[str], methods: list[str], epochs: int) -> dict:
    from tqdm import tqdm

    data = cn.data.load("digits")
    rows = {}
    for name in tqdm(models, desc="models"):
        model = train(name, data, epochs)
        row = {"float": {"status": "ok", "text": f"{cn.train.evaluate(model, data)['accuracy']:.3f}"}}
        for method in methods:
            row[method] = run_cell(model, method, data)
        row["pack"] = pack_cell(name, model)
        row["report"] = report_cell(model, data)
        if "integer-only" in row:
            row["onnx"] = onnx_cell(row["integer-only"], data)
        for cell in row.values():
            cell.pop("model", None)
        rows[name] = row
    return rows


def summary(rows: dict, methods: list[str]) -> dict:
    cells = [c for row in rows.values() for c in row.values()]
    return {
        "crashes": sum(c["status"] == "crash" for c in cells),
        "silent_skips": sum(c["status"] == "silent" for c in cells),
        "skeleton_identical": sum(row["pack"]["text"] == "identical" for row in rows.values()),
        "integer_only": sum(row.get("integer-only", {}).get("status") == "ok" for row in rows.values()),
        "integer_only_full_or_mixed": sum(any(row.get(m, {}).get("status") == "ok" for m in
                                              ("integer-only", "integer-only mixed")) for row in rows.values()),
        "structured": sum(any(row.get(m, {}).get("status") == "ok" for m in ("nisp", "l1-filter"))
                          for row in rows.values()),
        "models": len(rows),
    }


def to_markdown(rows: dict, totals: dict, command: str) -> str:
    columns = list(next(iter(rows.values())))
    lines = [
        "# Coverage: users' models x every method",
        "",
        f"Made by `{command}` (torch {torch.__version__}). Each model (benchmarks/user_models.py) trained briefly on "
        "digits; each method ran with its registry example setting and one fine-tune epoch. A cell is the test "
        "accuracy, or the library's one-line message.",
        "",
        f"Totals: {totals['crashes']} crashes, {totals['silent_skips']} silent skips, skeleton round trip identical "
        f"on {totals['skeleton_identical']}/{totals['models']}, integer-only on {totals['integer_only']}/"
        f"{totals['models']} whole and {totals['integer_only_full_or_mixed']}/{totals['models']} whole or mixed "
        f"(IntegerOnly(mixed=True)), structured pruning on {totals['structured']}/{totals['models']}.",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, row in rows.items():
        cells = [row[c]["text"].replace("|", "/")[:90] for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 training epochs instead of 15")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model styles")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "results")
    args = parser.parse_args(argv)
    methods = args.methods.split(",") if args.methods else cn.list_methods() + list(VARIANTS)
    rows = matrix(args.models.split(","), methods, epochs=2 if args.quick else 15)
    totals = summary(rows, methods)
    command = "python benchmarks/coverage.py" + (" --quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps({"totals": totals, "rows": rows}, indent=1) + "\n")
    (args.out / "coverage.md").write_text(to_markdown(rows, totals, command))
    print(to_markdown(rows, totals, command))


if __name__ == "__main__":
    main()

"""The PAD-Net benchmark end to end on tiny settings: train (cached), compress, report."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "padnet.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("padnet_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_benchmark_runs_caches_and_reports(bench, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUICK, "n_train", 16)
    monkeypatch.setitem(bench.QUICK, "n_test", 8)
    monkeypatch.setitem(bench.QUICK, "size", 16)
    rows = "multi-task,C,C-no-normals"
    bench.main(["train", "--quick", "--out", str(tmp_path), "--rows", rows, "--threads", "1"])
    runs = json.loads((tmp_path / "padnet_runs.json").read_text())
    assert len(runs) == 3 and all("rmse" in v and "miou" in v for v in runs.values())
    stamp = (tmp_path / "padnet_runs.json").stat().st_mtime_ns
    bench.main(["train", "--quick", "--out", str(tmp_path), "--rows", rows, "--threads", "1"])  # all cached
    assert (tmp_path / "padnet_runs.json").stat().st_mtime_ns == stamp
    (model,) = (tmp_path / "models").glob("*-C-s0.cnz")
    model.unlink()  # runs/ is not in the repository: a missing model is retrained and must match the cached run
    bench.main(["compress", "--quick", "--out", str(tmp_path), "--threads", "1"])
    assert model.is_file()
    bench.main(["int8", "--quick", "--out", str(tmp_path), "--threads", "1"])
    bench.main(["report", "--quick", "--out", str(tmp_path), "--threads", "1"])
    doc = json.loads((tmp_path / "padnet.json").read_text())
    assert [r["row"] for r in doc["rows"]] == ["multi-task", "C", "C-no-normals"]
    (comp,) = doc["compression"]["magnitude"]
    assert comp["reload_identical"] is True and 0.49 < comp["zero_fraction"] < 0.51
    assert comp["bytes"] < doc["compression"]["dense"]["bytes"]
    q = doc["compression"]["int8_mixed"]
    assert q["reload_identical"] is True and q["integer_parts"] >= 1 and 0.9 < q["int8_weight_share"] < 1
    assert q["bytes"] < q["float_bytes"] and "rmse" in q["float"] and not any(n.startswith("decoders") for n in q["float_layers"])
    assert "integer-only int8 (mixed" in (tmp_path / "padnet.md").read_text()
    assert (tmp_path / "padnet.png").stat().st_size > 1000
    assert "one seed: no verdict" in (tmp_path / "padnet.md").read_text()

"""A short run of the fuzzing campaign (benchmarks/fuzz.py): hostile and mutated .cnz files (integer-only models
included), recipes, IDX files and CIFAR batches never crash, hang or raise anything but one-line errors."""

import importlib
import sys
from pathlib import Path

import pytest


def load_fuzz():
    """benchmarks/fuzz.py as module ``fuzz`` (its worker processes import it by that name)."""
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("fuzz")


@pytest.mark.filterwarnings("ignore")
def test_short_fuzz_run_is_clean():
    fuzz = load_fuzz()
    result = fuzz.campaign(seed=12345, offset=0, cases=300, quiet=True)
    total = {k: sum(c[k] for c in result["counts"].values()) for k in ("cases", "traceback", "crash", "hang")}
    assert total["cases"] == 300
    assert (total["traceback"], total["crash"], total["hang"]) == (0, 0, 0), result["findings"][:3]
    assert result["peak_rss_mb"] <= 512
    assert all(result["counts"][t]["cases"] > 0 for t in ("pack", "recipe", "idx", "cifar"))


@pytest.mark.filterwarnings("ignore")
def test_hypothesis_engine_runs_clean_and_reports_a_shrunk_failure(monkeypatch):
    fuzz = load_fuzz()
    clean = fuzz.hypothesis_campaign(60, quiet=True)
    assert clean["cases"] == 60 and not clean["findings"]
    assert sum(c["error"] + c["ok"] for c in clean["counts"].values()) == 60
    real = fuzz.Pool.run

    def run(self, target, data):  # a pretend bug: every recipe "crashes the reader"
        result = real(self, target, data)
        return ("traceback", f"fake failure at {len(data)} bytes", 0.0, 0) if target == "recipe" else result

    monkeypatch.setattr(fuzz.Pool, "run", run)
    found = fuzz.hypothesis_campaign(40, quiet=True)
    assert [(f["target"], f["status"]) for f in found["findings"]] == [("recipe", "traceback")]
    assert "fake failure" in found["findings"][0]["detail"]

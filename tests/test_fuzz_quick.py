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

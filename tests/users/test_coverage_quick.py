"""The quick coverage matrix (benchmarks/coverage.py on untrained models and 160 digits): every registered method
on nine users' model styles ends in a result or a one-line library error, never a crash or a silent skip."""

import dataclasses
import sys
import warnings
from pathlib import Path

import pytest
import torch

import compactnn as cn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import coverage as matrix  # noqa: E402
from user_models import MODELS  # noqa: E402


@pytest.fixture(scope="module")
def small():
    data = cn.data.load("digits")
    return dataclasses.replace(data, train=data.train.subset(160), test=data.test.subset(80))


STRUCTURED_OK = set(MODELS)  # 9 of 9: LSTM hidden units, attention heads (torch's TransformerEncoder, timm-style)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_on_a_users_model(name, small):
    torch.manual_seed(0)
    model = MODELS[name]()
    bad, status = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in cn.list_methods() + list(matrix.VARIANTS):
            cell = matrix.run_cell(model, method, small)
            status[method] = cell["status"]
            if cell["status"] in ("crash", "silent"):
                bad[method] = cell["text"]
            elif cell["status"] == "unsupported":
                assert "\n" not in cell["text"] and len(cell["text"]) < 600, cell["text"]
    assert not bad, bad
    assert (status["nisp"] == status["l1-filter"] == "ok") == (name in STRUCTURED_OK)
    assert status["integer-only mixed"] == "ok"  # every style converts whole or in parts
    assert matrix.pack_cell(name, model)["text"] == "identical"
    assert matrix.report_cell(model, small)["status"] == "ok"

"""summarize / Report: exact per-layer numbers, totals, report.json schema, files written."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import compactnn.pack
import compactnn.train
from compactnn.errors import ConfigError, OutputError
from compactnn.report import Report, plot_layer_sizes, summarize

PACKED_SIZE = 12345


@pytest.fixture
def fake_pack(monkeypatch):
    """Stand-ins for compactnn.pack: 4 bytes per element + 1 per tensor; a fixed file size."""
    monkeypatch.setattr(compactnn.pack, "tensor_bytes",
                        lambda m: {k: 4 * v.numel() + 1 for k, v in m.state_dict().items()}, raising=False)
    monkeypatch.setattr(compactnn.pack, "packed_size", lambda m, **kw: PACKED_SIZE, raising=False)
    calls = []

    def evaluate(model, data, batch_size=512):
        calls.append(data)
        return {"accuracy": 0.75, "loss": 0.5}

    monkeypatch.setattr(compactnn.train, "evaluate", evaluate, raising=False)
    return calls


def small_model():
    """Conv(1->2, 3x3) -> BN -> ReLU -> Linear(72 -> 3) with known zeros."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[0] = 0.0  # 9 of 18 weights zero
        model[0].bias.copy_(torch.tensor([1.0, 0.0]))  # 1 of 2 nonzero
        model[4].weight.fill_(0.5)
        model[4].weight[:, ::2] = 0.0  # 108 of 216 weights nonzero
        model[4].bias.fill_(1.0)
    return model


DATA = SimpleNamespace(name="toy", input_shape=(1, 8, 8))

EXPECTED = [
    {"name": "0", "kind": "Conv2d", "shape": [2, 1, 3, 3], "params": 20, "nonzero": 10,
     "bits_per_weight": 8 * 82 / 20, "bytes": 82, "macs": 2 * 36 * 9},
    {"name": "1", "kind": "BatchNorm2d", "shape": [2], "params": 4, "nonzero": 2,  # beta starts at 0
     "bits_per_weight": 8 * 41 / 4, "bytes": 41, "macs": 0},  # weight, bias, mean, var: 9 each; step count: 5
    {"name": "4", "kind": "Linear", "shape": [3, 72], "params": 219, "nonzero": 111,
     "bits_per_weight": 8 * 878 / 219, "bytes": 878, "macs": 216},
]


def test_layers_exact(fake_pack):
    report = summarize(small_model(), DATA)
    assert report.layers == EXPECTED
    assert report.totals == {"params": 243, "nonzero": 123, "packed_bytes": PACKED_SIZE, "macs": 864,
                             "accuracy": 0.75}
    assert fake_pack == [DATA]
    assert report.name == "Sequential" and report.data == "toy" and report.latency_ms is None


def test_totals_consistent_with_model(fake_pack):
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 2, bias=False))
    report = summarize(model, input_shape=(5,))
    assert sum(r["params"] for r in report.layers) == report.totals["params"] == 5 * 7 + 7 + 14 + 14
    assert sum(r["nonzero"] for r in report.layers) == report.totals["nonzero"]
    assert sum(r["macs"] for r in report.layers) == report.totals["macs"] == 35 + 14
    assert "accuracy" not in report.totals


def test_input_shape_from_dataset_and_missing(fake_pack):
    model = small_model()
    ds = SimpleNamespace(x=torch.zeros(4, 1, 8, 8), y=torch.zeros(4, dtype=torch.long))
    assert summarize(model, ds).totals["macs"] == 864
    no_shape = summarize(model)
    assert no_shape.totals["macs"] is None and all(r["macs"] is None for r in no_shape.layers)
    assert "0" in no_shape.to_markdown()
    with pytest.raises(ConfigError):
        summarize(model, latency=True)


SCHEMA_TOP = {"model", "data", "baseline", "compressed", "ratio", "stages", "layers"}
SCHEMA_BASE = {"accuracy", "params", "packed_bytes", "macs"}
SCHEMA_COMP = {"accuracy", "params", "nonzero", "packed_bytes", "macs"}
SCHEMA_LAYER = {"name", "kind", "shape", "params", "nonzero", "bits_per_weight", "bytes", "macs"}


def test_to_dict_matches_schema_with_baseline(fake_pack, monkeypatch):
    big = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))
    sizes = iter([1000, 4000])  # compressed first, then the baseline
    monkeypatch.setattr(compactnn.pack, "packed_size", lambda m, **kw: next(sizes))
    report = summarize(small_model(), DATA, baseline=big, name="toy-net")
    stages = [{"method": "magnitude-prune", "seconds": 1.5, "accuracy": 0.7}]
    doc = report.to_dict(stages=stages, data_name="digits")
    assert set(doc) == SCHEMA_TOP
    assert set(doc["baseline"]) == SCHEMA_BASE and set(doc["compressed"]) == SCHEMA_COMP
    assert set(doc["ratio"]) == {"size", "macs"}
    assert all(set(row) == SCHEMA_LAYER for row in doc["layers"])
    assert doc["model"] == "toy-net" and doc["data"] == "digits" and doc["stages"] == stages
    assert doc["ratio"] == {"size": 4.0, "macs": 1.0}
    assert doc["baseline"]["packed_bytes"] == 4000 and doc["compressed"]["packed_bytes"] == 1000
    assert json.loads(json.dumps(doc)) == doc


def test_to_dict_without_baseline(fake_pack):
    doc = summarize(small_model(), DATA).to_dict()
    assert set(doc) == SCHEMA_TOP and doc["baseline"] is None
    assert doc["ratio"] == {"size": None, "macs": None} and doc["stages"] == []
    assert doc["compressed"]["accuracy"] == 0.75 and doc["model"] == "Sequential"


def test_markdown_and_rich_name_every_layer(fake_pack):
    report = summarize(small_model(), DATA, baseline=small_model(), name="toy-net")
    md = report.to_markdown(stages=[{"method": "kmeans-quantize", "seconds": 2.0, "accuracy": 0.7}])
    for name, kind in (("0", "Conv2d"), ("1", "BatchNorm2d"), ("4", "Linear")):
        assert f"| {name} | {kind} |" in md
    assert "kmeans-quantize" in md and "1.00x" in md and "75.00%" in md
    text = str(report)
    assert all(s in text for s in ("Conv2d", "BatchNorm2d", "Linear", "packed bytes", "12,345"))


def test_latency_in_report(fake_pack):
    report = summarize(small_model(), DATA, latency=True)
    assert set(report.latency_ms) == {1, 256} and min(report.latency_ms.values()) > 0
    doc = report.to_dict()
    assert set(doc["compressed"]["latency_ms"]) == {1, 256}
    assert "latency ms (batch 256)" in report.to_markdown()


def test_write_creates_three_files(fake_pack, tmp_path):
    report = summarize(small_model(), DATA, baseline=small_model())
    out = tmp_path / "runs" / "a"
    paths = report.write(out, stages=[{"method": "x", "seconds": 0.1, "accuracy": 0.5}], model_name="m")
    assert sorted(os.listdir(out)) == ["report.json", "report.md", "report.png"]
    doc = json.loads(paths["json"].read_text())
    assert doc == json.loads(json.dumps(report.to_dict(stages=[{"method": "x", "seconds": 0.1, "accuracy": 0.5}],
                                                       model_name="m")))
    assert "| 4 | Linear |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_into_a_file_is_output_error(fake_pack, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        summarize(small_model(), DATA).write(blocker)


def test_plot_wide_range_and_missing_layers(tmp_path):
    row = dict(kind="Linear", shape=[1], params=1, nonzero=1, bits_per_weight=8.0, macs=1)
    base = Report(layers=[dict(row, name="a", bytes=10), dict(row, name="b", bytes=10**6)], totals={})
    after = Report(layers=[dict(row, name="a", bytes=2), dict(row, name="c", bytes=5)], totals={}, baseline=base)
    path = plot_layer_sizes(after, tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and os.listdir(tmp_path) == ["p.png"]


@pytest.mark.skipif(not hasattr(compactnn.pack, "packed_size"), reason="compactnn.pack not written yet")
def test_real_packed_sizes(tmp_path):
    model = small_model()
    report = summarize(model, input_shape=(1, 8, 8))
    compactnn.pack.save(model, tmp_path / "m.cnz")
    assert report.totals["packed_bytes"] == os.path.getsize(tmp_path / "m.cnz")
    stored = compactnn.pack.tensor_bytes(model)
    assert sum(r["bytes"] for r in report.layers) == sum(stored.values())
    assert report.layers[0]["bytes"] == stored["0.weight"] + stored["0.bias"]


def test_real_end_to_end_pruned_is_smaller(tmp_path):
    from compactnn.data import ArrayDataset

    torch.manual_seed(0)
    ds = ArrayDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,)))
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    pruned = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    pruned.load_state_dict(dense.state_dict())
    with torch.no_grad():
        w = pruned[1].weight
        w[w.abs() < w.abs().quantile(0.9)] = 0.0
    report = summarize(pruned, ds, baseline=dense)
    assert report.totals["accuracy"] == compactnn.train.evaluate(pruned, ds)["accuracy"]
    assert report.layers[0]["nonzero"] == 205 + 32 and report.baseline.layers[0]["nonzero"] == 64 * 32 + 32
    assert report.layers[0]["bits_per_weight"] < report.baseline.layers[0]["bits_per_weight"]
    assert report.ratios()["size"] > 2 and report.ratios()["macs"] == 1.0
    doc = json.loads(report.write(tmp_path)["json"].read_text())
    assert doc["compressed"]["packed_bytes"] < doc["baseline"]["packed_bytes"]

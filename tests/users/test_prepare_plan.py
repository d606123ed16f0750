"""prepare/convert with the user's own loop, the dry-run plan, and the CLI's --import and plan."""

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.errors import ConfigError
from compactnn.prune import MagnitudePrune, NISP
from compactnn.quantize import IntegerOnly, KMeansQuantize

from .test_weights_everywhere import SeqNet


def _own_loop(model, data, steps=5, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    x, y = data.train.x[:256], data.train.y[:256]
    for i in range(steps):
        loss = nn.functional.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def digits():
    return cn.data.load("digits")


def test_magnitude_prepare_keeps_pruned_weights_at_zero_through_a_user_loop(digits):
    model = cn.models.create("lenet300", data=digits, seed=0)
    prepared = cn.prepare(model, MagnitudePrune(sparsity=0.8))
    _own_loop(prepared, digits)
    out = cn.convert(prepared)
    weights = [m.weight for m in out.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Flatten, type(out)) for m in out.modules())
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.8 * sum(w.numel() for w in weights))
    assert not any(torch.equal(a, b) for a, b in zip(weights, [m.weight for m in model.modules()
                                                               if isinstance(m, nn.Linear)]))
    with pytest.raises(ConfigError, match="was not prepared"):
        cn.convert(out)


def test_kmeans_prepare_trains_only_shared_values(digits):
    model = cn.models.create("lenet300", data=digits, seed=0)
    prepared = cn.prepare(model, KMeansQuantize(bits=2))
    _own_loop(prepared, digits)
    out = cn.convert(prepared)
    for m in out.modules():
        if isinstance(m, nn.Linear):
            assert m.weight.unique().numel() <= 5


def test_integer_only_prepare_convert_gives_an_integer_model(digits):
    model = cn.train.fit(cn.models.create("lenet300", data=digits, seed=0), digits, epochs=2, quiet=True)
    prepared = cn.prepare(model, IntegerOnly(mode="qat", calibration_batches=2), data=digits)
    _own_loop(prepared, digits, lr=1e-4)
    out = cn.convert(prepared)
    assert type(out).__name__ == "IntegerModel"
    assert cn.train.evaluate(out, digits)["accuracy"] > 0.8


def test_prepare_refuses_what_it_cannot_split(digits):
    model = cn.models.create("lenet300", data=digits, seed=0)
    with pytest.raises(ConfigError, match="nisp has no prepare/convert split; use compress"):
        cn.prepare(model, NISP(sparsity=0.5))
    with pytest.raises(ConfigError, match="schedule 'one-shot'"):
        cn.prepare(model, MagnitudePrune(sparsity=0.5, schedule="agp"))


def test_plan_lists_layers_settings_and_skips():
    from compactnn.prune import LC

    result = cn.plan(SeqNet(), [KMeansQuantize(bits={"fc": 3, "*": 2}), LC(sparsity=0.5), IntegerOnly()])
    kmeans, lc, integer = result.stages
    assert {r["layer"]: r["settings"]["bits"] for r in kmeans.rows} == {
        "att.out_proj": 2, "fc": 3, "att.in_proj_weight": 2, "lstm.weight_ih_l0": 2, "lstm.weight_hh_l0": 2,
        "gate.weight": 2}
    assert [r["layer"] for r in lc.rows] == ["att.out_proj", "fc"]
    assert set(lc.skipped) == {"att.in_proj_weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "gate.weight"}
    assert integer.whole_model
    assert "skip gate.weight: Gate.weight is not a Linear" in str(result)
    json.dumps(result.to_dict())


def _cli(*args, cwd, capsys, monkeypatch):
    """Run the CLI in-process in ``cwd``: (exit code, stdout, stderr)."""
    from compactnn.cli import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def test_cli_import_makes_user_classes_loadable(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Inner(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(64, 10)

            def forward(self, x):
                return self.fc(x.flatten(1))

        class Outer(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = Inner()

            def forward(self, x):
                return self.inner(x)
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import my_models

        cn.pack.save(my_models.Outer(), tmp_path / "m.cnz", metadata={"input_shape": [1, 8, 8]})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_models", None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, _, err = _cli("report", "m.cnz", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "not on the allow-list" in err
    try:
        code, out, err = _cli("--import", "my_models", "report", "m.cnz", cwd=tmp_path, capsys=capsys,
                              monkeypatch=monkeypatch)
    finally:
        sys.modules.pop("my_models", None)
    assert code == 0, err
    assert "inner.fc" in out
    code, _, err = _cli("--import", "nothere.py", "report", "m.cnz", cwd=tmp_path, capsys=capsys,
                        monkeypatch=monkeypatch)
    assert code == 2 and err.strip() == "error: --import nothere.py: no such file"


def test_cli_plan_json(tmp_path, capsys, monkeypatch):
    (tmp_path / "r.yaml").write_text("model: {name: lenet300}\nstages:\n  - {method: magnitude-prune, sparsity: 0.5,"
                                     " exclude: [fc3]}\n")
    code, out, err = _cli("plan", "r.yaml", "--json", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    stage = json.loads(out)["stages"][0]
    assert [r["layer"] for r in stage["rows"]] == ["fc1", "fc2"]


def test_report_on_an_integer_model_shows_its_ops(digits):
    model = cn.train.fit(cn.models.create("lenet5", data=digits, seed=0), digits, epochs=1, quiet=True)
    float_report = cn.report.summarize(model, digits)
    integer = cn.compress(model, IntegerOnly(mode="calibrate", calibration_batches=1), data=digits)
    rep = cn.report.summarize(integer, digits)
    kinds = [r["kind"] for r in rep.layers]
    assert kinds.count("int8 conv2d") == 2 and kinds.count("int8 linear") == 2
    convs_and_fcs = [r for r in float_report.layers if r["kind"] in ("Conv2d", "Linear")]
    assert rep.totals["params"] == sum(r["params"] for r in convs_and_fcs)  # the same weights and biases, as codes
    assert rep.totals["macs"] == float_report.totals["macs"]
    assert 0 < rep.totals["packed_bytes"] < float_report.totals["packed_bytes"] / 3
    assert all(r["bits_per_weight"] <= 16 for r in rep.layers if r["params"])


def test_integer_only_mixed_converts_the_parts_it_can(digits, tmp_path):
    import warnings

    from .test_weights_everywhere import Lambda

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.shift = Lambda(lambda x: torch.cumsum(x, 3)[:, :, ::2, ::2])  # cumsum: no integer kernel
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

        def forward(self, x):
            return self.head(self.shift(self.features(x)))

    model = cn.train.fit(Net(), digits, epochs=2, lr=3e-3, optimizer="adam", quiet=True)
    with pytest.raises(cn.errors.ModelError, match=r"'cumsum'.*\(at test_prepare_plan.py:\d+: self.shift = "):
        cn.compress(model, IntegerOnly(mode="calibrate"), data=digits)
    with pytest.warns(UserWarning, match=r"2 integer part\(s\) \(features, head\)"):
        out = cn.compress(model, IntegerOnly(mode="calibrate", mixed=True), data=digits)
    assert [type(out.features).__name__, type(out.head).__name__] == ["IntegerModel", "IntegerModel"]
    assert out.compactnn_integer_parts == ["features", "head"]
    float_acc = cn.train.evaluate(model, digits)["accuracy"]
    assert abs(cn.train.evaluate(out, digits)["accuracy"] - float_acc) < 0.02
    cn.pack.save(out, tmp_path / "m.cnz")
    back = cn.pack.load(tmp_path / "m.cnz", model=Net())
    x = digits.test.x[:16]
    torch.testing.assert_close(back(x), out(x), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = cn.compress(cn.models.create("lenet5", data=digits, seed=0),
                            IntegerOnly(mode="calibrate", mixed=True, calibration_batches=1), data=digits)
    assert type(whole).__name__ == "IntegerModel"  # a model that converts whole stays one integer model


def test_lowbit_prepare_then_your_loop_then_convert(digits):
    from compactnn.quantize import SYQ
    from compactnn.quantize.lowbit.core import quantizers

    model = cn.train.fit(cn.models.create("lenet300", data=digits, seed=0), digits, epochs=1, quiet=True)
    prepared = cn.prepare(model, SYQ(weight_bits=2, act_bits=None))
    assert set(quantizers(prepared)) == {"fc2"}  # first and last layers stay float
    before = prepared.fc2.parametrizations.weight.original.detach().clone()
    _own_loop(prepared, digits, lr=1e-3)
    assert not torch.equal(before, prepared.fc2.parametrizations.weight.original)  # the latent weights trained
    out = cn.convert(prepared)
    assert not quantizers(out) and type(out.fc2).__name__ != "Linear"
    x = digits.test.x[:8]
    assert out(x).shape == (8, 10)
    with pytest.raises(ConfigError, match="inq has no prepare/convert split"):
        cn.prepare(model, cn.quantize.INQ())

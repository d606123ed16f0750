"""The config layer: one checker for Python and YAML, the vocabulary's field types, per-layer resolution, the
method registry and compress()."""

import dataclasses
from typing import Annotated, Literal

import pytest
import torch
from torch import nn

from compactnn import api, config
from compactnn.api import from_dict
from compactnn.config import FineTune, MethodConfig, Patterns, PerLayer, Range, Sparsity, to_dict
from compactnn.errors import ConfigError, ModelError
from compactnn.layers import WEIGHT_LAYERS, resolve


@dataclasses.dataclass(frozen=True)
class Scale(MethodConfig):
    """A toy method for the registry tests: multiplies every selected weight by its ``factor``."""

    method = "test-scale"
    description = "multiply weights by a factor (test only)"
    example = {"factor": 2.0}
    kinds = WEIGHT_LAYERS
    factor: PerLayer[Annotated[float, Range(0.0, 100.0, lo_open=True)]]
    mode: Literal["all", "weights"] = "weights"
    layers: Patterns = None
    exclude: Patterns = None
    finetune: FineTune | None = None

    def validate(self):
        config.check(self.mode == "weights" or self.factor != 42.0, "factor 42 needs mode 'weights'")


@api.register_method(Scale)
def _scale(model, cfg, data, target):
    with torch.no_grad():
        for name, module in target.layers.items():
            module.weight.mul_(target.value("factor", name))
    return model


def test_from_dict_builds_and_coerces():
    cfg = from_dict({"method": "test-scale", "factor": 2, "layers": ["fc*"], "finetune": {"epochs": 3}})
    assert cfg == Scale(factor=2.0, layers=("fc*",), finetune=FineTune(epochs=3))
    assert isinstance(cfg.factor, float) and isinstance(Scale(factor=2, layers=["a"]).layers, tuple)
    out = to_dict(cfg)
    assert out["method"] == "test-scale" and out["layers"] == ["fc*"] and out["finetune"]["epochs"] == 3
    assert from_dict(to_dict(cfg)) == cfg
    assert hash(Scale(factor={"fc*": 2.0})) == hash(from_dict({"method": "test-scale", "factor": {"fc*": 2}}))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"method": "no-such-method"}, "unknown method 'no-such-method'; valid methods are"),
        ({"factor": 2}, "missing 'method'"),
        ({"method": "test-scale"}, "missing required field 'factor'"),
        ({"method": "test-scale", "factor": 1, "colour": 3}, "unknown key 'colour'; valid keys are exclude, factor"),
        ({"method": "test-scale", "factor": "big"}, "test-scale.factor: expected float"),
        ({"method": "test-scale", "factor": True}, "test-scale.factor: expected float"),
        ({"method": "test-scale", "factor": float("nan")}, "expected a finite number"),
        ({"method": "test-scale", "factor": 1e308 * 10}, "expected a finite number"),
        ({"method": "test-scale", "factor": 1, "mode": "some"}, "expected one of 'all' | 'weights'"),
        ({"method": "test-scale", "factor": 1, "layers": "fc1"}, "layers: expected list of str"),
        ({"method": "test-scale", "factor": 1, "layers": []}, "layers must not be empty"),
        ({"method": "test-scale", "factor": 1, "finetune": {"epoch": 3}}, "unknown key 'epoch'"),
        ({"method": "test-scale", "factor": 1, "finetune": {"epochs": 1.5}}, "finetune.epochs: expected int"),
        ({"method": "test-scale", "factor": 1, "finetune": {"epochs": -1}}, "finetune.epochs must be in [0, 100000]"),
        ({"method": "test-scale", "factor": 1, "finetune": {"lr": 1e308}}, "finetune.lr must be in (0, 100]"),
        ({"method": "test-scale", "factor": 1, "finetune": {"seed": 2**70}}, "finetune.seed must be in [0, "),
        ({"method": "test-scale", "factor": -1}, "test-scale.factor must be in (0, 100], got -1"),
        ({"method": "test-scale", "factor": {"fc1": 0}}, "factor['fc1'] must be in (0, 100]"),
        ({"method": "test-scale", "factor": 42.0, "mode": "all"}, "test-scale: factor 42 needs mode 'weights'"),
        ("test-scale", "expected a mapping"),
        ({"method": ["a"]}, "unknown method ['a']"),
    ],
)
def test_from_dict_errors_are_one_line(values, message):
    with pytest.raises(ConfigError) as err:
        from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs", [dict(factor="big"), dict(factor=-1), dict(factor=1, layers=[]),
                                    dict(factor=1, finetune=FineTune(epochs=2), colour=1)])
def test_python_and_yaml_give_the_same_error(kwargs):
    with pytest.raises(ConfigError) as py:
        Scale(**kwargs)
    with pytest.raises(ConfigError) as yml:
        from_dict({"method": "test-scale", **{k: v for k, v in kwargs.items() if k != "finetune"}}, "r.yaml stages[0]")
    assert str(yml.value) == f"r.yaml stages[0]: {py.value}"


def test_python_keywords_and_renamed_keys_are_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'facter'; valid keys are"):
        Scale(facter=2.0)
    with pytest.raises(ConfigError, match="missing required field 'factor'"):
        Scale()
    from compactnn.prune import LC

    with pytest.raises(ConfigError, match="key 'keep' was renamed: use sparsity = 1 - keep"):
        LC(keep=0.05)


def test_finetune_default_of_a_method_fills_a_partial_finetune():
    from compactnn.prune import LC

    cfg = LC(sparsity=0.95, finetune=FineTune(epochs=3))
    assert cfg.finetune.epochs == 3 and cfg.finetune.lr == 0.1 and cfg.finetune.batch_size == 256
    train = FineTune(epochs=40, lr=0.05, optimizer="adam", batch_size=64)
    inherited = FineTune(epochs=2).inherit(train)
    assert inherited == FineTune(epochs=2, lr=0.05 * 0.1, optimizer="adam", batch_size=64)
    assert FineTune().fit_kwargs() == {"epochs": 5, "optimizer": "sgd", "lr": 0.01}
    assert FineTune().fit_kwargs(trained_with=None) == {"epochs": 5, "optimizer": "adamw", "lr": 1e-4}
    assert FineTune().fit_kwargs("adam")["optimizer"] == "adamw"


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_resolve_layers_exclude_and_per_layer_values():
    m = _net()
    assert list(resolve(m, Scale(factor=2.0)).layers) == ["1", "3", "5"]
    assert list(resolve(m, Scale(factor=2.0, exclude=("5",))).layers) == ["1", "3"]
    assert list(resolve(m, Scale(factor=2.0, layers=("1", "5.weight"))).layers) == ["1", "5"]
    t = resolve(m, Scale(factor={"3": 5.0, "[13]": 3.0, "*": 1.5}))
    assert t.values["factor"] == {"1": 3.0, "3": 5.0, "5": 1.5}  # exact name, then first pattern, then "*"
    t = resolve(m, Scale(factor={"[35]": 3.0}))  # a layer no key names is left alone
    assert list(t.layers) == ["3", "5"]
    for bad, what in (({"layers": ("9",)}, "layer pattern '9' matches no"),
                      ({"exclude": ("9",)}, "exclude pattern '9' matches no"),
                      ({"factor": {"fc9": 2.0}}, "factor names 'fc9', which matches none"),
                      ({"layers": ("1",), "exclude": ("1",)}, "leave no layer")):
        with pytest.raises(ModelError, match=what):
            resolve(m, Scale(**{"factor": 2.0, **bad}))


def test_compress_dispatches_on_config_class_and_copies():
    model = _net()
    before = model[1].weight.detach().clone()
    out = api.compress(model, Scale(factor={"1": 3.0}))
    assert torch.equal(model[1].weight, before), "compress must not touch the input model"
    assert torch.allclose(out[1].weight, 3 * before)
    assert torch.equal(out[3].weight, model[3].weight) and torch.equal(out[1].bias, model[1].bias)


def test_compress_refuses_unregistered_configs_and_non_modules():
    @dataclasses.dataclass(frozen=True)
    class Stray(MethodConfig):
        method = "stray"

    with pytest.raises(ConfigError, match="not a registered method config"):
        api.compress(nn.Linear(1, 1), Stray())
    with pytest.raises(ConfigError, match="takes an nn.Module"):
        api.compress("model", Scale(factor=1.0))


def test_register_method_refuses_a_name_twice():
    @dataclasses.dataclass(frozen=True)
    class Twin(MethodConfig):
        method = "test-scale"

    with pytest.raises(TypeError, match="registered twice"):
        api.register_method(Twin)(lambda m, c, d, t: m)


def test_list_and_describe_methods():
    assert api.list_methods() == sorted(api.list_methods()) and "test-scale" in api.list_methods()
    assert api.list_methods("test-*") == ["test-scale"]
    assert api.describe_methods()["test-scale"] == Scale.description


def test_sparsity_type_is_the_vocabulary():
    assert config.type_name(Sparsity) == "float in [0, 1)"
    assert config.per_layer_fields(Scale) == ["factor"]

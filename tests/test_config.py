"""The config layer: checked building from dicts, the method registry and compress()."""

import dataclasses
from typing import Literal

import pytest
import torch
from torch import nn

from compactnn import api, config
from compactnn.config import FineTune, MethodConfig, from_dict, to_dict
from compactnn.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Scale(MethodConfig):
    """A toy method for the registry tests: multiplies every weight by ``factor``."""

    method = "test-scale"
    description = "multiply weights by a factor (test only)"
    factor: float
    mode: Literal["all", "weights"] = "weights"
    layers: tuple[str, ...] | None = None
    finetune: FineTune | None = None

    def __post_init__(self):
        config.check(self.factor > 0, f"factor must be > 0, got {self.factor}")


@api.register_method(Scale)
def _scale(model, cfg, data):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if cfg.mode == "all" or name.endswith("weight"):
                p.mul_(cfg.factor)
    return model


def test_from_dict_builds_and_coerces():
    cfg = from_dict({"method": "test-scale", "factor": 2, "layers": ["fc*"], "finetune": {"epochs": 3}})
    assert cfg == Scale(factor=2.0, layers=("fc*",), finetune=FineTune(epochs=3))
    assert isinstance(cfg.factor, float)
    assert to_dict(cfg) == {"method": "test-scale", "factor": 2.0, "mode": "weights", "layers": ["fc*"],
                            "finetune": {"epochs": 3, "lr": None, "optimizer": None, "schedule": None,
                                         "batch_size": None, "weight_decay": None}}
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"method": "no-such-method"}, "unknown method 'no-such-method'; valid methods are"),
        ({"factor": 2}, "missing 'method'"),
        ({"method": "test-scale"}, "missing required field 'factor'"),
        ({"method": "test-scale", "factor": 1, "colour": 3}, "unknown key 'colour'; valid keys are factor"),
        ({"method": "test-scale", "factor": "big"}, "factor: expected float, got 'big'"),
        ({"method": "test-scale", "factor": True}, "factor: expected float, got True"),
        ({"method": "test-scale", "factor": 1, "mode": "some"}, "expected one of 'all' | 'weights'"),
        ({"method": "test-scale", "factor": 1, "layers": "fc1"}, "layers: expected list of str | null"),
        ({"method": "test-scale", "factor": 1, "finetune": {"epoch": 3}}, "unknown key 'epoch'"),
        ({"method": "test-scale", "factor": 1, "finetune": {"epochs": 1.5}}, "epochs: expected int, got 1.5"),
        ({"method": "test-scale", "factor": -1}, "factor must be > 0"),
        ("test-scale", "expected a mapping"),
    ],
)
def test_from_dict_errors_are_one_line(values, message):
    with pytest.raises(ConfigError) as err:
        from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        from_dict({"method": "prune-everything"})
    for name in api.method_names():
        assert name in str(err.value)


def test_compress_dispatches_on_config_class_and_copies():
    model = nn.Sequential(nn.Linear(3, 2))
    before = model[0].weight.detach().clone()
    out = api.compress(model, Scale(factor=3.0))
    assert torch.equal(model[0].weight, before), "compress must not touch the input model"
    assert torch.allclose(out[0].weight, 3 * before)
    assert torch.equal(out[0].bias, model[0].bias)


def test_compress_refuses_unregistered_configs():
    @dataclasses.dataclass(frozen=True)
    class Stray(MethodConfig):
        method = "stray"

    with pytest.raises(ConfigError, match="not a registered method config"):
        api.compress(nn.Linear(1, 1), Stray())


def test_register_method_refuses_a_name_twice():
    @dataclasses.dataclass(frozen=True)
    class Twin(MethodConfig):
        method = "test-scale"

    with pytest.raises(TypeError, match="registered twice"):
        api.register_method(Twin)(lambda m, c, d: m)


def test_list_methods_has_descriptions():
    listed = api.list_methods()
    assert listed["test-scale"] == Scale.description

"""The low-bit methods through compress: layer choice, hardened modules, packed bit widths, config errors."""

import dataclasses
import math
import os
import warnings

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.api import from_dict
from compactnn.errors import ConfigError, ModelError
from compactnn.quantize import BWN, DoReFa, ELQ, INQ, LSQ, SYQ, TSQ, TWN
from compactnn.quantize.lowbit import LowBitConv2d, LowBitLinear
from compactnn.quantize.lowbit.modules import lowbit_from
from compactnn.quantize.lowbit.quantizers import ClipQuant, LSQQuant, SparseQuant


@pytest.fixture(scope="module")
def tiny():
    full = cn.data.load("digits")
    return dataclasses.replace(full, train=full.train.subset(256, seed=1), test=full.test.subset(128, seed=1))


ONE = {"epochs": 1}


def _compress(model, cfg, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cn.compress(model, cfg, data=data)


# -------------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("build, words", [
    (lambda: SYQ(weight_bits=0), "weight_bits must be in [1, 32]"),
    (lambda: SYQ(eta=-0.1), "eta must be in [0, 1)"),
    (lambda: SYQ(weight_bits=1, eta=0.05), "ternary"),
    (lambda: SYQ(weight_bits=3), "1 (binary) or 2 (ternary)"),
    (lambda: TWN(weight_bits=1), "ternary weights take 2 bits"),
    (lambda: TSQ(weight_bits=1), "ternary"),
    (lambda: ELQ(weight_bits=3), "1 (binary) or 2 (ternary)"),
    (lambda: BWN(weight_bits=2), "binary weights are 1 bit"),
    (lambda: INQ(weight_bits=7), "2 to 6"),
    (lambda: INQ(portions=(0.5, 0.4, 1.0)), "increase"),
    (lambda: INQ(portions=(0.5, 0.75)), "last portion must be 1.0"),
    (lambda: LSQ(weight_bits=1), "2 to 8"),
    (lambda: DoReFa(act_bits=0), "act_bits must be in [1, 32]"),
])
def test_bad_settings_are_one_line_config_errors(build, words):
    with pytest.raises(ConfigError) as err:
        build()
    assert words in str(err.value) and "\n" not in str(err.value)


def test_yaml_errors_match_python():
    with pytest.raises(ConfigError, match="eta must be in"):
        from_dict({"method": "syq", "eta": -1})
    with pytest.raises(ConfigError, match="weight_bits must be in"):
        from_dict({"method": "twn", "weight_bits": 0})


def test_act_bits_on_a_model_without_relu_is_an_error(tiny):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10))
    with pytest.raises(ConfigError, match="no nn.ReLU activation") as err:
        cn.compress(model, DoReFa(weight_bits=2, act_bits=2, finetune=None), data=tiny)
    assert "\n" not in str(err.value)
    out = cn.compress(model, DoReFa(weight_bits=2, act_bits=None, finetune=None), data=tiny)  # float acts: fine
    assert isinstance(out[2], LowBitLinear)


def test_two_layer_model_has_nothing_left_between_first_and_last(tiny):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(ModelError, match="float_first_last"):
        cn.compress(model, TWN(finetune=None), data=tiny)


# -------------------------------------------------------------------------------------------------- layer choice
def test_first_and_last_layers_stay_float_by_default(tiny):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    out = _compress(model, SYQ(finetune=None, act_bits=4), tiny)
    assert type(out.fc1) is nn.Linear and type(out.fc3) is nn.Linear
    assert isinstance(out.fc2, LowBitLinear)
    assert set(out.fc2.codes.unique().tolist()) <= {-1, 0, 1} and out.fc2.scale.numel() == 1  # one scale per FC
    assert isinstance(out.relu1, ClipQuant) and out.relu1.bits == 4
    assert torch.equal(out.fc1.weight, model.fc1.weight)


def test_layers_and_exclude_choose(tiny):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    out = _compress(model, TWN(layers=("fc*",), exclude=("fc2",), finetune=None), tiny)
    assert isinstance(out.fc1, LowBitLinear) and isinstance(out.fc3, LowBitLinear) and type(out.fc2) is nn.Linear
    out = _compress(model, TWN(float_first_last=False, finetune=None), tiny)
    assert all(isinstance(m, LowBitLinear) for m in (out.fc1, out.fc2, out.fc3))


def test_syq_pixel_scales_on_conv(tiny):
    model = cn.models.create("lenet5", data=tiny, seed=0)
    out = _compress(model, SYQ(layers=("conv2",), finetune=None, act_bits=None), tiny)
    assert isinstance(out.conv2, LowBitConv2d) and tuple(out.conv2.scale.shape) == (1, 1, 5, 5)
    out = _compress(model, SYQ(layers=("conv2",), scales="row", finetune=None, act_bits=None), tiny)
    assert tuple(out.conv2.scale.shape) == (50, 1, 1, 1)


@pytest.mark.parametrize("cfg, values", [
    (SYQ(weight_bits=1, act_bits=2, finetune=ONE), {-1, 1}),
    (SYQ(weight_bits=2, act_bits=8, finetune=ONE), {-1, 0, 1}),
    (BWN(finetune=ONE), {-1, 1}),
    (TWN(finetune=ONE), {-1, 0, 1}),
    (DoReFa(weight_bits=2, act_bits=2, finetune=ONE), {-3, -1, 1, 3}),
    (LSQ(weight_bits=2, act_bits=2, finetune=ONE), {-2, -1, 0, 1}),
    (ELQ(portions=(0.5, 1.0), finetune=ONE, curvature_batches=1), {-1, 0, 1}),
    (INQ(weight_bits=3, portions=(0.5, 1.0), finetune=ONE), {-2, -1, 0, 1, 2}),
    (TSQ(samples=64, iterations=2, code_finetune=ONE, finetune=ONE), {-1, 0, 1}),
])
def test_trained_model_holds_codes_and_reloads_identically(cfg, values, tiny, tmp_path):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    out = _compress(model, cfg, tiny)
    assert isinstance(out.fc2, LowBitLinear)
    assert set(out.fc2.codes.unique().tolist()) <= values
    path = tmp_path / "m.cnz"
    cn.pack.save(out, path)
    back = cn.pack.load(path)
    x = tiny.test.x[:32]
    assert torch.equal(back.eval()(x), out.eval()(x))
    acts = {type(m) for m in back.modules() if isinstance(m, (ClipQuant, SparseQuant, LSQQuant))}
    if cfg.act_bits is not None:
        assert acts


def test_inq_final_weights_are_powers_of_two_in_range(tiny):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    out = _compress(model, INQ(weight_bits=5, portions=(0.5, 0.75, 0.875, 1.0), finetune=None), tiny)
    w = out.fc2.weight
    s = float(model.fc2.weight.detach().abs().max())
    n1 = math.floor(math.log2(4 * s / 3))
    allowed = {0.0} | {sgn * 2.0 ** e for e in range(n1 - 7, n1 + 1) for sgn in (1, -1)}
    assert set(w.unique().tolist()) <= allowed


# ---------------------------------------------------------------------------------------------- real bit packing
@pytest.mark.parametrize("values, bits_max", [((-1, 0, 1), 2.05), ((-1, 1), 1.05), (tuple(range(-8, 9)), 5.05),
                                              ((-3, -1, 1, 3), 2.05)])
def test_packed_file_stores_codes_at_their_bit_width(values, bits_max, tmp_path):
    n_out, n_in = 256, 512
    gen = torch.Generator().manual_seed(0)
    table = torch.tensor(values, dtype=torch.int8)
    codes = table[torch.randint(0, len(values), (n_out, n_in), generator=gen)]
    layer = lowbit_from(nn.Linear(n_in, n_out, bias=False), codes, torch.tensor([[0.05]]), "linear", 2)
    path = tmp_path / "w.cnz"
    cn.pack.save(nn.Sequential(layer), path)
    manifest = cn.pack.read_manifest(path)
    stored = manifest["tensors"]["0.codes"]["bytes"]
    per_weight = 8 * stored / codes.numel()
    assert per_weight <= bits_max
    assert per_weight >= math.log2(len(values)) - 0.1  # random codes: no codec beats their entropy
    whole = 8 * os.path.getsize(path) / codes.numel()  # the file, manifest and scale included
    assert whole <= bits_max + 0.1


def test_ternary_model_file_is_about_two_bits_per_quantized_weight(tiny, tmp_path):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    out = _compress(model, SYQ(finetune=None, act_bits=None), tiny)
    path = tmp_path / "t.cnz"
    cn.pack.save(out, path)
    entry = cn.pack.read_manifest(path)["tensors"]["fc2.codes"]
    assert 8 * entry["bytes"] / out.fc2.codes.numel() <= 2.05


def test_syq_recipe_parses():
    from compactnn import recipe

    r = recipe.load_recipe("recipes/lenet5-syq.yaml")
    (stage,) = r.stages
    assert isinstance(stage, SYQ) and stage.weight_bits == 2 and stage.act_bits == 8 and stage.scales == "pixel"
    assert stage.finetune.optimizer == "adam" and stage.finetune.epochs == 3


def test_cli_lists_the_low_bit_methods():
    names = set(cn.list_methods())
    assert {"syq", "elq", "tsq", "inq", "twn", "bwn", "dorefa", "lsq"} <= names

"""Model registry and architectures: output shapes, parameter counts, errors."""

from types import SimpleNamespace

import pytest
import torch

from compactnn.errors import ModelError
from compactnn.models import Add, ResNet, create, describe_models, list_models

NAMES = ["lenet300", "lenet5", "resnet20", "resnet32", "resnet56", "vgg-small"]  # image classifiers
CLIP_NAMES = ["clip-lstm", "clip-gru", "clip-bt-lstm", "clip-bt-gru", "clip-tt-lstm"]  # see test_models_recurrent
SR_NAMES = ["idn"]  # super-resolution, see tests/sr
DENSE_NAMES = ["padnet"]  # dense prediction; see test_models_padnet
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_all_and_pattern():
    assert list_models() == sorted(NAMES + CLIP_NAMES + SR_NAMES + DENSE_NAMES)
    assert list_models("resnet*") == ["resnet20", "resnet32", "resnet56"]
    assert list_models("lenet?") == ["lenet5"]
    assert list_models("nothing*") == []
    assert set(describe_models()) == set(NAMES + CLIP_NAMES + SR_NAMES + DENSE_NAMES) and all(describe_models().values())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name, shape):
    model = create(name, input_shape=shape, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_create_takes_shape_and_classes_from_data():
    data = SimpleNamespace(input_shape=(1, 8, 8), num_classes=4)
    model = create("lenet300", data=data)
    assert model.fc1.in_features == 64 and model.fc3.out_features == 4
    # explicit keywords win over the data bundle
    model = create("lenet300", data=data, num_classes=3)
    assert model.fc3.out_features == 3


@pytest.mark.parametrize(("name", "shape", "count"), [
    ("lenet300", (1, 28, 28), 266_610),  # 784*300+300 + 300*100+100 + 100*10+10
    ("lenet5", (1, 28, 28), 431_080),  # 520 + 25,050 + 800*500+500 + 5,010 (Caffe LeNet-5)
    # option-B shortcuts: option A (paper, 269,722 = 0.27M) plus 1x1 conv+BN 16->32 (576) and 32->64 (2,176)
    ("resnet20", (3, 32, 32), 272_474),
    ("resnet32", (3, 32, 32), 466_906),  # paper (option A): 0.46M
    ("resnet56", (3, 32, 32), 855_770),  # paper (option A): 0.85M
    ("vgg-small", (3, 32, 32), 4_660_106),  # 4,574,592 conv + 3,584 BN + 8192*10+10 FC
])
def test_parameter_counts(name, shape, count):
    assert n_params(create(name, input_shape=shape)) == count


def test_resnet20_option_b_shortcut_params_explain_the_difference_from_the_paper():
    model = create("resnet20", input_shape=(3, 32, 32))
    projections = [b.shortcut for b in model.modules() if hasattr(b, "shortcut")
                   and isinstance(b.shortcut, torch.nn.Sequential)]
    assert len(projections) == 2  # first block of stages 2 and 3
    assert n_params(model) - sum(n_params(s) for s in projections) == 269_722
    assert sum(isinstance(m, Add) for m in model.modules()) == 9  # 3 stages x 3 blocks, each with one residual add


def test_resnet_block_forward_is_residual():
    model = create("resnet20", input_shape=(3, 8, 8)).eval()
    block = model.layer1[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        manual = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + x)
        assert torch.equal(block(x), manual)


def test_lenet5_padding_rule():
    assert create("lenet5", input_shape=(1, 28, 28)).conv1.padding == (0, 0)  # Caffe net
    assert create("lenet5", input_shape=(1, 8, 8)).conv1.padding == (2, 2)  # small inputs keep their size
    assert create("lenet5", input_shape=(1, 8, 8)).fc1.in_features == 50 * 2 * 2
    with pytest.raises(ModelError, match="too small"):
        create("lenet5", input_shape=(1, 8, 8), padding=0)


def test_unknown_name_lists_valid_names_and_close_matches():
    with pytest.raises(ModelError) as err:
        create("resnet21")
    msg = str(err.value)
    assert "\n" not in msg and "did you mean" in msg and "resnet20" in msg
    assert all(n in msg for n in NAMES)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"widht": 3}, "no option widht"),
    ({"input_shape": (8, 8)}, "input_shape"),
    ({"input_shape": (1, 0, 8)}, "input_shape"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ModelError, match=match):
        create("lenet300", **kwargs)


def test_too_small_or_bad_architectures():
    with pytest.raises(ModelError, match="too small"):
        create("vgg-small", input_shape=(3, 4, 4))
    with pytest.raises(ModelError, match="6n\\+2"):
        ResNet(depth=21)


def test_create_is_seeded_by_torch():
    torch.manual_seed(1)
    a = create("resnet20")
    torch.manual_seed(1)
    b = create("resnet20")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

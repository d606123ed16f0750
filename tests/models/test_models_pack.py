"""Every registered model is built from packable classes and survives a .cnz round trip unchanged."""

import pytest
import torch

from compactnn import pack
from compactnn.models import Add, BasicBlock, LeNet5, LeNet300, ResNet, VGG, create, list_models
from compactnn.pack.spec import allowed, class_key


def test_model_classes_are_on_the_allow_list():
    keys = allowed()
    for cls in (LeNet300, LeNet5, ResNet, BasicBlock, Add, VGG):
        assert keys[class_key(cls)] is cls


@pytest.mark.parametrize("name", list_models())
def test_pack_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = create(name, input_shape=(1, 8, 8), num_classes=5).eval()
    path = tmp_path / "m.cnz"
    pack.save(model, path, level=1)
    back = pack.load(path).eval()
    assert type(back) is type(model)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert back.input_shape == (1, 8, 8) and back.num_classes == 5

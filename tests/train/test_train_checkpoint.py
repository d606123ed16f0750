"""Checkpoints: atomic writes, weights_only loading, and resume equal to an uninterrupted run."""

import os

import pytest
import torch

from compactnn.data import load
from compactnn.errors import ConfigError, ModelError
from compactnn.models import ResNet, create
from compactnn.train import fit, load_checkpoint, save_checkpoint


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data():
    return load("digits").train.subset(512)  # 4 steps of 128 per epoch keeps these tests fast


def small_resnet(seed):
    torch.manual_seed(seed)
    return ResNet(input_shape=(1, 8, 8), num_classes=10, depth=8, widths=(4, 8, 8))  # has BN buffers


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("optimizer", "schedule"), [("sgd", "cosine"), ("adamw", "step")])
def test_resume_equals_uninterrupted_run(data, tmp_path, optimizer, schedule):
    kw = dict(epochs=2, lr=0.05 if optimizer == "sgd" else 1e-3, optimizer=optimizer, schedule=schedule,
              batch_size=128, seed=5, quiet=True)
    straight = fit(small_resnet(0), data, **kw)
    per_epoch = 4

    def crash(model, step, total):  # dies during epoch 2, after the epoch-1 checkpoint is written
        if step == per_epoch + 2:
            raise Interrupt

    ckpt = tmp_path / "run" / "ckpt.pt"
    with pytest.raises(Interrupt):
        fit(small_resnet(0), data, checkpoint=ckpt, step_hooks=[crash], **kw)
    assert load_checkpoint(ckpt)["epoch"] == 1
    # a model with other initial weights: everything must come from the checkpoint
    resumed = fit(small_resnet(1), data, checkpoint=ckpt, resume=True, **kw)
    assert same_state(straight, resumed)
    assert load_checkpoint(ckpt)["epoch"] == 2
    assert os.listdir(ckpt.parent) == ["ckpt.pt"]  # no temp files left behind


def test_resume_after_the_last_epoch_only_loads(data, tmp_path):
    ckpt = tmp_path / "c.pt"
    done = fit(small_resnet(0), data, epochs=1, quiet=True, checkpoint=ckpt)
    calls = []
    again = fit(small_resnet(1), data, epochs=1, quiet=True, checkpoint=ckpt, resume=True,
                step_hooks=[lambda *a: calls.append(a)])
    assert calls == [] and same_state(done, again)


def test_resume_without_a_file_starts_afresh(data, tmp_path):
    a = fit(small_resnet(0), data, epochs=1, quiet=True)
    b = fit(small_resnet(0), data, epochs=1, quiet=True, checkpoint=tmp_path / "new.pt", resume=True)
    assert same_state(a, b) and (tmp_path / "new.pt").exists()


def test_checkpoint_is_weights_only_loadable(data, tmp_path):
    ckpt = tmp_path / "c.pt"
    model = fit(small_resnet(0), data, epochs=1, max_steps=2, quiet=True, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["format"] == "compactnn-checkpoint" and state["step"] == 2
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())


def test_save_checkpoint_replaces_atomically(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, {"a": torch.ones(2)})
    save_checkpoint(path, {"a": torch.zeros(2)})
    assert torch.equal(load_checkpoint(path)["a"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["x.pt"]


def test_bad_checkpoints(data, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        fit(small_resnet(0), data, epochs=1, quiet=True, checkpoint=junk, resume=True)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ConfigError, match="not a compactnn training checkpoint"):
        load_checkpoint(other)
    ckpt = tmp_path / "c.pt"
    fit(small_resnet(0), data, epochs=1, max_steps=1, quiet=True, checkpoint=ckpt)
    with pytest.raises(ConfigError, match="batch_size"):
        fit(small_resnet(0), data, epochs=1, max_steps=1, batch_size=64, quiet=True, checkpoint=ckpt, resume=True)
    with pytest.raises(ModelError, match="does not fit this model"):
        fit(create("lenet300", input_shape=(1, 8, 8)), data, epochs=1, max_steps=1, quiet=True, checkpoint=ckpt, resume=True)

"""Registry-driven tests: every registered method, present and future, is built from YAML and back, compresses a
tiny model on digits with its own tiny ``example`` setting, packs and reloads with identical outputs, and reports.

A method added later is covered here without writing a new test; one without an ``example`` fails here.
"""

import dataclasses
import warnings

import pytest
import torch

import compactnn as cn
from compactnn.api import config_class, from_dict
from compactnn.config import per_layer_fields, to_dict

METHODS = cn.list_methods()


@pytest.fixture(scope="module")
def tiny():
    full = cn.data.load("digits")
    return dataclasses.replace(full, train=full.train.subset(256, seed=1), test=full.test.subset(128, seed=1))


def test_every_method_is_listed_with_a_description():
    assert len(METHODS) >= 8
    for name, text in cn.describe_methods().items():
        assert text and "\n" not in text, name


@pytest.mark.parametrize("name", METHODS)
def test_config_round_trips_through_yaml(name):
    cls = config_class(name)
    assert cls.example is not None, f"{name}: set the class attribute `example` (a tiny YAML-field dict)"
    cfg = from_dict({"method": name, **cls.example})
    assert type(cfg) is cls and from_dict(to_dict(cfg)) == cfg and hash(cfg) == hash(from_dict(to_dict(cfg)))
    hints = {f.name for f in dataclasses.fields(cls)}
    if "layers" in hints:
        assert cls.kinds, f"{name}: a method with `layers` must say which layer kinds it selects (`kinds`)"
        assert "exclude" in hints, f"{name}: `layers` comes with `exclude` (the shared vocabulary)"
    assert set(per_layer_fields(cls)) <= hints


@pytest.mark.parametrize("name", METHODS)
def test_compress_pack_reload_and_report(name, tiny, tmp_path):
    cls = config_class(name)
    cfg = from_dict({"method": name, **cls.example})
    model = cn.models.create(cls.example_model, data=tiny, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. layers a method leaves alone are warned about, not an error
        small = cn.compress(model, cfg, data=tiny)
    assert isinstance(small, torch.nn.Module)
    path = tmp_path / f"{name}.cnz"
    cn.pack.save(small, path)
    back = cn.pack.load(path)
    x = tiny.test.x[:16]
    small.eval()
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(x), small(x)), f"{name}: the reloaded model gives other outputs"
    report = cn.report.summarize(back, tiny)
    assert report.totals["packed_bytes"] > 0 and 0.0 <= report.totals["accuracy"] <= 1.0

"""Error paths of save/load/inspect: each raises a one-line PackError (or OutputError) and leaves no partial file."""

import os
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune

from compactnn import pack
from compactnn.errors import OutputError, PackError
from compactnn.pack import container
from cnz_forge import manifest_span, rewrite_manifest



def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.cnz"
    pack.save(small_model(), path)
    return path


def load_fails(path, match, **kw):
    with pytest.raises(PackError, match=match) as err:
        pack.load(path, **kw)
    assert "\n" not in str(err.value)
    return str(err.value)




def test_missing_file_names_the_path(tmp_path):
    msg = load_fails(tmp_path / "nope.cnz", "no such file")
    assert str(tmp_path / "nope.cnz") in msg
    with pytest.raises(PackError, match="no such file"):
        pack.read_manifest(tmp_path / "nope.cnz")
    load_fails(tmp_path, "is a folder")


def test_wrong_magic(tmp_path, saved):
    raw = saved.read_bytes()
    saved.write_bytes(b"PK\x03\x04" + raw[4:])
    load_fails(saved, "not a .cnz file")
    (tmp_path / "tiny").write_bytes(b"hello")
    load_fails(tmp_path / "tiny", "not a .cnz file")


def test_unsupported_version(saved):
    raw = bytearray(saved.read_bytes())
    raw[8:10] = struct.pack("<H", 99)
    saved.write_bytes(bytes(raw))
    load_fails(saved, "format version 99; this compactnn reads version 1")
    with pytest.raises(PackError, match="version 99"):
        pack.read_manifest(saved)


@pytest.mark.parametrize("where", ["empty", "in-magic", "in-header", "header-only", "in-manifest",
                                   "manifest-only", "in-blob", "last-byte"])
def test_truncated_file(saved, where):
    raw = saved.read_bytes()
    start, end = manifest_span(raw)
    cut = {"empty": 0, "in-magic": 5, "in-header": 30, "header-only": start, "in-manifest": (start + end) // 2,
           "manifest-only": end, "in-blob": (end + len(raw)) // 2, "last-byte": len(raw) - 1}[where]
    saved.write_bytes(raw[:cut])
    load_fails(saved, "truncated")


def test_trailing_bytes(saved):
    saved.write_bytes(saved.read_bytes() + b"\x00")
    load_fails(saved, "trailing bytes")


def test_flipped_byte_in_blob(saved):
    raw = bytearray(saved.read_bytes())
    raw[-3] ^= 0x01
    saved.write_bytes(bytes(raw))
    load_fails(saved, r"tensor '2\.bias': checksum mismatch")
    pack.read_manifest(saved)  # the manifest itself is intact


def test_flipped_byte_in_manifest(saved):
    raw = bytearray(saved.read_bytes())
    start, end = manifest_span(raw)
    raw[(start + end) // 2] ^= 0x40
    saved.write_bytes(bytes(raw))
    load_fails(saved, "manifest checksum mismatch")
    with pytest.raises(PackError, match="manifest checksum mismatch"):
        pack.read_manifest(saved)


def test_unknown_codec(saved):
    rewrite_manifest(saved, lambda m: m["tensors"]["0.weight"].update(codec="bogus"))
    load_fails(saved, r"tensor '0\.weight' uses unknown codec 'bogus'")


def test_class_not_on_allow_list(saved):
    def edit(m):
        m["root"]["children"]["1"]["class"] = "os.system"

    rewrite_manifest(saved, edit)
    load_fails(saved, r"module class os\.system at path 1 is not on the allow-list; pass model=skeleton to load\(\)")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["tensors"]["0.weight"].update(shape=[3, 3]), "tensor '0.weight'"),
    (lambda m: m["tensors"]["0.weight"].update(offset=10**9), "outside the data area"),
    (lambda m: m["tensors"]["0.weight"].update(dtype="float128"), "unsupported dtype"),
    (lambda m: m["tensors"]["0.weight"].pop("sha256"), "malformed manifest entry"),
    (lambda m: m["root"]["children"]["0"]["attrs"].update(in_features={"x": 1}), "malformed attribute value"),
    (lambda m: m["root"]["children"]["0"]["params"].update(weight="ghost"), "no such tensor"),
    (lambda m: m["root"].pop("children"), "malformed module spec"),
    (lambda m: m.update(data_bytes=0), "outside the data area"),
])
def test_forged_manifest_is_rejected(saved, edit, match):
    rewrite_manifest(saved, edit)
    load_fails(saved, match)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_damage_loads_exactly_or_raises_pack_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "m.cnz"
    model = small_model()
    pack.save(model, path)
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    else:
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    path.write_bytes(bytes(raw))
    try:
        loaded = pack.load(path)
    except PackError as e:
        assert "\n" not in str(e)
        return
    x = torch.randn(2, 8)  # only the reserved flags bytes may change without harm
    assert torch.equal(loaded(x), model(x))


class Holder(nn.Sequential):
    """An allow-listed class (Sequential) holding a function off the allow-list of torch activations."""

    def __init__(self):
        super().__init__(nn.Linear(2, 2))
        self.fn = print


def test_unpackable_attribute_leaves_no_file(tmp_path):
    path = tmp_path / "h.cnz"
    held = nn.Sequential(nn.Linear(2, 2))
    held.fn = print  # an allow-listed class is rebuilt without a skeleton, so every attribute must be in the file
    with pytest.raises(PackError, match=r"cannot pack attribute <root>\.fn \(Sequential\)") as err:
        pack.save(held, path)
    pack.save(Holder(), path)  # a user class: the function is taken from the skeleton at load
    assert pack.load(path, model=Holder()).fn is print
    path.unlink()
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].cache = torch.zeros(2)
    with pytest.raises(PackError, match=r"attribute 0\.cache \(Linear\).*register it as a buffer"):
        pack.save(model, path)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.cnz"
    pack.save(small_model(), path)
    before = path.read_bytes()
    held = nn.Sequential(nn.Linear(2, 2))
    held.fn = print
    with pytest.raises(PackError):
        pack.save(held, path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(container.os, "replace", broken_replace)
    with pytest.raises(OutputError, match="disk full; nothing was written"):
        pack.save(nn.Linear(3, 3), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.cnz"]


def test_missing_output_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        pack.save(small_model(), tmp_path / "no" / "m.cnz")


def test_bad_level_and_non_module(tmp_path):
    with pytest.raises(PackError, match="zstd level"):
        pack.save(small_model(), tmp_path / "m.cnz", level=30)
    with pytest.raises(PackError, match="needs an nn.Module"):
        pack.save({"w": torch.zeros(2)}, tmp_path / "m.cnz")


def test_parametrized_and_torch_pruned_modules_are_refused(tmp_path):
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    lin = nn.Linear(3, 3)
    parametrize.register_parametrization(lin, "weight", Double())
    with pytest.raises(PackError, match="remove_parametrizations"):
        pack.save(nn.Sequential(lin), tmp_path / "p.cnz")
    pruned = nn.Linear(3, 3)
    prune.l1_unstructured(pruned, "weight", 0.5)
    with pytest.raises(PackError, match=r"prune\.remove"):
        pack.save(pruned, tmp_path / "p.cnz")
    assert os.listdir(tmp_path) == []


def test_no_pickle_anywhere():
    src = os.path.dirname(container.__file__)
    for name in os.listdir(src):
        if name.endswith(".py"):
            text = open(os.path.join(src, name)).read()
            assert "import pickle" not in text and "torch.save" not in text and "torch.load" not in text

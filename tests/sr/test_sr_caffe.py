"""The protobuf reader and the IDN Caffe importer: synthetic files (exact weights, V1 layers, legacy blob shapes)
and every kind of bad file giving one DataError line; the official files when ../shared is there."""

import numpy as np
import pytest
import torch
from caffe_forge import blob, idn_caffemodel, ld, varint, vi

from compactnn.errors import DataError
from compactnn.sr import protobuf
from compactnn.sr.caffe import import_idn, read_net
from compactnn.sr.evaluate import data_root


def test_varints_by_hand_and_bounds():
    assert protobuf.read_varint(b"\xac\x02", 0, 2) == (300, 2)
    assert protobuf.read_varint(b"\x01", 0, 1) == (1, 1)
    assert protobuf.read_varint(varint(2**64 - 1), 0, 10) == (2**64 - 1, 10)
    assert protobuf.as_int64(2**64 - 1) == -1
    with pytest.raises(protobuf.WireError):
        protobuf.read_varint(b"\xac", 0, 1)  # runs past the end
    with pytest.raises(protobuf.WireError):
        protobuf.read_varint(b"\xff" * 11, 0, 11)  # too long
    msg = vi(1, 150) + ld(2, b"abc") + b"\x1d" + np.float32(1.5).tobytes()
    fields = list(protobuf.iter_fields(msg))
    assert fields[0] == (1, 0, 150) and fields[1][:2] == (2, 2) and protobuf.f32(fields[2][2]) == 1.5
    assert msg[slice(*fields[1][2])] == b"abc"
    with pytest.raises(protobuf.WireError, match="claims 9 bytes"):
        list(protobuf.iter_fields(ld(2, b"abc")[:1] + varint(9) + b"abc"))
    with pytest.raises(protobuf.WireError, match="wire type 3"):
        list(protobuf.iter_fields(b"\x0b"))


def test_blob_shapes_packed_unpacked_and_legacy():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for data in (ld(100, ld(1, b"x") + ld(7, blob(a))), ld(100, ld(1, b"x") + ld(7, blob(a, packed=False)))):
        _, layers = read_net(data)
        np.testing.assert_array_equal(layers[0].blobs[0], a)
    _, layers = read_net(ld(100, ld(1, b"x") + ld(7, blob(a.reshape(2, 3, 1, 1), legacy=True))))
    assert layers[0].blobs[0].shape == (2, 3, 1, 1)
    with pytest.raises(DataError, match="shape"):
        read_net(ld(100, ld(1, b"x") + ld(7, ld(7, ld(1, varint(7))) + ld(5, a.tobytes()))))


@pytest.mark.parametrize("v1", [False, True])
def test_import_copies_every_blob_exactly(v1):
    data, weights = idn_caffemodel(scale=3, v1=v1)
    model = import_idn(data, 3)
    assert model.scale == 3 and sum(p.numel() for p in model.parameters()) == 552_769
    np.testing.assert_array_equal(model.conv1.weight.detach().numpy(), weights["conv1"][0])
    np.testing.assert_array_equal(model.blocks[1].conv5.weight.detach().numpy(), weights["conv4_5"][0])
    np.testing.assert_array_equal(model.blocks[3].down.bias.detach().numpy(), weights["down4"][1])
    np.testing.assert_array_equal(model.upsample.weight.detach().numpy(), weights["upsample"][0])


def test_bad_files_give_one_line(tmp_path):
    good, _ = idn_caffemodel(scale=2)
    cases = {
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty": b"",
    }
    for name, data in cases.items():
        with pytest.raises(DataError) as err:
            import_idn(data, 2)
        assert "\n" not in str(err.value), name
    with pytest.raises(DataError, match="'conv4_3' is missing"):
        import_idn(idn_caffemodel(drop="conv4_3")[0], 2)
    with pytest.raises(DataError, match="conv3_6.*shapes"):
        import_idn(idn_caffemodel(reshape="conv3_6")[0], 2)
    with pytest.raises(DataError, match="x2 model.*not x4"):
        import_idn(good, 4)
    assert import_idn(idn_caffemodel(stride=None)[0], 4).scale == 4  # no stride recorded: taken as asked
    bad = bytearray(good)
    nan = np.float32(np.nan).tobytes()
    pos = bytes(bad).index(np.float32(idn_caffemodel()[1]["conv2"][0].ravel()[0]).tobytes())
    bad[pos: pos + 4] = nan
    with pytest.raises(DataError, match="non-finite"):
        import_idn(bytes(bad), 2)
    with pytest.raises(DataError, match="does not exist"):
        import_idn(tmp_path / "none.caffemodel", 2)


OFFICIAL = data_root() / "idn"


@pytest.mark.skipif(not (OFFICIAL / "IDN_x2.caffemodel").is_file(), reason="needs ../shared/data/idn")
def test_official_files_import_at_their_scale_only():
    for s in (2, 3, 4):
        model = import_idn(OFFICIAL / f"IDN_x{s}.caffemodel", s)
        assert sum(p.numel() for p in model.parameters()) == 552_769
        assert torch.isfinite(model.upsample.weight).all()
    with pytest.raises(DataError, match="x3 model"):
        import_idn(OFFICIAL / "IDN_x3.caffemodel", 2)

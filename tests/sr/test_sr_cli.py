"""The SR command line: import-caffe, sr eval --json, sr upscale, sr train --quick, and every bad input ending in
one line, exit code 2 and no output file."""

import json

import numpy as np
import pytest
from caffe_forge import idn_caffemodel
from PIL import Image

from compactnn.cli import main
from compactnn.sr.evaluate import data_root


def cli(*args):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code or 0


def error_line(capsys, code):
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def photo(shape, seed=0):
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([120 + 80 * np.sin(xx / 3.0), 100 + 60 * np.cos(yy / 4.0), 90 + 50 * np.sin((xx + yy) / 5.0)], -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_x2(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    (d / "idn.caffemodel").write_bytes(idn_caffemodel(scale=2)[0])
    return d


def test_import_eval_upscale(model_x2, tmp_path, capsys):
    cnz = tmp_path / "idn_x2.cnz"
    assert cli("import-caffe", model_x2 / "idn.caffemodel", "--scale", 2, "--out", cnz) == 0
    assert "552,769 parameters" in " ".join(capsys.readouterr().out.split())
    data = tmp_path / "data"
    (data / "sr" / "Set5").mkdir(parents=True)
    Image.fromarray(photo((26, 31))).save(data / "sr" / "Set5" / "a_GT.bmp")
    Image.fromarray(photo((24, 24), 1)[..., 0]).save(data / "sr" / "Set5" / "b_GT.bmp")  # grayscale: its own Y
    assert cli("sr", "eval", cnz, "--set", "Set5", "--data", data, "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res) == ["set", "scale", "psnr", "ssim", "images"]
    assert res["set"] == "Set5" and res["scale"] == 2 and [r["name"] for r in res["images"]] == ["a_GT", "b_GT"]
    assert all(list(r) == ["name", "psnr", "ssim"] for r in res["images"])
    assert res["psnr"] == pytest.approx(np.mean([r["psnr"] for r in res["images"]]))
    src = tmp_path / "small.png"
    Image.fromarray(photo((20, 23))).save(src)
    out = tmp_path / "big.png"
    assert cli("sr", "upscale", src, "--model", cnz, "--out", out, "--tile", 8, "-q") == 0
    big = np.array(Image.open(out))
    assert big.shape == (40, 46, 3) and big.dtype == np.uint8
    # refuse to overwrite without --force
    code = cli("sr", "upscale", src, "--model", cnz, "--out", out)
    assert "exists" in error_line(capsys, code)


def test_bad_inputs_one_line_no_output(model_x2, tmp_path, capsys):
    cnz = tmp_path / "m.cnz"
    assert cli("import-caffe", model_x2 / "idn.caffemodel", "--scale", 2, "--out", cnz) == 0
    capsys.readouterr()
    good = (model_x2 / "idn.caffemodel").read_bytes()
    bad_files = {"corrupt.caffemodel": good[:5000], "foreign.caffemodel": photo((10, 10)).tobytes() * 3}
    for name, data in bad_files.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"{name}.cnz"
        assert "caffemodel" in error_line(capsys, cli("import-caffe", tmp_path / name, "--scale", 2, "--out", out))
        assert not out.exists()
    out = tmp_path / "x3.cnz"
    assert "x2" in error_line(capsys, cli("import-caffe", model_x2 / "idn.caffemodel", "--scale", 3, "--out", out))
    assert "--scale" in error_line(capsys, cli("import-caffe", model_x2 / "idn.caffemodel", "--scale", 5,
                                               "--out", out))
    assert not out.exists()
    gray, deep, tiny, txt = (tmp_path / n for n in ("gray.png", "deep.png", "tiny.png", "text.png"))
    Image.fromarray(photo((12, 12))[..., 0]).save(gray)
    Image.fromarray((np.arange(144).reshape(12, 12) * 300).astype(np.uint16)).save(deep)
    Image.fromarray(photo((1, 5))).save(tiny)
    txt.write_text("not an image")
    for src, word in ((gray, "grayscale"), (deep, "16-bit"), (tiny, "smaller than the scale"), (txt, "cannot read")):
        out = tmp_path / "o.png"
        assert word in error_line(capsys, cli("sr", "upscale", src, "--model", cnz, "--out", out))
        assert not out.exists() and not list(tmp_path.glob(".o.png*"))
    Image.fromarray(photo((12, 12))).save(tmp_path / "ok.png")
    assert "not x3" in error_line(capsys, cli("sr", "upscale", tmp_path / "ok.png", "--model", cnz, "--out",
                                              tmp_path / "o.png", "--scale", 3))
    from compactnn import models, pack

    pack.save(models.create("lenet300"), tmp_path / "clf.cnz", level=1)
    assert "not a super-resolution" in error_line(capsys, cli("sr", "upscale", tmp_path / "ok.png", "--model",
                                                              tmp_path / "clf.cnz", "--out", tmp_path / "o.png"))
    assert "unknown test set" in error_line(capsys, cli("sr", "eval", cnz, "--set", "Set9"))
    assert not (tmp_path / "o.png").exists()


def test_train_quick_cli(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(2):
        Image.fromarray(photo((40, 44), k)).save(imgs / f"{k}.png")
    run = tmp_path / "run"
    assert cli("sr", "train", "--out", run, "--quick", "--images", imgs, "--no-eval", "-q") == 0
    assert "step 6/6 done" in " ".join(capsys.readouterr().out.split())
    assert {p.name for p in run.iterdir()} >= {"checkpoint.pt", "model.cnz", "curve.json"}


SHARED = data_root()


@pytest.mark.skipif(not (SHARED / "idn" / "IDN_x4.caffemodel").is_file(), reason="needs ../shared/data")
def test_official_x4_on_one_image_crop(tmp_path):
    """The official x4 weights beat bicubic by a wide margin on a crop of a Set5 image (fast)."""
    from compactnn.sr.caffe import import_idn
    from compactnn.sr.evaluate import evaluate_image
    from compactnn.sr.images import read_image

    model = import_idn(SHARED / "idn" / "IDN_x4.caffemodel", 4)
    img = read_image(SHARED / "sr" / "Set5" / "butterfly_GT.bmp")[64:160, 64:160]
    m = evaluate_image(model, img, 4)
    assert m["psnr"] > m["bicubic_psnr"] + 2.0


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "idn" / "IDN_x4.caffemodel").is_file(), reason="needs ../shared/data")
def test_official_x4_set5_matches_the_paper(tmp_path, capsys):
    cnz = tmp_path / "x4.cnz"
    assert cli("import-caffe", SHARED / "idn" / "IDN_x4.caffemodel", "--scale", 4, "--out", cnz) == 0
    capsys.readouterr()
    assert cli("sr", "eval", cnz, "--set", "Set5", "--data", SHARED, "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert abs(res["psnr"] - 31.82) < 0.02

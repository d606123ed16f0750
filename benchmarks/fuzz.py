"""Fuzzing campaign over every reader of untrusted files (issue 17): ``pack.load`` (including integer-only models),
the recipe parser, the IDX reader and the CIFAR batch parser.

Cases are generated from a seed (plain ``random``; case ``i`` uses ``Random(seed * 1_000_003 + i)``, so any part of a
campaign can be rerun alone) by mutating valid files and by building structured hostile ones:

* ``pack``: byte flips/truncation/insertion of valid ``.cnz`` files; manifest edits re-signed so every checksum
  passes (hostile values at random JSON paths, deleted/added keys, duplicate keys, deep nesting, class keys);
  codec edits (meta values, payload bytes) re-signed and re-compressed; header flags/version; zstd frames with
  forged sizes. Base files: an MLP, a CNN with BatchNorm, a pruned (sparse codec) and a shared-weight (codebook
  codec) model, a quantized-tensor (affine codec) module, an LSTM, and an integer-only model (when it builds).
* ``recipe``: YAML texts with hostile values, anchors/aliases (laughs), tags, nesting; byte mutations.
* ``idx``: raw and gzip IDX files with forged magic/dims, truncation, gzip bombs, byte mutations.
* ``cifar``: pickled batches (protocols 2, 4, 5 and Python-2 style) with byte mutations, forged shapes/dtypes, opcode
  insertions.

Each case runs in a long-lived worker process (the parent sends it, with a 10 s deadline): a worker killed by a
signal is a **crash**, a case that does not answer within 10 s a **hang** (the worker is killed and replaced), an
exception other than compactnn's one-line errors (or a multi-line message) a **traceback**. The worker resets its
peak-RSS counter before each case (``/proc/self/clear_refs``) and reports ``VmHWM`` after it, so **peak RSS** is the
largest resident size of the whole worker process (Python + torch + compactnn included) during any one case; an
address-space limit (``RLIMIT_AS``) keeps a runaway case from taking the machine down.

Usage::

    python benchmarks/fuzz.py --cases 2500 --offset 0 --part docs/results/fuzz_parts/p0.json   # one part
    python benchmarks/fuzz.py --merge docs/results/fuzz_parts                                  # fuzz.{md,json}
    python benchmarks/fuzz.py --quick                                                           # ~20 s smoke run
    python benchmarks/fuzz.py --engine hypothesis --cases 10000 --part docs/results/fuzz_parts/h.json

``--engine hypothesis`` lets hypothesis pick every mutation (``@given(st.data())``; the mutators draw through
:class:`DrawRng`), derandomized and without an example database, so a run is repeatable; a failing case is shrunk by
hypothesis before it is reported. The seeded engine is cheaper per case (no hypothesis bookkeeping) and lets any
slice of a campaign be rerun alone.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import pickle
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TARGETS = ("pack", "intonly", "recipe", "idx", "cifar")
HANG_SECONDS = 10.0
HEADER = struct.Struct("<8sHHQ32s")
sys.setrecursionlimit(20_000)  # the parent builds deeply nested hostile manifests


# ============================================================================================ base files (parent)
def _cnz_parts(raw: bytes):
    import zstandard

    mlen = HEADER.unpack_from(raw)[3]
    manifest = json.loads(zstandard.ZstdDecompressor().decompress(raw[HEADER.size:HEADER.size + mlen]))
    return manifest, raw[HEADER.size + mlen:]


def _cnz(manifest_text: bytes, data: bytes, flags: int = 0, version: int = 1) -> bytes:
    import zstandard

    stored = zstandard.ZstdCompressor(level=3).compress(manifest_text)
    return HEADER.pack(b"\x89CNZ\r\n\x1a\n", version, flags, len(stored), hashlib.sha256(stored).digest()) \
        + stored + data


def base_files() -> dict[str, list[bytes]]:
    """Valid inputs to mutate, built once in the parent."""
    import numpy as np
    import torch
    from torch import nn

    from compactnn import pack
    from compactnn.data import write_idx

    torch.manual_seed(0)
    models = {
        "mlp": nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)),
        "cnn": nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(16, 3)),
        "lstm": nn.LSTM(4, 6, batch_first=True),
    }
    sparse = nn.Linear(40, 30)
    with torch.no_grad():
        sparse.weight.mul_((torch.rand_like(sparse.weight) > 0.9).float())
    models["sparse"] = nn.Sequential(sparse)
    shared = nn.Linear(24, 24)
    with torch.no_grad():
        shared.weight.copy_(torch.tensor([-0.5, -0.1, 0.2, 0.7])[torch.randint(0, 4, (24, 24))])
    models["codebook"] = nn.Sequential(shared)
    qmod = nn.Identity()
    qmod.register_buffer("q", torch.quantize_per_tensor(torch.linspace(-1, 1, 24).reshape(4, 6), 0.02, 3, torch.qint8))
    qmod.register_buffer("qc", torch.quantize_per_channel(torch.linspace(-1, 1, 24).reshape(4, 6),
                                                          torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64),
                                                          torch.tensor([0, 1, -1, 2]), 0, torch.qint8))
    models["affine"] = qmod
    out: dict[str, list[bytes]] = {t: [] for t in TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            path = Path(tmp) / f"{name}.cnz"
            pack.save(m, path)
            out["pack"].append(path.read_bytes())
        try:
            out["intonly"].append(_integer_model(Path(tmp)))
        except Exception as err:  # noqa: BLE001 - reported; the campaign still covers the rest
            print(f"integer-only base model not built ({type(err).__name__}: {err}); intonly target skipped")
        rng = np.random.default_rng(0)
        for shape, gz in [((3, 4, 4), False), ((3, 4, 4), True), ((5,), True), ((2, 6, 6), False)]:
            path = Path(tmp) / f"x{len(out['idx'])}{'.gz' if gz else ''}"
            write_idx(path, rng.integers(0, 255, shape, dtype=np.uint8), compress=gz)
            out["idx"].append(path.read_bytes())
    batch = {b"batch_label": b"b1", b"labels": [1, 2], b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
             b"filenames": [b"a.png", b"b.png"]}
    for proto in (2, 4, 5):
        out["cifar"].append(pickle.dumps(batch, protocol=proto))
    out["recipe"] = [t.encode() for t in RECIPES]
    return out


def _integer_model(tmp: Path) -> bytes:
    import dataclasses

    import torch

    import compactnn as cn
    from compactnn import pack
    from compactnn.quantize import IntegerOnly

    data = cn.data.load("digits")
    data = dataclasses.replace(data, train=data.train.subset(128), test=data.test.subset(64))
    torch.manual_seed(0)
    model = cn.models.create("lenet5", data=data).eval()
    small = cn.compress(model, IntegerOnly(mode="calibrate", calibration_batches=1), data=data)
    pack.save(small, tmp / "int.cnz")
    return (tmp / "int.cnz").read_bytes()


RECIPES = [
    "model: {name: lenet300}\ndata: {name: digits}\ntrain: {epochs: 1, lr: 0.1}\n",
    "seed: 3\nmodel: {name: lenet300, args: {hidden: [32, 16]}}\ntrain: {epochs: 2, batch_size: 64}\nstages:\n"
    "  - {method: magnitude-prune, sparsity: 0.5, finetune: {epochs: 1}}\n  - {method: kmeans-quantize, bits: 4}\n"
    "report: {latency: false}\n",
    "model: {name: lenet5}\nstages:\n  - {method: integer-only, mode: calibrate}\n",
    "model: {name: lenet300}\nstages:\n  - {method: lc, keep: 0.05}\n",
]

# ============================================================================================ mutations (parent)
HOSTILE = [None, True, False, 0, -1, 1, 2, 255, 256, -2**31, 2**31, 2**32, 2**62, 2**63 - 1, -2**63, 2**64, 10**30,
           0.5, -0.0, 1e308, -1e308, 1e-310, "", "x", "nan", "inf", "-inf", "0x1p+1", "A" * 300, "compactnn.__main__.X",
           "torch.nn.Linear", "os.system", "a" + ".b" * 400, [], {}, [[]], [1, 2], [0], [2**27], [2**20, 2**20],
           [-1], [1e6], {"t": [1]}, {"f": "nan"}, {"d": {}}, {"ref": ""}, {"ref": "0"}, {"codec": "dense"},
           {"codec": "sparse", "index": "relative", "bits": 64, "entries": 2**27, "nnz": 0, "values": {"codec":
            "dense"}, "parts": [0, 0]}, {"codec": "codebook", "k": 1, "bits": 0, "values": {"codec": "dense"},
                                         "parts": [0, 4]}]


def _paths(obj, prefix=()):
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _set(obj, path, value):
    try:  # an earlier edit of the same case may have replaced part of the path: then skip this one
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


def _del(obj, path):
    try:
        for k in path[:-1]:
            obj = obj[k]
        if isinstance(obj, dict):
            obj.pop(path[-1], None)
        elif isinstance(obj, list) and obj:
            obj.pop(path[-1])
    except (KeyError, IndexError, TypeError):
        pass


def _flip(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    kind = rng.randrange(5)
    if kind == 0 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        b = b[:rng.randrange(len(b) + 1)]
    elif kind == 2:
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3 and len(b) > 2:
        at = rng.randrange(len(b) - 1)
        del b[at:at + rng.randint(1, 16)]
    else:
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", struct.pack("<Q", 2**63)])
    return bytes(b)


def _resign_blob(manifest, data, name, payload, rng):
    import zstandard

    e = manifest["tensors"][name]
    if rng.random() < 0.5:
        blob, zipped = zstandard.ZstdCompressor(level=1).compress(payload), True
    else:
        blob, zipped = payload, False
    e.update(offset=len(data), bytes=len(blob), zstd=zipped, payload_bytes=len(payload),
             sha256=hashlib.sha256(blob).hexdigest())
    data = data + blob
    manifest["data_bytes"] = len(data)
    return data


def mutate_cnz(rng: random.Random, raw: bytes) -> bytes:
    import zstandard

    manifest, data = _cnz_parts(raw)
    kind = rng.randrange(9)
    if kind == 0:
        return _flip(rng, raw)
    if kind == 1:  # a hostile value at a random JSON path
        paths = [p for p in _paths(manifest) if p]
        for _ in range(rng.randint(1, 3)):
            _set(manifest, rng.choice(paths), json.loads(json.dumps(rng.choice(HOSTILE))))
    elif kind == 2:  # delete or add keys
        paths = [p for p in _paths(manifest) if p]
        for _ in range(rng.randint(1, 3)):
            p = rng.choice(paths)
            if rng.random() < 0.5:
                _del(manifest, p)
            else:
                parent = manifest
                try:
                    for k in p[:-1]:
                        parent = parent[k]
                except (KeyError, IndexError, TypeError):
                    continue
                if isinstance(parent, dict):
                    parent[rng.choice(["extra", "ref", "class", "__dict__", "_parameters", "forward", "alias"])] = \
                        json.loads(json.dumps(rng.choice(HOSTILE)))
            paths = [q for q in _paths(manifest) if q]
    elif kind == 3:  # text-level: duplicate keys, deep nesting, NaN, many objects
        text = json.dumps(manifest).encode()
        choice = rng.randrange(4)
        if choice == 0:
            key = rng.choice([b'"data_bytes": ', b'"class": ', b'"shape": ', b'"codec": '])
            text = text.replace(key, key + b'0, ' + key, 1)
        elif choice == 1:
            n = rng.choice([100, 1000, 100_000])
            text = text.replace(b'"metadata": {}', b'"metadata": {"x": ' + b"[" * n + b"]" * n + b"}")
        elif choice == 2:
            text = text.replace(b'"metadata": {}', b'"metadata": {"x": NaN}')
        else:
            text = text.replace(b'"metadata": {}', b'"metadata": {"x": [' + b"{}," * rng.choice([10, 300_000]) + b"{}]}")
        return _cnz(text, data)
    elif kind in (4, 5):  # codec meta / payload edits, re-signed
        names = [n for n, e in manifest["tensors"].items() if e.get("codec") != "alias"]
        name = rng.choice(names)
        e = manifest["tensors"][name]
        blob = data[e["offset"]:e["offset"] + e["bytes"]]
        payload = zstandard.ZstdDecompressor().decompress(blob) if e["zstd"] else blob
        if kind == 4:
            paths = _paths(e["meta"])[1:] or [("extra",)]
            _set(e["meta"], rng.choice(paths), json.loads(json.dumps(rng.choice(HOSTILE + [1, 2, 3, 7, 62, 63]))))
            if rng.random() < 0.5:
                e["shape"] = rng.choice([[2**27], [0], [1, 1], [3, 2**20], e["shape"][::-1] or [1]])
                e["raw_bytes"] = 4
        else:
            payload = _flip(rng, payload) if payload else bytes(rng.randrange(256) for _ in range(8))
        data = _resign_blob(manifest, data, name, payload, rng)
    elif kind == 6:  # forged zstd frame sizes
        names = [n for n, e in manifest["tensors"].items() if e.get("codec") != "alias"]
        name = rng.choice(names)
        size = rng.choice([0, 1, 2**20, 2**30, 2**36, 2**62])
        frame = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", size) + bytes([0x21, 0, 0]) + b"abcd"
        e = manifest["tensors"][name]
        e.update(offset=len(data), bytes=len(frame), zstd=True, sha256=hashlib.sha256(frame).hexdigest())
        if rng.random() < 0.5:
            e["payload_bytes"] = size
        data = data + frame
        manifest["data_bytes"] = len(data)
    elif kind == 7:  # module tree: nesting, cycles, classes
        root = manifest["root"]
        choice = rng.randrange(4)
        if choice == 0:
            node = root
            for _ in range(rng.choice([10, 70, 500])):
                node["children"] = {"s": {"class": "torch.nn.Sequential", "attrs": {"training": True}, "params": {},
                                          "buffers": {}, "non_persistent": [], "children": {}}}
                node = node["children"]["s"]
        elif choice == 1 and root.get("children"):
            k = rng.choice(list(root["children"]))
            root["children"][k] = {"ref": rng.choice(["", k, "nope"])}
        elif choice == 2:
            nodes = [p for p in _paths(root) if p and p[-1] == "class"]
            if nodes:
                _set(root, rng.choice(nodes), rng.choice(["compactnn.__main__.X", "compactnn.cli.main", "os.system",
                                                          "torch.nn.Conv2d", "torch.nn.LSTM", 5, None]))
        else:
            nodes = [p for p in _paths(root) if p and p[-1] == "attrs"]
            if nodes:
                _set(root, rng.choice(nodes), rng.choice([{}, [], {"in_features": {"f": "nan"}}, {"training": 1}]))
    else:  # header
        b = bytearray(_cnz(json.dumps(manifest).encode(), data))
        b[rng.choice([8, 10])] = rng.randrange(1, 256)
        return bytes(b)
    return _cnz(json.dumps(manifest).encode(), data)


YAML_SNIPPETS = [
    "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
    "a: &a [*a]\n", "!!python/object/apply:os.system [id]\n", "model: !!binary aGVsbG8=\n", "[" * 5000,
    "{" * 300, "model: {name: lenet300}\nmodel: {name: lenet5}\n", "? [a, b]\n: 1\n", "- 1\n- 2\n", "\x00\xff\xfe",
    "model: {name: lenet300, args: {hidden: [1000000, 1000000]}}\n", "model: {name: lenet300, args: {hidden: abc}}\n",
]
YAML_VALUES = ["1e30", "-1", "2**70", "1180591620717411303424", ".nan", ".inf", "-.inf", "[a]", "{}", "null", "abc",
               "1e308", "0", "true", "'x'", "[1, [2, [3]]]", "!!str 5", "*undefined", "&x 1", "0x7fffffff", "1_000"]
YAML_KEYS = ["epochs", "batch_size", "seed", "lr", "method", "hidden", "name", "sparsity", "bits", "repeats",
             "latency", "keep", "finetune", "root", "args", "stages", "train", "data", "report", "momentum"]


def mutate_recipe(rng: random.Random, raw: bytes) -> bytes:
    text = raw.decode()
    kind = rng.randrange(5)
    if kind == 0:
        return _flip(rng, raw)
    if kind == 1:
        return (rng.choice(YAML_SNIPPETS) + (text if rng.random() < 0.5 else "")).encode("utf-8", "surrogatepass")
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        key, value = rng.choice(YAML_KEYS), rng.choice(YAML_VALUES)
        if kind == 2:
            i = rng.randrange(len(lines))
            lines[i] = lines[i].rstrip("}") + (", " if "{" in lines[i] else " ") + f"{key}: {value}" + \
                ("}" if "{" in lines[i] else "")
        elif kind == 3:
            lines.append(f"{key}: {value}" if rng.random() < 0.5 else f"train: {{{key}: {value}}}")
        else:
            lines.append(f"stages:\n  - {{method: {rng.choice(['magnitude-prune', 'lc', 'integer-only', value])}, "
                         f"{key}: {value}}}")
    return "\n".join(lines).encode()


def mutate_idx(rng: random.Random, raw: bytes) -> bytes:
    gz = raw[:2] == b"\x1f\x8b"
    body = gzip.decompress(raw) if gz else raw
    kind = rng.randrange(5)
    if kind == 0:
        return _flip(rng, raw)
    if kind == 1:
        body = _flip(rng, body)
    elif kind == 2:  # forged dims
        ndim = rng.choice([1, 2, 3, 4, 8, 255])
        dims = [rng.choice([0, 1, 3, 4, 28, 60000, 2**16, 2**31, 2**32 - 1]) for _ in range(min(ndim, 8))]
        body = struct.pack(f">BBBB{len(dims)}I", 0, 0, rng.choice([8, 9, 0x0B, 0x0C, 0x0D, 0x0E, 7]), ndim, *dims) + \
            body[4 + 4 * body[3]:][:rng.choice([0, 16, 1000])]
    elif kind == 3:  # gzip bomb behind a plausible header
        n = rng.choice([60000, 2**20])
        comp = __import__("zlib").compressobj(1, 8, 31)
        out = comp.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28))
        out += b"".join(comp.compress(bytes(1 << 20)) for _ in range(rng.choice([1, 8, 64])))
        return out + comp.flush()
    else:
        body = body[:4] + _flip(rng, body[4:16]) + body[16:]
    if gz or rng.random() < 0.3:
        return gzip.compress(body, mtime=0)
    return body


def mutate_cifar(rng: random.Random, raw: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return _flip(rng, raw)
    b = bytearray(raw)
    if kind == 1:  # swap a value-like token
        for old, new in [(b"u1", rng.choice([b"O8", b"f8", b"u8", b"V8", b"<i"])), (b"K\x02", b"J\xff\xff\xff\x7f"),
                         (b"\x0c", rng.choice([b"\x0d", b"\xff", b"\x00"])), (b"b\x94", b"O\x94"),
                         (b"_reconstruct", b"_frombuffer\x00")]:
            if old in b and rng.random() < 0.5:
                at = b.find(old)
                b[at:at + len(old)] = new
        return bytes(b)
    if kind == 2:  # insert opcodes
        at = rng.randrange(2, len(b))
        b[at:at] = rng.choice([b"(", b")", b"}", b"]", b"R", b"b", b"a", b"e", b"s", b"u", b"t", b"0", b"1", b"2",
                               b"cos\nsystem\n", b"\x8c\x05numpy\x8c\x05dtype\x93", b"h\x00", b"\x81", b"N" * 1000,
                               b"(" * 100])
        return bytes(b)
    return pickle.dumps(rng.choice([{b"data": [1] * 3072, b"labels": [1]}, [1, 2], {b"labels": "x"}, None,
                                    {b"data": b"x" * 3072, b"labels": [0]}]), protocol=rng.choice([2, 4]))


def make_case(seed: int, i: int, bases) -> tuple[str, bytes]:
    return case_from(random.Random(seed * 1_000_003 + i), bases)


class DrawRng:
    """The ``random.Random`` methods the mutators use, each value drawn from hypothesis's ``data`` strategy, so that
    hypothesis chooses the mutations (and shrinks a failing case to a small one) while the mutators stay the same."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def randrange(self, a: int, b: int | None = None) -> int:
        lo, hi = (0, a) if b is None else (a, b)
        return self.data.draw(self.st.integers(lo, hi - 1))

    def randint(self, a: int, b: int) -> int:
        return self.data.draw(self.st.integers(a, b))

    def random(self) -> float:
        return self.data.draw(self.st.floats(0.0, 1.0, exclude_max=True))

    def choice(self, seq):
        return seq[self.randrange(len(seq))]

    def choices(self, population, weights):
        return [population[self.data.draw(self.st.sampled_from(
            [i for i, w in enumerate(weights) for _ in range(w)]))]]


def case_from(rng, bases) -> tuple[str, bytes]:
    targets = [t for t in TARGETS if bases[t]]
    weights = {"pack": 4, "intonly": 2, "recipe": 2, "idx": 1, "cifar": 1}
    target = rng.choices(targets, [weights[t] for t in targets])[0]
    base = rng.choice(bases[target])
    data = {"pack": mutate_cnz, "intonly": mutate_cnz, "recipe": mutate_recipe, "idx": mutate_idx,
            "cifar": mutate_cifar}[target](rng, base)
    return target, data


# ============================================================================================ worker
def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(conn, as_limit: int) -> None:
    import warnings

    warnings.simplefilter("ignore")
    import torch  # noqa: F401

    from compactnn import pack, recipe
    from compactnn.data import cifar, idx
    from compactnn.errors import CompactnnError

    pack.spec.import_registering()
    if as_limit:
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    tmp = Path(tempfile.mkdtemp(prefix="cnfuzz-"))
    conn.send(("ready", _hwm_kb()))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        target, data = msg
        path = tmp / {"pack": "m.cnz", "intonly": "m.cnz", "recipe": "r.yaml", "idx": "x.gz", "cifar": "data_batch_1"}[
            target]
        path.write_bytes(data)
        _reset_hwm()
        start = time.perf_counter()
        status, detail = "ok", ""
        try:
            if target in ("pack", "intonly"):
                pack.load(path)
            elif target == "recipe":
                recipe.load_recipe(path)
            elif target == "idx":
                idx.read_idx(path)
            else:
                cifar.read_batch(path)
        except CompactnnError as err:
            status, detail = ("error", str(err)[:300]) if "\n" not in str(err) else ("traceback", "multi-line: " +
                                                                                    str(err)[:300])
        except BaseException as err:  # noqa: BLE001 - exactly what the campaign counts
            status, detail = "traceback", "".join(traceback.format_exception(type(err), err, err.__traceback__))[-1500:]
        conn.send((status, detail, time.perf_counter() - start, _hwm_kb()))


class Pool:
    """One worker process at a time; restarted after a crash or hang."""

    def __init__(self, as_limit: int):
        self.as_limit, self.proc, self.conn, self.baseline_kb = as_limit, None, None, 0
        self.start()

    def start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, self.as_limit), daemon=True)
        self.proc.start()
        kind, kb = self.conn.recv()
        self.baseline_kb = max(self.baseline_kb, kb)

    def run(self, target: str, data: bytes):
        self.conn.send((target, data))
        if not self.conn.poll(HANG_SECONDS):
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
                self.start()
                return "hang", f"no answer within {HANG_SECONDS:.0f} s", HANG_SECONDS, 0
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            code = self.proc.exitcode
            self.start()
            return "crash", f"worker died (exit code {code})", 0.0, 0

    def close(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)


def campaign(seed: int, offset: int, cases: int, quiet: bool = False) -> dict:
    from tqdm import tqdm

    bases = base_files()
    pool = Pool(as_limit=4 << 30)
    counts: dict[str, dict[str, int]] = {t: {"cases": 0, "ok": 0, "error": 0, "traceback": 0, "crash": 0, "hang": 0}
                                         for t in TARGETS}
    findings, peak_kb, slowest = [], 0, 0.0
    start = time.perf_counter()
    for i in tqdm(range(offset, offset + cases), disable=quiet, desc="fuzz"):
        target, data = make_case(seed, i, bases)
        status, detail, seconds, hwm = pool.run(target, data)
        counts[target]["cases"] += 1
        counts[target][status] += 1
        peak_kb, slowest = max(peak_kb, hwm), max(slowest, seconds)
        if status in ("traceback", "crash", "hang") and len(findings) < 50:
            findings.append({"case": i, "target": target, "status": status, "detail": detail})
    pool.close()
    return {"seed": seed, "offset": offset, "cases": cases, "seconds": round(time.perf_counter() - start, 1),
            "counts": counts, "peak_rss_mb": round(peak_kb / 1024, 1),
            "baseline_rss_mb": round(pool.baseline_kb / 1024, 1), "slowest_case_s": round(slowest, 3),
            "findings": findings, "intonly_base": bool(bases["intonly"])}


def merge(parts: list[dict]) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for p in parts:
        for t, c in p["counts"].items():
            agg = counts.setdefault(t, dict.fromkeys(c, 0))
            for k, v in c.items():
                agg[k] += v
    total = {k: sum(c[k] for c in counts.values()) for k in next(iter(counts.values()))}
    return {"parts": [{k: p[k] for k in ("seed", "offset", "cases", "seconds")} for p in parts],
            "counts": counts, "total": total, "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
            "baseline_rss_mb": max(p["baseline_rss_mb"] for p in parts),
            "slowest_case_s": max(p["slowest_case_s"] for p in parts),
            "findings": [f for p in parts for f in p["findings"]][:50],
            "intonly_base": all(p.get("intonly_base", False) for p in parts)}


def _part_args(part: dict) -> str:
    if part["seed"] == "hypothesis":
        return f"--engine hypothesis --cases {part['cases']}"
    return f"--seed {part['seed']} --cases {part['cases']} --offset {part['offset']}"


def write_report(result: dict, out: Path, command: str) -> None:
    t = result["total"]
    rows = [{"target": name, **c} for name, c in result["counts"].items()]
    rows.append({"target": "total", **t})
    (out.with_suffix(".json")).write_text(json.dumps({"command": command, **result, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Fuzzing campaign over compactnn's readers of untrusted files",
        "",
        f"Command: `{command}`; the parts, merged with `--merge`:",
        "",
        *[f"- `python benchmarks/fuzz.py {_part_args(p)} --part ...` ({p['seconds']:.0f} s)" for p in result["parts"]],
        "",
        "Each case runs in a worker process with a 10 s deadline; `error` = refused with a one-line compactnn error, "
        "`ok` = accepted and loaded, `traceback` = any other exception or a multi-line message, `crash` = worker killed "
        "by a signal, `hang` = no answer in 10 s. Peak RSS is the whole worker process (Python, torch and compactnn "
        f"take {result['baseline_rss_mb']} MB before any case) during its worst case.",
        "",
        "| target | cases | ok | error | traceback | crash | hang |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['target']} | {r['cases']} | {r['ok']} | {r['error']} | {r['traceback']} | {r['crash']} | "
                     f"{r['hang']} |")
    lines += ["", f"- peak RSS: **{result['peak_rss_mb']} MB** (limit 512 MB); slowest case: "
                  f"{result['slowest_case_s']} s; integer-only base model built: {result['intonly_base']}", ""]
    if result["findings"]:
        lines += ["## Findings", ""] + [f"- case {f['case']} ({f['target']}, {f['status']}): "
                                        f"`{f['detail'].strip().splitlines()[-1][:200]}`" for f in result["findings"]]
    else:
        lines += ["No crashes, tracebacks or hangs."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def hypothesis_campaign(cases: int, quiet: bool = False) -> dict:
    """The same mutators and worker, driven by hypothesis (``@given(st.data())``, derandomized, no example database):
    every case must end ``ok`` or ``error``; a failing case is shrunk by hypothesis and recorded as the finding."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from tqdm import tqdm

    bases = base_files()
    pool = Pool(as_limit=4 << 30)
    counts = {t: {"cases": 0, "ok": 0, "error": 0, "traceback": 0, "crash": 0, "hang": 0} for t in TARGETS}
    peak, start, bar = {"kb": 0, "slowest": 0.0}, time.perf_counter(), tqdm(total=cases, disable=quiet, desc="fuzz")

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        target, blob = case_from(DrawRng(data), bases)
        status, detail, seconds, hwm = pool.run(target, blob)
        counts[target]["cases"] += 1
        counts[target][status] += 1
        peak["kb"], peak["slowest"] = max(peak["kb"], hwm), max(peak["slowest"], seconds)
        bar.update()
        assert status in ("ok", "error"), f"{target} {status}: {detail[-600:]}"

    findings = []
    try:
        one()
    except AssertionError as err:  # hypothesis re-raises the shrunk failing case
        findings.append({"case": "shrunk", "target": str(err).split()[0], "status": str(err).split()[1].rstrip(":"),
                         "detail": str(err)})
    bar.close()
    pool.close()
    return {"seed": "hypothesis", "offset": 0, "cases": sum(c["cases"] for c in counts.values()),
            "seconds": round(time.perf_counter() - start, 1), "counts": counts,
            "peak_rss_mb": round(peak["kb"] / 1024, 1), "baseline_rss_mb": round(pool.baseline_kb / 1024, 1),
            "slowest_case_s": round(peak["slowest"], 3), "findings": findings, "intonly_base": bool(bases["intonly"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=2500)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--part", type=Path, help="write this part's raw result (JSON) here")
    ap.add_argument("--merge", type=Path, help="merge every part JSON in this folder into --out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fuzz")
    ap.add_argument("--quick", action="store_true", help="a short smoke run (200 cases); prints the summary")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--engine", choices=("random", "hypothesis"), default="random",
                    help="who picks the mutations: seeded random (parts can be rerun alone) or hypothesis (shrinks a "
                         "failing case)")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in sorted(args.merge.glob("*.json"))]
        result = merge(parts)
        cmd = "python benchmarks/fuzz.py --merge {}".format(
            args.merge.relative_to(ROOT) if args.merge.is_absolute() else args.merge)
        write_report(result, args.out, cmd)
        print(json.dumps(result["total"]), f"peak RSS {result['peak_rss_mb']} MB")
        return 0
    cases = 200 if args.quick else args.cases
    if args.engine == "hypothesis":
        result = hypothesis_campaign(cases, quiet=args.quiet)
    else:
        result = campaign(args.seed, args.offset, cases, quiet=args.quiet)
    if args.part:
        args.part.parent.mkdir(parents=True, exist_ok=True)
        args.part.write_text(json.dumps(result, indent=1) + "\n")
    total = {k: sum(c[k] for c in result["counts"].values()) for k in next(iter(result["counts"].values()))}
    print(json.dumps(total), f"peak RSS {result['peak_rss_mb']} MB", f"in {result['seconds']} s")
    for f in result["findings"][:10]:
        print(f"case {f['case']} {f['target']} {f['status']}: {f['detail'][-600:]}")
    bad = total["traceback"] + total["crash"] + total["hang"]
    return 1 if bad or result["peak_rss_mb"] > 512 else 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutated .cnz files of integer models with the more ops (permute/reshape/slice/pad/lut/mul/softmax; the five
converted models of tests/quantize/test_intonly_more_convert.py), mutated by benchmarks/fuzz.py's ``mutate_cnz``:
each must be refused with one CompactnnError line, or load and run with the native C kernels and the torch engine
equal to the reference. A crash (SIGSEGV) ends the process with no summary line.

    PYTHONPATH=src python benchmarks/fuzz_intonly_more.py SEED CASES
"""
import random, sys, tempfile, warnings, dataclasses
from pathlib import Path
_root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_root / "benchmarks")); sys.path.insert(0, str(_root / "tests" / "quantize"))
warnings.simplefilter("ignore")
import numpy as np, torch
from compactnn import pack
from compactnn.errors import CompactnnError
from compactnn.quantize.intonly import native
from compactnn.quantize.intonly.native.program import NativeProgram
from compactnn.quantize.intonly.engine import FastEngine
import fuzz
from test_intonly_more_convert import SE, Mixer, HardSwishNet, OptionA, SoftGate, _int_model

seed, n = int(sys.argv[1]), int(sys.argv[2])
tmp = Path(tempfile.mkdtemp())
bases = []
for cls in (SE, Mixer, HardSwishNet, OptionA, SoftGate):
    im, _ = _int_model(cls())
    pack.save(im, tmp / "b.cnz"); bases.append((tmp / "b.cnz").read_bytes())
lib = native.load("auto")
stats = {"refused": 0, "ran": 0, "multiline": 0, "mismatch": 0, "other_exc": 0}
for i in range(n):
    rng = random.Random(seed * 1_000_003 + i)
    data = fuzz.mutate_cnz(rng, rng.choice(bases))
    (tmp / "m.cnz").write_bytes(data)
    try:
        m = pack.load(tmp / "m.cnz")
    except CompactnnError as err:
        stats["refused"] += 1; stats["multiline"] += "\n" in str(err); continue
    except Exception as err:
        stats["other_exc"] += 1; print("EXC", i, type(err).__name__, str(err)[:200]); continue
    try:
        q = torch.from_numpy(np.random.default_rng(i).integers(0, 256, (2, *m.input_shape), dtype=np.uint8))
        want = m.run_int(q, "reference")
        if lib is not None:
            prog = NativeProgram.build(m, lib)
            if prog is not None and not torch.equal(prog.run(q), want):
                stats["mismatch"] += 1; print("MISMATCH", i)
        if not torch.equal(FastEngine(m, native="off").run(q), want):
            stats["mismatch"] += 1; print("MISMATCH torch", i)
        stats["ran"] += 1
    except CompactnnError as err:
        stats["refused"] += 1; stats["multiline"] += "\n" in str(err)
    except Exception as err:
        stats["other_exc"] += 1; print("EXC run", i, type(err).__name__, str(err)[:200])
print(seed, n, stats)

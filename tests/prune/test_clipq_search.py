"""CLIP-Q search: the target holds, exact objective, handler, study checks, 2 workers sharing one SQLite study."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.errors import ConfigError
from compactnn.prune.clipq import ClipQ
from compactnn.prune.clipq_ops import clip_quantize, stored_bits
from compactnn.prune.clipq_search import open_study, search


@pytest.fixture(scope="module")
def trained():
    bundle = cn.data.load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    cn.train.fit(model, bundle, epochs=8, lr=0.05, batch_size=64, quiet=True)
    return model, bundle


@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_search_respects_the_target_and_scores_exactly(trained, sampler):
    model, bundle = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = ClipQ(search=True, trials=13, ratio=12.5, lam=0.2, sparsity_range=(0.3, 0.95), bits_range=(2, 5),
                sampler=sampler)
    result = search(model, cfg, bundle, quiet=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is not changed
    layers = {"1": model[1], "3": model[3]}
    total = sum(32 * m.weight.numel() for m in layers.values())
    bits = {n: stored_bits(clip_quantize(m.weight, *result.settings[n])) for n, m in layers.items()}
    assert bits == result.bits and sum(bits.values()) <= 0.08 * total  # recomputed from the settings: within target
    assert result.ratio == pytest.approx(total / sum(bits.values()))
    for p, b in result.settings.values():
        assert 0.3 <= p <= 0.95 and 2 <= b <= 5
    done = [t for t in result.study.trials if t.value is not None]
    assert len(done) == 13 and done[0].params == {"1.p": 0.95, "1.bits": 2, "3.p": 0.95, "3.bits": 2}  # corner first
    for t in done:  # value = error - lam * saved fraction, constraint = (used - budget) / total
        used = sum(t.user_attrs["bits"].values())
        assert t.value == pytest.approx(t.user_attrs["error"] - 0.2 * (total - used) / total)
        assert t.constraints["size"] == pytest.approx((used - 0.08 * total) / total)
    feasible = [t for t in done if t.constraints["size"] <= 0]
    assert min(t.value for t in feasible) == pytest.approx(
        result.error - 0.2 * (total - sum(result.bits.values())) / total)
    _, held = bundle.split_train(0.1, seed=0)  # the error is measured on the held-out rows
    work = cn.compress(model, ClipQ(sparsity={n: s[0] for n, s in result.settings.items()},
                                    bits={n: s[1] for n, s in result.settings.items()}, finetune=None))
    assert 1 - cn.train.evaluate(work, held)["accuracy"] == pytest.approx(result.error)


def test_handler_with_search_applies_the_chosen_settings(trained):
    model, bundle = trained
    cfg = ClipQ(search=True, trials=6, ratio=10.0, sampler="tpe", finetune=None, seed=3)
    result = search(model, cfg, bundle, quiet=True)
    small = cn.compress(model, cfg, data=bundle)
    for n in ("1", "3"):
        assert torch.equal(small.get_submodule(n).weight, clip_quantize(model.get_submodule(n).weight,
                                                                        *result.settings[n]))


def test_unreachable_target_and_foreign_study_are_config_errors(trained, tmp_path):
    model, bundle = trained
    with pytest.raises(ConfigError, match="none of the 3 trials meets ratio"):
        search(model, ClipQ(search=True, trials=3, ratio=1000.0, sparsity_range=(0.0, 0.2), sampler="tpe"), bundle,
               quiet=True)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search(model, ClipQ(search=True, trials=2, storage=url, sampler="tpe"), bundle, quiet=True)
    with pytest.raises(ConfigError, match="another search"):
        search(model, ClipQ(search=True, trials=2, storage=url, sampler="tpe", layers=("3",)), bundle, quiet=True)
    with pytest.raises(ConfigError, match="cannot open optuna storage"):
        open_study("nosuchdb://x", "s")


WORKER = textwrap.dedent("""
    import json, sys, time
    import optuna
    from compactnn.prune.clipq_search import open_study
    url, wid, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    study = open_study(url, "shared", sampler="gp", seed=0)
    study.set_user_attr("ready-" + wid, True)
    deadline = time.time() + 60
    while len([k for k in study.user_attrs if k.startswith("ready-")]) < 2 and time.time() < deadline:
        time.sleep(0.05)
    seen = []
    def objective(trial):
        trial.set_user_attr("worker", wid)
        x = trial.suggest_float("x", 0.0, 1.0)
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        seen.append(sum(t.user_attrs.get("worker") != wid for t in done))
        time.sleep(0.1)
        return (x - 0.3) ** 2
    study.optimize(objective, n_trials=n)
    while len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) < 2 * n and time.time() < deadline:
        time.sleep(0.05)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    json.dump({"seen_during_run": seen, "workers": [t.user_attrs["worker"] for t in trials],
               "xs": [t.params["x"] for t in trials]}, open(out, "w"))
""")


def test_two_processes_share_one_sqlite_study(tmp_path):
    url, n = f"sqlite:///{tmp_path / 'study.db'}", 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, wid, str(n), str(tmp_path / f"{wid}.json")],
                              env=env, stderr=subprocess.PIPE, text=True) for wid in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    study = open_study(url, "shared", sampler="tpe")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * (2 * n)
    for wid, other in (("a", "b"), ("b", "a")):
        out = json.load(open(tmp_path / f"{wid}.json"))
        assert sorted(out["workers"]) == ["a"] * n + ["b"] * n  # each sees all 2n trials, n from the other
        assert max(out["seen_during_run"]) >= 1  # and saw the other's trials while it was still sampling
        first = {w: out["xs"][out["workers"].index(w)] for w in ("a", "b")}  # random start-up trials
        assert first["a"] != first["b"]  # the sampler seed is mixed with the pid: workers do not repeat each other

"""AGP cubic schedule (Zhu & Gupta 2017) and the PruneSchedule step hook."""

import pytest

from compactnn.prune.schedule import PruneSchedule, agp_sparsity


def formula(t, s_i, s_f, t0, n_dt):
    return s_f + (s_i - s_f) * (1 - (t - t0) / n_dt) ** 3


@pytest.mark.parametrize("s_i,s_f,t0,end", [(0.0, 0.9, 0, 100), (0.2, 0.75, 30, 130), (0.0, 0.5, 10, 11)])
def test_agp_values_at_start_middle_end(s_i, s_f, t0, end):
    kw = dict(final=s_f, start=t0, end=end, initial=s_i)
    assert agp_sparsity(t0, **kw) == s_i
    assert agp_sparsity(end, **kw) == s_f
    assert agp_sparsity(end + 50, **kw) == s_f
    assert agp_sparsity(max(t0 - 5, 0), **kw) == s_i
    mid = (t0 + end) / 2
    assert agp_sparsity(mid, **kw) == pytest.approx(s_f + (s_i - s_f) * 0.125, abs=1e-12)
    for t in range(t0, end + 1):
        assert agp_sparsity(t, **kw) == pytest.approx(formula(t, s_i, s_f, t0, end - t0), abs=1e-12)


def run(schedule, total):
    seen = []
    schedule.prune = seen.append
    schedule.begin()
    for step in range(1, total + 1):  # fit calls hooks with step = 1..total
        schedule(None, step, total)
    schedule.finish(total)
    return seen


def test_agp_hook_prunes_every_dt_from_t0_and_ends_at_final():
    sched = PruneSchedule(lambda s: None, 0.8, "agp", start=0.1, end=0.7, every=10)
    assert sched.steps(200) == (20, 140, 10)
    seen = run(sched, 200)
    steps = [s for s, _ in sched.history]
    assert steps == [0] + list(range(30, 141, 10))  # step 20 gives s_i = 0 again: no re-prune
    for step, value in sched.history[1:]:
        assert value == pytest.approx(formula(step, 0.0, 0.8, 20, 120))
    assert seen[-1] == 0.8 and seen == sorted(seen)


def test_agp_default_every_and_short_runs_still_reach_final():
    sched = PruneSchedule(lambda s: None, 0.5, "agp", start=0.0, end=0.7)
    assert sched.steps(1000) == (0, 700, 43)
    seen = run(PruneSchedule(lambda s: None, 0.5, "agp", start=0.0, end=1.0, every=1000), 7)
    assert seen == [0.0, 0.5]


def test_one_shot_prunes_once_before_training():
    sched = PruneSchedule(lambda s: None, 0.6, "one-shot")
    assert run(sched, 50) == [0.6]
    assert sched.history == [(0, 0.6)]

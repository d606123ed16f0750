"""Contraction planning (compactnn.decompose.plan): every plan equals the dense map (float64), caches follow the
cores, the path searches are optimal against brute force, the planner's choice on a few shapes, training keeps the
factorized gradient path."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from compactnn.decompose import BTLinear, TRConv2d, TRLinear, TTLinear, TuckerConv2d
from compactnn.decompose import plan as P
from compactnn.errors import ModelError

LINEAR = [
    lambda: TRLinear((4, 7, 4, 7), (3, 4, 5, 5), 3),
    lambda: TRLinear((2, 3, 4), (5, 2), (2, 3, 1, 4, 2)),
    lambda: TRLinear((6,), (4,), 2, bias=False),
    lambda: TTLinear((4, 2, 3), (2, 3, 2), (2, 3)),
    lambda: TTLinear((5,), (3,), 1),
    lambda: BTLinear((4, 3, 2), (2, 4, 3), (2, 3, 2), blocks=2),
    lambda: BTLinear((6, 4), (3, 8), 2, blocks=1, bias=False),
]
CONV = [
    (lambda: TRConv2d((2, 3), (4, 2), 3, 2, padding=1), (9, 8)),
    (lambda: TRConv2d((6,), (2, 5), (3, 2), (2, 3, 2, 4), stride=2, padding=(1, 0), dilation=(1, 2)), (11, 10)),
    (lambda: TuckerConv2d(6, 8, 3, (3, 2), stride=2, padding=1), (9, 9)),
    (lambda: TuckerConv2d(5, 9, (3, 1), (2, 4), padding=(1, 0)), (7, 6)),
]


def _dense(layer, x):
    if isinstance(layer, (TRLinear, TTLinear, BTLinear)):
        return F.linear(x, layer.full_weight(), layer.bias)
    if isinstance(layer, TRConv2d):
        return F.conv2d(x, layer.full_weight(), layer.bias, layer.stride, layer.padding, layer.dilation)
    c = layer.core
    return F.conv2d(x, layer.full_weight(), layer.expand.bias, c.stride, c.padding, c.dilation)


def _all_plans(layer, x):
    shape = tuple(x.shape) if x.dim() == 4 else x.numel() // x.shape[-1]
    return list(layer.plan_for(shape).times)


@pytest.mark.parametrize("make", LINEAR)
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
def test_every_linear_plan_equals_the_dense_map(make, lead):
    torch.manual_seed(0)
    layer = make().double()
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(*lead, layer.in_features, dtype=torch.float64)
    with torch.no_grad():
        ref = _dense(layer, x)
        plans = _all_plans(layer, x)
        assert {"dense", "factorized"} <= set(plans) <= {"dense", "merged", "factorized"}
        assert "merged" in plans or len(layer.network().labels) == 2  # one core: only the full merge
        for plan in plans:
            layer.plan_mode = plan
            y = layer(x)
            assert layer.last_plan == plan
            assert y.shape == ref.shape
            torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make,hw", CONV)
@pytest.mark.parametrize("batch", [1, 3])
def test_every_conv_plan_equals_the_dense_conv(make, hw, batch):
    torch.manual_seed(1)
    layer = make().double()
    x = torch.randn(batch, layer.in_channels, *hw, dtype=torch.float64)
    with torch.no_grad():
        ref = _dense(layer, x)
        for plan in _all_plans(layer, x):
            layer.plan_mode = plan
            torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
            assert layer.last_plan == plan


@pytest.mark.parametrize("plan", ["dense", "merged", "factorized"])
def test_cache_follows_core_updates(plan):
    torch.manual_seed(2)
    layer = TRLinear((4, 3), (2, 5), 3).double()
    layer.plan_mode = plan
    x = torch.randn(4, 12, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        layer.core_1.mul_(2.0)  # in place: _version moves
        after = layer(x)
        torch.testing.assert_close(after, _dense(layer, x))
        assert not torch.allclose(before, after)
    # an optimizer step (in-place update under autograd's no-grad) is seen too
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _dense(layer, x))
    # load_state_dict copies into the same storage
    other = TRLinear((4, 3), (2, 5), 3).double()
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _dense(other, x))


def test_conv_cache_follows_updates():
    torch.manual_seed(3)
    layer = TuckerConv2d(4, 6, 3, (2, 3), padding=1).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    for plan in ("dense", "merged"):
        layer.plan_mode = plan
        with torch.no_grad():
            layer(x)
            layer.core.weight.add_(0.5)
            layer.expand.bias.add_(1.0)
            torch.testing.assert_close(layer(x), _dense(layer, x))


def test_training_keeps_the_factorized_gradient_path():
    torch.manual_seed(4)
    layer = BTLinear((4, 3), (2, 3), 2, blocks=2).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    y = layer(x)
    assert layer.last_plan == "train" and y.requires_grad
    y.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.factors)
    # gradients equal those through the dense map
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    _dense(layer, x).pow(2).sum().backward()
    for g, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(g, p.grad)
    assert "_planner" not in layer.__dict__ or not layer.planner().programs  # nothing cached under autograd


def _brute_factorized(net: P.Network) -> float:
    sub = P._Subsets(net)
    best = None
    for order in itertools.permutations(range(1, sub.n)):
        mask, t, last = 1, 0.0, 0
        for k in order:
            macs, elems, dims, copies = sub.step(mask, 1 << k, last)
            t += P.step_time(macs, elems, dims, copies=copies)
            mask, last = mask | 1 << k, 1 << k
        best = t if best is None else min(best, t)
    return best


def _trees(items):
    """Every binary contraction tree over ``items``."""
    if len(items) == 1:
        yield items[0]
        return
    first, rest = items[0], items[1:]
    for r in range(len(rest)):
        for combo in itertools.combinations(rest, r):
            left = (first, *combo)
            right = tuple(i for i in rest if i not in combo)
            for lt in _trees(left):
                for rt in _trees(right):
                    yield (lt, rt)


@pytest.mark.parametrize("make", [lambda: TRLinear((2, 3), (4, 2), (2, 3, 4, 2)),
                                  lambda: TTLinear((4, 2, 3), (2, 3, 2), (2, 3)),
                                  lambda: BTLinear((4, 3), (2, 4), (3, 2), blocks=2)])
@pytest.mark.parametrize("rows", [1, 64])
def test_path_searches_are_optimal_against_brute_force(make, rows):
    net = make().network().with_rows(rows)
    sub = P._Subsets(net)
    assert P.factorized_path(net).time == pytest.approx(_brute_factorized(net))
    # merged: the best per-call time over every tree with the input-free subtrees cached, the full merge excluded
    full_rest = ((1 << sub.n) - 1) ^ 1
    best = None
    for tree in _trees(tuple(range(sub.n))):
        if P._mask_of(tree[0]) == full_rest or P._mask_of(tree[1]) == full_rest:
            continue  # input joined with all cores merged: the dense plan
        t = P._path("merged", tree, sub, cached=True).time
        best = t if best is None else min(best, t)
    assert P.merged_path(net).time == pytest.approx(best)


def test_planner_choices():
    # a tiny layer: one GEMM beats any chain of steps
    assert TRLinear((3,), (2,), 2).plan_for(1).plan == "dense"
    # LSTM input map 4096 -> 1024 at one row: reading the 4M-weight dense matrix costs more than the small chain
    bt = BTLinear((8, 8, 8, 8), (16, 4, 4, 4), 4, blocks=2)
    assert bt.plan_for(1).plan != "dense"
    tt = TTLinear((8, 8, 8, 8), (16, 4, 4, 4), 4)
    assert tt.plan_for(256).plan != "dense"
    # LeNet-300 fc1 at R=10: the paper's merged F_in / F_out beat the dense GEMM
    tr = TRLinear((4, 7, 4, 7), (3, 4, 5, 5), 10)
    assert tr.plan_for(256).plan == "merged"
    choice = tr.plan_for(256)
    assert choice.macs["merged"] < choice.macs["dense"] < choice.macs["factorized"]
    # a forced plan is reported as forced; an unknown one is a ModelError
    assert tr.plan_for(1, "factorized").forced
    with pytest.raises(ModelError, match="plan_mode"):
        tr.plan_for(1, "fastest")


def test_pack_round_trip_after_planning(tmp_path):
    import compactnn as cn

    layer = TRLinear((4, 3), (2, 5), 3)
    with torch.no_grad():
        layer(torch.randn(2, 12))
    assert layer.last_plan in P.PLANS
    path = tmp_path / "tr.cnz"
    cn.pack.save(torch.nn.Sequential(layer), path)
    back = cn.pack.load(path)
    x = torch.randn(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(back(x), layer(x))


@pytest.mark.parametrize("make", LINEAR)
@pytest.mark.parametrize("rows", [1, 7])
def test_the_time_model_knows_which_steps_copy(make, rows):
    """The model's copy flag of each step (a permute of the running intermediate) is the compiled program's: equal
    where no label is shared by three operands, else never missing one (batched products are modelled as always
    copying)."""
    layer = make()
    net = layer.network().with_rows(rows)
    shared = max(sum(l in labels for labels in net.labels) for l in net.size) > 2
    sub = P._Subsets(net)
    for path in (P.factorized_path(net), P.merged_path(net)):
        if path is None:
            continue
        chain, t = [], path.tree
        while not isinstance(t, int):
            chain.append(t[1])
            t = t[0]
        mask, last, predicted = 1, 0, []
        for right in reversed(chain):
            predicted.append(sub.step(mask, P._mask_of(right), last)[3])
            mask, last = mask | P._mask_of(right), P._mask_of(right)
        prog = P.compile_program(path, net, [None, *[o.detach() for o in layer.network_operands()]])
        for s, p in zip(prog.steps, predicted):
            assert p or s["ident"]
            assert shared or p == (not s["ident"])


def test_lenet300_fc1_merged_plan_is_two_products():
    # R=10 at one row: x (784) -> F_in (784 x 100) -> F_out (100 x 300), no copy, bias fused: 108,400 MACs (the
    # choice between it and the dense GEMM is left to the time model)
    tr = TRLinear((4, 7, 4, 7), (3, 4, 5, 5), 10)
    choice = tr.plan_for(1)
    assert choice.macs["merged"] == 784 * 100 + 100 * 300 < choice.macs["dense"]
    prog = tr.planner().program(tr, 1, "merged")
    assert prog.flat and all(s["ident"] for s in prog.steps)
    assert [tuple(c.shape) for c in prog.consts] == [(784, 100), (100, 300)]

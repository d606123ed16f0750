"""Contraction planning for the factorized layers: pick the cheapest exact way to evaluate a layer for a given input.

A factorized linear map (tensor ring, tensor train, block term) is a tensor network: the input ``x`` (rows ``b``
times input modes) and the cores, joined by shared mode and rank indices, contracted to the output (rows times output
modes). The same function can be evaluated in many orders. Three plan families are considered (issue 18):

- ``"factorized"`` (a): mode by mode: every step contracts the running intermediate with one raw core; the order of
  the cores is the FLOP-optimal one (exact dynamic programme over the subsets of cores).
- ``"dense"`` (b): all cores merged once into the dense weight, kept, then one GEMM (``F.linear``).
- ``"merged"`` (c): core-only parts of the network are merged once and kept (for a tensor ring, e.g., the paper's
  ``F_in`` / ``F_out``), then the input is contracted with those merged parts in the optimal order (dynamic programme
  over all subsets, any pairwise contraction tree). The full merge is excluded (that is ``"dense"``).

Each plan is scored by a time model, summed over its steps (each step is one matrix product ``(na x nk) @ (nk x nc)``,
``nb`` times): ``max(macs / (MAC_RATE * eff), bytes / BANDWIDTH) + STEP_OVERHEAD`` with ``eff = nk / (nk + S) *
nc / (nc + S)`` (GEMM kernels run far below peak on thin matrices, e.g. a rank-10 inner dimension) and ``bytes`` the
float32 operands and result (a roofline: a product is bound by its arithmetic or by moving its operands), plus
``COPY_OVERHEAD`` and the copied bytes when the running intermediate must be permuted before its product. Whether it
must follows from the layout :func:`compile_program` gives each product (the labels summed next placed last), so the
cost of a step depends on the part joined before it: the searches keep, per subset, the best chain for each set of
labels the last part brought, which keeps them exact (tested against brute force). The cheapest plan runs. Merged
or rebuilt tensors are batch-independent, so in inference they are computed once and cached; their cost is left
out of the per-call time.
Plans and caches are per layer, keyed by the number of input rows (plans) and by the cores' ``_version`` counters and
``data_ptr`` (cached tensors): an optimizer step, ``load_state_dict`` or any in-place change of a core rebuilds them
on the next call.

When a plan is used: only when no gradient is needed (``torch.no_grad`` / ``inference_mode``, or neither the input
nor any parameter of the layer requires grad). Training keeps each layer's own factorized forward (gradients flow to
the cores); the cached tensors are never used under autograd.

The constants below were calibrated on the 2-thread benchmark machine (``benchmarks/decomposition.py --parts
plans`` times every plan of every layer and reports whether the model's choice was the fastest).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: MACs per second of a large float32 GEMM on 2 threads.
MAC_RATE = 9e10
#: Bytes per second moved by a step (operands read, result written).
BANDWIDTH = 4e10
#: Seconds of fixed overhead per contraction step (reshape, matmul: Python and dispatch). Measured on LeNet-300's
#: fc1 at one row (R=10, two products x (784) -> (100) -> (300), 108,400 MACs): the products alone 17 us, the planned
#: layer 38 us, against 19 us and 30 us for the dense F.linear: about 8 us per step more than the dense plan's call.
STEP_OVERHEAD = 8e-6
#: Seconds of fixed overhead of a step whose input must be permuted into place (permute + copying reshape).
COPY_OVERHEAD = 6e-6
#: Inner / output dimension at which a GEMM reaches half of ``MAC_RATE``.
HALF_EFF_DIM = 32
#: Batched products (``nb > 1``) are modelled with an inner dimension this many times smaller.
BMM_PENALTY = 8
#: The same for convolutions (in_channels_per_group * kh * kw, and out channels per group): oneDNN vectorizes over
#: channels, so convs with few channels run far below peak.
HALF_EFF_CONV = 8
#: Plans with fewer MACs per call than this run their steps on one thread (``torch.set_num_threads(1)`` for the call,
#: restored after): waking a second BLAS / oneDNN thread for a tiny product costs more than it saves, and on a loaded
#: machine it waits for a scheduler slice (tens of ms measured). The dense plan's ``F.linear`` is left to MKL.
SINGLE_THREAD_MACS = 1 << 21
#: Seconds of fixed overhead of the dense plan's single ``F.linear`` (or of one conv).
DENSE_OVERHEAD = 3e-6
#: Largest cached tensor (elements) a plan may keep; a dense weight larger than this is never built.
MAX_CACHE = 1 << 25

PLANS = ("dense", "merged", "factorized")
MODES = ("auto",) + PLANS


def step_time(macs: float, elements: float, dims: tuple[int, int] = (1 << 20, 1 << 20),
              overhead: float = STEP_OVERHEAD, half: float | None = None, copies: bool = False) -> float:
    """The time model of one step (seconds): ``max(macs / (MAC_RATE * eff), 4 * elements / BANDWIDTH) + overhead``
    with ``eff = nk / (nk + S) * nc / (nc + S)`` for ``dims = (nk, nc)`` (see the module docstring), plus
    ``COPY_OVERHEAD`` when the step permutes its input into place (``copies``)."""
    nk, nc = dims
    half = HALF_EFF_DIM if half is None else half
    eff = nk / (nk + half) * nc / (nc + half)
    return max(macs / (MAC_RATE * eff), 4.0 * elements / BANDWIDTH) + overhead + (COPY_OVERHEAD if copies else 0.0)


# ----------------------------------------------------------------------------------------------- networks and paths
@dataclasses.dataclass(frozen=True)
class Network:
    """A tensor network: operand 0 is the input ``x``; ``labels[k]`` are operand k's index labels (strings), ``sizes``
    every label's size (the row label ``"b"`` included), ``output`` the result's labels in order. A label may be
    shared by more than two operands (a block-term layer's block index): it stays open until no other operand or the
    output has it."""

    labels: tuple[tuple[str, ...], ...]
    sizes: tuple[tuple[str, int], ...]
    output: tuple[str, ...]

    @property
    def size(self) -> dict[str, int]:
        return dict(self.sizes)

    def with_rows(self, rows: int) -> "Network":
        return dataclasses.replace(self, sizes=tuple((k, rows if k == "b" else v) for k, v in self.sizes))


class _Subsets:
    """Open labels and element counts of every subset (bit mask) of a network's operands."""

    def __init__(self, net: Network) -> None:
        self.net, self.n, self.size = net, len(net.labels), net.size
        full = (1 << self.n) - 1
        self.open: dict[int, frozenset[str]] = {}
        for mask in range(1, full + 1):
            inside, outside = set(), set(net.output)
            for k, labels in enumerate(net.labels):
                (inside if mask >> k & 1 else outside).update(labels)
            self.open[mask] = frozenset(inside & outside)

    def elements(self, labels) -> int:
        return math.prod(self.size[l] for l in labels)

    def step(self, m1: int, m2: int, last: int = 0) -> tuple[int, int, tuple[int, int], bool]:
        """:meth:`step_from` with the labels brought by ``last``, the part joined last into ``m1`` (0 when ``m1`` is
        the raw input or holds no input)."""
        return self.step_from(m1, self.brought(m1, last), m2)

    def step_from(self, m1: int, brought: frozenset, m2: int) -> tuple[int, int, tuple[int, int], bool]:
        """MACs, elements touched (both operands and the result, and a copy of the running intermediate when it
        must be permuted), the GEMM's ``(nk, nc)`` (summed size, size of the labels only ``m2`` keeps) and whether
        the running intermediate is copied (see :meth:`copies`), of contracting subsets ``m1`` and ``m2``."""
        a, b, c = self.open[m1], self.open[m2], self.open[m1 | m2]
        summed = (a & b) - c
        nk = self.elements(summed)
        nc = self.elements(b - a)
        ea = self.elements(a)
        nb = self.elements(a & b & c)
        copies = bool(m1 & 1) and self.copies(m1, brought, summed, bool(a & b & c))
        copy = 2 * ea if copies else 0
        if nb > 1:  # a batched product (a label kept by both sides, e.g. a block-term block index): MKL's batched
            nk = max(1, nk // BMM_PENALTY)  # small GEMMs run well below a single large one; modelled as a thinner one
        return self.elements(a | b), ea + self.elements(b) + self.elements(c) + copy, (nk, nc), copies

    def brought(self, m1: int, last: int) -> frozenset:
        """The labels of the running intermediate ``m1`` that its last part ``last`` brought in."""
        return self.open[last] - self.open[m1 ^ last] if last and m1 != 1 else frozenset()

    def copies(self, m1: int, brought: frozenset, summed: frozenset, batched: bool) -> bool:
        """Whether the running intermediate ``m1`` must be permuted (copied) before a step summing ``summed``, as
        :func:`compile_program` lays it out: the raw input keeps its label order (no copy when the summed labels are
        its trailing ones); a product has the labels it kept first, then the labels its last part ``brought``, those
        summed by the next step at the end (no copy when every summed label was brought by that part). A batched
        product (a label kept by both sides) is modelled as always copying (its batch labels go first)."""
        if batched:
            return True
        if m1 == 1:
            x = self.net.labels[0]
            return set(x[len(x) - len(summed):]) != summed
        return not summed <= brought


@dataclasses.dataclass
class Path:
    """A contraction tree: ``tree`` is an operand index or a pair of trees. ``time`` is the modelled per-call time
    (s), ``macs`` the per-call MACs, ``build_macs`` the MACs of the cached (input-free) parts, ``cache`` the elements
    kept, ``steps`` the per-call steps."""

    kind: str
    tree: object
    time: float
    macs: int
    build_macs: int
    cache: int
    steps: int


def _submasks(mask: int):
    sub = (mask - 1) & mask
    while sub:
        yield sub
        sub = (sub - 1) & mask


def _tree_stats(tree, sub: _Subsets, cached: bool) -> tuple[int, float, int, int, int, int]:
    """(mask, time, macs, build_macs, cache, steps) of a tree; input-free subtrees are free per call when cached."""
    if isinstance(tree, int):
        return 1 << tree, 0.0, 0, 0, 0, 0
    l, r = (_tree_stats(t, sub, cached) for t in tree)
    mask = l[0] | r[0]
    last = _mask_of(tree[0][1]) if l[0] & 1 and not isinstance(tree[0], int) else 0
    macs, elems, dims, copies = sub.step(l[0], r[0], last)
    if cached and not mask & 1:
        return mask, 0.0, 0, l[3] + r[3] + macs, 0, 0
    cache = sum(sub.elements(sub.open[s[0]]) for s in (l, r) if cached and not s[0] & 1 and s[0] & (s[0] - 1))
    return (mask, l[1] + r[1] + step_time(macs, elems, dims, copies=copies), l[2] + r[2] + macs, l[3] + r[3],
            l[4] + r[4] + cache, l[5] + r[5] + 1)


def _path(kind: str, tree, sub: _Subsets, cached: bool) -> Path:
    _, t, macs, build, cache, steps = _tree_stats(tree, sub, cached)
    return Path(kind, tree, t, macs, build, cache, steps)


def _min_merge(mask: int, sub: _Subsets, memo: dict) -> tuple[int, object]:
    """Fewest-MAC contraction tree of the input-free operands in ``mask`` (how a cached part is built)."""
    if mask in memo:
        return memo[mask]
    if mask & (mask - 1) == 0:
        memo[mask] = (0, mask.bit_length() - 1)
        return memo[mask]
    best = None
    low = mask & -mask
    for s1 in _submasks(mask):
        if not s1 & low:
            continue  # each split once
        s2 = mask ^ s1
        c1, t1 = _min_merge(s1, sub, memo)
        c2, t2 = _min_merge(s2, sub, memo)
        cost = c1 + c2 + sub.step(s1, s2)[0]
        if best is None or cost < best[0]:
            best = (cost, (t1, t2))
    memo[mask] = best
    return best


def factorized_path(net: Network) -> Path:
    """Plan (a): mode by mode, each step one raw core, in the order of least modelled time (DP over core subsets)."""
    sub = _Subsets(net)
    n = sub.n
    # the cost of a step depends on which labels the last core brought (copy or not): states are (mask, brought)
    best: dict[int, dict[frozenset, tuple[float, object]]] = {1: {frozenset(): (0.0, 0)}}
    for mask in range(3, 1 << n, 2):  # masks holding the input
        here: dict[frozenset, tuple[float, object]] = {}
        for k in range(1, n):
            prev = mask ^ (1 << k)
            if not mask >> k & 1 or prev not in best:
                continue
            for brought, (t0, tree) in best[prev].items():
                macs, elems, dims, copies = sub.step_from(prev, brought, 1 << k)
                t = t0 + step_time(macs, elems, dims, copies=copies)
                key = sub.brought(mask, 1 << k)
                if key not in here or t < here[key][0]:
                    here[key] = (t, (tree, k))
        if here:
            best[mask] = here
    final = min(best[(1 << n) - 1].values(), key=lambda v: v[0])
    return _path("factorized", final[1], sub, cached=False)


def merged_path(net: Network, max_cache: int = MAX_CACHE) -> Path | None:
    """Plan (c): any contraction tree whose input-free subtrees are cached (built with the fewest MACs), of least
    modelled per-call time; the tree that merges all cores first (the dense weight) is excluded. None if no tree
    keeps its cached parts within ``max_cache`` elements."""
    sub = _Subsets(net)
    full = (1 << sub.n) - 1
    memo: dict = {}
    best: dict[int, dict[frozenset, tuple[float, object]]] = {1: {frozenset(): (0.0, 0)}}  # see factorized_path
    for mask in range(3, full + 1, 2):
        rest = mask & ~1
        here: dict[frozenset, tuple[float, object]] = {}
        for other in [rest, *_submasks(rest)]:  # the input-free operand of the last step
            prev = mask ^ other
            if prev not in best or (mask == full and prev == 1):
                continue
            if other & (other - 1) and sub.elements(sub.open[other]) > max_cache:
                continue
            key = sub.brought(mask, other)
            for brought, (t0, tree) in best[prev].items():
                macs, elems, dims, copies = sub.step_from(prev, brought, other)
                t = t0 + step_time(macs, elems, dims, copies=copies)
                if key not in here or t < here[key][0]:
                    here[key] = (t, (tree, _min_merge(other, sub, memo)[1]))
        if here:
            best[mask] = here
    # a cached part may also be combined with the running intermediate through a subtree holding the input on
    # both sides: impossible (the input is one operand), so the last step always joins the input side and a cached
    # part, and this chain search is exact over all trees.
    if full not in best:
        return None
    return _path("merged", min(best[full].values(), key=lambda v: v[0])[1], sub, cached=True)


def dense_path(net: Network) -> Path:
    """Plan (b): every core merged (fewest MACs) into the dense weight, kept; one GEMM per call."""
    sub = _Subsets(net)
    full = (1 << sub.n) - 1
    tree = (0, _min_merge(full ^ 1, sub, {})[1])
    return _path("dense", tree, sub, cached=True)


# ----------------------------------------------------------------------------------------------- execution
def _contract(a: torch.Tensor, la: Sequence[str], b: torch.Tensor, lb: Sequence[str], keep: set[str]):
    """Contract ``a`` and ``b`` over their shared labels not in ``keep``; shared labels in ``keep`` are batch
    labels. Returns the result and its labels (batch, a-only, b-only)."""
    batch = [l for l in la if l in lb and l in keep]
    summed = [l for l in la if l in lb and l not in keep]
    a_only = [l for l in la if l not in lb]
    b_only = [l for l in lb if l not in la]
    size = {**dict(zip(la, a.shape)), **dict(zip(lb, b.shape))}
    nb, nk = math.prod(size[l] for l in batch), math.prod(size[l] for l in summed)
    na, nbo = math.prod(size[l] for l in a_only), math.prod(size[l] for l in b_only)
    a2 = a.permute([la.index(l) for l in batch + a_only + summed]).reshape(nb, na, nk)
    b2 = b.permute([lb.index(l) for l in batch + summed + b_only]).reshape(nb, nk, nbo)
    out = torch.bmm(a2, b2) if nb > 1 else torch.mm(a2[0], b2[0]).unsqueeze(0)
    labels = batch + a_only + b_only
    return out.reshape([size[l] for l in labels]), labels


def evaluate_tree(tree, net: Network, operands: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Evaluate a contraction tree over ``operands`` (in ``net`` order); returns the result and its labels."""
    sub_keep: dict[int, set[str]] = {}

    def keep_of(mask: int) -> set[str]:
        if mask not in sub_keep:
            outside = set(net.output)
            for k, labels in enumerate(net.labels):
                if not mask >> k & 1:
                    outside.update(labels)
            sub_keep[mask] = outside
        return sub_keep[mask]

    def run(t) -> tuple[torch.Tensor, list[str], int]:
        if isinstance(t, int):
            return operands[t], list(net.labels[t]), 1 << t
        (a, la, ma), (b, lb, mb) = run(t[0]), run(t[1])
        out, labels = _contract(a, la, b, lb, keep_of(ma | mb))
        return out, labels, ma | mb

    out, labels, _ = run(tree)
    return out, labels


@dataclasses.dataclass
class Program:
    """A plan ready to run on the input: ``steps`` is the chain from the input to the result; each step holds a
    prepared constant (a cached part, permuted and reshaped for its matrix product) and the permutation and shapes
    of the running intermediate. ``flat``: the last step is one product whose result is ``(rows, out)`` in the
    network's output order (no final permute; the bias is added by ``addmm``). Used by the eager planner and by
    :func:`compactnn.decompose.inference.freeze_linear`."""

    kind: str
    consts: list[torch.Tensor]
    steps: list[dict]
    out_perm: list[int]
    flat: bool = False


def _order_open(labels: list[str], first: Sequence[str], last: Sequence[str]) -> list[str]:
    """``labels`` reordered: those in ``first`` (in that order), the rest, those in ``last`` (in that order)."""
    head = [l for l in first if l in labels]
    tail = [l for l in last if l in labels and l not in head]
    return head + [l for l in labels if l not in head and l not in tail] + tail


def compile_program(path: Path, net: Network, operands: Sequence[torch.Tensor]) -> Program:
    """Build the cached parts of ``path`` from ``operands`` (``operands[0]`` unused) and the step list.

    Every per-call step contracts the running intermediate (labels ``cur``) with one cached part ``c``:
    ``t = t.permute(perm).reshape(nb, -1, nk) @ C (nb, nk, n_c)``, result labels ``batch + t-only + c-only``.
    The order of ``c-only`` is free (it is the prepared constant's column order), so it is chosen to save copies:
    in the last step, the network's output order (the result is then flat, no final permute); before, the labels
    the next step keeps first and those it sums last (its permute is then the identity whenever the labels it sums
    all came with this part; the next constant takes the summed labels in this order).
    """
    size = net.size
    chain = []  # right-hand subtrees along the input chain, from the input upward
    t = path.tree
    while not isinstance(t, int):
        chain.append(t[1])
        t = t[0]
    chain.reverse()
    keep_sets = []
    mask = 1
    for right in chain:
        mask |= _mask_of(right)
        outside = set(net.output)
        for k, labels in enumerate(net.labels):
            if not mask >> k & 1:
                outside.update(labels)
        keep_sets.append(outside)
    parts = [evaluate_tree(right, net, operands) if not isinstance(right, int)
             else (operands[right], list(net.labels[right])) for right in chain]
    cur = list(net.labels[0])
    consts, steps = [], []
    for k, ((c, lc), keep) in enumerate(zip(parts, keep_sets)):
        batch = [l for l in cur if l in lc and l in keep]
        summed = [l for l in cur if l in lc and l not in keep]
        t_only = [l for l in cur if l not in lc]
        c_only = [l for l in lc if l not in cur]
        if k + 1 == len(parts):
            c_only = _order_open(c_only, [l for l in net.output if l in c_only], [])
        else:
            nxt = parts[k + 1][1]
            sums_next = [l for l in c_only if l in nxt and l not in keep_sets[k + 1]]
            c_only = _order_open(c_only, [], sums_next)
        nb, nk = math.prod(size[l] for l in batch), math.prod(size[l] for l in summed)
        nc = math.prod(size[l] for l in c_only)
        prepared = c.permute([lc.index(l) for l in batch + summed + c_only]).reshape(nb, nk, nc).contiguous()
        if nb == 1:
            prepared = prepared[0]
        consts.append(prepared)
        labels = batch + t_only + c_only
        perm = [cur.index(l) for l in batch + t_only + summed]
        steps.append(dict(perm=perm, ident=perm == list(range(len(perm))), nb=nb, nk=nk,
                          prev=[-1 if l == "b" else size[l] for l in cur],
                          shape=[-1 if l == "b" else size[l] for l in labels]))
        cur = labels
    out_perm = [cur.index(l) for l in net.output]
    flat = out_perm == list(range(len(out_perm))) and steps[-1]["nb"] == 1 and t_only == ["b"]
    return Program(path.kind, consts, steps, out_perm, flat)


def _mask_of(tree) -> int:
    return 1 << tree if isinstance(tree, int) else _mask_of(tree[0]) | _mask_of(tree[1])


def run_program(program: Program, x: torch.Tensor) -> torch.Tensor:
    """Run the steps of ``program`` on ``x`` (already shaped as the network's operand 0); returns the result in the
    network's output label order (not flattened)."""
    t = x
    for c, s in zip(program.consts, program.steps):
        a = t if s["ident"] else t.permute(s["perm"])
        if s["nb"] == 1:
            t = torch.mm(a.reshape(-1, s["nk"]), c)
        else:
            t = torch.bmm(a.reshape(s["nb"], -1, s["nk"]), c)
        t = t.view(s["shape"])
    perm = program.out_perm
    return t if perm == list(range(len(perm))) else t.permute(perm)


def run_linear(program: Program, x: torch.Tensor, in_modes: Sequence[int],
               bias: torch.Tensor | None) -> torch.Tensor:
    """``program`` on ``x`` of shape ``(rows, in_features)``, plus ``bias``: ``(rows, out_features)``. A flat
    program's last step is one ``addmm`` (bias fused, no final copy)."""
    rows = x.shape[0]
    if not program.flat:
        y = run_program(program, x.reshape(rows, *in_modes)).reshape(rows, -1)
        return y if bias is None else y + bias
    t = x
    last = len(program.steps) - 1
    for k, (c, s) in enumerate(zip(program.consts, program.steps)):
        a = t if s["ident"] else t.reshape(s["prev"]).permute(s["perm"])
        if s["nb"] > 1:
            t = torch.bmm(a.reshape(s["nb"], -1, s["nk"]), c).view(s["shape"])
        elif k < last:
            t = torch.mm(a.reshape(-1, s["nk"]), c)
        elif bias is None:
            t = torch.mm(a.reshape(-1, s["nk"]), c)
        else:
            t = torch.addmm(bias, a.reshape(-1, s["nk"]), c)
    return t.reshape(rows, -1)


# ----------------------------------------------------------------------------------------------- the planner
def version_key(tensors: Sequence[torch.Tensor]) -> tuple:
    """What the cached tensors depend on: each tensor's storage pointer and ``_version`` (moving or casting a tensor
    gives it new storage)."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    """True when autograd records this call: grad mode on and the input or a parameter requires grad."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


@dataclasses.dataclass
class Choice:
    """The plan picked for one input size: ``plan`` (``dense`` / ``merged`` / ``factorized``), every candidate's
    modelled per-call time in microseconds (``times``), per-call MACs (``macs``) and cached elements (``cache``)."""

    plan: str
    times: dict[str, float]
    macs: dict[str, int]
    cache: dict[str, int]
    forced: bool = False


class LinearPlanner:
    """Plans and caches of one factorized linear layer (see the module docstring). The layer provides
    ``network()`` (a :class:`Network` with row label ``"b"``; operand 0 is the input reshaped to its modes),
    ``network_operands()`` (the tensors of operands 1..n), ``in_features``, ``out_features`` and ``bias``."""

    def __init__(self) -> None:
        self.choices: dict[int, Choice] = {}
        self.paths: dict[int, dict[str, Path]] = {}
        self.programs: dict[tuple, Program] = {}
        self.dense: tuple | None = None
        self.net: Network | None = None
        self.fast: dict[tuple, tuple] = {}

    def network(self, layer) -> Network:
        if self.net is None:
            self.net = layer.network()
        return self.net

    def candidates(self, layer, rows: int) -> dict[str, Path]:
        if rows not in self.paths:
            net = self.network(layer).with_rows(rows)
            paths = {"factorized": factorized_path(net), "dense": dense_path(net)}
            merged = merged_path(net)
            if merged is not None:
                paths["merged"] = merged
            if paths["dense"].cache == 0:  # dense weight size: in * out
                paths["dense"].cache = layer.in_features * layer.out_features
            # the dense plan runs as F.linear: one step, rows * in * out MACs
            d = paths["dense"]
            d.macs = rows * layer.in_features * layer.out_features
            d.time = step_time(d.macs, rows * (layer.in_features + layer.out_features) + d.cache,
                               (layer.in_features, layer.out_features), DENSE_OVERHEAD)
            d.steps = 1
            if d.cache > MAX_CACHE:
                del paths["dense"]
            self.paths[rows] = paths
        return self.paths[rows]

    def choose(self, layer, rows: int, mode: str = "auto") -> Choice:
        key = rows if mode == "auto" else (rows, mode)
        if key not in self.choices:
            paths = self.candidates(layer, rows)
            if mode != "auto" and mode not in paths:
                from ..errors import ModelError

                raise ModelError(f"plan {mode!r} is not available for {type(layer).__name__} ({sorted(paths)})")
            plan = mode if mode != "auto" else min(paths, key=lambda k: paths[k].time)
            self.choices[key] = Choice(plan, {k: round(p.time * 1e6, 2) for k, p in paths.items()},
                                       {k: p.macs for k, p in paths.items()}, {k: p.cache for k, p in paths.items()},
                                       forced=mode != "auto")
        return self.choices[key]

    def program(self, layer, rows: int, plan: str) -> Program:
        """The compiled program of ``plan`` for ``rows`` (cached parts rebuilt when the cores changed)."""
        ops = layer.network_operands()
        version = version_key(ops)
        key = (rows, plan)
        prog = self.programs.get(key)
        if prog is None or getattr(prog, "version", None) != version:
            with torch.no_grad(), torch.inference_mode(False):
                prog = compile_program(self.candidates(layer, rows)[plan], self.network(layer),
                                       [None, *[o.detach() for o in ops]])
            prog.version = version
            self.programs = {k: v for k, v in self.programs.items() if getattr(v, "version", None) == version}
            self.programs[key] = prog
        return prog

    def dense_weight(self, layer) -> torch.Tensor:
        ops = layer.network_operands()
        version = version_key(ops)
        if self.dense is None or self.dense[0] != version:
            with torch.no_grad(), torch.inference_mode(False):
                self.dense = (version, layer.full_weight().detach().contiguous())
        return self.dense[1]

    def run(self, layer, x: torch.Tensor, mode: str = "auto") -> torch.Tensor:
        """Evaluate ``layer`` on ``x`` with the plan for its row count. The per-call path is kept short (it is what
        a batch-1 call pays on top of the arithmetic): one version check over the layer's own parameters, then the
        cached weight or program."""
        rows = x.numel() // layer.in_features
        key = (rows, mode)
        version = tuple((p.data_ptr(), p._version) for p in layer._parameters.values() if p is not None)
        fast = self.fast.get(key)
        if fast is None or fast[0] != version:
            choice = self.choose(layer, rows, mode)
            what = (self.dense_weight(layer) if choice.plan == "dense"
                    else self.program(layer, rows, choice.plan))
            fast = self.fast[key] = (version, choice.plan, what, choice.macs[choice.plan] < SINGLE_THREAD_MACS)
        layer.__dict__["last_plan"] = fast[1]  # not nn.Module.__setattr__: this runs every call
        if fast[1] == "dense":
            return F.linear(x, fast[2], layer.bias)
        threads = torch.get_num_threads() if fast[3] else 1
        if threads > 1:
            torch.set_num_threads(1)
        try:
            y = run_linear(fast[2], x.reshape(rows, layer.in_features), layer.in_modes, layer.bias)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
        return y.reshape(*x.shape[:-1], layer.out_features)


class PlannedLinear:
    """Mixin for factorized linear layers: in inference (no autograd), ``forward`` runs the planned evaluation;
    ``plan_mode`` (``"auto"`` or one of :data:`PLANS`) forces a plan; ``last_plan`` names the plan that ran last;
    :meth:`plan_for` gives the choice (and every candidate's modelled time) for a number of input rows."""

    __pack_skip__ = frozenset({"_planner", "last_plan"})

    def planner(self) -> LinearPlanner:
        p = self.__dict__.get("_planner")
        if p is None:
            p = LinearPlanner()
            self.__dict__["_planner"] = p
        return p

    def plan_for(self, rows: int, mode: str | None = None) -> Choice:
        """The plan the layer runs for ``rows`` input rows (``mode`` defaults to ``self.plan_mode``)."""
        return self.planner().choose(self, int(rows), _mode(self, mode))

    def planned_forward(self, x: torch.Tensor, fallback: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        mode = self.__dict__.get("plan_mode", "auto")
        if mode == "auto" and not torch.is_grad_enabled():  # the common inference call, kept short
            return self.planner().run(self, x, "auto")
        if needs_grad(self, x) or _mode(self, None) == "train":
            self.__dict__["last_plan"] = "train"
            return fallback(x)
        return self.planner().run(self, x, _mode(self, None))


def _mode(layer, mode: str | None) -> str:
    mode = getattr(layer, "plan_mode", "auto") if mode is None else mode
    if mode not in MODES + ("train",):
        from ..errors import ModelError

        raise ModelError(f"plan_mode must be one of {', '.join(MODES + ('train',))}, got {mode!r}")
    return mode


__all__ = ["Network", "Path", "Program", "Choice", "LinearPlanner", "PlannedLinear", "factorized_path",
           "merged_path", "dense_path", "compile_program", "run_program", "run_linear", "evaluate_tree", "step_time",
           "PLANS", "MODES", "MAC_RATE", "BANDWIDTH", "STEP_OVERHEAD", "COPY_OVERHEAD", "MAX_CACHE"]


# ----------------------------------------------------------------------------------------------- convolutions
@dataclasses.dataclass
class ConvStep:
    """One ``F.conv2d`` of a convolution plan: weight, bias (or None), stride, padding, dilation, groups. With
    ``fold = f > 1`` the input ``(B, f*C, H, W)`` is read as ``(B*f, C, H, W)`` (the same conv applied to each of
    ``f`` channel groups, as one conv over a larger batch) and the output put back to ``(B, f*O, H', W')``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    fold: int = 1


def run_conv_step(x: torch.Tensor, s: ConvStep) -> torch.Tensor:
    """Apply one :class:`ConvStep`."""
    if s.fold > 1:
        b, c, h, w = x.shape
        x = x.reshape(b * s.fold, c // s.fold, h, w)
    y = F.conv2d(x, s.weight, s.bias, s.stride, s.padding, s.dilation, s.groups)
    if s.fold > 1:
        y = y.reshape(b, s.fold * y.shape[1], y.shape[2], y.shape[3])
    return y


def conv_cost(x_shape: Sequence[int], steps: Sequence[tuple]) -> tuple[float, int, int]:
    """Modelled time (s), MACs and weight elements of a chain of convs on an input ``(B, C, H, W)``; each step is
    ``(out_channels, in_channels_per_group, kh, kw, stride, padding, dilation, groups)`` (a folded conv, see
    :class:`ConvStep`, is given as ``groups = fold``: the same MACs)."""
    b, c, h, w = x_shape
    total_t, total_macs, weights = 0.0, 0, 0
    for o, cg, kh, kw, st, pad, dil, g in steps:
        ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // st[0] + 1
        wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // st[1] + 1
        macs = b * ho * wo * o * cg * kh * kw
        elems = b * c * h * w + b * o * ho * wo + o * cg * kh * kw
        total_t += step_time(macs, elems, (cg * kh * kw, o // g), DENSE_OVERHEAD, HALF_EFF_CONV)
        total_macs += macs
        weights += o * cg * kh * kw
        c, h, w = o, ho, wo
    return total_t, total_macs, weights


class ConvPlanner:
    """Plans and caches of a factorized convolution. The layer provides ``conv_plans(x_shape)`` (plan name ->
    step shapes for :func:`conv_cost`), ``conv_steps(plan)`` (the :class:`ConvStep` list, built from the current
    parameters) and ``network_operands()`` (what the cache depends on)."""

    def __init__(self) -> None:
        self.choices: dict[tuple, Choice] = {}
        self.programs: dict[str, tuple] = {}
        self.fast: dict[tuple, tuple] = {}

    def choose(self, layer, x_shape: tuple, mode: str = "auto") -> Choice:
        key = (x_shape, mode)
        if key not in self.choices:
            plans = layer.conv_plans(x_shape)
            costs = {k: conv_cost(x_shape, v) for k, v in plans.items()}
            if mode != "auto" and mode not in costs:
                from ..errors import ModelError

                raise ModelError(f"plan {mode!r} is not available for {type(layer).__name__} ({sorted(costs)})")
            plan = mode if mode != "auto" else min(costs, key=lambda k: costs[k][0])
            self.choices[key] = Choice(plan, {k: round(v[0] * 1e6, 2) for k, v in costs.items()},
                                       {k: v[1] for k, v in costs.items()}, {k: v[2] for k, v in costs.items()},
                                       forced=mode != "auto")
        return self.choices[key]

    def steps(self, layer, plan: str) -> list[ConvStep]:
        version = version_key(layer.network_operands())
        got = self.programs.get(plan)
        if got is None or got[0] != version:
            with torch.no_grad(), torch.inference_mode(False):
                steps = [dataclasses.replace(s, weight=s.weight.detach().contiguous(),
                                             bias=None if s.bias is None else s.bias.detach())
                         for s in layer.conv_steps(plan)]
            self.programs = {k: v for k, v in self.programs.items() if v[0] == version}
            self.programs[plan] = got = (version, steps)
        return got[1]

    def run(self, layer, x: torch.Tensor, mode: str = "auto") -> torch.Tensor:
        key = (x.shape, mode)
        version = tuple((p.data_ptr(), p._version) for p in layer.version_tensors())
        fast = self.fast.get(key)
        if fast is None or fast[0] != version:
            choice = self.choose(layer, tuple(x.shape), mode)
            fast = self.fast[key] = (version, choice.plan, self.steps(layer, choice.plan),
                                     choice.macs[choice.plan] < SINGLE_THREAD_MACS)
        layer.__dict__["last_plan"] = fast[1]
        steps = fast[2]
        if len(steps) == 1:  # the dense plan: one conv, as the dense layer runs it
            s = steps[0]
            return F.conv2d(x, s.weight, s.bias, s.stride, s.padding, s.dilation, s.groups)
        threads = torch.get_num_threads() if fast[3] else 1
        if threads > 1:
            torch.set_num_threads(1)
        try:
            for s in steps:
                x = run_conv_step(x, s)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
        return x


class PlannedConv(PlannedLinear):
    """Mixin for factorized convolutions: like :class:`PlannedLinear`, with a :class:`ConvPlanner` (plans per input
    shape). ``network_operands()`` must list every parameter the steps use (the bias included)."""

    def planner(self) -> ConvPlanner:
        p = self.__dict__.get("_planner")
        if p is None:
            p = ConvPlanner()
            self.__dict__["_planner"] = p
        return p

    def plan_for(self, x_shape: Sequence[int], mode: str | None = None) -> Choice:
        """The plan the layer runs for inputs of shape ``(B, C, H, W)``."""
        return self.planner().choose(self, tuple(int(v) for v in x_shape), _mode(self, mode))


__all__ += ["ConvStep", "ConvPlanner", "PlannedConv", "conv_cost", "run_conv_step"]

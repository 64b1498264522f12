"""Tests of the diagram combinatorics (diagramc.combinatorics).

The counts are checked three ways (closed recursion, enumeration, an independent
brute force over set partitions) and the values against torch's nested jacfwd.
"""
from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest
import sympy

from diagramc.combinatorics import multi_index as mi
from diagramc.combinatorics import (
    ActivationDerivative,
    Diagram,
    ForwardPass,
    Input,
    Propagator,
    Vertex,
    count,
    diagrams,
    distinct_diagrams,
    evaluate_diagrams,
    iter_diagrams,
    labelled_trees,
)
from diagramc.errors import DiagramcError

# ----------------------------------------------------------------------------- counting

TABLE = {  # BACKGROUND.md: labelled trees by order (rows) and H (columns 1..4)
    1: (1, 1, 1, 1),
    2: (1, 2, 3, 4),
    3: (1, 5, 12, 22),
    4: (1, 15, 60, 154),
    5: (1, 52, 358, 1304),
}


@pytest.mark.parametrize("order", sorted(TABLE))
def test_labelled_trees_table(order):
    assert tuple(labelled_trees(order, H) for H in (1, 2, 3, 4)) == TABLE[order]


def test_background_example():
    assert count((0, 0, 4), 3) == (14, 60)
    ds = diagrams((0, 0, 4), 3)
    assert len(ds) == 14 and sum(d.multiplicity for d in ds) == 60


def strip_layers(node):
    """The tree's shape without layer labels, as a hashable canonical form."""
    if "input" in node:
        return ("x", node["input"])
    return ("v", tuple(sorted(strip_layers(c) for c in node["children"])))


def test_schroeder_numbers_without_layer_labels():
    # With n - 1 hidden layers every tree shape on n leaves fits, so forgetting the
    # layers must give all shapes: with distinct leaves Schroeder's fourth problem
    # (A000311: 1, 1, 4, 26, 236), with one repeated variable A000669 (1, 1, 2, 5, 12).
    shapes = [len({strip_layers(d.to_json()["root"]) for d in diagrams((1,) * n, max(n - 1, 1))})
              for n in range(1, 6)]
    assert shapes == [1, 1, 4, 26, 236]
    shapes = [len({strip_layers(d.to_json()["root"]) for d in diagrams((n,), max(n - 1, 1))})
              for n in range(1, 6)]
    assert shapes == [1, 1, 2, 5, 12]
    assert [distinct_diagrams((n,), 1) for n in range(1, 7)] == [1] * 6


CASES = [
    (alpha, H)
    for H in (0, 1, 2, 3, 4)
    for alpha in [(1,), (2,), (3,), (4,), (5,), (1, 1), (2, 1), (1, 1, 1), (2, 2), (3, 1), (0, 0, 4),
                  (1, 1, 2), (2, 1, 1), (1, 1, 1, 1), (3, 2), (2, 2, 1), (1, 1, 1, 1, 1), (0, 2, 0, 3)]
]


@pytest.mark.parametrize("alpha,H", CASES)
def test_count_agrees_with_enumeration(alpha, H):
    ds = diagrams(alpha, H)
    assert count(alpha, H) == (len(ds), sum(d.multiplicity for d in ds))
    assert len(set(ds)) == len(ds)  # canonical forms really merged
    keys = [d.root.key for d in ds]
    assert keys == sorted(keys)  # the documented order
    assert all(d.multiplicity >= 1 for d in ds)


def test_count_is_symmetric_and_ignores_zeros():
    assert count((2, 0, 1), 3) == count((1, 2), 3) == count((0, 1, 0, 2), 3)


def test_count_is_instant_for_large_cases():
    start = time.perf_counter()
    d, t = count((3, 3, 3, 3), 10)
    assert 0 < d < t
    assert count((20,), 10)[1] == count((1,) * 20, 10)[1] == labelled_trees(20, 10)
    assert count((1,) * 20, 10)[0] == labelled_trees(20, 10)  # distinct leaves: nothing merges
    count((2,) * 10, 10)
    assert time.perf_counter() - start < 1.0


def test_order_zero_and_one_and_linear_network():
    assert count((0, 0), 3) == (1, 1)
    (d0,) = diagrams((0, 0), 3)
    assert d0.root is None and d0.to_json() == {"multiplicity": 1, "root": None}
    assert count((0, 1), 0) == (1, 1)
    (d1,) = diagrams((0, 0, 0, 1), 2)
    assert d1.to_json() == {"multiplicity": 1, "root": {"input": 3}}
    assert count((2, 1), 0) == (0, 0) and diagrams((2, 1), 0) == []


def test_bad_arguments_are_one_line_errors():
    for bad in [lambda: count((1, -1), 2), lambda: count((), 2), lambda: diagrams((2,), -1),
                lambda: diagrams((2,), 1.5), lambda: count("ab", 1), lambda: labelled_trees(-1, 2)]:
        with pytest.raises(DiagramcError) as e:
            bad()
        assert "\n" not in str(e.value)


def test_iteration_is_lazy():
    it = iter_diagrams((4, 4, 4), 8)
    start = time.perf_counter()
    first = list(itertools.islice(it, 3))
    assert time.perf_counter() - start < 0.5
    assert [d.root.layer for d in first] == [1, 2, 2]
    assert first[0].to_json()["root"]["children"] == [{"input": v} for v in (0,) * 4 + (1,) * 4 + (2,) * 4]


# ----------------------------------------------------------------------------- brute force


def set_partitions(items):
    """All partitions of a list into non-empty blocks (independent of diagramc)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first]] + part
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]


def labelled(leaves, max_layer):
    """Trees with distinguishable leaves, topped by a leaf or a vertex on layer <= max_layer."""
    out = [("leaf", leaves[0])] if len(leaves) == 1 else []
    for layer in range(1, max_layer + 1):
        for part in set_partitions(list(leaves)):
            if len(part) >= 2:
                for kids in itertools.product(*(labelled(b, layer - 1) for b in part)):
                    out.append(("vertex", layer, kids))
    return out


def canon(tree, label):
    """A canonical JSON string of a tree, leaves replaced by their variable."""
    if tree[0] == "leaf":
        return json.dumps({"input": label[tree[1]]})
    kids = sorted(canon(k, label) for k in tree[2])
    return json.dumps({"layer": tree[1], "children": [json.loads(k) for k in kids]}, sort_keys=True)


def canon_json(node):
    if "input" in node:
        return json.dumps(node)
    kids = sorted(canon_json(k) for k in node["children"])
    return json.dumps({"layer": node["layer"], "children": [json.loads(k) for k in kids]}, sort_keys=True)


@pytest.mark.parametrize("alpha,H", [(a, H) for (a, H) in CASES if sum(a) <= 5 and H >= 1])
def test_multiplicities_match_brute_force(alpha, H):
    label = mi.indices_of(alpha)
    trees = [t for t in labelled(tuple(range(len(label))), H) if t[0] == "vertex" or len(label) == 1]
    brute: dict[str, int] = {}
    for t in trees:
        key = canon(t, label)
        brute[key] = brute.get(key, 0) + 1
    ours = {canon_json(d.to_json()["root"]): d.multiplicity for d in diagrams(alpha, H)}
    assert ours == brute
    assert len(trees) == labelled_trees(sum(alpha), H)


# ----------------------------------------------------------------------------- the Diagram object


def contract_example():
    return {"multiplicity": 2,
            "root": {"layer": 2, "children": [{"input": 0},
                                               {"layer": 1, "children": [{"input": 0}, {"input": 1}]}]}}


def test_contract_json_example_is_one_of_the_diagrams():
    ds = diagrams((2, 1), 2)
    assert contract_example() in [d.to_json() for d in ds]
    d = Diagram.from_json(contract_example(), hidden_layers=2)
    assert d in ds and d.multi_index == (2, 1) and d.order == 3 and d.multiplicity == 2


@pytest.mark.parametrize("alpha,H", [((0, 0), 2), ((0, 1, 0), 2), ((2, 0, 1), 3), ((0, 3, 0), 3), ((1, 1, 2), 2)])
def test_json_round_trip(alpha, H):
    for d in diagrams(alpha, H):
        data = json.loads(json.dumps(d.to_json()))
        back = Diagram.from_json(data, hidden_layers=H, inputs=len(alpha))
        assert back == d and hash(back) == hash(d) and back.to_json() == d.to_json()


def test_children_are_canonicalised():
    a = Vertex(2, [Vertex(1, [Input(1), Input(0)]), Input(0)])
    b = Vertex(2, [Input(0), Vertex(1, [Input(0), Input(1)])])
    assert a == b and hash(a) == hash(b) and a.to_json() == b.to_json() == contract_example()["root"]


@pytest.mark.parametrize("data", [
    {"multiplicity": 1, "root": contract_example()["root"]},  # wrong multiplicity
    {"multiplicity": 1, "root": {"layer": 1, "children": [{"input": 0}]}},  # k = 1
    {"multiplicity": 1, "root": {"layer": 1, "children": [{"input": 0}, {"layer": 1, "children": [
        {"input": 0}, {"input": 0}]}]}},  # child not on a lower layer
    {"multiplicity": 1, "root": {"layer": 0, "children": [{"input": 0}, {"input": 1}]}},
    {"multiplicity": 1, "root": {"input": -1}},
    {"multiplicity": 1, "root": {"input": 0, "layer": 1}},
    {"multiplicity": 1, "root": {"layer": 1, "children": "no"}},
    {"root_missing": 1},
    {"multiplicity": "2", "root": contract_example()["root"]},
    [1, 2],
])
def test_from_json_rejects_malformed(data):
    with pytest.raises(DiagramcError) as e:
        Diagram.from_json(data)
    assert "\n" not in str(e.value)


def test_from_json_checks_context():
    with pytest.raises(DiagramcError):
        Diagram.from_json(contract_example(), hidden_layers=1)  # vertex on layer 2 > H
    with pytest.raises(DiagramcError):
        Diagram.from_json(contract_example(), inputs=1)
    with pytest.raises(DiagramcError):
        Diagram(Input(0), (2,), 1)


def test_immutable_and_hashable():
    d = diagrams((2, 1), 2)[0]
    with pytest.raises(AttributeError):
        d.multiplicity = 5
    with pytest.raises(AttributeError):
        d.root.layer = 3
    assert len({*diagrams((2, 1), 2), *diagrams((2, 1), 2)}) == count((2, 1), 2)[0]
    assert diagrams((2, 1), 2)[0] != diagrams((2, 1), 3)[0]  # context is part of identity


def test_graph():
    d = Diagram.from_json(contract_example(), hidden_layers=3)
    g = d.graph
    kinds = {n: a["kind"] for n, a in g.nodes(data=True)}
    assert sorted(kinds.values()) == ["input"] * 3 + ["output"] + ["vertex"] * 2
    out = [n for n, k in kinds.items() if k == "output"][0]
    assert g.nodes[out]["layer"] == 4 and g.out_degree(out) == 0 and g.in_degree(out) == 1
    for n, a in g.nodes(data=True):
        if a["kind"] == "input":
            assert g.in_degree(n) == 0 and a["layer"] == 0 and "variable" in a
        if a["kind"] == "vertex":
            assert g.in_degree(n) == a["k"] >= 2
    for u, v, a in g.edges(data=True):
        assert a["propagator"] == (g.nodes[v]["layer"], g.nodes[u]["layer"])
        assert g.nodes[v]["layer"] > g.nodes[u]["layer"]
    assert sorted(a["variable"] for _, a in g.nodes(data=True) if a["kind"] == "input") == [0, 0, 1]
    import networkx as nx
    assert nx.is_arborescence(g.reverse())


def test_expression_hand_check_one_hidden_layer():
    # f = W2 sigma(W1 x + b1) + b2: D^2 f_o = sum_j W2_oj sigma''(z_j) W1_jv^2, one diagram
    (d,) = diagrams((2,), 1)
    assert d.multiplicity == 1
    j = sympy.Symbol("j_1", integer=True, nonnegative=True)
    o = sympy.Symbol("o", integer=True, nonnegative=True)
    n1 = sympy.Symbol("n_1", integer=True, positive=True)
    expected = sympy.Sum(Propagator(2, 1, o, j) * ActivationDerivative(2, 1, j) * Propagator(1, 0, j, 0) ** 2,
                         (j, 0, n1 - 1))
    assert d.expression() == expected


def test_printing():
    d = Diagram.from_json(contract_example(), hidden_layers=2)
    text = d.pretty()
    assert "σ⁽²⁾(z⁽¹⁾[j₁])" in text and "P⁽³←²⁾[o,j₂]" in text and text.lstrip().startswith("n₂")
    tex = d.latex()
    assert tex.startswith("2 ") and r"\sigma^{(2)}\left(z^{(2)}_{j_{2}}\right)" in tex
    assert r"P^{(2 \leftarrow 1)}_{j_{2} j_{1}}" in tex and r"P^{(1 \leftarrow 0)}_{j_{1} 1}" in tex
    assert "sigma^(2)(z^(1)[j_1])" in str(d.expression())
    # two vertices on one layer get distinct indices, even for equal subtrees
    (twin,) = [x for x in diagrams((4,), 2)
               if x.to_json()["root"]["children"][0] == {"layer": 1, "children": [{"input": 0}] * 2}]
    assert {"j_1", "j'_1", "j_2"} <= {str(s) for s in set(twin.expression().variables)}
    assert Diagram.from_json({"multiplicity": 1, "root": {"input": 1}}, hidden_layers=2).latex() == \
        r"P^{(3 \leftarrow 0)}_{o 1}"


# ----------------------------------------------------------------------------- numbers


ACTIVATIONS = {
    "tanh": (sympy.tanh, "tanh"),
    "sin": (sympy.sin, "sin"),
    "sigmoid": (lambda t: 1 / (1 + sympy.exp(-t)), "sigmoid"),
}


def activation_derivative(name):
    t = sympy.Symbol("t")
    expr = ACTIVATIONS[name][0](t)
    cache = {}

    def act(k, z):
        if k not in cache:
            cache[k] = sympy.lambdify(t, sympy.diff(expr, t, k), "numpy")
        return cache[k](z) + np.zeros_like(z)

    return act


def random_net(rng, d, widths, m):
    sizes = [d, *widths, m]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [rng.normal(size=(b, a)) / math.sqrt(a), rng.normal(size=b) * 0.5]
    return params


def torch_derivative(params, x, name, alpha):
    torch = pytest.importorskip("torch")
    from torch.func import jacfwd

    act = getattr(torch, ACTIVATIONS[name][1])
    ps = [torch.tensor(p, dtype=torch.float64) for p in params]

    def f(v):
        h = v
        for l in range(0, len(ps) - 2, 2):
            h = act(ps[l] @ h + ps[l + 1])
        return ps[-2] @ h + ps[-1]

    g = f
    for _ in range(sum(alpha)):
        g = jacfwd(g)
    out = g(torch.tensor(x, dtype=torch.float64))
    return out[(slice(None),) + mi.indices_of(alpha)].numpy()


def random_cases(n, seed, max_order=4, max_H=3):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        d = int(rng.integers(1, 4))
        H = int(rng.integers(1, max_H + 1))
        widths = [int(w) for w in rng.integers(1, 4, size=H)]
        m = int(rng.integers(1, 3))
        order = int(rng.integers(0, max_order + 1))
        alpha = mi.exponents(sorted(rng.integers(0, d, size=order)), d)
        name = sorted(ACTIVATIONS)[int(rng.integers(0, 3))]
        yield rng, d, H, widths, m, alpha, name


@pytest.mark.parametrize("case", list(range(20)))
def test_diagram_sum_equals_torch_derivative(case):
    rng, d, H, widths, m, alpha, name = next(random_cases(1, 1000 + case))
    params = random_net(rng, d, widths, m)
    x = rng.normal(size=d)
    ds = diagrams(alpha, H)
    act = activation_derivative(name)
    ours = sum(dg.multiplicity * dg.evaluate(params, x, act) for dg in ds)
    np.testing.assert_allclose(ours, torch_derivative(params, x, name, alpha), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha,H", [((4,), 3), ((2, 1, 1), 2), ((3, 1), 3), ((1, 1, 1, 1), 2), ((0, 4), 2)])
def test_order_four_repeated_variables_deep(alpha, H):
    rng = np.random.default_rng(7)
    params = random_net(rng, len(alpha), [3] * H, 2)
    x = rng.normal(size=len(alpha))
    act = activation_derivative("tanh")
    contrib = evaluate_diagrams(diagrams(alpha, H), params, x, act)
    assert contrib.shape == (2, count(alpha, H)[0])
    np.testing.assert_allclose(contrib.sum(-1), torch_derivative(params, x, "tanh", alpha), rtol=1e-10, atol=1e-12)


def test_batched_evaluation_matches_single_points():
    rng = np.random.default_rng(3)
    params = random_net(rng, 2, [3, 2], 2)
    xs = rng.normal(size=(5, 2))
    act = activation_derivative("sin")
    ds = diagrams((2, 1), 2)
    batch = evaluate_diagrams(ds, params, xs, act)
    assert batch.shape == (5, 2, len(ds))
    for b in range(5):
        np.testing.assert_allclose(batch[b], evaluate_diagrams(ds, params, xs[b], act), rtol=1e-13)
        np.testing.assert_allclose(ds[1].evaluate(params, xs, act)[b], ds[1].evaluate(params, xs[b], act))
    unweighted = evaluate_diagrams(ds, params, xs, act, weighted=False)
    np.testing.assert_allclose(batch, unweighted * np.array([dg.multiplicity for dg in ds]))


def test_order_zero_is_the_output_and_order_one_the_jacobian():
    rng = np.random.default_rng(5)
    params = random_net(rng, 3, [2, 3], 2)
    x = rng.normal(size=3)
    act = activation_derivative("tanh")
    (d0,) = diagrams((0, 0, 0), 2)
    np.testing.assert_allclose(d0.evaluate(params, x, act), torch_derivative(params, x, "tanh", (0, 0, 0)))
    np.testing.assert_allclose(d0.evaluate(params, x, act, method="sympy"), d0.evaluate(params, x, act))
    for v in range(3):
        alpha = mi.exponents([v], 3)
        (d1,) = diagrams(alpha, 2)
        np.testing.assert_allclose(d1.evaluate(params, x, act), torch_derivative(params, x, "tanh", alpha),
                                   rtol=1e-12)


@pytest.mark.parametrize("case", list(range(8)))
def test_sympy_expression_evaluates_to_the_numpy_value(case):
    rng, d, H, widths, m, alpha, name = next(random_cases(1, 2000 + case, max_order=3, max_H=2))
    widths = [min(w, 2) for w in widths]
    params = random_net(rng, d, widths, m)
    x = rng.normal(size=d)
    act = activation_derivative(name)
    for dg in diagrams(alpha, H):
        np.testing.assert_allclose(dg.evaluate(params, x, act, method="sympy"), dg.evaluate(params, x, act),
                                   rtol=1e-12, atol=1e-14)


def test_forward_pass_propagator_is_the_jacobian():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    params = random_net(rng, 2, [3, 2, 3], 1)
    x = rng.normal(size=2)
    net = ForwardPass(params, x, activation_derivative("tanh"))
    ps = [torch.tensor(p) for p in params]
    # dz^(3)/dh^(1) by autograd
    h1 = torch.tanh(ps[0] @ torch.tensor(x) + ps[1])
    z3 = lambda h: ps[4] @ torch.tanh(ps[2] @ h + ps[3]) + ps[5]
    jac = torch.func.jacfwd(z3)(h1).numpy()
    np.testing.assert_allclose(net.propagator(3, 1)[0], jac, rtol=1e-12)


def test_evaluate_checks_shapes():
    act = activation_derivative("tanh")
    d = diagrams((2,), 1)[0]
    rng = np.random.default_rng(0)
    params = random_net(rng, 1, [2], 1)
    with pytest.raises(DiagramcError, match="hidden layers"):
        d.evaluate(random_net(rng, 1, [2, 2], 1), np.zeros(1), act)
    with pytest.raises(DiagramcError, match="W1"):
        d.evaluate(params, np.zeros(3), act)
    with pytest.raises(DiagramcError, match="method"):
        d.evaluate(params, np.zeros(1), act, method="jax")


@pytest.mark.parametrize("alpha,H", [((2, 1), 2), ((4,), 2), ((1, 1, 1), 3)])
def test_sympy_expression_on_multi_vertex_diagrams(alpha, H):
    # includes equal sibling subtrees, whose vertices must sum over separate indices
    rng = np.random.default_rng(21)
    params = random_net(rng, len(alpha), [2] * H, 2)
    x = rng.normal(size=len(alpha))
    act = activation_derivative("sigmoid")
    ds = diagrams(alpha, H)
    sym = sum(dg.multiplicity * dg.evaluate(params, x, act, method="sympy") for dg in ds)
    np.testing.assert_allclose(sym, torch_derivative(params, x, "sigmoid", alpha), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- pictures


@pytest.mark.parametrize("alpha,H", [((2, 1, 1), 3), ((0, 0), 2), ((0, 1), 2)])
def test_layout_puts_layers_on_levels(alpha, H):
    for d in diagrams(alpha, H):
        g, pos = d.graph, d.layout()
        assert set(pos) == set(g.nodes)
        for n, a in g.nodes(data=True):
            assert pos[n][1] == a["layer"]
        xs = [pos[n][0] for n, a in g.nodes(data=True) if a["kind"] == "input"]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)  # inputs spread in canonical order
        for u, v in g.edges():
            assert pos[u][1] < pos[v][1]


def test_tikz_feynman_source():
    d = Diagram.from_json(contract_example(), hidden_layers=2)
    src = d.tikz()
    assert src.count(r"\begin{feynman}") == src.count(r"\end{feynman}") == 1
    assert src.count(r"\vertex") == 6 and src.count("[dot") == 2
    assert r"\sigma^{(2)}(z^{(1)})" in src and r"\(x_{1}\)" in src and "multiplicity 2" in src
    edges = src.split(r"\diagram*")[1]
    assert edges.count("--") == 5
    assert src.count("{") == src.count("}")
    assert r"\diagram*" not in diagrams((0, 0), 2)[0].tikz()

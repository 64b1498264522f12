"""What users read: printed diagrams and sums, TikZ-Feynman documents, pictures, the
vertex functions of an activation, and the ranked contributions table (CLI and API)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy
import torch

import diagramc
from diagramc.cli import main
from diagramc.combinatorics import (
    Diagram,
    derivative_text,
    diagrams,
    latex_total,
    pretty_total,
    tikz_document,
    total_expression,
)

from .reference import reference_derivatives


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIAGRAMC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _rebuild(e):
    """The same tree with every node evaluated again (unevaluated products become canonical)."""
    return e.func(*[_rebuild(a) for a in e.args]) if e.args else e


def _balanced(tex):
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    return depth == 0


# ----------------------------------------------------------------------------- printing


@pytest.mark.parametrize("alpha,H", [((2, 1), 2), ((0, 0, 4), 3), ((1, 1), 1), ((0, 1), 2), ((0, 0), 2)])
def test_display_form_is_the_expression_in_reading_order(alpha, H):
    for d in diagrams(alpha, H):
        shown = d.expression(with_multiplicity=True, display=True)
        assert _rebuild(shown) == d.expression(with_multiplicity=True)
        if d.root is not None and d.order > 1:
            text = d.pretty()
            # the output line comes first, the input lines last, one factor per line (no powers)
            product = max(text.splitlines(), key=len)
            assert product.split("P")[1].startswith(f"⁽{str(H + 1).translate(str.maketrans('0123456789', '⁰¹²³⁴⁵⁶⁷⁸⁹'))}←")
            assert product.count("⋅P") + 1 == d.graph.number_of_edges() and "**" not in text
            tex = d.latex()
            assert _balanced(tex) and r"\left(P" not in tex  # squared lines are not collapsed
    total = total_expression(diagrams(alpha, H))
    assert total == sympy.Add(*(d.expression(with_multiplicity=True) for d in diagrams(alpha, H)))


def test_latex_of_powers_of_the_pieces_does_not_fail():
    (d,) = diagrams((2,), 1)
    tex = sympy.latex(d.expression())  # the evaluated form has P**2
    assert r"\left(P^{(1 \leftarrow 0)}_{j_{1} 0}\right)^{2}" in tex


def test_total_in_text_and_latex():
    found = diagrams((2, 1), 2)
    text = pretty_total(found)
    lines = text.splitlines()
    assert lines[0] == "∂³fₒ/∂x₀²∂x₁ ="
    assert sum(1 for line in lines if line.startswith("+ ")) == len(found) - 1
    assert "2⋅" in text and "↪" not in text and max(map(len, lines)) > 80  # long lines are not wrapped
    tex = latex_total(found)
    assert tex.startswith("\\begin{align*}\n\\frac{\\partial^{3} f_{o}}{\\partial x_{0}^{2} \\partial x_{1}} &= ")
    assert tex.count(r"&\quad + ") == len(found) - 1 and _balanced(tex)
    assert derivative_text((0, 0)) == "fₒ" and derivative_text((0, 1)) == "∂fₒ/∂x₁"
    assert pretty_total(diagrams((0, 1), 2)) == "∂fₒ/∂x₁ =\n  P⁽³←⁰⁾[o,1]"
    with pytest.raises(diagramc.DiagramcError, match="one derivative"):
        pretty_total(diagrams((2,), 1) + diagrams((1, 1), 1))


def test_short_form():
    (d,) = [d for d in diagrams((2, 1), 2) if d.multiplicity == 2]
    assert d.short() == "σ⁽²⁾(z⁽²⁾; x0, σ⁽²⁾(z⁽¹⁾; x0, x1))"
    assert d.short(unicode=False) == "sigma^(2)(z^(2); x0, sigma^(2)(z^(1); x0, x1))"
    assert diagrams((0, 1), 3)[0].short() == "x1" and diagrams((0,), 3)[0].short() == "f"


def test_tikz_document_is_complete():
    found = diagrams((0, 0, 4), 3)
    doc = tikz_document(found)
    assert doc.count(r"\documentclass") == 1 and doc.rstrip().endswith(r"\end{document}")
    assert r"\usepackage[compat=1.1.0]{tikz-feynman}" in doc
    assert doc.count(r"\begin{tikzpicture}") == len(found) == 14
    assert re.findall(r"\((\d+)\) \\\(\\times (\d+)\\\)", doc) == [(str(i), str(d.multiplicity))
                                                                     for i, d in enumerate(found, 1)]
    assert _balanced(doc)
    # a vertex label sits on the side away from the line to its parent
    (d,) = [d for d in diagrams((2, 2), 2) if d.short() == "σ⁽²⁾(z⁽²⁾; σ⁽²⁾(z⁽¹⁾; x0, x0), σ⁽²⁾(z⁽¹⁾; x1, x1))"]
    assert "label=left" in d.tikz() and "label=right" in d.tikz()


def _tex_has(package):
    if not shutil.which("pdflatex") or not shutil.which("kpsewhich"):
        return False
    return subprocess.run(["kpsewhich", package], capture_output=True, text=True).stdout.strip() != ""


@pytest.mark.skipif(not _tex_has("tikz-feynman.sty"), reason="no TeX installation with tikz-feynman")
def test_tikz_document_and_latex_sum_compile(tmp_path):
    found = diagrams((2, 1), 2)
    (tmp_path / "pictures.tex").write_text(tikz_document(found), encoding="utf-8")
    (tmp_path / "sum.tex").write_text(
        "\\documentclass{article}\n\\usepackage{amsmath}\n\\begin{document}\n" + "\n".join(
            f"\\[ {d.latex()} \\]" for d in found) + "\n" + latex_total(found) + "\n\\end{document}\n",
        encoding="utf-8")
    for name in ("pictures", "sum"):
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-2000:]
        assert (tmp_path / f"{name}.pdf").stat().st_size > 1000


# ----------------------------------------------------------------------------- diagramc diagrams


def test_diagrams_text_lists_each_diagram_and_the_sum(capsys):
    assert main(["diagrams", "--multi-index", "0,0,4", "--hidden-layers", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("D^(0,0,4) f with 3 hidden layers: 14 diagrams, 60 labelled trees\nNotation: ")
    headers = re.findall(r"^diagram (\d+) \(multiplicity (\d+)\): (.+)$", out, flags=re.M)
    assert [int(n) for n, _, _ in headers] == list(range(1, 15))
    assert sum(int(m) for _, m, _ in headers) == 60
    assert "↪" not in out and "∂⁴fₒ/∂x₂⁴ =" in out and "12⋅" in out
    assert main(["diagrams", "--multi-index", "1,0", "--hidden-layers", "1"]) == 0
    assert "1 hidden layer: 1 diagram, 1 labelled tree" in capsys.readouterr().out


def test_diagrams_latex_and_tikz(capsys):
    assert main(["diagrams", "--multi-index", "2,0,1", "--hidden-layers", "2", "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert "% diagram 1, multiplicity 1: sigma^(3)(z^(1); x0, x0, x2)" in out
    assert out.count(r"\begin{align*}") == 1 and _balanced(out)
    assert main(["diagrams", "--multi-index", "2,0,1", "--hidden-layers", "2", "--format", "tikz"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("% TikZ-Feynman pictures of the 4 diagrams") and out.endswith("\\end{document}\n")


def test_diagrams_draw_is_wired(tmp_path, capsys):
    path = tmp_path / "d.png"
    assert main(["diagrams", "--multi-index", "1,1", "--hidden-layers", "2", "--format", "json",
                 "--draw", str(path)]) == 0
    out, err = capsys.readouterr()
    assert path.read_bytes().startswith(b"\x89PNG") and f"drew {len(json.loads(out))} diagrams" in err


# ----------------------------------------------------------------------------- diagramc activation


def test_activation_prints_the_vertex_functions(capsys):
    assert main(["activation", "tanh", "--order", "4"]) == 0
    out = capsys.readouterr().out
    # the vertex weights in s = sigmoid(2x) and c = sigmoid(-2x), each computed on its own: no
    # cancellation where tanh saturates (1 - u^2 would lose every digit there)
    assert "u = tanh(x), u' = 4*c*s; s = Sigmoid(2*x), s' = 2*c*s; c = Sigmoid(-2*x), c' = -2*c*s" in out
    assert "Taylor mode: sigma' = 1 - sigma**2" in out  # the kernels' series follow it (test_kernels)
    for k in range(1, 5):
        assert f"σ{f'({k})'.translate(str.maketrans('0123456789()', '⁰¹²³⁴⁵⁶⁷⁸⁹⁽⁾'))}(x) = " in out
    assert "σ⁽⁵⁾" not in out and "σ⁽¹⁾(x) = 4⋅c⋅s" in out  # sigma' = 1 - tanh^2 = 4 s c
    assert main(["activation", "tanh", "--order", "2", "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert r"\sigma^{(2)}(x) &= 8 c^{2} s - 8 c s^{2} = 8 \operatorname{Sigmoid}^{2}{\left(- 2 x \right)}" in tex
    assert main(["activation", "relu", "--order", "3"]) == 0
    assert "vanishes identically" in capsys.readouterr().out
    assert main(["activation", "x*exp(-x)", "--order", "1"]) == 0
    out = capsys.readouterr().out
    assert "σ⁽¹⁾(x) = " in out and "Taylor mode" not in out
    assert main(["activation", "sigmoid", "--order", "1"]) == 0
    assert "Taylor mode: sigma' = -sigma**2 + sigma" in capsys.readouterr().out


def test_activation_printed_forms_are_the_derivatives():
    act = diagramc.get_activation("sigmoid")
    for k in range(5):
        diff = act.derivative_in_x(k) - sympy.diff(act.expr, act.expr.free_symbols.pop(), k)
        assert abs(float(diff.subs(list(act.expr.free_symbols)[0], 0.37))) < 1e-12


@pytest.mark.parametrize("args,message", [
    (["activation", "nonsense(x)"], "not allowed"),
    (["activation", "tanh", "--order", "13"], "above the supported maximum 12"),
    (["activation", "tanh", "--order", "-1"], "--order"),
])
def test_activation_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("diagramc: error:") and message in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- diagramc contributions


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3), torch.nn.Tanh(),
                                torch.nn.Linear(3, 2)).double()
    path = tmp_path_factory.mktemp("model") / "sd.pt"
    torch.save(model.state_dict(), path)
    return path, [p.detach() for p in diagramc.params_from_torch(model)]


def test_contributions_table(model_file, capsys):
    path, params = model_file
    assert main(["contributions", "--model", str(path), "--activation", "tanh", "--multi-index", "0,1,2",
                 "--at=-0.3,0.2,0.1"]) == 0
    out = capsys.readouterr().out
    want = reference_derivatives(params, torch.tensor([[-0.3, 0.2, 0.1]], dtype=torch.float64), "tanh",
                                 [(0, 1, 2)])[0, :, 0]
    found = diagrams((0, 1, 2), 2)
    for o in range(2):
        head = re.search(rf"^D\^\(0,1,2\) f_{o} at x = \(-0\.3, 0\.2, 0\.1\): (\S+), the sum of {len(found)} diagrams",
                         out, re.M)
        assert head and float(head.group(1)) == pytest.approx(want[o].item(), rel=1e-9)
    rows = re.findall(r"^ +(\d+) +(\d+)  (\S.*?) +(\d+) +(\S+) +(\S+) +(\S+)%$", out, flags=re.M)
    assert len(rows) == 2 * len(found)
    table0 = rows[: len(found)]
    assert [int(r[0]) for r in table0] == list(range(1, len(found) + 1))
    assert sorted(int(r[1]) for r in table0) == list(range(1, len(found) + 1))  # numbered as `diagrams` lists
    for rank, number, label, mult, value, contribution, share in table0:
        assert label == found[int(number) - 1].short() and int(mult) == found[int(number) - 1].multiplicity
        assert float(contribution) == pytest.approx(int(mult) * float(value), rel=1e-5)
    contributions = [float(r[5]) for r in table0]
    assert contributions == sorted(contributions, key=abs, reverse=True)
    assert sum(float(r[6]) for r in table0) == pytest.approx(100, abs=0.05)


def test_contributions_json_top_and_output(model_file, capsys):
    path, params = model_file
    assert main(["contributions", "--model", str(path), "--activation", "tanh", "--multi-index", "0,0,4",
                 "--output", "1", "--top", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["multi_index"] == [0, 0, 4] and data["at"] == [0.0, 0.0, 0.0] and data["diagrams"] == 5
    (out,) = data["outputs"]
    assert out["output"] == 1 and len(out["contributions"]) == 3
    arch = diagramc.Architecture((3, 4, 3, 2), "tanh")
    every = diagramc.contributions(arch, [p.numpy() for p in params], np.zeros(3), (0, 0, 4))[1]
    assert out["derivative"] == pytest.approx(every.sum(), rel=1e-12)
    top = sorted(range(5), key=lambda i: -abs(every[i]))[:3]
    assert [r["index"] for r in out["contributions"]] == top
    assert Diagram.from_json({"root": out["contributions"][0]["tree"]}, hidden_layers=2, inputs=3) \
        == diagrams((0, 0, 4), 2)[top[0]]


def test_contributions_generates_the_kernel_by_its_regenerate_command(tmp_path, capsys):
    assert main(["contributions", "--multi-index", "2,1", "--hidden-layers", "2", "--activation", "sigmoid",
                 "-o", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    source = open(first, encoding="utf-8").read()
    command = source.splitlines()[1].removeprefix("#   diagramc ").split()
    assert command[:1] == ["contributions"] and command[-1] == str(tmp_path / "a")
    assert main(command) == 0
    assert capsys.readouterr().out.strip() == first and open(first, encoding="utf-8").read() == source


@pytest.mark.parametrize("extra,message", [
    (["--at", "1,2"], "--at gives 2 coordinates; the model has 3 inputs"),
    (["--at", "1,nan,2"], "malformed point"),
    (["--output", "2"], "--output 2 is out of range: the model has 2 outputs"),
    (["--multi-index", "1,1"], "has 2 entries; the model has 3 inputs"),
    (["--top", "0"], "--top"),
])
def test_contributions_errors_with_a_model(model_file, extra, message, capsys):
    path, _ = model_file
    args = ["contributions", "--model", str(path), "--activation", "tanh"]
    args += extra if "--multi-index" in extra else ["--multi-index", "1,1,0"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("diagramc: error:") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["--hidden-layers", "2"], "--hidden-layers needs --activation"),
    (["--hidden-layers", "2", "--activation", "tanh", "--json"], "--json needs --model"),
    (["--hidden-layers", "2", "--activation", "tanh", "--at", "1,2"], "--at needs --model"),
    ([], "one of the arguments --model --hidden-layers is required"),
    (["--model", "/nonexistent.pt", "--activation", "tanh"], "does not exist"),
])
def test_contributions_errors(args, message, capsys):
    assert main(["contributions", "--multi-index", "1,1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diagramc: error:") and message in err and err.count("\n") == 1


def test_contributions_pickled_model_needs_trust(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    assert main(["contributions", "--model", str(path), "--multi-index", "1,1"]) == 2
    assert "--trust-model" in capsys.readouterr().err
    assert main(["contributions", "--model", str(path), "--multi-index", "1,1", "--trust-model"]) == 0
    assert "(sigmoid MLP 2-3-1)" in capsys.readouterr().out

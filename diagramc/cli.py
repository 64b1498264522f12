"""Command line: count, diagrams, compile, contributions, activation, demo, bench (CONTRACT.md section 6).

Every error a user can cause is one line on stderr beginning ``diagramc: error:``,
exit status 2, and no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from . import __version__
from .combinatorics import multi_index as mi
from .errors import DiagramcError, set_symbolic_deadline, symbolic_deadline_from_environment, symbolic_step


class _Parser(argparse.ArgumentParser):
    """argparse with the contract's one-line error discipline."""

    def error(self, message):
        raise DiagramcError(message)


def _int_arg(name, minimum=0):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {minimum}, got {value}")
        return value

    return parse


def _multi_index_arg(text):
    try:
        return mi.parse(text)
    except DiagramcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _operator_term_arg(text):
    """'2,0,0:-1.5' -> ((2, 0, 0), -1.5); '1:2,0,0:-1.5' -> ((1, (2, 0, 0)), -1.5) (output 1)."""
    import math

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        alpha = mi.parse(parts[-2])
        coefficient = float(parts[-1])
        if not math.isfinite(coefficient):
            raise ValueError
        if len(parts) == 3:
            output = parts[0].strip()
            if not output.isdigit():
                raise ValueError
            return (int(output), alpha), coefficient
    except (ValueError, DiagramcError):
        raise argparse.ArgumentTypeError(
            f"malformed operator term {text!r}: expected ALPHA:COEF such as 2,0,0:-1.5, or OUTPUT:ALPHA:COEF"
        ) from None
    return alpha, coefficient


def _dims_arg(text):
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"malformed dims {text!r}: expected comma-separated input indices such as 1,2")
    return tuple(int(p) for p in parts)


def _point_arg(text):
    import math

    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"malformed point {text!r}: expected comma-separated finite numbers such as 0.1,-0.5,2"
        )
    return values


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _layer_sizes_arg(text):
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2 or any(not p.isdigit() or int(p) < 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"malformed layer sizes {text!r}: expected comma-separated positive integers d,n1,...,nH,m such as 64,32,32,1"
        )
    return tuple(int(p) for p in parts)


def _device_arg(text):
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"malformed device {text!r}: expected cpu, cuda or cuda:N")
    return text


def _cell_arg(text):
    parts = text.split(",")
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"malformed cell {text!r}: expected D,N or D,N,BATCH, positive integers such as 4,5 or 16,3,64")
    return tuple(int(p) for p in parts)


def _backends_arg(text):
    names = tuple(b.strip() for b in text.split(","))
    if not names or any(b not in ("torch", "numpy") for b in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"malformed backends {text!r}: expected torch,numpy, torch or numpy")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diagramc", description="Symbolic diagram compiler for the Taylor expansion of MLPs.")
    parser.add_argument("--version", action="version", version=f"diagramc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("count", help="count the diagrams of a derivative (instant, no enumeration)")
    p.add_argument("--multi-index", required=True, type=_multi_index_arg, help="e.g. 2,0,1")
    p.add_argument("--hidden-layers", required=True, type=_int_arg("--hidden-layers", 1))
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("diagrams", help="list the diagrams of a derivative")
    p.add_argument("--multi-index", required=True, type=_multi_index_arg)
    p.add_argument("--hidden-layers", required=True, type=_int_arg("--hidden-layers", 1))
    p.add_argument("--format", choices=("text", "latex", "json", "tikz"), default="text")
    p.add_argument("--draw", metavar="FILE", help="also draw all diagrams into FILE (.png, .svg or .pdf)")
    p.add_argument("--force", action="store_true", help="list even when there are very many diagrams")

    p = sub.add_parser("compile", help="generate a NumPy or PyTorch Taylor-coefficient or differential-operator kernel")
    p.add_argument("--order", type=_int_arg("--order", 0), help="highest order (required unless an operator is asked for)")
    p.add_argument("--operator", choices=("laplacian", "biharmonic", "divergence"),
                   help="compile this differential operator instead (apply(params, x))")
    p.add_argument("--operator-term", action="append", type=_operator_term_arg, metavar="[OUTPUT:]ALPHA:COEF",
                   help="a term c D^alpha of an operator, e.g. 2,0,0:-1.5 (repeatable); OUTPUT: mixes outputs")
    p.add_argument("--dims", type=_dims_arg, help="inputs the laplacian or biharmonic acts on, e.g. 1,2")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="FILE", help="state dict or TorchScript file of an nn.Sequential MLP")
    src.add_argument("--layer-sizes", type=_layer_sizes_arg, help="d,n1,...,nH,m such as 64,32,32,1")
    p.add_argument("--activation", help="tanh, sigmoid, softplus, sin, gelu, silu, identity, relu, or an expression in x")
    p.add_argument("--multi-index", action="append", type=_multi_index_arg, help="compile only these (repeatable)")
    p.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    p.add_argument("-o", "--out-dir", default=None, help="folder for the module (default: the per-user cache)")
    p.add_argument("--trust-model", action="store_true", help="allow unpickling a whole pickled module (runs code)")
    p.add_argument("--force", action="store_true", help="compile even above the size limit on distinct coefficients")
    p.add_argument("--plan", action="store_true", help="print the kernel's plan (what it does, what it costs); write nothing")
    p.add_argument("--strategy", choices=("products", "directions"), default=None,
                   help="the Taylor kernel's algorithm, instead of the plan's choice: multivariate products, or "
                        "univariate series along directions and exact interpolation")
    p.add_argument("--json", action="store_true", help="with --plan: the plan as JSON")

    p = sub.add_parser(
        "contributions",
        help="which diagrams make up a coefficient: each diagram's term of D^alpha f, ranked",
        description="With --model: evaluate every diagram of D^alpha f of the model at one point and print "
        "them ranked by size (diagram, multiplicity, value, share of the total). With --hidden-layers: "
        "only generate the per-diagram kernel and print its path.",
    )
    p.add_argument("--multi-index", required=True, type=_multi_index_arg, help="e.g. 2,0,1")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="FILE", help="state dict or TorchScript file of an nn.Sequential MLP")
    src.add_argument("--hidden-layers", type=_int_arg("--hidden-layers", 0),
                     help="generate the kernel for this depth only (needs --activation)")
    p.add_argument("--activation", help="tanh, sigmoid, softplus, sin, gelu, silu, identity, relu, or an expression in x")
    p.add_argument("--at", type=_point_arg, metavar="X1,X2,...", help="the point x (default: the origin); write --at=-1,2 when it starts with a minus")
    p.add_argument("--output", type=_int_arg("--output", 0), help="only this output (0-based; default: all)")
    p.add_argument("--top", type=_int_arg("--top", 1), help="only the N largest contributions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-o", "--out-dir", default=None, help="folder for the kernel (default: the per-user cache)")
    p.add_argument("--trust-model", action="store_true", help="allow unpickling a whole pickled module (runs code)")

    p = sub.add_parser("activation", help="the vertex functions sigma^(k) of an activation, as sympy has them")
    p.add_argument("name", help="tanh, sigmoid, softplus, sin, gelu, silu, identity, relu, or an expression in x")
    p.add_argument("--order", type=_int_arg("--order", 0), default=4, help="highest derivative (default 4)")
    p.add_argument("--format", choices=("text", "latex"), default="text")

    p = sub.add_parser("demo", help="the Born-series study: iterative NN perturbation theory")
    p.add_argument("--quick", action="store_true", help="a smaller run (minutes) that still shows the effect")
    p.add_argument("--out", default="demo-out", help="folder for the report, plots and networks")
    p.add_argument("--seed", type=_int_arg("--seed", 0), default=0)

    p = sub.add_parser("qft-demo", help="neural networks as field theories: correlators, GP deviation, quartic coupling")
    p.add_argument("--quick", action="store_true", help="a smaller run (a minute or two) that still shows the effect")
    p.add_argument("--out", default="qft-demo-out", help="folder for report.json, report.md and the plots")

    p = sub.add_parser("ode-demo", help="Kelly et al.'s toy neural ODE, trained with and without the Taylor regularizer")
    p.add_argument("--quick", action="store_true", help="fewer training iterations (minutes on 2 cores)")
    p.add_argument("--out", default="ode-demo-out", help="folder for report.json, report.md, plots and networks")

    p = sub.add_parser("bench", help="time our kernels against torch.func and JAX side by side")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and cells")
    p.add_argument("--out", default="bench-out", help="folder for the JSON and the plot")
    p.add_argument("--device", type=_device_arg, default="cpu",
                   help="where the torch kernels and torch.func run: cpu or cuda[:N] (JAX uses its default device)")
    p.add_argument("--threads", type=_int_arg("--threads", 1),
                   help="run every method on N cores (the process pinned to them) with N torch threads "
                        "(default: all cores, each library's own threads)")
    p.add_argument("--cells", nargs="+", type=_cell_arg, metavar="D,N[,BATCH]",
                   help="cells to time instead of the issue's set, e.g. 4,5 16,3,64 (batch 256 by default)")
    p.add_argument("--backends", default="torch,numpy", type=_backends_arg,
                   help="our backends to time: torch,numpy (default), torch or numpy")
    return parser


def _count(args) -> None:
    from .combinatorics import count

    distinct, labelled = count(args.multi_index, args.hidden_layers)
    if args.json:
        print(
            json.dumps(
                {
                    "multi_index": list(args.multi_index),
                    "hidden_layers": args.hidden_layers,
                    "diagrams": distinct,
                    "labelled_trees": labelled,
                }
            )
        )
    else:
        alpha = ",".join(map(str, args.multi_index))
        print(f"D^({alpha}) f with {args.hidden_layers} hidden layers: {distinct} diagrams, {labelled} labelled trees")


# Listing more diagrams than this needs --force: the count comes first, nothing hangs.
MAX_LISTED_DIAGRAMS = 5000


def _diagrams(args) -> None:
    from . import combinatorics as dg

    distinct, _ = dg.count(args.multi_index, args.hidden_layers)
    if distinct > MAX_LISTED_DIAGRAMS and not args.force:
        raise DiagramcError(
            f"{distinct} diagrams for multi-index {','.join(map(str, args.multi_index))} with "
            f"{args.hidden_layers} hidden layers; pass --force to list more than {MAX_LISTED_DIAGRAMS}"
        )
    found = dg.diagrams(args.multi_index, args.hidden_layers)
    if args.draw:
        from .combinatorics.draw import draw

        draw(found, args.draw)
    alpha = ",".join(map(str, args.multi_index))
    summary = (f"D^({alpha}) f with {_plural(args.hidden_layers, 'hidden layer')}: {_plural(len(found), 'diagram')}, "
               f"{_plural(sum(d.multiplicity for d in found), 'labelled tree')}")
    if args.format == "json":
        print(json.dumps([d.to_json() for d in found], indent=1))
    elif args.format == "latex":
        print(f"% {summary}")
        for i, d in enumerate(found, 1):
            print(f"% diagram {i}, multiplicity {d.multiplicity}: {d.short(unicode=False)}")
            print(d.latex())
        print("% the whole derivative, the sum of the diagrams weighted by their multiplicities (amsmath)")
        print(dg.latex_total(found))
    elif args.format == "tikz":
        print(dg.tikz_document(found), end="")
    else:
        print(summary)
        top = str(args.hidden_layers + 1).translate(dg.SUPERSCRIPTS)
        print(f"Notation: P⁽ᵐ←ˡ⁾[i,j] = ∂z⁽ᵐ⁾[i]/∂h⁽ˡ⁾[j], the propagator (h⁽⁰⁾ = x, z⁽{top}⁾ = f); "
              "σ⁽ᵏ⁾(z⁽ˡ⁾[j]) a vertex on hidden layer l; n_l the width of layer l; o the output.")
        print()
        for i, d in enumerate(found, 1):
            print(f"diagram {i} (multiplicity {d.multiplicity}): {d.short()}")
            print(d.pretty())
            print()
        print("The whole derivative, the sum of the diagrams weighted by their multiplicities:")
        print(dg.pretty_total(found))
    if args.draw:
        print(f"drew {len(found)} diagrams to {args.draw}", file=sys.stderr)


def _compile(args) -> None:
    from .compiler import compile
    from .network import Architecture, load_architecture

    operator = _operator_request(args)
    if args.model:
        arch, _ = load_architecture(args.model, args.activation, trust=args.trust_model)
    else:
        if not args.activation:
            raise DiagramcError("--layer-sizes needs --activation (a name such as tanh, or an expression in x)")
        arch = Architecture(args.layer_sizes, args.activation)
    if args.json and not args.plan:
        raise DiagramcError("--json goes with --plan (compile prints the path of the module it wrote)")
    if args.plan:
        from .compiler.plan import make_plan, plan_json
        from .compiler.spec import KernelSpec

        plan = make_plan(KernelSpec.create(arch, args.order, args.backend, args.multi_index, args.force, args.strategy))
        print(plan_json(plan) if args.json else plan.explain())
        return
    out_dir = args.out_dir
    if operator is not None:
        from .compiler.operators import compile_operator

        module = compile_operator(arch, operator, args.backend, dims=args.dims, out_dir=out_dir)
    else:
        module = compile(arch, args.order, args.backend, multi_indices=args.multi_index, out_dir=out_dir,
                         force=args.force, strategy=args.strategy)
    print(Path(module.__file__))


def _operator_request(args):
    """The operator asked for on the command line (a name or a mapping), or None for a Taylor kernel."""
    if args.operator is None and not args.operator_term:
        if args.dims is not None:
            raise DiagramcError("--dims needs --operator laplacian or biharmonic")
        if args.order is None:
            raise DiagramcError("the following arguments are required: --order (or --operator / --operator-term)")
        return None
    if args.operator is not None and args.operator_term:
        raise DiagramcError("give --operator or --operator-term, not both")
    if args.order is not None:
        raise DiagramcError("--order does not apply to an operator: its terms give the orders")
    if args.multi_index:
        raise DiagramcError("--multi-index does not apply to an operator: use --operator-term ALPHA:COEF")
    if args.operator is not None:
        return args.operator
    operator = {}
    for key, c in args.operator_term:
        operator[key] = operator.get(key, 0.0) + c
    return operator


def _contributions(args) -> None:
    from .compiler.contributions import compile_contributions, contributions, format_table, ranked
    from .combinatorics import diagrams
    from .network import load_architecture

    if args.model is None:
        if not args.activation:
            raise DiagramcError("--hidden-layers needs --activation (a name such as tanh, or an expression in x)")
        extra = [f for f, v in (("--at", args.at), ("--output", args.output), ("--top", args.top),
                                ("--json", args.json)) if v not in (None, False)]
        if extra:
            raise DiagramcError(f"{extra[0]} needs --model: without weights there is nothing to evaluate")
        module = compile_contributions(args.activation, args.multi_index, args.hidden_layers, args.out_dir)
        print(Path(module.__file__))
        return

    import numpy as np

    arch, params = load_architecture(args.model, args.activation, trust=args.trust_model)
    d, m = arch.inputs, arch.outputs
    if len(args.multi_index) != d:
        raise DiagramcError(f"multi-index {','.join(map(str, args.multi_index))} has {len(args.multi_index)} "
                            f"entries; the model has {d} inputs")
    at = args.at if args.at is not None else (0.0,) * d
    if len(at) != d:
        raise DiagramcError(f"--at gives {len(at)} coordinates; the model has {d} inputs")
    if args.output is not None and args.output >= m:
        raise DiagramcError(f"--output {args.output} is out of range: the model has {m} outputs (0..{m - 1})")
    arrays = [np.asarray(p.detach().cpu().numpy(), dtype=np.float64) for p in params]
    values = contributions(arch, arrays, np.asarray([at], dtype=np.float64), args.multi_index, args.out_dir)[0]
    found = diagrams(args.multi_index, arch.hidden_layers)
    outputs = [args.output] if args.output is not None else list(range(m))
    alpha = ",".join(map(str, args.multi_index))
    point = "(" + ", ".join(f"{v:g}" for v in at) + ")"
    if args.json:
        print(json.dumps({
            "multi_index": list(args.multi_index),
            "at": list(at),
            "layer_sizes": list(arch.layer_sizes),
            "activation": arch.activation.name,
            "diagrams": len(found),
            "outputs": [{"output": o, "derivative": float(values[o].sum()),
                         "contributions": ranked(found, values[o], args.top)} for o in outputs],
        }, indent=1))
        return
    for n, o in enumerate(outputs):
        if n:
            print()
        total = float(values[o].sum())
        print(f"D^({alpha}) f_{o} at x = {point}: {total:.10g}, the sum of {_plural(len(found), 'diagram')} "
              f"({arch.activation.name} MLP {'-'.join(map(str, arch.layer_sizes))})")
        if not found:
            print("no diagrams: a network without hidden layers is linear, every derivative of order >= 2 is zero")
            continue
        if sum(args.multi_index) >= 2 and arch.activation.vanishing_vertices(sum(args.multi_index)):
            print(f"every vertex sigma^(k), k >= 2, of {arch.activation.name} vanishes: all diagrams are zero")
        rows = ranked(found, values[o], args.top)
        print(format_table(rows, total))
        shown = f"the {args.top} largest of {len(found)}; " if args.top is not None and args.top < len(found) else ""
        print(f"({shown}# numbers the diagrams as `diagramc diagrams --multi-index {alpha} "
              f"--hidden-layers {arch.hidden_layers}` lists them)")


def _activation(args) -> None:
    from .activations import get_activation
    from .compiler.spec import MAX_ORDER

    if args.order > MAX_ORDER:
        raise DiagramcError(f"--order {args.order} is above the supported maximum {MAX_ORDER}")
    act = get_activation(args.name)
    with symbolic_step(f"deriving {act.name!r} to order {args.order}"):
        lines = _activation_lines(act, args.order, args.format)
    for line in lines:
        print(line)


def _activation_lines(act, order, fmt):
    """sigma^(k), k = 0..order: as the compiler differentiates it (in the auxiliary functions) and in x."""
    import sympy as sp

    from .combinatorics import SUPERSCRIPTS

    latex = fmt == "latex"

    def equation(lhs, rhs_forms):
        """lhs = form1 = form2, multi-line forms side by side on a common baseline."""
        if latex:
            return [lhs + " &= " + " = ".join(rhs_forms) + r" \\"]
        from sympy.printing.pretty.stringpict import prettyForm, stringPict

        pieces = [prettyForm(lhs)]
        for rhs in rhs_forms:
            pieces += [prettyForm(" = "), rhs]
        return prettyForm(*stringPict.next(*pieces)).render(wrap_line=False).split("\n")

    def form(e):
        if latex:
            return sp.latex(e)
        from sympy.printing.pretty.pretty import PrettyPrinter

        return PrettyPrinter({"use_unicode": True, "wrap_line": False})._print(e)

    comment = "% " if latex else ""
    lines = [f"{comment}activation {act.name}: sigma(x) = {sp.sstr(act.expr)}"]
    if act.note:
        lines.append(f"{comment}note: {act.note}")
    if act.auxiliaries:
        aux = "; ".join(f"{a.symbol} = {sp.sstr(a.definition)}, {a.symbol}' = {sp.sstr(a.derivative)}"
                        for a in act.auxiliaries)
        lines.append(f"{comment}auxiliary functions (the compiler differentiates polynomials in them): {aux}")
    if act.quadratic_equation():
        c0, c1, c2 = (sp.nsimplify(c) for c in act.quadratic_equation())
        p = sp.sstr(c0 + c1 * sp.Symbol("sigma") + c2 * sp.Symbol("sigma") ** 2)
        lines.append(f"{comment}Taylor mode: sigma' = {p}, so the kernels carry series through this equation "
                     "from layer 2 on where that does less work (NumPy from order 4, torch on a CPU from order 7)")
    if order >= 2 and act.vanishing_vertices(order):
        lines.append(f"{comment}every vertex sigma^(k), k >= 2, vanishes identically: "
                     "derivatives of order >= 2 of the network are zero")
    if latex:
        lines.append(r"\begin{align*}")
    for k in range(order + 1):
        lhs = (r"\sigma^{(%d)}(x)" % k) if latex else ("σ" + f"({k})".translate(SUPERSCRIPTS) + "(x)" if k else "σ(x)")
        if not act.symbolic(k):  # sympy's derivatives grew past the size bound
            from .activations import SYMBOLIC_SIZE_BOUND

            lines.append(f"{comment}sigma^({k}) to sigma^({order}): past the size bound ({SYMBOLIC_SIZE_BOUND} "
                         "operations); the compiler takes them from Taylor arithmetic on the expression tree")
            break
        forms = [form(act.derivative(k))]
        if act.auxiliaries:
            in_x = act.derivative_in_x(k)
            if in_x != act.derivative(k):
                forms.append(form(in_x))
        lines += equation(lhs, forms)
        if not latex and k < order:
            lines.append("")
    if latex:
        lines[-1] = lines[-1].removesuffix(r" \\")
        lines.append(r"\end{align*}")
    return lines


def _demo(args) -> None:
    from .applications.demo import run_demo, summary

    print(summary(run_demo(args.out, quick=args.quick, seed=args.seed)))


def _qft_demo(args) -> None:
    from .fieldtheory.demo import run_qft_demo, summary

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise DiagramcError(f"--out {args.out} exists and is not a folder")
    try:
        report = run_qft_demo(args.out, quick=args.quick)
    except ValueError as exc:  # the field-theory API's bad input: still one line
        raise DiagramcError(str(exc)) from None
    except OSError as exc:
        raise DiagramcError(f"--out {args.out}: cannot write the report ({exc.strerror or exc})") from None
    print(summary(report))


def _ode_demo(args) -> None:
    from .applications.ode_demo import run_ode_demo, summary

    print(summary(run_ode_demo(args.out, quick=args.quick)))


def _bench(args) -> None:
    from .bench import run_bench

    if args.device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DiagramcError(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
        index = int(args.device.partition(":")[2] or 0)
        if index >= count:
            raise DiagramcError(f"--device {args.device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    run_bench(args.out, quick=args.quick, cells=args.cells, backends=args.backends, device=args.device,
              threads=args.threads)


COMMANDS = {"count": _count, "diagrams": _diagrams, "compile": _compile, "contributions": _contributions,
            "activation": _activation, "demo": _demo, "qft-demo": _qft_demo, "ode-demo": _ode_demo,
            "bench": _bench}


def main(argv=None) -> int:
    try:
        set_symbolic_deadline(symbolic_deadline_from_environment())  # every symbolic step it starts
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except DiagramcError as exc:
        print(f"diagramc: error: {str(exc).splitlines()[0] if str(exc) else 'invalid input'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diagramc: error: interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug of ours: still one line; DIAGRAMC_DEBUG=1 shows the traceback
        if os.environ.get("DIAGRAMC_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"diagramc: error: internal error ({type(exc).__name__}: {first}); "
              "rerun with DIAGRAMC_DEBUG=1 and report it", file=sys.stderr)
        return 2
    finally:
        set_symbolic_deadline(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Replaying a generated torch kernel as CUDA graphs: for inference and training on a GPU.

A torch kernel launches a few hundred small GPU kernels per call; at the batches of the
bench each runs for microseconds, so an eager call spends most of its time launching
them. A CUDA graph records the launches once and replays them as one, which is what
``torch.cuda.graphs`` is for. A replay runs only on inputs of the shapes, dtypes and
device it was recorded with.

    evaluate = diagramc.cuda_graphed(mod.derivatives, params, x)   # records one call
    out = evaluate(params, x_new)                                  # replays it (no_grad)

    train = diagramc.cuda_graphed(mod.derivatives, params, x, differentiable=True)
    train(params, x).square().sum().backward()   # forward and backward, each one graph
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

from .errors import DiagramcError


def cuda_graphed(function: Callable, params: Sequence, x, *, differentiable: bool = False,
                 warmup: int = 3) -> Callable:
    """``function(params, x)`` (a generated kernel's ``derivatives`` or ``taylor_coefficients``)
    recorded as CUDA graphs on x's device; returns ``evaluate(params, x)``.

    Without ``differentiable``, ``evaluate`` copies its arguments into the recorded buffers,
    replays the graph under no_grad and returns a new tensor. With it, the forward and the
    backward pass are recorded (``torch.cuda.make_graphed_callables``), and ``evaluate``'s
    result carries gradients to ``params`` and ``x`` wherever they require grad, as they did
    when recorded (that state must not change; double backward is not supported). The
    graph holds one forward pass at a time: a call while the last result still awaits its
    backward raises ValueError (its saved tensors would be overwritten).
    ``evaluate`` raises ValueError when a shape, dtype, device or requires_grad state
    differs from the recorded one.
    """
    import torch

    if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
        raise DiagramcError("cuda_graphed needs x as a torch tensor on a CUDA device")
    if warmup < 1:
        raise DiagramcError(f"cuda_graphed needs warmup >= 1 (the first call builds the module's device "
                            f"tables, which a graph cannot record), got {warmup}")
    recorded = [p.detach().clone().requires_grad_(p.requires_grad and differentiable) for p in params]
    recorded.append(x.detach().clone().requires_grad_(x.requires_grad and differentiable))

    def check(args):
        if len(args) != len(recorded):
            raise ValueError(f"params has {len(args) - 1} tensors; the graph was recorded with {len(recorded) - 1}")
        for i, (got, want) in enumerate(zip(args, recorded)):
            name = "x" if i == len(recorded) - 1 else f"params[{i}]"
            if not isinstance(got, torch.Tensor):
                raise ValueError(f"{name} is {type(got).__name__}; the graph was recorded with a tensor")
            state = (tuple(got.shape), got.dtype, got.device)
            if state != (tuple(want.shape), want.dtype, want.device):
                raise ValueError(f"{name} is {state[0]} {state[1]} on {state[2]}; the graph was recorded "
                                 f"with {tuple(want.shape)} {want.dtype} on {want.device}")
            if differentiable and got.requires_grad != want.requires_grad:
                raise ValueError(f"{name} has requires_grad={got.requires_grad}; the graph was recorded "
                                 f"with requires_grad={want.requires_grad}")

    if differentiable:
        n = len(recorded) - 1
        with torch.cuda.device(x.device):
            graphed = torch.cuda.make_graphed_callables(
                lambda *args: function(list(args[:n]), args[n]), tuple(recorded), num_warmup_iters=warmup)
        pending = []  # the last result's graph node, until its backward has run or it is freed

        def evaluate(params, x):
            check(list(params) + [x])
            if pending and pending[0]() is not None:
                raise ValueError("the previous result of this graph still awaits its backward: its saved "
                                 "tensors live in the graph's buffers, which a new call would overwrite "
                                 "(run backward first, or drop that result)")
            pending.clear()
            out = graphed(*params, x)
            if out.grad_fn is not None:
                node = out.grad_fn
                pending.append(weakref.ref(node))
                node.register_hook(lambda *_: pending.clear())  # backward has run: the buffers are free
            return out.clone()  # the output buffer too is the graph's

        return evaluate

    *static_params, static_x = recorded
    with torch.no_grad(), torch.cuda.device(x.device):
        side = torch.cuda.Stream(device=x.device)  # warm-up builds the module's device tables off the graph
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                function(static_params, static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = function(static_params, static_x)

    def replay(params, x):
        check(list(params) + [x])
        with torch.no_grad():
            _copy_all(recorded, list(params) + [x])
            graph.replay()
            return static_out.clone()

    replay.graph = graph
    return replay


def _copy_all(targets, sources) -> None:
    """Each source into its target: one kernel for all where torch has _foreach_copy_ (a
    replay's copies are launched one by one, outside the graph, and at one point they cost
    as much as a fifth of the call), else one copy each."""
    import torch

    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(targets, sources)
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)

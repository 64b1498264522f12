"""Replaying a generated torch kernel as one CUDA graph: for inference on a GPU.

A torch kernel launches a few hundred small GPU kernels per call; at the batches of the
bench each runs for microseconds, so an eager call spends most of its time launching
them. A CUDA graph records the launches once and replays them as one, which is what
``torch.cuda.graphs`` is for. The replay is not differentiable (use the eager
``derivatives`` in a training step that needs gradients), and it runs only on inputs of
the shapes, dtype and device it was recorded with.

    evaluate = diagramc.cuda_graphed(mod.derivatives, params, x)   # records one call
    out = evaluate(params, x_new)                                  # replays it
"""
from __future__ import annotations

from typing import Callable, Sequence

from .errors import DiagramcError


def cuda_graphed(function: Callable, params: Sequence, x, *, warmup: int = 3) -> Callable:
    """``function(params, x)`` (a generated kernel's ``derivatives`` or ``taylor_coefficients``)
    recorded as a CUDA graph on x's device; returns ``evaluate(params, x)``.

    ``evaluate`` copies its arguments into the recorded buffers, replays the graph and returns a new tensor (no_grad). It
    raises ValueError when a shape, dtype or device differs from the recorded one.
    """
    import torch

    if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
        raise DiagramcError("cuda_graphed needs x as a torch tensor on a CUDA device")
    static_params = [p.detach().clone() for p in params]
    static_x = x.detach().clone()
    with torch.no_grad():
        side = torch.cuda.Stream(device=x.device)  # warm-up builds the module's device tables off the graph
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                function(static_params, static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = function(static_params, static_x)

    def check(name, got, want):
        if not isinstance(got, torch.Tensor) or (got.shape, got.dtype, got.device) != (want.shape, want.dtype, want.device):
            described = (f"{tuple(got.shape)} {got.dtype} on {got.device}" if isinstance(got, torch.Tensor)
                         else type(got).__name__)
            raise ValueError(f"{name} is {described}; the graph was recorded with "
                             f"{tuple(want.shape)} {want.dtype} on {want.device}")

    def evaluate(params, x):
        if len(params) != len(static_params):
            raise ValueError(f"params has {len(params)} tensors; the graph was recorded with {len(static_params)}")
        check("x", x, static_x)
        for i, (p, s) in enumerate(zip(params, static_params)):
            check(f"params[{i}]", p, s)
        with torch.no_grad():
            for p, s in zip(params, static_params):
                s.copy_(p)
            static_x.copy_(x)
            graph.replay()
            return static_out.clone()

    evaluate.graph = graph
    return evaluate

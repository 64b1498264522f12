"""A training step through our torch kernel on a GPU: eager against CUDA graphs.

    python benchmarks/gpu_training_step.py [D,N[,BATCH] ...]

Per cell (tanh MLP D-64-64-64-1, float64, batch 256 unless given): the loss
sum(derivatives(params, x)**2) and its gradient with respect to every parameter, eagerly
and through ``diagramc.cuda_graphed(..., differentiable=True)`` (forward and backward each
one graph), medians of 50 steps after 5 warm-up steps; gradients compared.
"""
import statistics
import sys
import time

import torch

import diagramc
from diagramc import bench


def median_ms(step, reps=50):
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(cells):
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for d, n, batch in cells:
        mod = bench.compile_cell(bench.Cell(d, n, batch), "torch")
        params, x = bench.ours.our_inputs(bench.Cell(d, n, batch), "torch", "cuda")
        params = [p.requires_grad_(True) for p in params]

        def step(evaluate):
            for p in params:
                p.grad = None
            evaluate(params, x).square().sum().backward()
            return [p.grad for p in params]

        t0 = time.perf_counter()
        graphed = diagramc.cuda_graphed(mod.derivatives, params, x, differentiable=True)
        record_s = time.perf_counter() - t0
        want = [g.clone() for g in step(mod.derivatives)]
        got = step(graphed)
        err = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, want))
        eager_ms = median_ms(lambda: step(mod.derivatives))
        graph_ms = median_ms(lambda: step(graphed))
        print(f"d={d} n={n} b={batch}: eager {eager_ms:.3f} ms, CUDA graphs {graph_ms:.3f} ms "
              f"({eager_ms / graph_ms:.1f}x; recorded in {record_s:.2f} s), gradients agree to {err:.1e}", flush=True)


if __name__ == "__main__":
    given = [tuple(int(v) for v in arg.split(",")) for arg in sys.argv[1:]]
    main([c if len(c) == 3 else (*c, 256) for c in given] or [(4, 4, 256), (4, 5, 256), (8, 4, 256), (16, 3, 64),
                                                              (64, 2, 256), (2, 8, 256), (64, 2, 1)])

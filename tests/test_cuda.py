"""Torch kernels on a CUDA device against nested torch.func.jacfwd (float64).

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``. The reference runs on the CPU, so the two
sides share neither device nor code.
"""
from __future__ import annotations

import random

import pytest
import torch

import diagramc

from .reference import random_params, reference_derivatives

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
CUDA = torch.device("cuda")


def _network(seed, activation, d, hidden):
    rng = random.Random(seed)
    sizes = (d,) + tuple(rng.randint(2, 9) for _ in range(hidden)) + (rng.randint(1, 2),)
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(5, d, generator=gen, dtype=torch.float64)  # non-zero expansion points
    return diagramc.Architecture(sizes, activation), params, x


def _assert_close(got, want, rtol):
    scale = want.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got.cpu(), want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("seed,activation,d,order,hidden", [
    (0, "tanh", 3, 5, 2),
    (1, "sigmoid", 2, 6, 3),
    (2, "gelu", 4, 4, 2),
    (3, "softplus", 1, 6, 3),
    (4, "x*tanh(x)", 3, 3, 4),
    (5, "x + x**2/4", 5, 4, 2),
])
def test_cuda_float64_matches_jacfwd(seed, activation, d, order, hidden, kernel_dir):
    arch, params, x = _network(seed, activation, d, hidden)
    mod = diagramc.compile(arch, order, "torch", out_dir=kernel_dir)
    got = mod.derivatives([p.to(CUDA) for p in params], x.to(CUDA))
    assert got.device.type == "cuda" and got.dtype == torch.float64
    _assert_close(got, reference_derivatives(params, x, activation, mod.MULTI_INDICES), rtol=1e-9)


def test_cuda_float32_within_1e4_relative(kernel_dir):
    arch, params, x = _network(6, "tanh", 3, 2)
    mod = diagramc.compile(arch, 4, "torch", out_dir=kernel_dir)
    got = mod.derivatives([p.float().to(CUDA) for p in params], x.float().to(CUDA))
    assert got.dtype == torch.float32
    _assert_close(got.double(), reference_derivatives(params, x, "tanh", mod.MULTI_INDICES), rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 700, 5000])
def test_cuda_batches_fold_and_chunk(batch, kernel_dir):
    """Batch 1, a batch that folds layer 1, and one split into several chunks."""
    arch, params, _ = _network(7, "tanh", 4, 3)
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mod = diagramc.compile(arch, 3, "torch", out_dir=kernel_dir)
    got = mod.derivatives([p.to(CUDA) for p in params], x.to(CUDA))
    _assert_close(got, reference_derivatives(params, x, "tanh", mod.MULTI_INDICES), rtol=1e-9)


def test_cuda_gradients_equal_double_backward(kernel_dir):
    arch, params, x = _network(9, "tanh", 2, 2)
    mod = diagramc.compile(arch, 3, "torch", out_dir=kernel_dir)
    weights = torch.randn(x.shape[0], arch.outputs, len(mod.MULTI_INDICES), dtype=torch.float64)

    def grads(evaluate, device):
        ps = [p.to(device).requires_grad_(True) for p in params]
        xx = x.to(device).requires_grad_(True)
        loss = (evaluate(ps, xx) * weights.to(device)).sum() ** 2
        return [g.cpu() for g in torch.autograd.grad(loss, ps + [xx])]

    ours = grads(mod.derivatives, CUDA)
    ref = grads(lambda ps, xx: reference_derivatives(ps, xx, "tanh", mod.MULTI_INDICES), "cpu")
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_cuda_and_cpu_tensors_are_not_mixed(kernel_dir):
    arch, params, x = _network(10, "tanh", 2, 2)
    mod = diagramc.compile(arch, 2, "torch", out_dir=kernel_dir)
    with pytest.raises(ValueError, match="expected x's"):
        mod.derivatives(params, x.to(CUDA))


def test_cuda_graph_replays_the_kernel_on_new_inputs(kernel_dir):
    arch, params, x = _network(11, "tanh", 3, 3)
    mod = diagramc.compile(arch, 4, "torch", out_dir=kernel_dir)
    on_gpu = [p.to(CUDA) for p in params]
    evaluate = diagramc.cuda_graphed(mod.derivatives, on_gpu, x.to(CUDA))
    for seed in (12, 13):  # new points and new weights, recorded buffers refilled each call
        gen = torch.Generator().manual_seed(seed)
        new_params = [p + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        new_x = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        got = evaluate([p.to(CUDA) for p in new_params], new_x.to(CUDA))
        _assert_close(got, reference_derivatives(new_params, new_x, "tanh", mod.MULTI_INDICES), rtol=1e-9)
    with pytest.raises(ValueError, match="recorded with"):
        evaluate(on_gpu, x[:2].to(CUDA))
    with pytest.raises(ValueError, match="recorded with"):
        evaluate(on_gpu, x.float().to(CUDA))


def test_cuda_large_batch_memory_is_bounded_by_chunks(kernel_dir):
    """100,000 points at order 4: chunks bound the working set; rows checked against jacfwd."""
    arch, params, _ = _network(14, "tanh", 4, 3)
    mod = diagramc.compile(arch, 4, "torch", out_dir=kernel_dir)
    x = torch.randn(100_000, 4, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    on_gpu = [p.to(CUDA) for p in params]
    x_gpu = x.to(CUDA)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    got = mod.derivatives(on_gpu, x_gpu)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    output = got.numel() * got.element_size()
    assert peak < 4 * output + 2**30, (peak, output)
    rows = torch.arange(0, 100_000, 997)
    _assert_close(got[rows.to(CUDA)], reference_derivatives(params, x[rows], "tanh", mod.MULTI_INDICES), rtol=1e-9)


def test_torch_compile_of_a_kernel_matches_and_differentiates(kernel_dir):
    arch, params, x = _network(16, "gelu", 3, 2)
    mod = diagramc.compile(arch, 4, "torch", out_dir=kernel_dir)
    compiled = torch.compile(mod.derivatives)
    ps = [p.to(CUDA).requires_grad_(True) for p in params]
    got = compiled(ps, x.to(CUDA))
    _assert_close(got.detach(), reference_derivatives(params, x, "gelu", mod.MULTI_INDICES), rtol=1e-9)
    got.square().sum().backward()
    eager = [p.to(CUDA).requires_grad_(True) for p in params]
    mod.derivatives(eager, x.to(CUDA)).square().sum().backward()
    for a, b in zip(ps, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_differentiable_cuda_graph_gives_the_eager_gradients(kernel_dir):
    arch, params, x = _network(17, "tanh", 3, 2)
    mod = diagramc.compile(arch, 4, "torch", out_dir=kernel_dir)
    on_gpu = [p.to(CUDA).requires_grad_(True) for p in params]
    train = diagramc.cuda_graphed(mod.derivatives, on_gpu, x.to(CUDA), differentiable=True)
    for seed in (18, 19):  # a training step each: new weights, new points
        gen = torch.Generator().manual_seed(seed)
        step = [(p + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype)).to(CUDA).requires_grad_(True) for p in params]
        new_x = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(CUDA)
        out = train(step, new_x)
        _assert_close(out.detach(), reference_derivatives([p.detach().cpu() for p in step], new_x.cpu(), "tanh",
                                                          mod.MULTI_INDICES), rtol=1e-9)
        out.square().sum().backward()
        eager = [p.detach().clone().requires_grad_(True) for p in step]
        mod.derivatives(eager, new_x).square().sum().backward()
        for a, b in zip(step, eager):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="requires_grad"):
        train([p.detach() for p in on_gpu], x.to(CUDA))
    first = train(on_gpu, x.to(CUDA))  # one forward pass at a time: its saved tensors are the graph's
    with pytest.raises(ValueError, match="awaits its backward"):
        train(on_gpu, x.to(CUDA))
    first.sum().backward()
    dropped = train(on_gpu, x.to(CUDA)).sum()
    del dropped  # a result dropped without backward frees the graph for the next call
    train(on_gpu, x.to(CUDA)).sum().backward()
    with pytest.raises(diagramc.DiagramcError, match="warmup"):
        diagramc.cuda_graphed(mod.derivatives, on_gpu, x.to(CUDA), warmup=0)

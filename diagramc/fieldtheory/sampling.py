"""Monte Carlo: n-point functions averaged over an ensemble of sampled networks.

Networks are drawn in chunks as batched tensors (weights of shape (chunk, width, inputs)),
so memory stays bounded whatever the ensemble size; per packed tuple the sums of the products
and of their squares accumulate in float64 over the chunks, giving the mean and its standard
error (the sample standard deviation over sqrt(samples)).
"""
from __future__ import annotations

import math

import numpy as np

from .ensembles import _positive_int, check_n, check_points
from .exact import packed_index, packed_tuples

CHUNK_ELEMENTS = 1 << 22  # bound on the largest temporary tensor (float64: 32 MiB)


def _chunk_size(net, P):
    """Networks per chunk: the (chunk, width, P) pre-activations stay within CHUNK_ELEMENTS."""
    return max(1, CHUNK_ELEMENTS // (net.width * max(P, net.inputs)))


def sample_outputs(net, A, samples, generator, device="cpu"):
    """Yield f(X) for chunks of sampled networks, float64 tensors of shape (chunk, P).

    The neurons and their sum run in float32 (half the memory traffic; a relative rounding of
    ~1e-7 sqrt(width) is far below any ensemble's standard error); f is returned in float64,
    where the products and their sums are formed.
    """
    import torch

    f32 = torch.float32
    X = torch.as_tensor(A, dtype=f32, device=device)
    sd = torch.as_tensor(net.self_covariance(A), dtype=f32, device=device)
    N, d = net.width, net.inputs
    step = _chunk_size(net, len(A))
    done = 0
    while done < samples:
        B = min(step, samples - done)
        W0 = torch.randn(B, N, d, generator=generator, dtype=f32, device=device) * (net.sigma_w / math.sqrt(d))
        b0 = torch.randn(B, N, 1, generator=generator, dtype=f32, device=device) * net.sigma_b
        W1 = torch.randn(B, N, 1, generator=generator, dtype=f32, device=device) * (net.sigma_w / math.sqrt(N))
        b1 = torch.randn(B, 1, generator=generator, dtype=torch.float64, device=device) * net.sigma_b
        u = torch.addcmul(b0, W0[:, :, 0, None], X[:, 0])  # (B, N, P): fused, no broadcast temporaries
        for k in range(1, d):
            u = torch.addcmul(u, W0[:, :, k, None], X[:, k])
        # the sum over neurons as a batched matrix product: BLAS, and no second (B, N, P) temporary
        yield torch.bmm(W1.transpose(1, 2), net.phi_torch(u, sd)).squeeze(1).double() + b1
        done += B


class _Accumulator:
    """Sums of x and x^2 over networks for the packed n-fold products x.

    For even n a product is ``h(t_a) h(t_b)`` with h the n/2-fold products: the sums over a
    chunk are then two Gram matrices, ``h^T h`` and ``(h^2)^T (h^2)`` (BLAS, no n-fold arrays).
    """

    def __init__(self, P, n):
        self.n, self.count, self.s1, self.s2 = n, 0, 0.0, 0.0
        if n % 2 == 0:
            t = packed_tuples(P, n)
            self.ia, self.ib = packed_index(t[:, : n // 2], P), packed_index(t[:, n // 2:], P)

    def add(self, f, plan, memo):
        if self.n % 2 == 0:
            h = _products(f, plan, self.n // 2, memo)
            h2 = h * h
            self.s1 = self.s1 + h.T @ h
            self.s2 = self.s2 + h2.T @ h2
        else:
            x = _products(f, plan, self.n, memo)
            self.s1 = self.s1 + x.sum(dim=0)
            self.s2 = self.s2 + (x * x).sum(dim=0)
        self.count += f.shape[0]

    def result(self):
        s1, s2 = self.s1.cpu().numpy(), self.s2.cpu().numpy()
        if self.n % 2 == 0:
            s1, s2 = s1[self.ia, self.ib], s2[self.ia, self.ib]
        mean = s1 / self.count
        var = np.maximum(s2 / self.count - mean**2, 0.0) * self.count / (self.count - 1)
        return mean, np.sqrt(var / self.count)


class _WickAccumulator:
    """The connected 4-point function from the Wick-ordered product, with K exact:

        :f_a f_b f_c f_d: = f_a f_b f_c f_d - sum_{6 pairs} K_ab f_c f_d + sum_{3 pairings} K_ab K_cd

    has expectation G^(4) - G^(4)_GP = G_c^(4) (as E[f f] = K at every width) and, the Gaussian
    part of the fluctuations being subtracted, a smaller variance than the plain product
    (for one point a quarter: Var He_4(z) = 24 against Var z^4 = 96).
    """

    PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))

    def __init__(self, P, K):
        import torch

        t = packed_tuples(P, 4)
        self.ia, self.ib = (torch.as_tensor(packed_index(t[:, :2], P)), torch.as_tensor(packed_index(t[:, 2:], P)))
        # sum_{6 pairs} K_ab f_c f_d as one matrix product with the packed 2-fold products
        M = np.zeros((len(packed_tuples(P, 2)), len(t)))
        for i, j in self.PAIRS:
            rest = [k for k in range(4) if k not in (i, j)]
            np.add.at(M, (packed_index(t[:, rest], P), np.arange(len(t))), K[t[:, i], t[:, j]])
        self.M = torch.as_tensor(M)
        self.gp = torch.as_tensor(K[t[:, 0], t[:, 1]] * K[t[:, 2], t[:, 3]] + K[t[:, 0], t[:, 2]] * K[t[:, 1], t[:, 3]]
                                  + K[t[:, 0], t[:, 3]] * K[t[:, 1], t[:, 2]])
        self.count, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, f, plan, memo):
        h = _products(f, plan, 2, memo)
        y = h[:, self.ia] * h[:, self.ib] - h @ self.M + self.gp
        self.s1 = self.s1 + y.sum(dim=0)
        self.s2 = self.s2 + (y * y).sum(dim=0)
        self.count += f.shape[0]

    def result(self):
        mean = self.s1.cpu().numpy() / self.count
        var = np.maximum(self.s2.cpu().numpy() / self.count - mean**2, 0.0) * self.count / (self.count - 1)
        return mean, np.sqrt(var / self.count)


def _product_plan(P, n):
    """How to build the packed n-fold products from two lower orders: {k: (a, index_a, index_b)}."""
    import torch

    plan, todo = {}, [n]
    while todo:
        k = todo.pop()
        if k == 1 or k in plan:
            continue
        a = k // 2
        t = packed_tuples(P, k)
        plan[k] = (a, torch.as_tensor(packed_index(t[:, :a], P)), torch.as_tensor(packed_index(t[:, a:], P)))
        todo += [a, k - a]
    return plan


def _products(f, plan, n, memo):
    """Packed products prod_i f[:, t_i] for the sorted n-tuples, each a product of two halves."""
    if n == 1:
        return f
    if n not in memo:
        a, ia, ib = plan[n]
        memo[n] = _products(f, plan, a, memo)[:, ia] * _products(f, plan, n - a, memo)[:, ib]
    return memo[n]


def sample_many(net, X, orders, samples, seed=0, device="cpu", connected4=False):
    """``{n: (mean, standard error)}``, packed, for several n from the same sampled networks.

    With ``connected4`` also ``{"c4": (mean, standard error)}``: the connected 4-point function
    estimated by the Wick-ordered product (see :class:`_WickAccumulator`).
    """
    import torch

    A = check_points(net, X)
    orders = sorted({check_n(n) for n in orders})
    samples = _positive_int(samples, "samples", 2)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    P = len(A)
    plan = {}
    for n in orders:
        plan.update(_product_plan(P, n))
    acc = {n: _Accumulator(P, n) for n in orders}
    if connected4:
        from .kernels import kernel

        plan.update(_product_plan(P, 2))
        acc["c4"] = _WickAccumulator(P, kernel(net, A))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    rows = max(1, CHUNK_ELEMENTS // (4 * max(len(packed_tuples(P, max(1, n // 2))) for n in orders)))
    for f in sample_outputs(net, A, samples, generator, device):
        for start in range(0, f.shape[0], rows):
            part, memo = f[start:start + rows], {}
            for a in acc.values():
                a.add(part, plan, memo)
    return {n: a.result() for n, a in acc.items()}


def sample_correlators(net, X, n, samples, seed=0, device="cpu"):
    """(mean, standard error) of the packed n-point function over ``samples`` sampled networks."""
    return sample_many(net, X, [n], samples, seed, device)[check_n(n)]


def sample_connected4(net, X, samples, seed=0, device="cpu"):
    """(mean, standard error) of the packed connected 4-point function, by Wick-ordered products."""
    return sample_many(net, X, [2], samples, seed, device, connected4=True)["c4"]

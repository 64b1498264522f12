"""Float64 accuracy of the Taylor kernel by directions against nested torch.func.jacfwd, next to
the products kernel's: random widths (2-8, 1-3 hidden layers), non-zero points, several
activations; per order the largest error relative to that order's largest derivative.

    python benchmarks/directions_accuracy.py
"""
import json
import random
import sys
import tempfile

from pathlib import Path

import torch

import diagramc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's tests/reference.py
from tests.reference import random_params, reference_derivatives  # noqa: E402

CASES = [(act, d, n) for act in ("tanh", "sigmoid", "softplus", "sin", "gelu", "exp(-x**2)*x + sin(2*x)/3")
         for d, n in ((2, 8), (3, 6), (4, 4), (2, 10), (4, 5))]


def main():
    folder = tempfile.mkdtemp(prefix="directions-accuracy-")
    for act, d, n in CASES:
        worst = {"products": 0.0, "directions": 0.0}
        for seed in range(3):
            want = None
            rng = random.Random(seed)
            sizes = (d,) + tuple(rng.randint(2, 8) for _ in range(rng.randint(1, 3))) + (1,)
            gen = torch.Generator().manual_seed(seed)
            params = random_params(sizes, gen)
            x = torch.randn(4, d, generator=gen, dtype=torch.float64)
            arch = diagramc.Architecture(sizes, act)
            for strategy in worst:
                mod = diagramc.compile(arch, n, "torch", out_dir=folder, strategy=strategy)
                if want is None:  # the same multi-indices for both
                    want = reference_derivatives(params, x, act, mod.MULTI_INDICES)
                got = mod.derivatives(params, x)
                orders = torch.tensor([sum(a) for a in mod.MULTI_INDICES])
                for k in range(n + 1):
                    cols = orders == k
                    error = float((got[..., cols] - want[..., cols]).abs().max() / want[..., cols].abs().max())
                    worst[strategy] = max(worst[strategy], error)
        print(json.dumps({"activation": act, "d": d, "n": n, "max relative error by order": worst}), flush=True)


if __name__ == "__main__":
    main()

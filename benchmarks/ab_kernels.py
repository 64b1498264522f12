"""A/B of two builds of the same Taylor kernels in one process: old modules (from a folder,
written by an earlier diagramc) against the ones this diagramc compiles, interleaved rounds,
medians, the tanh 3 x 64 bench cells.

    python benchmarks/ab_kernels.py OLD_DIR numpy|torch [d,n,batch ...]   (ROUNDS=15 by default)
"""
import glob
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import diagramc

CELLS = [(4, 4, 256), (4, 5, 256), (8, 4, 256), (16, 3, 64), (64, 2, 256), (2, 8, 256), (64, 2, 1)]


def load(path):
    spec = importlib.util.spec_from_file_location(f"old_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(old_dir, backend, picked):
    rounds = int(os.environ.get("ROUNDS", 15))
    new_dir = tempfile.mkdtemp(prefix="ab-new-")
    for d, n, batch in CELLS:
        if picked and f"{d},{n},{batch}" not in picked:
            continue
        arch = diagramc.Architecture((d, 64, 64, 64, 1), "tanh")
        new = diagramc.compile(arch, n, backend, out_dir=new_dir)
        old = load(glob.glob(f"{old_dir}/taylor_tanh_d{d}_h3_n{n}_{backend}_*.py")[0])
        rng = np.random.default_rng(0)
        params = []
        for a, b in zip(arch.layer_sizes[:-1], arch.layer_sizes[1:]):
            params += [rng.normal(size=(b, a)) / np.sqrt(a), rng.normal(size=b) * 0.5]
        x = rng.normal(size=(batch, d)) * 0.5
        if backend == "torch":
            params, x = [torch.tensor(p) for p in params], torch.tensor(x)
        a, b = np.asarray(old.derivatives(params, x)), np.asarray(new.derivatives(params, x))
        diff = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
        times = {"old": [], "new": []}
        per = 3 if batch >= 64 else 30  # calls per turn
        for r in range(rounds):  # interleaved, the order alternating
            for name, module in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
                module.derivatives(params, x)
                start = time.perf_counter()
                for _ in range(per):
                    module.derivatives(params, x)
                times[name].append((time.perf_counter() - start) / per)
        t_old, t_new = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{backend} ({d},{n}) batch {batch}: old {t_old * 1e3:.3f} ms  new {t_new * 1e3:.3f} ms  "
              f"old/new {t_old / t_new:.3f}  max rel diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

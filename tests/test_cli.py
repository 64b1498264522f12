"""The command line: contract outputs, and one-line errors with exit status 2 for bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from diagramc.cli import main


def run(*args):
    """Run the real console entry point in a subprocess (what users type)."""
    env = dict(os.environ, DIAGRAMC_CACHE=os.environ.get("DIAGRAMC_CACHE", "/tmp/diagramc-test-cache"))
    return subprocess.run([sys.executable, "-m", "diagramc", *args], capture_output=True, text=True, env=env, timeout=300)


def test_count_json(capsys):
    assert main(["count", "--multi-index", "0,0,4", "--hidden-layers", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "multi_index": [0, 0, 4], "hidden_layers": 3, "diagrams": 14, "labelled_trees": 60}


def test_count_is_instant_for_large_requests(capsys):
    assert main(["count", "--multi-index", "3,3,3,3", "--hidden-layers", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labelled_trees"] > 10**9


def test_diagrams_json_contract(capsys):
    assert main(["diagrams", "--multi-index", "2,1", "--hidden-layers", "2", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sum(d["multiplicity"] for d in data) == 5  # labelled trees, order 3, H = 2
    assert all(set(d) == {"multiplicity", "root"} for d in data)
    assert main(["diagrams", "--multi-index", "0,0,0,1", "--hidden-layers", "2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"multiplicity": 1, "root": {"input": 3}}]


def test_compile_prints_path_last(tmp_path, capsys):
    assert main(["compile", "--order", "2", "--layer-sizes", "3,4,4,1", "--activation", "tanh",
                 "--backend", "torch", "-o", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert os.path.isfile(path) and path.startswith(str(tmp_path))


def test_compile_from_state_dict(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.GELU(), torch.nn.Linear(3, 1))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert main(["compile", "--order", "3", "--model", str(tmp_path / "m.pt"), "--activation", "gelu",
                 "--multi-index", "2,1", "--multi-index", "0,1", "-o", str(tmp_path)]) == 0
    text = open(capsys.readouterr().out.strip().splitlines()[-1]).read()
    assert "--multi-index 0,1 --multi-index 2,1" in text


BAD = [
    (["count", "--multi-index", "2,x", "--hidden-layers", "3"], "malformed multi-index"),
    (["count", "--multi-index", "2,0", "--hidden-layers", "-1"], "--hidden-layers"),
    (["compile", "--order", "-2", "--layer-sizes", "2,3,1", "--activation", "tanh"], "--order"),
    (["compile", "--order", "two", "--layer-sizes", "2,3,1", "--activation", "tanh"], "--order"),
    (["compile", "--order", "2", "--layer-sizes", "2,3,1", "--activation", "swishy"], "activation 'swishy'"),
    (["compile", "--order", "2", "--layer-sizes", "2,,1", "--activation", "tanh"], "layer sizes"),
    (["compile", "--order", "2", "--layer-sizes", "2,3,1"], "--activation"),
    (["compile", "--order", "2", "--model", "/no/such/file.pt", "--activation", "tanh"], "does not exist"),
    (["compile", "--order", "2", "--layer-sizes", "2,3,1", "--activation", "tanh", "--multi-index", "1,1,1"], "entries"),
    (["compile", "--order", "2", "--layer-sizes", "2,3,1", "--activation", "__import__('os').system('id')"], "not allowed"),
    (["diagrams", "--multi-index", "1,1", "--hidden-layers", "2", "--format", "html"], "--format"),
    (["bench", "--device", "gpu"], "malformed device"),
    (["bench", "--cells", "4,x"], "malformed cell"),
    (["bench", "--cells", "4,5,6,7"], "malformed cell"),
    (["bench", "--backends", "torch,jax"], "malformed backends"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--device", "cuda:99"], "--device cuda:99"),  # no GPU, or fewer than 100
    (["frobnicate"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_one_line_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diagramc: error:") and message in lines[0], err


def test_real_entry_point_bad_input():
    """The console entry point itself: one line on stderr, status 2, no traceback."""
    result = run("compile", "--order", "2", "--layer-sizes", "2,3,1", "--activation", "x.__class__")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("diagramc: error:")


def test_unreadable_model_file(tmp_path, capsys):
    path = tmp_path / "locked.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["compile", "--order", "2", "--model", str(path), "--activation", "tanh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diagramc: error:")


def test_pickled_model_refused_without_trust(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    torch.save(model, tmp_path / "whole.pt")
    assert main(["compile", "--order", "2", "--model", str(tmp_path / "whole.pt")]) == 2
    assert "--trust-model" in capsys.readouterr().err
    args = ["compile", "--order", "2", "--model", str(tmp_path / "whole.pt"), "--trust-model", "-o", str(tmp_path)]
    assert main(args) == 0


def test_oversized_compile_is_refused_with_the_count(capsys):
    assert main(["compile", "--order", "6", "--layer-sizes", "64,8,1", "--activation", "tanh"]) == 2
    err = capsys.readouterr().err
    assert "131,115,985" in err and "--force" in err and err.count("\n") == 1


def test_oversized_diagram_listing_is_refused_with_the_count(capsys):
    assert main(["diagrams", "--multi-index", "1,1,1,1,1,1,1", "--hidden-layers", "4"]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1


def test_bench_options_reach_run_bench(monkeypatch, capsys):
    import diagramc.bench

    seen = {}
    monkeypatch.setattr(diagramc.bench, "run_bench", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["bench", "--quick", "--out", "x", "--cells", "4,5", "16,3,64", "--backends", "numpy",
                 "--threads", "1"]) == 0
    assert seen == {"out": "x", "quick": True, "cells": [(4, 5), (16, 3, 64)], "backends": ("numpy",),
                    "device": "cpu", "threads": 1}

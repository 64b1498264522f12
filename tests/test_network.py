"""Architectures, torch models and model files (state dicts, TorchScript, pickled modules)."""
import pytest
import torch

import diagramc
from diagramc import DiagramcError
from diagramc.network import load_architecture, load_model


def _model(act=torch.nn.Tanh):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 5), act(), torch.nn.Linear(5, 4), act(), torch.nn.Linear(4, 2)
    ).double()


def test_from_torch_and_params():
    model = _model(torch.nn.SiLU)
    arch = diagramc.Architecture.from_torch(model)
    assert arch.layer_sizes == (3, 5, 4, 2) and arch.activation.name == "silu" and arch.hidden_layers == 2
    params = diagramc.params_from_torch(model)
    assert [tuple(p.shape) for p in params] == arch.param_shapes()
    assert params[0] is model[0].weight


@pytest.mark.parametrize(
    "layers,message",
    [
        ([torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(4, 1)], "do not chain"),
        ([torch.nn.Linear(2, 3), torch.nn.Tanh()], "ends with an activation"),
        ([torch.nn.Linear(2, 3), torch.nn.Dropout(), torch.nn.Linear(3, 1)], "Dropout"),
        ([torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Sigmoid(), torch.nn.Linear(3, 1)], "does not follow"),
        ([torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)], "mixes"),
    ],
)
def test_not_an_mlp(layers, message):
    with pytest.raises(DiagramcError, match=message):
        diagramc.Architecture.from_torch(torch.nn.Sequential(*layers))


@pytest.mark.parametrize("sizes", [(), (3,), (3, 0, 1), (3, -1, 1), ("a", 2), (2.5, 1)])
def test_bad_layer_sizes(sizes):
    with pytest.raises(DiagramcError):
        diagramc.Architecture(sizes, "tanh")


def test_state_dict_file(tmp_path):
    model = _model()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    arch, params = load_architecture(path, "tanh")
    assert arch.layer_sizes == (3, 5, 4, 2)
    torch.testing.assert_close(params[2], model[2].weight.detach())
    with pytest.raises(DiagramcError, match="--activation"):
        load_architecture(path)


def test_torchscript_file(tmp_path):
    path = tmp_path / "m.ts"
    torch.jit.script(_model(torch.nn.Sigmoid)).save(str(path))
    arch, _ = load_architecture(path)
    assert arch.activation.name == "sigmoid" and arch.layer_sizes == (3, 5, 4, 2)


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_model(), path)
    with pytest.raises(DiagramcError, match="--trust-model"):
        load_architecture(path)
    arch, _ = load_architecture(path, trust=True)
    assert arch.activation.name == "tanh"


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DiagramcError):
        load_architecture(bad, "tanh")
    with pytest.raises(DiagramcError, match="does not exist"):
        load_architecture(tmp_path / "nope.pt", "tanh")
    truncated = tmp_path / "trunc.pt"
    torch.save(_model().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DiagramcError):
        load_architecture(truncated, "tanh")


def test_state_dict_whose_shapes_do_not_chain(tmp_path):
    state = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(3), "2.weight": torch.zeros(1, 4), "2.bias": torch.zeros(1)}
    path = tmp_path / "s.pt"
    torch.save(state, path)
    with pytest.raises(DiagramcError, match="do not chain"):
        load_architecture(path, "tanh")


@pytest.mark.parametrize("activation", ["tanh", "gelu", "sin", "x*tanh(x)"])
def test_load_model_gives_the_network_back(activation, tmp_path):
    """load_model (contract section 5): an nn.Sequential computing what the saved network
    computed, which diagramc reads back as the same architecture and weights."""
    torch.manual_seed(0)
    model = _model().double()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, activation)
    assert isinstance(loaded, torch.nn.Sequential)
    assert diagramc.Architecture.from_torch(loaded).activation.name == activation
    x = torch.randn(7, 3, dtype=torch.float64)
    sigma = {"tanh": torch.tanh, "gelu": lambda z: torch.nn.functional.gelu(z), "sin": torch.sin,
             "x*tanh(x)": lambda z: z * torch.tanh(z)}[activation]
    h = x
    for i, layer in enumerate(model):
        if isinstance(layer, torch.nn.Linear):
            h = layer(h)
            if i < len(model) - 1:
                h = sigma(h)
    torch.testing.assert_close(loaded(x), h.detach())

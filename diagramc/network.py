"""The network: an MLP's architecture (what a kernel is specialised to) and its weights.

A kernel is compiled for an architecture (layer sizes, activation); the weights are
passed at call time, so one compiled module serves a whole training run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .activations import Activation, get_activation
from .errors import DiagramcError

# torch activation modules and the registry names they stand for
_TORCH_ACTIVATIONS = {
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Softplus": "softplus",
    "GELU": "gelu",
    "SiLU": "silu",
    "ReLU": "relu",
    "Identity": "identity",
    "ActivationModule": None,  # diagramc's own (activation_module): its name says which
}


@dataclass(frozen=True)
class Architecture:
    """An MLP ``R^d -> R^m``: ``layer_sizes = (d, n1, ..., nH, m)``, one activation for all hidden layers."""

    layer_sizes: tuple[int, ...]
    activation: Activation

    def __init__(self, layer_sizes: Sequence[int], activation: "str | Activation" = "tanh"):
        try:
            sizes = tuple(int(n) for n in layer_sizes)
        except (TypeError, ValueError):
            raise DiagramcError(
                f"layer_sizes {layer_sizes!r} must be positive integers (d, n1, ..., nH, m)"
            ) from None
        if len(sizes) < 2 or any(n < 1 for n in sizes) or any(
            not float(n).is_integer() for n in layer_sizes
        ):
            raise DiagramcError(
                f"layer_sizes {tuple(layer_sizes)!r} must be at least two positive integers (d, n1, ..., nH, m)"
            )
        object.__setattr__(self, "layer_sizes", sizes)
        object.__setattr__(self, "activation", get_activation(activation))

    @property
    def inputs(self) -> int:
        return self.layer_sizes[0]

    @property
    def outputs(self) -> int:
        return self.layer_sizes[-1]

    @property
    def hidden_layers(self) -> int:
        return len(self.layer_sizes) - 2

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of [W1, b1, ..., WL, bL] in the torch.nn.Linear convention."""
        shapes: list[tuple[int, ...]] = []
        for n_in, n_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            shapes += [(n_out, n_in), (n_out,)]
        return shapes

    def to_json(self) -> dict:
        return {"layer_sizes": list(self.layer_sizes), "activation": self.activation.name}

    def __repr__(self) -> str:
        return f"Architecture(layer_sizes={self.layer_sizes}, activation={self.activation.name!r})"

    @classmethod
    def from_torch(cls, model, activation: "str | None" = None) -> "Architecture":
        """Read an ``nn.Sequential`` of ``Linear`` layers and one kind of activation module."""
        linears, acts = _sequential_parts(model)
        names = {_TORCH_ACTIVATIONS[type(a).__name__] or a.name for a in acts}
        if len(names) > 1:
            raise DiagramcError(f"the model mixes activations {sorted(names)}; diagramc expects one for all hidden layers")
        if activation is None:
            activation = names.pop() if names else "identity"
        sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
        return cls(sizes, activation)


def _sequential_parts(model):
    """The Linear layers and activation modules of an MLP, checked to alternate."""
    import torch.nn as nn

    layers = list(model.children()) if isinstance(model, nn.Sequential) else None
    if not layers:
        raise DiagramcError(
            f"expected an nn.Sequential of Linear layers and activations, got {type(model).__name__}"
        )
    linears, acts = [], []
    expect_linear = True
    for layer in layers:
        kind = type(layer).__name__
        if isinstance(layer, nn.Linear) or kind == "Linear":
            if not expect_linear and linears:
                # two Linear layers in a row would mean a hidden layer without activation
                raise DiagramcError("the model has two Linear layers in a row; expected Linear, activation, Linear, ...")
            linears.append(layer)
            expect_linear = False
        elif kind in _TORCH_ACTIVATIONS:
            if expect_linear:
                raise DiagramcError(f"the model has a {kind} that does not follow a Linear layer; expected Linear, activation, Linear, ...")
            acts.append(layer)
            expect_linear = True
        else:
            raise DiagramcError(
                f"the model contains a {kind}; expected only Linear layers and one of {', '.join(sorted(_TORCH_ACTIVATIONS))}"
            )
    if expect_linear:
        raise DiagramcError("the model ends with an activation; diagramc expects a linear output layer")
    for prev, nxt in zip(linears[:-1], linears[1:]):
        if nxt.in_features != prev.out_features:
            raise DiagramcError(
                f"Linear layers do not chain: {prev.out_features} outputs feed {nxt.in_features} inputs"
            )
    if any(getattr(lin, "bias", None) is None for lin in linears):
        raise DiagramcError("every Linear layer needs a bias (bias=True); diagramc's params are [W1, b1, ..., WL, bL]")
    return linears, acts


def params_from_torch(model) -> list:
    """[W1, b1, ..., WL, bL] of an ``nn.Sequential`` MLP (the tensors themselves, so gradients flow)."""
    linears, _ = _sequential_parts(model)
    params = []
    for lin in linears:
        params += [lin.weight, lin.bias]
    return params


def params_from_state_dict(state: dict) -> list:
    """[W1, b1, ..., WL, bL] from a state dict of an nn.Sequential of Linear layers."""
    import torch

    if not isinstance(state, dict) or not state:
        raise DiagramcError("the model file does not hold a state dict of Linear layers")
    weights = [(k, v) for k, v in state.items() if k.endswith("weight")]
    biases = [(k, v) for k, v in state.items() if k.endswith("bias")]
    if len(weights) != len(biases) or len(weights) + len(biases) != len(state) or not weights:
        raise DiagramcError(
            "the state dict is not that of an nn.Sequential of Linear layers (expected only *.weight and *.bias entries)"
        )
    params = []
    for (kw, w), (kb, b) in zip(weights, biases):
        if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)) or w.ndim != 2 or b.ndim != 1:
            raise DiagramcError(f"state dict entries {kw}, {kb} are not a Linear layer's weight (2-D) and bias (1-D)")
        if b.shape[0] != w.shape[0]:
            raise DiagramcError(f"{kb} has shape {tuple(b.shape)}; expected ({w.shape[0]},) to match {kw}")
        params += [w, b]
    for i in range(2, len(params), 2):
        if params[i].shape[1] != params[i - 2].shape[0]:
            raise DiagramcError(
                f"state dict shapes do not chain: layer {i // 2 + 1} takes {params[i].shape[1]} inputs "
                f"but layer {i // 2} gives {params[i - 2].shape[0]}"
            )
    return params


def load_model(path: "str | Path", activation: "str | None" = None, trust: bool = False):
    """A model file (contract section 6) as an ``nn.Sequential`` of Linear layers and activations,
    float64 weights as stored: ``Architecture.from_torch`` and ``params_from_torch`` read it back.
    See load_architecture for the file kinds and ``activation``, ``trust``."""
    arch, params = load_architecture(path, activation, trust)
    return to_torch(arch, params)


def to_torch(arch: Architecture, params):
    """An ``nn.Sequential`` with these parameters (copied) and the architecture's activation."""
    import torch

    layers = []
    for i, (n_in, n_out) in enumerate(zip(arch.layer_sizes[:-1], arch.layer_sizes[1:])):
        W, b = torch.as_tensor(params[2 * i]), torch.as_tensor(params[2 * i + 1])
        linear = torch.nn.Linear(n_in, n_out, dtype=W.dtype)
        with torch.no_grad():
            linear.weight.copy_(W)
            linear.bias.copy_(b)
        layers.append(linear)
        if i < arch.hidden_layers:
            layers.append(activation_module(arch.activation.name))
    return torch.nn.Sequential(*layers)


def activation_module(name: str):
    """torch's own module for a named activation, else an ActivationModule evaluating the
    expression (printed from its sympy form, never from the user's text)."""
    import torch

    own = {v: k for k, v in _TORCH_ACTIVATIONS.items() if k != "ActivationModule"}
    if name in own:
        return getattr(torch.nn, own[name])(**({"approximate": "none"} if name == "gelu" else {}))
    return _activation_module_class()(name)


@functools.lru_cache(maxsize=1)
def _activation_module_class():
    import torch

    class ActivationModule(torch.nn.Module):
        """sigma(z) of an activation diagramc knows by name or expression (sin, a custom one)."""

        def __init__(self, name: str):
            super().__init__()
            self.name = name
            self._sigma = _torch_function(name)

        def forward(self, z):
            return self._sigma(z)

        def extra_repr(self) -> str:
            return repr(self.name)

    return ActivationModule


@functools.lru_cache(maxsize=64)
def _torch_function(name: str):
    """sigma as a torch function: the torch printer's code for the parsed activation."""
    import math

    import torch

    from .compiler.printing import activation_code

    code = activation_code(get_activation(name), 0, "torch")
    namespace = {"torch": torch, "math": math}
    body = "".join(f"    {line}\n" for line in code.lines)
    exec(f"def sigma(z):\n{body}    return {code.value}\n", namespace)  # our printer's output, not user text
    return namespace["sigma"]


def load_architecture(path: "str | Path", activation: "str | None" = None, trust: bool = False):
    """Load ``--model FILE``: (Architecture, params).

    A state dict (``torch.save(model.state_dict())``) is loaded with ``weights_only=True``
    and needs ``activation``; a TorchScript file carries its own; a whole pickled module is
    unpickled only when ``trust`` is set, because unpickling runs code.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DiagramcError(f"model file {str(path)!r} does not exist or is not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DiagramcError(f"cannot read model file {str(path)!r}: {exc.strerror}") from None

    # TorchScript archives are zip files with a constants.pkl / code/ folder.
    import zipfile

    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_script = any(n.endswith("/code/") or "/code/" in n for n in zf.namelist())
        if is_script:
            try:
                scripted = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # corrupt archive
                raise DiagramcError(f"cannot load TorchScript model {str(path)!r}: {str(exc).splitlines()[0]}") from None
            state = {k: v.detach() for k, v in scripted.state_dict().items()}
            params = params_from_state_dict(state)
            if activation is None:
                activation = _scripted_activation(scripted)
            return _architecture_of(params, activation), params

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust:
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise DiagramcError(
                    f"model file {str(path)!r} holds a pickled module; unpickling runs code, so pass --trust-model "
                    "if you trust it, or save model.state_dict() instead"
                ) from None
            raise DiagramcError(f"cannot read model file {str(path)!r}: not a torch state dict or TorchScript file") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise DiagramcError(f"cannot read model file {str(path)!r}: {str(exc2).splitlines()[0]}") from None

    if isinstance(obj, torch.nn.Module):
        arch = Architecture.from_torch(obj, activation)
        return arch, [p.detach() for p in params_from_torch(obj)]
    params = params_from_state_dict(obj)
    if activation is None:
        raise DiagramcError("a state dict does not record its activation: pass --activation NAME")
    return _architecture_of(params, activation), params


def _architecture_of(params, activation) -> Architecture:
    sizes = [params[0].shape[1]] + [params[i].shape[0] for i in range(0, len(params), 2)]
    return Architecture(sizes, activation)


def _scripted_activation(scripted) -> str:
    names = set()
    for _, module in scripted.named_modules():
        kind = getattr(module, "original_name", type(module).__name__)
        if _TORCH_ACTIVATIONS.get(kind):
            names.add(_TORCH_ACTIVATIONS[kind])
    if len(names) != 1:
        raise DiagramcError("cannot tell the TorchScript model's activation: pass --activation NAME")
    return names.pop()


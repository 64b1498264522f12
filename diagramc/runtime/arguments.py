"""Checks of a kernel call's arguments, the same for every kernel kind: a ValueError naming the
parameter and what it expects."""
import functools


def param_name(i: int) -> str:
    """params[i]'s name in [W1, b1, ..., WL, bL]."""
    return f"{'W' if i % 2 == 0 else 'b'}{i // 2 + 1}"


def param_shapes(layer_sizes) -> list:
    """The shapes of [W1, b1, ..., WL, bL] in the torch.nn.Linear convention."""
    return list(_param_shapes(tuple(layer_sizes)))


@functools.lru_cache(maxsize=64)  # read on every kernel call
def _param_shapes(layer_sizes: tuple) -> tuple:
    return tuple(s for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]) for s in ((n_out, n_in), (n_out,)))


def check_params(params, layer_sizes) -> None:
    """The layer count and every parameter's shape."""
    shapes = _param_shapes(tuple(layer_sizes))
    if len(params) != len(shapes):
        layers = len(shapes) // 2
        raise ValueError(f"params has {len(params)} arrays; expected {len(shapes)}: "
                         f"[W1, b1, ..., W{layers}, b{layers}] for layer sizes {tuple(layer_sizes)}")
    for i, (p, shape) in enumerate(zip(params, shapes)):
        if getattr(p, "shape", ()) != shape and tuple(getattr(p, "shape", ())) != shape:  # (a tuple or torch.Size: equal as they are)
            raise ValueError(f"params[{i}] ({param_name(i)}) has shape {tuple(getattr(p, 'shape', ()))}; expected {shape}")


def check_structure(params, x, layer_sizes) -> None:
    """x of shape (batch, d), then the parameters."""
    if len(getattr(x, "shape", ())) != 2 or x.shape[1] != layer_sizes[0]:
        raise ValueError(f"x has shape {tuple(getattr(x, 'shape', ()))}; expected (batch, {layer_sizes[0]})")
    check_params(params, layer_sizes)


def numpy_arguments(params, x, layer_sizes):
    """params and x as NumPy arrays in x's floating dtype (native byte order), checked."""
    import numpy as np

    x = np.asarray(x)
    check_structure(params, x, layer_sizes)
    if x.dtype.kind != "f":
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point dtype (float32 or float64)")
    if not x.dtype.isnative:  # byte-swapped (as some files store it): worked, and returned, in this machine's order
        x = x.astype(x.dtype.newbyteorder("="))
    return [np.asarray(p, dtype=x.dtype) for p in params], x


def torch_arguments(params, x, layer_sizes):
    """params and x checked: tensors of one floating dtype on one device, of the network's shapes."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (batch, {layer_sizes[0]}), got {type(x).__name__}")
    check_structure(params, x, layer_sizes)
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point dtype")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"params[{i}] ({param_name(i)}) must be a torch.Tensor, got {type(p).__name__}")
        if p.dtype != x.dtype or p.device != x.device:
            raise ValueError(f"params[{i}] ({param_name(i)}) is {p.dtype} on {p.device}; expected x's {x.dtype} on {x.device}")
    return list(params), x


_VIEWS: dict = {}  # the parameters' NumPy views, by identity and storage, a few sets at a time


def numpy_views(params) -> tuple:
    """CPU tensors' NumPy views, kept while the tensors keep their storage: a training loop or an
    ODE solver calls with the same ones many times, and values changed in place (even through
    .data, unversioned) are seen by the views. A tensor that is not contiguous is copied each call."""
    key = tuple((id(p), p.data_ptr()) for p in params)
    entry = _VIEWS.get(key)
    if entry is not None:
        return entry[1]
    views = tuple(p.detach().contiguous().numpy() for p in params)
    if all(p.is_contiguous() for p in params):  # views, never stale
        if len(_VIEWS) >= 8:
            _VIEWS.pop(next(iter(_VIEWS)))
        _VIEWS[key] = (params, views)  # params held: their ids stay theirs
    return views

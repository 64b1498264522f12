"""The PyTorch backend of the Taylor kernel by directions (taylor_directions): tensors stay on
x's device and dtype, and everything is differentiable (autograd, torch.func)."""
import torch

from .arguments import torch_arguments
from .taylor_directions import DirectionsKernel
from .taylor_torch import TorchArrays


class TorchDirectionsKernel(TorchArrays, DirectionsKernel):
    """torch tensors on any device and dtype, differentiable, no Python loop over the batch."""

    def __init__(self, plan, activation):
        super().__init__(plan, activation)
        self._CONSTANTS_ON = {}  # (name, device, dtype) -> the constant there: made once, not copied over each call

    def _prepare(self, params, x):
        return torch_arguments(params, x, self.LAYER_SIZES)

    def _stack(self, tensors):
        return torch.stack(tensors)

    def _permute(self, a, dims):
        return a.permute(dims)

    def _affine(self, h, W, b):
        return torch.addmm(b, h, W.T)

    def _first_layer(self, z, W):
        """As DirectionsKernel's, out of place (vmap and autograd take it)."""
        value, factors = self._vertex_weights(z)
        v = self._constant("directions", self._DIRECTIONS, z) @ W.T  # (D, width): the same for every x
        power, series = v, []
        for k in range(1, self.ORDER + 1):
            series.append(z.new_zeros((v.shape[0],) + tuple(z.shape)) if factors[k - 1] is None
                          else factors[k - 1][None] * power[:, None, :])
            power = power * v
        return value, factors[0], torch.stack(series)

    def _vertex_weights(self, z):
        return self._activation(z)

    _addcmul = staticmethod(torch.addcmul)

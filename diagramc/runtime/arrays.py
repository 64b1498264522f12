"""The array primitives a NumPy kernel's shared algorithm calls (the Taylor kernel's and the
kernel by directions'): arrays in x's dtype."""
import numpy as np


class NumpyArrays:
    def _zeros(self, like, shape):
        return np.zeros(shape, dtype=like.dtype)

    def _empty(self, like, shape):
        return np.empty(shape, dtype=like.dtype)

    def _cat(self, arrays, axis):
        return np.concatenate(arrays, axis=axis)

"""Neural networks as field theories (Halverson, Maiti, Stoner): contract section 11.

Exact finite-width correlators of single-hidden-layer networks from one neuron's moments,
Monte Carlo over sampled ensembles, the free (Gaussian-process) theory as sums over Wick
pairings, the first-order contact diagrams, and the quartic coupling.
"""
from .ensembles import Ensemble
from .kernels import kernel
from .exact import (connected, correlators, cumulants_from_moments, gp_correlators, moments_from_cumulants,
                    packed_tuples)

__all__ = ["Ensemble", "kernel", "correlators", "connected", "gp_correlators", "moments_from_cumulants",
           "cumulants_from_moments", "packed_tuples"]

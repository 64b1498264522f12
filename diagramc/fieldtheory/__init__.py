"""Neural networks as field theories (Halverson, Maiti, Stoner): contract section 11.

Exact finite-width correlators of single-hidden-layer networks from one neuron's moments,
Monte Carlo over sampled ensembles, the free (Gaussian-process) theory as sums over Wick
pairings, the first-order contact diagrams, and the quartic coupling. See docs/fieldtheory.md.
"""
from .ensembles import Ensemble
from .kernels import kernel
from .exact import (connected, correlators, cumulants_from_moments, gp_correlators, moments_from_cumulants,
                    packed_tuples)
from .sampling import sample_connected4, sample_correlators
from .diagrams import ContactDiagram, WickDiagram, contact_diagrams, wick_diagrams
from .coupling import QuarticFit, first_order_correlators, fit_quartic_coupling, quartic_coupling, vertex_integrals

__all__ = [
    "Ensemble", "kernel", "correlators", "connected", "gp_correlators", "sample_correlators",
    "wick_diagrams", "contact_diagrams", "quartic_coupling", "fit_quartic_coupling",
    "sample_connected4", "WickDiagram", "ContactDiagram", "QuarticFit", "first_order_correlators", "vertex_integrals",
    "moments_from_cumulants", "cumulants_from_moments", "packed_tuples",
]

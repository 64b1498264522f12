"""Analysis stage: a compile request, validated, with its identity (hash) and the command that redoes it."""
from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import __version__
from ..combinatorics import multi_index as mi
from ..errors import DiagramcError
from ..network import Architecture

BACKENDS = ("numpy", "torch")
# Orders past this make kernels whose tables outgrow any machine; refuse rather than hang.
MAX_ORDER = 12
# Distinct coefficients a kernel may carry without force=True (--force): the index tables
# are built at import and every call holds (coefficients x batch x width) numbers.
MAX_COEFFICIENTS = 1_000_000
# How a Taylor kernel may be asked to go: None lets the plan's cost model choose.
STRATEGIES = ("products", "directions")


def canonical_json(description: dict) -> str:
    """The one text a request's hash covers: sorted keys, no spaces, the diagramc version."""
    return json.dumps({"diagramc": __version__, **description}, sort_keys=True, separators=(",", ":"))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_request(architecture, backend: str, order=None) -> None:
    """The checks every kernel kind's request starts with: an Architecture, a known backend,
    and (where it has one) an order from 0 to MAX_ORDER."""
    if not isinstance(architecture, Architecture):
        raise DiagramcError(f"expected a diagramc.Architecture, got {type(architecture).__name__}")
    if order is not None:
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise DiagramcError(f"order must be a non-negative integer, got {order!r}")
        if order > MAX_ORDER:
            raise DiagramcError(f"order {order} is above the supported maximum {MAX_ORDER}")
    if backend not in BACKENDS:
        raise DiagramcError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")


class ModuleSpec:
    """What a generated module depends on: a description (whose hash names the module) and the
    command that regenerates it. Every kernel kind's spec derives from this."""

    def description(self) -> dict:
        raise NotImplementedError

    def inputs_json(self) -> str:
        """The canonical description that the hash covers."""
        return canonical_json(self.description())

    @property
    def digest(self) -> str:
        return sha256(self.inputs_json())

    @staticmethod
    def file_label(activation) -> str:
        """The activation's name as a module's file name shows it ("custom" for an expression)."""
        return activation.name if activation.name.isidentifier() else "custom"


@dataclass(frozen=True)
class KernelSpec(ModuleSpec):
    """Everything a generated Taylor module depends on, and nothing else."""

    architecture: Architecture
    order: int
    backend: str
    multi_indices: tuple[mi.MultiIndex, ...]  # canonical order
    full: bool  # all multi-indices of orders 0..order (then written compactly in the module)
    strategy: "str | None" = None  # "products" or "directions" as asked for; None: the plan's cost model chooses

    @classmethod
    def create(
        cls,
        architecture: Architecture,
        order: int,
        backend: str = "numpy",
        multi_indices: "Iterable[Sequence[int]] | None" = None,
        force: bool = False,
        strategy: "str | None" = None,
    ) -> "KernelSpec":
        check_request(architecture, backend, order)
        if strategy is not None and strategy not in STRATEGIES:
            raise DiagramcError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)} (or None to choose)")
        d = architecture.inputs
        total = sum(mi.count_of_order(d, k) for k in range(order + 1))  # counted before anything is built
        if multi_indices is None:
            if total > MAX_COEFFICIENTS and not force:
                raise DiagramcError(
                    f"{d} inputs up to order {order} is {total:,} distinct coefficients, above the limit of "
                    f"{MAX_COEFFICIENTS:,}; ask for fewer (multi_indices / --multi-index) or force it (force=True / --force)"
                )
            alphas = tuple(mi.up_to_order(d, order))
            full = True
        else:
            alphas = tuple(mi.sort_canonical(mi.validate(a, d) for a in multi_indices))
            if not alphas:
                raise DiagramcError("multi_indices is empty: give at least one multi-index, or None for all")
            too_high = [a for a in alphas if sum(a) > order]
            if too_high:
                raise DiagramcError(
                    f"multi-index {too_high[0]} has order {sum(too_high[0])}, above the compiled order {order}"
                )
            full = len(alphas) == total
        if strategy == "directions" and (not full or order < 1 or architecture.hidden_layers == 0):
            raise DiagramcError("strategy 'directions' makes every multi-index of orders 0..order, order >= 1, "
                                "through at least one hidden layer: ask for all of them (no multi_indices)")
        return cls(architecture, order, backend, alphas, full, strategy)

    def description(self) -> dict:
        return {
            "backend": self.backend,
            "layer_sizes": list(self.architecture.layer_sizes),
            "activation": self.architecture.activation.name,
            "order": self.order,
            "multi_indices": "all" if self.full else [list(a) for a in self.multi_indices],
            **({} if self.strategy is None else {"strategy": self.strategy}),  # a request without one hashes as before
        }

    def module_name(self) -> str:
        """A file name that says what the kernel is and, by its hash, exactly which."""
        act = self.file_label(self.architecture.activation)
        return (
            f"taylor_{act}_d{self.architecture.inputs}_h{self.architecture.hidden_layers}"
            f"_n{self.order}_{self.backend}_{self.digest[:12]}"
        )

    def command(self, out_dir: str) -> str:
        """The exact command line that regenerates this module into out_dir."""
        words = [
            "diagramc",
            "compile",
            "--order",
            str(self.order),
            "--layer-sizes",
            ",".join(map(str, self.architecture.layer_sizes)),
            "--activation",
            self.architecture.activation.name,
            "--backend",
            self.backend,
        ]
        if not self.full:
            for a in self.multi_indices:
                words += ["--multi-index", ",".join(map(str, a))]
        if self.strategy is not None:
            words += ["--strategy", self.strategy]
        words += ["-o", out_dir]
        return shlex.join(words)

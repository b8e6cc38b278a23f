"""The heatmap methods, one small record each: what it computes and what it needs.

``build_explainer``, the CLI's choices, the metadata and ``explain-bench`` read this registry.
Each method turns the tapped map ``A`` into channel weights ``α`` (or none, for a plain sum);
:func:`.heads.render` does the rest. ``auto`` is not a method but a choice between two: ``cam``
where it is exact (a global-average-pool + ``nn.Linear`` head after ``A``), else ``gradcam``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

__all__ = ["AUTO", "CAM", "CHOICES", "GRADCAM", "METHODS", "SUM", "Method", "get"]

if TYPE_CHECKING:  # the CLI reads the choices without importing torch
    from torch import Tensor

AUTO = "auto"


@dataclass(frozen=True)
class Method:
    """A heatmap method.

    ``needs_linear``: the weight ``W`` of an ``nn.Linear`` fed by ``GAP(A)`` (checked on a probe).
    ``needs_gradient``: ``∂y_c/∂A``, by autograd in eager mode; an export lowers it to forward
    ops (:mod:`.lowering`). ``has_class``: explains one class per image (top-1 or chosen).
    """

    name: str
    formula: str
    when: str
    needs_linear: bool
    needs_gradient: bool
    has_class: bool
    weights: Callable[[Tensor | None, Tensor | None, Tensor | None], Tensor | None]


def _no_weights(grad: Tensor | None, weight: Tensor | None, target: Tensor | None) -> None:
    return None


def _cam(grad: Tensor | None, weight: Tensor | None, target: Tensor | None) -> Tensor:
    from . import heads

    if weight is None or target is None:
        raise ValueError("cam needs the linear weight and the class index")
    return heads.cam_weights(weight, target)


def _gradcam(grad: Tensor | None, weight: Tensor | None, target: Tensor | None) -> Tensor:
    from . import heads

    if grad is None:
        raise ValueError("gradcam needs the gradient of the class logit")
    return heads.gradcam_weights(grad)


SUM = Method(
    "sum",
    "m = Σ_k A_k",
    "any map; no class, no gradient (the article's feature-map superposition)",
    needs_linear=False,
    needs_gradient=False,
    has_class=False,
    weights=_no_weights,
)
CAM = Method(
    "cam",
    "m = ReLU(Σ_k W[c,k] A_k)",
    "A feeds global average pooling + one nn.Linear that gives the logits; there it equals "
    "Grad-CAM, and costs one small matmul",
    needs_linear=True,
    needs_gradient=False,
    has_class=True,
    weights=_cam,
)
GRADCAM = Method(
    "gradcam",
    "m = ReLU(Σ_k α_k A_k), α_k = mean_ij ∂y_c/∂A_k(i,j)",
    "any differentiable head after A; the gradient is computed inside the exported graph",
    needs_linear=False,
    needs_gradient=True,
    has_class=True,
    weights=_gradcam,
)
METHODS: dict[str, Method] = {m.name: m for m in (SUM, CAM, GRADCAM)}
CHOICES = (AUTO, *METHODS)


def get(name: str) -> Method:
    """The method called ``name``; a UsageError naming the choices otherwise."""
    if name not in METHODS:
        raise UsageError(f"unknown method '{name}'; choose one of {', '.join(CHOICES)}")
    return METHODS[name]

r"""ShapleyCAM's second-order term: the Hessian-vector product ``H·A`` by autograd.

For ``g = ∂y/∂A`` taken with ``create_graph``, :math:`H·A = ∂(g·A)/∂A` with ``A`` held constant
in the dot: ``torch.autograd.grad(g, A, grad_outputs=A)``, as pytorch-grad-cam's ``ShapleyCAM``
does (double backward). In eager mode that is all; an export traces both backward passes to
forward ops (:mod:`..lower.second_order`). Where the head after ``A`` is piecewise linear (conv,
batch norm, ReLU/ReLU6, pooling, linear) ``H·A`` is exactly 0 and ShapleyCAM is Grad-CAM; where
it ignores the map's scale (``y(sA) = y(A)``: the map feeds a LayerNorm) ``H·A = −g``
(differentiate ``g(sA) = g(A)/s`` at ``s = 1``), and ShapleyCAM's map is Grad-CAM's again.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ...errors import OptionError

__all__ = ["hessian_times_map", "shapley_gradient"]


def hessian_times_map(g: Tensor, a: Tensor, retain: bool = False) -> Tensor:
    """``H·A = ∂(g·A)/∂A`` (see the module); zero where ``g`` does not depend on ``A`` (a head
    linear after it). ``retain``: keep the graph for another backward pass. An op with no
    second derivative in PyTorch (hardsigmoid) is an :class:`.OptionError` in one line."""
    if not g.requires_grad:
        return torch.zeros_like(a)
    try:
        (hvp,) = torch.autograd.grad(
            g, a, grad_outputs=a.detach(), retain_graph=retain, allow_unused=True
        )
    except RuntimeError as exc:
        missing = re.search(r"derivative for (\S+) is not implemented", str(exc))
        if missing is None:
            raise
        raise OptionError(
            "method",
            "{name} shapleycam differentiates twice, and PyTorch has no derivative of {op} "
            "after this {layer}; tap a later {layer} or pick another {name}",
            op=missing.group(1),
        ) from exc
    return torch.zeros_like(a) if hvp is None else hvp


def shapley_gradient(g: Tensor, a: Tensor, retain: bool = False) -> Tensor:
    r"""ShapleyCAM's gradient term :math:`g − \tfrac12 H·A` (its channel weights are the
    spatial mean of it), detached."""
    return (g - 0.5 * hessian_times_map(g, a, retain)).detach()

r"""Guided backpropagation: every ReLU-family backward passes only positive gradients.

For :math:`y = \mathrm{ReLU}(x)` autograd passes :math:`∂L/∂x = [x > 0]\,∂L/∂y`; guided backprop
passes :math:`[x > 0]\,\mathrm{ReLU}(∂L/∂y)`: positive input and positive gradient. ReLU6
(``hardtanh`` between 0 and 6) passes :math:`[0 < x < 6]\,\mathrm{ReLU}(∂L/∂y)`: its own gate
and a positive gradient. That is the whole rule: :class:`Guided` rewrites the two backward ops
(``threshold_backward`` at 0, ``hardtanh_backward`` from 0) as they run, in eager autograd and
while :mod:`..lower.lowering` records them, so both compute the same thing.

Smooth or leaky activations (SiLU, GELU, Hardswish, Mish, ELU, LeakyReLU, PReLU, Softplus) have
no gate of "positive input"; what guided would mean for them is not defined, so a backward that
runs one is refused in one line. Sigmoid and softmax gates (squeeze-excitation, attention) are
not activations of the feature path and pass their gradient unchanged, as in captum's
``GuidedBackprop``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...errors import OptionError

__all__ = ["Guided"]

aten = torch.ops.aten

_REFUSED = {
    "silu_backward": "SiLU",
    "gelu_backward": "GELU",
    "hardswish_backward": "Hardswish",
    "mish_backward": "Mish",
    "elu_backward": "ELU",
    "leaky_relu_backward": "LeakyReLU",
    "_prelu_kernel_backward": "PReLU",
    "softplus_backward": "Softplus",
}


class Guided(TorchDispatchMode):
    """Within: the gradient through ReLU and ReLU6 is rectified (see the module); a backward
    through another activation raises an :class:`.OptionError` naming it."""

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        rectified = func in (aten.threshold_backward.default, aten.hardtanh_backward.default)
        if rectified and args[2] == 0:
            args = (aten.relu.default(args[0]), *args[1:])
        elif func.__name__.split(".")[0] in _REFUSED or rectified:
            name = _REFUSED.get(func.__name__.split(".")[0], str(func))
            raise OptionError(
                "method",
                "guided backprop rectifies the gradient of ReLU and ReLU6 only, and this "
                "model's backward runs {act}, for which 'guided' is not defined; pick "
                "{method} saliency or smoothgrad",
                act=name,
            )
        return func(*args, **kwargs)

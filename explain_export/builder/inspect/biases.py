r"""FullGrad's bias layers: every ``nn.Conv2d`` and ``nn.BatchNorm2d`` with a bias, their bias
vectors, and the hooks that keep their outputs ``O_l`` in the autograd graph.

The layers are matched by exact type, as pytorch-grad-cam's ``FullGrad`` matches them: a
subclass may do more than add its bias (timm's ``BatchNormAct2d`` applies an activation too).
A BatchNorm's bias, in eval mode, is :math:`b = β − μγ/\sqrt{σ^2+ε}` (its output is
:math:`γ\hat x + b` with :math:`\hat x = x/\sqrt{σ^2+ε}`). Each hook keeps the layer's output
and hands the network a copy, so an in-place op after the layer (``ReLU(inplace=True)``)
changes the copy, and ``∂y/∂O_l`` is the gradient at the layer's own output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BiasTaps", "bias_layers", "bias_of"]


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Conv2d`` and ``nn.BatchNorm2d`` with a bias, in
    definition order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m) in (nn.Conv2d, nn.BatchNorm2d) and getattr(m, "bias", None) is not None
    ]


def bias_of(module: nn.Module) -> Tensor:
    """The vector a layer adds per channel, float32 ``[C]`` (a BatchNorm's folded, see the
    module)."""
    with torch.no_grad():
        if isinstance(module, nn.BatchNorm2d):
            if module.running_mean is None or module.running_var is None:
                raise ValueError("a BatchNorm2d without running statistics has no fixed bias")
            gamma = module.weight if module.weight is not None else 1.0
            scale = gamma / torch.sqrt(module.running_var + module.eps)
            return (module.bias - module.running_mean * scale).float().detach().clone()
        return module.bias.float().detach().clone()  # type: ignore[union-attr]


class BiasTaps:
    """Keeps each bias layer's output at every call between :meth:`clear` and :meth:`take`.

    :meth:`survey` runs the model once to learn the calls a forward pass makes (``calls``: the
    layer of each, ``sizes``: its map's ``(h, w)``); every later pass must make the same."""

    def __init__(self, model: nn.Module) -> None:
        layers = bias_layers(model)
        self.names = [name for name, _ in layers]
        self.biases = [bias_of(m) for _, m in layers]
        self.calls: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self._outputs: list[Tensor] = []
        self._seen: list[int] = []
        self._mode = "off"
        self._index = {id(m): i for i, (_, m) in enumerate(layers)}
        self._handles = [m.register_forward_hook(self._hook) for _, m in layers]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._mode == "off" or not isinstance(output, Tensor) or output.dim() != 4:
            return None
        self._seen.append(self._index[id(module)])
        if self._mode == "survey":
            self.sizes.append((int(output.shape[2]), int(output.shape[3])))
            return None
        self._outputs.append(output)
        return output.clone()

    def survey(self, model: nn.Module, example: Tensor) -> None:
        """Run ``model`` on ``example`` to record the calls and their sizes."""
        self._mode, self._seen, self.sizes = "survey", [], []
        try:
            with torch.no_grad():
                model(example)
        finally:
            self._mode = "off"
        self.calls = self._seen

    def clear(self) -> None:
        """Forget earlier outputs and start recording."""
        self._outputs, self._seen, self._mode = [], [], "keep"

    def take(self) -> list[Tensor]:
        """The outputs kept, one per call of :attr:`calls`; stops recording."""
        outputs, seen = self._outputs, self._seen
        self._outputs, self._seen, self._mode = [], [], "off"
        if seen != self.calls:
            raise RuntimeError("the bias layers ran in another order than when surveyed")
        return outputs

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()

"""What is explained: the target ``y`` whose map (and, for gradient methods, ``∂y/∂A``) is shown.

A target is one small record with two pure functions over the logits; the capture step
(:meth:`.explainer.Explainer.gradient`) and the heatmap head (:mod:`.heatmap_head`) call them and
nothing else about it, so another target replaces it whole:

- :meth:`ClassLogit.classes`: the class ``c_n`` explained for each image;
- :meth:`ClassLogit.score`: the scalar ``y`` that autograd differentiates, summed over the batch
  (images are independent, so ``∂y/∂A_n = ∂y_n/∂A_n``).

Today there is one target, a class logit per image. Several classes at once and a segmentation
region are further targets of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ClassLogit", "Target", "target_class"]


def target_class(
    logits: Tensor,
    class_index: Tensor | None = None,
    default: int | None = None,
    keepdim: bool = False,
) -> Tensor:
    """Per image, ``class_index`` where it is >= 0, else ``default``, else the logits' argmax:
    ``[N]``, or ``[N, 1]`` with ``keepdim`` (then ``W[target]`` gathers ``[N, 1, C]``)."""
    best = logits.argmax(dim=1, keepdim=keepdim)
    if default is not None:
        best = torch.full_like(best, default)
    if class_index is None:
        return best
    chosen = class_index.to(best.dtype).reshape(best.shape)
    return torch.where(chosen >= 0, chosen, best)


@dataclass(frozen=True)
class ClassLogit:
    r"""One class logit per image: :math:`y = \sum_n \mathrm{logits}[n, c_n]`.

    ``c_n`` is the run-time ``class_index[n]`` where it is >= 0, else ``fixed`` where set, else
    the top-1 class.

    Example:
        >>> logits = torch.tensor([[0.1, 2.0, 0.5], [5.0, 0.0, 1.0]])
        >>> target = ClassLogit()
        >>> target.classes(logits).tolist()
        [1, 0]
        >>> float(target.score(logits, target.classes(logits, torch.tensor([2, -1]))))
        5.5
    """

    fixed: int | None = None
    name: str = "class"

    @property
    def describe(self) -> str:
        """The target in words, for reports."""
        return "the top-1 class" if self.fixed is None else f"class {self.fixed}"

    def classes(
        self, logits: Tensor, class_index: Tensor | None = None, keepdim: bool = False
    ) -> Tensor:
        """``c`` per image, int64 ``[N]`` (``[N, 1]`` with ``keepdim``): :func:`target_class`."""
        return target_class(logits, class_index, self.fixed, keepdim)

    def score(self, logits: Tensor, classes: Tensor) -> Tensor:
        r""":math:`y = \sum_n \mathrm{logits}[n, c_n]` for ``classes`` ``[N]``.

        A masked sum, not a gather: its backward is a product, where a gather's is a
        scatter-add, which ONNX Runtime's CPU provider lacks in fp16.
        """
        index = torch.arange(logits.shape[1], device=logits.device)
        return (logits * (index[None, :] == classes[:, None]).to(logits.dtype)).sum()


Target = ClassLogit  # the targets there are; a union as more come

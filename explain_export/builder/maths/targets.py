"""What is explained: the target ``y`` whose map (and, for gradient methods, ``∂y/∂A``) is shown.

A target is one small record with two pure functions over the logits; the capture step
(:meth:`.explainer.Explainer.gradient`) and the heatmap head (:mod:`.heatmap_head`) call them and
nothing else about it, so another target replaces it whole:

- :meth:`ClassLogit.classes`: the class ``c_n`` explained for each image;
- :meth:`ClassLogit.scores`: the scalars ``y`` that autograd differentiates, one per map an image
  gets, each summed over the batch (images are independent, so ``∂y/∂A_n = ∂y_n/∂A_n``).

:class:`ClassLogit` explains one class per image; :class:`TopK` the ``k`` best, one map each
(``top_k`` says how many maps per image, None for one map and no ``classes`` output).
:class:`Finer` keeps either one's classes and differentiates FinerCAM's comparison of each class
with its nearest rivals instead of its logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import OptionError

__all__ = [
    "FINER_ALPHA",
    "FINER_COMPARISONS",
    "ClassLogit",
    "Finer",
    "Region",
    "Target",
    "TopK",
    "finer",
    "finer_score",
    "target_class",
]

FINER_COMPARISONS = 3  # pytorch-grad-cam's FinerCAM: comparison_categories [1, 2, 3]
FINER_ALPHA = 1.0  # its default comparison strength
FINER_EPS = 1e-9  # its FinerWeightedTarget's denominator guard


def target_class(
    logits: Tensor,
    class_index: Tensor | None = None,
    default: int | None = None,
    keepdim: bool = False,
) -> Tensor:
    """Per image, ``class_index`` where it is >= 0, else ``default``, else the logits' argmax:
    ``[N]``, or ``[N, 1]`` with ``keepdim`` (then ``W[target]`` gathers ``[N, 1, C]``)."""
    return _chosen(logits.argmax(dim=1, keepdim=keepdim), class_index, default)


def _chosen(best: Tensor, class_index: Tensor | None, default: int | None) -> Tensor:
    """``class_index`` where it is >= 0, else ``default``, else ``best`` (its shape)."""
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
    top_k: None = None  # one map per image

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
        return _masked_sum(logits, classes)

    def scores(self, logits: Tensor, classes: Tensor) -> list[Tensor]:
        """``[y]``: one map per image."""
        return [self.score(logits, classes)]


def _masked_sum(logits: Tensor, classes: Tensor) -> Tensor:
    """``Σ_n logits[n, classes[n]]`` as a masked sum (see :meth:`ClassLogit.score`)."""
    index = torch.arange(logits.shape[1], device=logits.device)
    return (logits * (index[None, :] == classes[:, None]).to(logits.dtype)).sum()


@dataclass(frozen=True)
class TopK:
    r"""The ``top_k`` best classes per image, in logit order, one map each:
    :math:`y_j = \sum_n \mathrm{logits}[n, c_{n,j}]` for :math:`j < k`, with
    :math:`c_{n,\cdot}` the indices of image ``n``'s ``k`` largest logits.

    Each :math:`y_j` is differentiated on its own (``k`` backward passes through the part of
    the model after the tap; the backbone before it runs once).

    Example:
        >>> logits = torch.tensor([[0.1, 2.0, 0.5], [5.0, 0.0, 1.0]])
        >>> target = TopK(2)
        >>> target.classes(logits).tolist()
        [[1, 2], [0, 2]]
        >>> [float(y) for y in target.scores(logits, target.classes(logits))]
        [7.0, 1.5]
    """

    top_k: int = 1
    name: str = "top-k"
    fixed: None = None  # no class is fixed at export

    @property
    def describe(self) -> str:
        """The target in words, for reports."""
        return f"the top-{self.top_k} classes"

    def classes(
        self, logits: Tensor, class_index: Tensor | None = None, keepdim: bool = False
    ) -> Tensor:
        """The ``k`` best classes per image, int64 ``[N, k]`` (``keepdim`` changes nothing)."""
        if class_index is not None:
            raise ValueError("a top-k target takes no class at run time")
        return logits.topk(self.top_k, dim=1).indices

    def scores(self, logits: Tensor, classes: Tensor) -> list[Tensor]:
        """``[y_0, ..., y_{k-1}]``, one scalar per rank."""
        return [_masked_sum(logits, classes[:, j]) for j in range(self.top_k)]


@dataclass(frozen=True)
class Region:
    r"""A segmentation class over the pixels predicted as it: for scores ``S`` ``[N, K, H', W']``,
    :math:`y = \sum_n \sum_{ij} M_{n,ij}\, S_{n, c_n, ij}` with the mask
    :math:`M_n = [\mathrm{argmax}_k S_{n,k} = c_n]` held constant (pytorch-grad-cam's
    ``SemanticSegmentationTarget``).

    ``c_n`` is the run-time ``class_index[n]`` where it is >= 0, else ``fixed``, else the class
    that covers most pixels of image ``n``, ``background`` left out (None: none left out).

    Example:
        >>> s = torch.zeros(1, 3, 2, 2); s[0, 0] = 1.0; s[0, 2, 0, 0] = 5.0  # class 2 at one pixel
        >>> Region().classes(s).tolist()  # class 0 covers three pixels, but it is background
        [2]
        >>> float(Region().scores(s, Region().classes(s))[0])
        5.0
    """

    fixed: int | None = None
    background: int | None = 0
    name: str = "region"
    top_k: None = None  # one map per image

    @property
    def describe(self) -> str:
        """The target in words, for reports."""
        if self.fixed is not None:
            return f"the pixels of class {self.fixed}"
        left = "" if self.background is None else f", class {self.background} left out"
        return f"the class that covers most pixels{left}"

    def classes(
        self, scores: Tensor, class_index: Tensor | None = None, keepdim: bool = False
    ) -> Tensor:
        """``c`` per image, int64 ``[N]`` (``[N, 1]`` with ``keepdim``)."""
        predicted = scores.argmax(dim=1)  # [N, H', W']
        index = torch.arange(scores.shape[1], device=scores.device)
        counts = (predicted[:, None] == index[None, :, None, None]).sum(dim=(2, 3))  # [N, K]
        if self.background is not None:
            counts = torch.where(index[None, :] == self.background, -1, counts)
        return _chosen(counts.argmax(dim=1, keepdim=keepdim), class_index, self.fixed)

    def scores(self, scores: Tensor, classes: Tensor) -> list[Tensor]:
        """``[y]``: the class's scores summed over its predicted pixels."""
        index = torch.arange(scores.shape[1], device=scores.device)
        chosen = (index[None, :] == classes.reshape(-1, 1)).to(scores.dtype)  # [N, K]
        mask = scores.detach().argmax(dim=1, keepdim=True) == classes.reshape(-1, 1, 1, 1)
        per_class = (scores * mask.to(scores.dtype)).sum(dim=(2, 3))  # [N, K]
        return [(per_class * chosen).sum()]


def finer_score(
    logits: Tensor,
    classes: Tensor,
    comparisons: int = FINER_COMPARISONS,
    alpha: float = FINER_ALPHA,
) -> Tensor:
    r"""FinerCAM's target, summed over the batch: for ``classes`` ``c`` ``[N]``,

    .. math:: y = \sum_n \frac{\sum_{j \in S_n} p_{nj} (z_{nc} - α z_{nj})}
                               {\sum_{j \in S_n} p_{nj} + 10^{-9}}

    with ``p = softmax(z)`` (differentiated too: it is not detached) and ``S_n`` the
    ``comparisons`` classes whose logits are closest to ``z_nc``, ``c`` left out (chosen on the
    logits' values, not differentiated; fewer where the model has fewer classes). This is
    pytorch-grad-cam 1.5.7's ``FinerWeightedTarget``, with its ``FinerCAM`` choosing ``S`` as
    the 2nd to 4th entries of ``argsort(|z - z_c|)``. Computed in float32 (an fp16 softmax
    underflows to 0/0), with masks rather than gathers (see :meth:`ClassLogit.score`).

    Example:
        >>> z = torch.tensor([[4.0, 3.0, 0.0, 3.5, 2.0, -9.0]])
        >>> y = finer_score(z, torch.tensor([0]))  # S = {3, 1, 4}
        >>> p = z.softmax(1)[0]
        >>> s = p[3] * 0.5 + p[1] * 1.0 + p[4] * 2.0
        >>> bool(torch.isclose(y, s / (p[3] + p[1] + p[4])))
        True
    """
    z = logits.float()
    index = torch.arange(z.shape[1], device=z.device)
    main = (index[None, :] == classes.reshape(-1, 1)).to(z.dtype)  # [N, K]
    values = z.detach()
    distance = (values - (values * main).sum(1, keepdim=True)).abs()
    distance = distance.masked_fill(main > 0, float("inf"))  # c is not its own rival
    rivals = (-distance).topk(min(comparisons, z.shape[1] - 1), dim=1).indices  # [N, m]
    chosen = (index[None, :, None] == rivals[:, None, :]).to(z.dtype).sum(2)  # [N, K] 0/1
    weights = torch.softmax(z, dim=1) * chosen
    gap = (z * main).sum(1, keepdim=True) - alpha * z  # z_c - α z_j
    return ((weights * gap).sum(1) / (weights.sum(1) + FINER_EPS)).sum()


@dataclass(frozen=True)
class Finer:
    r"""FinerCAM's target (:func:`finer_score`): ``base``'s classes (one per image, top-1,
    fixed or at run time, or the ``k`` best), each compared with its ``comparisons`` nearest
    rivals, :math:`y = Σ_{j∈S} p_j (z_c − α z_j) / Σ_{j∈S} p_j`, instead of its logit.

    Example:
        >>> z = torch.tensor([[4.0, 3.0, 0.0, 3.5]])
        >>> target = Finer(TopK(2))
        >>> target.classes(z).tolist(), len(target.scores(z, target.classes(z)))
        ([[0, 3]], 2)
    """

    base: ClassLogit | TopK = ClassLogit()
    comparisons: int = FINER_COMPARISONS
    alpha: float = FINER_ALPHA

    @property
    def name(self) -> str:
        """The base's (``class`` or ``top-k``): the map explains the class it names."""
        return self.base.name

    @property
    def fixed(self) -> int | None:
        return self.base.fixed

    @property
    def top_k(self) -> int | None:
        return self.base.top_k

    @property
    def describe(self) -> str:
        """The target in words, for reports."""
        return f"{self.base.describe} against its {self.comparisons} nearest classes"

    def classes(
        self, logits: Tensor, class_index: Tensor | None = None, keepdim: bool = False
    ) -> Tensor:
        """The base's classes (:meth:`ClassLogit.classes`, :meth:`TopK.classes`)."""
        return self.base.classes(logits, class_index, keepdim)

    def scores(self, logits: Tensor, classes: Tensor) -> list[Tensor]:
        """One :func:`finer_score` per map: ``[y]``, or ``[y_0 .. y_{k-1}]`` for a top-k base."""
        per_map = classes.reshape(classes.shape[0], -1)  # [N, 1] or [N, k]
        return [
            finer_score(logits, per_map[:, j], self.comparisons, self.alpha)
            for j in range(per_map.shape[1])
        ]


Target = ClassLogit | TopK | Region | Finer  # the targets there are


def finer(base: Target) -> Finer:
    """``base`` compared with each class's nearest rivals (:class:`Finer`); an
    :class:`.OptionError` for a segmentation region, whose per-pixel scores have no logit to
    compare."""
    if not isinstance(base, ClassLogit | TopK):
        raise OptionError(
            "method",
            "finercam compares a class's logit with its nearest classes'; a segmentation "
            "model's per-pixel scores have none, so pick another {name}",
        )
    return Finer(base)

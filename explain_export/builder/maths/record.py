"""A heatmap method as a record: what it reads (:class:`Needs`), what it gives (:class:`Terms`),
and its flags (:class:`Method`). The registry is :mod:`.methods`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # the commands read the records without importing torch
    from torch import Tensor

__all__ = ["Method", "Needs", "Terms"]


class Needs(NamedTuple):
    """What a method may read. ``features``: ``A`` ``[N,C,h,w]``; ``grad``: ``∂y/∂A``, same
    shape (methods with ``needs_gradient``); ``weight``: the linear head's ``W`` ``[K,C]`` and
    ``weight_bound`` a bound on ``|W|`` (``needs_linear``); ``target``: the class per image
    ``[N,1]`` (``needs_linear``; gradient methods see their class through ``grad``).

    Methods ``at_image``: ``image`` is ``x``, the graph's float RGB image in [0,1] ``[N,3,H,W]``
    and ``image_grad`` ``∂y/∂x`` (or, for a sampling method, its reduction over the samples);
    ``bias_grads`` ``∂y/∂O_l`` at each bias layer's output, ``biases`` their bias vectors and
    ``bias_sizes`` their map sizes at export (None: the image's); ``resize`` takes a map
    ``[M,1,h,w]`` to the image's size, bilinearly."""

    features: Tensor
    grad: Tensor | None = None
    weight: Tensor | None = None
    target: Tensor | None = None
    weight_bound: float | None = None
    image: Tensor | None = None
    image_grad: Tensor | None = None
    bias_grads: tuple[Tensor, ...] = ()
    biases: tuple[Tensor, ...] = ()
    bias_sizes: tuple[object, ...] = ()
    resize: Callable[[Tensor], Tensor] | None = None


class Terms(NamedTuple):
    """The map before resize ``[N,1,h,w]``, and ``scale`` ``[N,1,1]``: the largest sum of its
    terms' magnitudes per image, against which a map that cancels to rounding noise is flat."""

    map: Tensor
    scale: Tensor


@dataclass(frozen=True)
class Method:
    """A heatmap method.

    ``formula``, ``when``: for the README, ``--help`` and the metadata. ``needs_linear``: the
    weight ``W`` of an ``nn.Linear`` fed by ``GAP(A)`` (checked on a probe). ``needs_gradient``:
    ``∂y/∂A``, by autograd in eager mode; an export lowers it to forward ops (:mod:`.lowering`).
    ``has_class``: explains one class per image (top-1 or chosen). ``terms``: the function.

    Pixel-level methods (:mod:`.pixels`): ``at_image``, the gradient is taken at the graph's
    image ``x`` and the map is at input size (no layer, unless ``layer_map``, which also takes
    ``A`` and ``∂y/∂A`` at the layer); ``samples``, the gradient is taken at ``S`` points
    around ``x`` instead (``"path"``: Integrated Gradients' ``α_s x``, ``"noise"``: SmoothGrad's
    ``x + n_s``; :mod:`.sampling`); ``guided``, every ReLU-family backward passes only positive
    gradients (:mod:`.guided`); ``biases``, also ``∂y/∂O`` at every bias layer's output.

    ``second_order`` (ShapleyCAM): ``grad`` holds ``g − ½ H·A`` instead of ``g``, with
    ``H·A = ∂(g·A)/∂A`` the Hessian-vector product (double backward;
    :meth:`.explainer.Explainer.gradient`). ``target_kind``: turns the plan's target (a class
    per image, or the top k) into the one this method differentiates (:func:`.targets.finer`
    for FinerCAM); None keeps it.
    """

    name: str
    formula: str
    when: str
    needs_linear: bool
    needs_gradient: bool
    has_class: bool
    terms: Callable[[Needs], Terms]
    at_image: bool = False
    samples: str | None = None
    guided: bool = False
    layer_map: bool = False
    biases: bool = False
    second_order: bool = False
    target_kind: Callable[[Any], Any] | None = None

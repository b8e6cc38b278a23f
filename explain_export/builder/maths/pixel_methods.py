"""The pixel-level methods' records (:mod:`.pixels` has their math): the gradient is taken at
the graph's image, and the map is at input size. :mod:`.methods` holds them in its registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .record import Method, Needs, Terms

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FULLGRAD",
    "GUIDED_BACKPROP",
    "GUIDED_GRADCAM",
    "INPUTXGRADIENT",
    "INTEGRATED_GRADIENTS",
    "SALIENCY",
    "SMOOTHGRAD",
]


def _layer_grad(needs: Needs) -> Tensor:
    """``∂y/∂A`` at the layer (guided Grad-CAM's Grad-CAM)."""
    if needs.grad is None:
        raise ValueError("this method needs the gradient at its layer")
    return needs.grad


def _image_grad(needs: Needs) -> Tensor:
    """``∂y/∂x`` at the image (or its reduction over a sampling method's points)."""
    if needs.image_grad is None or needs.image is None:
        raise ValueError("this method needs the image and its gradient")
    return needs.image_grad


def _saliency(needs: Needs) -> Terms:
    from . import pixels

    return Terms(*pixels.saliency_terms(_image_grad(needs)))


def _inputxgradient(needs: Needs) -> Terms:
    from . import pixels

    grad = _image_grad(needs)
    return Terms(*pixels.inputxgradient_terms(needs.image, grad))  # type: ignore[arg-type]


def _guided_gradcam(needs: Needs) -> Terms:
    from . import heads, pixels

    if needs.resize is None:
        raise ValueError("guided-gradcam needs the resize to the image")
    cam, _ = heads.channel_terms(needs.features, heads.gradcam_weights(_layer_grad(needs)))
    return Terms(*pixels.guided_gradcam_terms(_image_grad(needs), needs.resize(cam)))


def _fullgrad(needs: Needs) -> Terms:
    from . import pixels

    grad = _image_grad(needs)
    if needs.resize is None:
        raise ValueError("fullgrad needs the resize to the image")
    return Terms(
        *pixels.fullgrad_terms(
            needs.image,  # type: ignore[arg-type]
            grad,
            needs.biases,
            needs.bias_grads,
            needs.bias_sizes,
            needs.resize,
        )
    )


def _at_image(name: str, formula: str, terms: Callable[[Needs], Terms], **flags: object) -> Method:
    when = "any differentiable model; the gradient is taken at the image, the map is pixel-level"
    return Method(name, formula, when, False, True, True, terms, at_image=True, **flags)  # type: ignore[arg-type]


SALIENCY = _at_image("saliency", "m = max_ch |g|, g = ∂y_c/∂x at the image x in [0,1]", _saliency)
INPUTXGRADIENT = _at_image("inputxgradient", "m = ReLU(Σ_ch x ⊙ g)", _inputxgradient)
INTEGRATED_GRADIENTS = _at_image(
    "integrated-gradients",
    "m = ReLU(Σ_ch x ⊙ Σ_s w_s ∂y_c/∂x(α_s x)), baseline 0, S Gauss-Legendre nodes α_s and "
    "weights w_s on [0,1] (--steps)",
    _inputxgradient,
    samples="path",
)
SMOOTHGRAD = _at_image(
    "smoothgrad",
    "m = max_ch mean_s |∂y_c/∂x(x + n_s)|, S Gaussian draws n_s of σ --noise, fixed at export "
    "from --seed (--steps)",
    _saliency,
    samples="noise",
)
GUIDED_BACKPROP = _at_image(
    "guided-backprop",
    "m = max_ch |ĝ|, ĝ the gradient with every ReLU and ReLU6 passing only positive gradients",
    _saliency,
    guided=True,
)
GUIDED_GRADCAM = _at_image(
    "guided-gradcam",
    "m = max_ch |ĝ ⊙ up(ReLU(Σ_k α_k A_k))|, Grad-CAM at --layer resized bilinearly",
    _guided_gradcam,
    guided=True,
    layer_map=True,
)
FULLGRAD = _at_image(
    "fullgrad",
    "m = Σ_ch u(|x ⊙ g|) + Σ_l up(Σ_ch u(|b_l ⊙ ∂y_c/∂O_l|)), O_l the output of every "
    "Conv2d/BatchNorm2d with a bias b_l, u each channel's min-max",
    _fullgrad,
    biases=True,
)

"""The heatmap methods: one record and one function each, in a registry.

A method's function takes what it needs (:class:`Needs`: the tapped map ``A``, the gradient
``∂y/∂A``, the linear head's weight ``W``, the class ``c``) and gives the map before resize,
with the magnitude of the terms it was summed from (:class:`Terms`); :func:`.heads.to_unit`
does the rest, the same for every method. The build resolves a name once (:func:`get`) into
its :class:`Method` record; the explainer, the head, lowering and export read the record's
flags and call its function, and never compare names.

``auto`` is not a method but a choice between two: ``cam`` where it is exact (a
global-average-pool + ``nn.Linear`` head after ``A``), else ``gradcam`` (:mod:`.plan`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from .pixel_methods import (
    FULLGRAD,
    GUIDED_BACKPROP,
    GUIDED_GRADCAM,
    INPUTXGRADIENT,
    INTEGRATED_GRADIENTS,
    SALIENCY,
    SMOOTHGRAD,
)
from .record import Method, Needs, Terms

if TYPE_CHECKING:  # the commands read the choices without importing torch
    from torch import Tensor

__all__ = [
    "AUTO",
    "CAM",
    "CHOICES",
    "EIGENCAM",
    "EIGENGRADCAM",
    "FEM",
    "FINERCAM",
    "FULLGRAD",
    "GRADCAM",
    "GRADCAMPP",
    "GRADCAM_ELEMENTWISE",
    "GUIDED_BACKPROP",
    "GUIDED_GRADCAM",
    "HIRESCAM",
    "INPUTXGRADIENT",
    "INTEGRATED_GRADIENTS",
    "KPCACAM",
    "LAYERCAM",
    "METHODS",
    "SALIENCY",
    "SEGEIGENCAM",
    "SHAPLEYCAM",
    "SMOOTHGRAD",
    "SUM",
    "XGRADCAM",
    "Method",
    "Needs",
    "Terms",
    "get",
]

AUTO = "auto"


def _sum(needs: Needs) -> Terms:
    from . import heads

    return Terms(*heads.channel_terms(needs.features, None))


def _cam(needs: Needs) -> Terms:
    from . import heads

    if needs.weight is None or needs.target is None:
        raise ValueError("cam needs the linear weight and the class index")
    alpha = heads.cam_weights(needs.weight, needs.target)
    return Terms(*heads.channel_terms(needs.features, alpha, needs.weight_bound))


def _grad(needs: Needs) -> Tensor:
    """``∂y/∂A``, which every gradient method needs."""
    if needs.grad is None:
        raise ValueError("this method needs the gradient of the class logit")
    return needs.grad


def _gradcam(needs: Needs) -> Terms:
    from . import heads

    return Terms(*heads.channel_terms(needs.features, heads.gradcam_weights(_grad(needs))))


SUM = Method(
    "sum",
    "m = Σ_k A_k",
    "any map; no class, no gradient (the article's feature-map superposition)",
    needs_linear=False,
    needs_gradient=False,
    has_class=False,
    terms=_sum,
)
CAM = Method(
    "cam",
    "m = ReLU(Σ_k W[c,k] A_k)",
    "A feeds global average pooling + one nn.Linear that gives the logits; there it equals "
    "Grad-CAM, and costs one small matmul",
    needs_linear=True,
    needs_gradient=False,
    has_class=True,
    terms=_cam,
)
GRADCAM = Method(
    "gradcam",
    "m = ReLU(Σ_k α_k A_k), α_k = mean_ij ∂y_c/∂A_k(i,j)",
    "any differentiable head after A; the gradient is computed inside the exported graph",
    needs_linear=False,
    needs_gradient=True,
    has_class=True,
    terms=_gradcam,
)


def _gradcampp(needs: Needs) -> Terms:
    from . import cams, heads

    weights = cams.gradcampp_weights(needs.features, _grad(needs))
    return Terms(*heads.channel_terms(needs.features, weights))


def _xgradcam(needs: Needs) -> Terms:
    from . import cams, heads

    weights = cams.xgradcam_weights(needs.features, _grad(needs))
    return Terms(*heads.channel_terms(needs.features, weights))


def _hirescam(needs: Needs) -> Terms:
    from . import cams

    return Terms(*cams.hirescam_terms(needs.features, _grad(needs)))


def _gradcam_elementwise(needs: Needs) -> Terms:
    from . import cams

    return Terms(*cams.gradcam_elementwise_terms(needs.features, _grad(needs)))


def _layercam(needs: Needs) -> Terms:
    from . import cams

    return Terms(*cams.layercam_terms(needs.features, _grad(needs)))


def _eigengradcam(needs: Needs) -> Terms:
    from . import cams

    return Terms(*cams.eigengradcam_terms(needs.features, _grad(needs)))


def _eigencam(needs: Needs) -> Terms:
    from . import cams

    return Terms(*cams.eigen_terms(needs.features))


def _gradient_method(name: str, formula: str, when: str, terms: Callable[[Needs], Terms]) -> Method:
    return Method(name, formula, when, False, True, True, terms)


_ANY_HEAD = "any differentiable head after A; the gradient is computed inside the exported graph"
GRADCAMPP = _gradient_method(
    "gradcam++",
    "m = ReLU(Σ_k w_k A_k), w_k = Σ_ij a_kij ReLU(g_kij), "
    "a = g² / (2g² + (Σ_ij A_kij) g³ + 1e-6), a = 0 where g = 0",
    _ANY_HEAD,
    _gradcampp,
)
XGRADCAM = _gradient_method(
    "xgradcam",
    "m = ReLU(Σ_k w_k A_k), w_k = Σ_ij g_kij A_kij / (Σ_ij A_kij + 1e-7)",
    _ANY_HEAD,
    _xgradcam,
)
HIRESCAM = _gradient_method(
    "hirescam",
    "m = ReLU(Σ_k g_k ⊙ A_k), the gradient per pixel (no averaging)",
    _ANY_HEAD,
    _hirescam,
)
GRADCAM_ELEMENTWISE = _gradient_method(
    "gradcam-elementwise",
    "m = Σ_k ReLU(g_k ⊙ A_k)",
    _ANY_HEAD,
    _gradcam_elementwise,
)
LAYERCAM = _gradient_method(
    "layercam",
    "m = ReLU(Σ_k ReLU(g_k) ⊙ A_k)",
    _ANY_HEAD + "; finer maps from early layers",
    _layercam,
)
EIGENCAM = Method(
    "eigencam",
    "m = ReLU(±X v), X the centred map (hw × C), v its first principal direction (65 power "
    "steps, or 6 squarings of the smaller Gram matrix), the sign that makes max m >= |min m|",
    "any map; no class, no gradient",
    needs_linear=False,
    needs_gradient=False,
    has_class=False,
    terms=_eigencam,
)
EIGENGRADCAM = _gradient_method(
    "eigengradcam",
    "eigencam's projection of g ⊙ A",
    _ANY_HEAD,
    _eigengradcam,
)


def _fem(needs: Needs) -> Terms:
    from . import newer_cams

    return Terms(*newer_cams.fem_terms(needs.features))


def _kpcacam(needs: Needs) -> Terms:
    from . import newer_cams

    return Terms(*newer_cams.kpca_terms(needs.features))


def _segeigencam(needs: Needs) -> Terms:
    from . import newer_cams

    return Terms(*newer_cams.segeigen_terms(needs.features, _grad(needs)))


FEM = Method(
    "fem",
    "m = ReLU(Σ_k w_k A_k), w_k = mean_ij [A_kij > μ_k + 2σ_k] (μ, σ over the pixels, ddof 0)",
    "any map; no class, no gradient (the channels' k-sigma outliers)",
    needs_linear=False,
    needs_gradient=False,
    has_class=False,
    terms=_fem,
)
KPCACAM = Method(
    "kpcacam",
    "m = ReLU(±u), u the first eigenvector of the centred sigmoid kernel "
    "tanh(x_i·x_j / C + 1) of the centred map's pixels x_i (10 squarings), the sign that "
    "makes max m >= |min m|",
    "any map; no class, no gradient (scikit-learn KernelPCA's defaults)",
    needs_linear=False,
    needs_gradient=False,
    has_class=False,
    terms=_kpcacam,
)
SEGEIGENCAM = _gradient_method(
    "segeigencam",
    "eigencam's projection of |g| ⊙ A, with its sign rule",
    _ANY_HEAD,
    _segeigencam,
)


def _finer(base: Any) -> Any:
    from .targets import finer

    return finer(base)


FINERCAM = Method(
    "finercam",
    "Grad-CAM of y = Σ_{j∈S} p_j (z_c − z_j) / Σ_{j∈S} p_j, S the 3 classes whose logits are "
    "closest to z_c, p = softmax(z)",
    _ANY_HEAD + "; the features that tell c from the classes it is most confused with",
    needs_linear=False,
    needs_gradient=True,
    has_class=True,
    terms=_gradcam,
    target_kind=_finer,
)
SHAPLEYCAM = Method(
    "shapleycam",
    "m = ReLU(Σ_k w_k A_k), w_k = mean_ij (g − ½ H·A)_k, H·A = ∂(g·A)/∂A the Hessian-vector "
    "product",
    _ANY_HEAD + "; the second-order term is zero where the head is piecewise linear after A",
    needs_linear=False,
    needs_gradient=True,
    has_class=True,
    terms=_gradcam,
    second_order=True,
)
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        SUM,
        CAM,
        GRADCAM,
        GRADCAMPP,
        XGRADCAM,
        HIRESCAM,
        GRADCAM_ELEMENTWISE,
        LAYERCAM,
        EIGENCAM,
        EIGENGRADCAM,
        SALIENCY,
        INPUTXGRADIENT,
        INTEGRATED_GRADIENTS,
        SMOOTHGRAD,
        GUIDED_BACKPROP,
        GUIDED_GRADCAM,
        FULLGRAD,
        FEM,
        KPCACAM,
        SEGEIGENCAM,
        FINERCAM,
        SHAPLEYCAM,
    )
}
CHOICES = (AUTO, *METHODS)


def get(name: str | Method) -> Method:
    """The method called ``name`` (a record is returned as it is); a UsageError naming the
    choices otherwise."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        from ...words import closest

        near = closest(name, CHOICES)
        hint = f"did you mean {near}?" if near else f"choose one of {', '.join(CHOICES)}"
        raise UsageError(f"unknown method '{name}'; {hint}")
    return METHODS[name]

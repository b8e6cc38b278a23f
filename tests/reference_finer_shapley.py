"""Independent references for FinerCAM and ShapleyCAM, written from their formulas with autograd
and a cloning hook (:func:`reference._capture`), the head maths in float64; resize and min-max
as :func:`reference.numpy_finish` (cv2).

- FinerCAM: Grad-CAM of ``L_n = Σ_{j∈S} p_j (z_c − z_j) / (Σ_{j∈S} p_j + 1e-9)``, ``S`` the
  2nd to 4th entries of numpy's ``argsort(|z − z_c|)`` (as pytorch-grad-cam's ``FinerCAM``),
  ``p = softmax(z)`` differentiated, indexed by gathers in a loop over the images;
- ShapleyCAM: ``w_k = mean_ij (g − ½ H·A)_k`` with ``H·A`` autograd's double backward
  ``torch.autograd.grad(g, A, grad_outputs=A)``, then ``ReLU(Σ_k w_k A_k)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from reference import _capture, numpy_finish


def _classes(logits: Tensor, class_index: Tensor | None) -> list[int]:
    """Per image: ``class_index[n]`` where it is >= 0, else the argmax."""
    best = logits.argmax(1).tolist()
    if class_index is None:
        return best
    return [int(c) if int(c) >= 0 else b for c, b in zip(class_index.tolist(), best, strict=True)]


def _finer_loss(logits: Tensor, classes: list[int], comparisons: int = 3) -> Tensor:
    z = logits.detach().numpy()
    total = logits.new_zeros(())
    for n, c in enumerate(classes):
        order = np.argsort(np.abs(z[n] - z[n, c]))
        rivals = [int(j) for j in order if j != c][:comparisons]
        p = torch.softmax(logits[n], dim=0)
        num = sum(p[j] * (logits[n, c] - logits[n, j]) for j in rivals)
        total = total + num / (sum(p[j] for j in rivals) + 1e-9)
    return total


def _map(a: Tensor, weights: Tensor, size: tuple[int, int]) -> np.ndarray:
    m = torch.relu((weights[:, :, None, None] * a).sum(1))
    return numpy_finish(m.numpy(), size)


def newer_cam(
    model: nn.Module,
    x: Tensor,
    module: nn.Module,
    method: str,
    port: str = "output",
    call: int = 0,
    class_index: Tensor | None = None,
) -> np.ndarray:
    """The heatmap of ``finercam`` or ``shapleycam`` for the normalized batch ``x`` at the tensor
    ``module`` gives; ``class_index`` per image (-1: the top-1)."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model(x)
            classes = _classes(logits, class_index)
            a = store["a"]
            if method == "finercam":
                (g,) = torch.autograd.grad(_finer_loss(logits, classes), a)
                weights = g.double().mean((2, 3))
            elif method == "shapleycam":
                y = sum(logits[n, c] for n, c in enumerate(classes))
                (g,) = torch.autograd.grad(y, a, create_graph=True)
                (hvp,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), allow_unused=True)
                hvp = torch.zeros_like(a) if hvp is None else hvp
                weights = (g.detach().double() - 0.5 * hvp.double()).mean((2, 3))
            else:
                raise ValueError(method)
    finally:
        handle.remove()
    return _map(a.detach().double(), weights, tuple(x.shape[-2:]))


def hessian_times_map(
    model: nn.Module, x: Tensor, module: nn.Module, class_index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(g, H·A)`` at ``module``'s output for the top-1 (or given) class, by autograd."""
    store: dict = {}
    handle = _capture(module, "output", 0, store)
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            y = sum(logits[n, c] for n, c in enumerate(_classes(logits, class_index)))
            a = store["a"]
            (g,) = torch.autograd.grad(y, a, create_graph=True)
            if not g.requires_grad:
                return g.detach(), torch.zeros_like(a)
            (hvp,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), allow_unused=True)
    finally:
        handle.remove()
    return g.detach(), torch.zeros_like(a) if hvp is None else hvp.detach()

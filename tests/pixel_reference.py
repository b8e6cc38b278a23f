"""Independent references for the pixel-level methods, written from their formulas with plain
autograd: one backward pass per sample (no batching), module backward hooks for guided backprop,
forward hooks and numpy + OpenCV for FullGrad (per channel, as pytorch-grad-cam does it)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference import normalize


def unit(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max of ``[N,H,W]`` maps, in float64, as ``[N,1,H,W]``."""
    out = []
    for m in maps.astype(np.float64):
        span = m.max() - m.min()
        out.append((m - m.min()) / span if span > 0 else np.zeros_like(m))
    return np.stack(out)[:, None]


def _score(model: nn.Module, x: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor]:
    logits = model(normalize(x))
    c = logits.argmax(1) if classes is None else classes
    return logits.gather(1, c[:, None]).sum(), c


def gradient(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(∂y/∂x, classes)`` at the [0,1] images ``x``, ``y`` the sum of each image's class
    logit (its argmax where ``classes`` is None)."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        y, c = _score(model, x, classes)
        (g,) = torch.autograd.grad(y, x)
    return g, c


def _classes(model: nn.Module, x: Tensor, classes: Tensor | None) -> Tensor:
    with torch.no_grad():
        return model(normalize(x)).argmax(1) if classes is None else classes


def saliency(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> np.ndarray:
    return unit(gradient(model, x, classes)[0].abs().amax(1).numpy())


def inputxgradient(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> np.ndarray:
    g, _ = gradient(model, x, classes)
    return unit(torch.relu((x * g).sum(1)).numpy())


def integrated_gradients(
    model: nn.Module, x: Tensor, steps: int, classes: Tensor | None = None
) -> np.ndarray:
    """Gauss-Legendre on [0,1], one step at a time."""
    c = _classes(model, x, classes)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = torch.zeros_like(x)
    for node, weight in zip(nodes, weights, strict=True):
        g, _ = gradient(model, float(0.5 * (node + 1)) * x, c)
        total += float(0.5 * weight) * g
    return unit(torch.relu((x * total).sum(1)).numpy())


def smoothgrad(
    model: nn.Module, x: Tensor, steps: int, sigma: float, seed: int, classes=None
) -> np.ndarray:
    """The mean of |∂y/∂x| over noisy copies (noise drawn on the global generator after
    ``torch.manual_seed(seed)``, one draw for all images), then the channel max."""
    c = _classes(model, x, classes)
    torch.manual_seed(seed)
    noise = torch.normal(0.0, torch.full((steps, *x.shape[1:]), sigma))
    total = torch.zeros_like(x)
    for s in range(steps):
        total += gradient(model, x + noise[s], c)[0].abs()
    return unit((total / steps).amax(1).numpy())


def _guided_hooks(model: nn.Module) -> list:
    """Backward hooks on every ``nn.ReLU`` / ``nn.ReLU6`` module: the gradient they pass is
    rectified (the module's own gate applied by autograd first)."""

    def hook(module, grad_input, grad_output):
        return (F.relu(grad_input[0]),)

    return [
        m.register_full_backward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.ReLU | nn.ReLU6)
    ]


def guided_gradient(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> Tensor:
    handles = _guided_hooks(model)
    try:
        return gradient(model, x, classes)[0]
    finally:
        for h in handles:
            h.remove()


def guided_backprop(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> np.ndarray:
    return unit(guided_gradient(model, x, classes).abs().amax(1).numpy())


def guided_gradcam(
    model: nn.Module, x: Tensor, layer: nn.Module, classes: Tensor | None = None
) -> np.ndarray:
    """Grad-CAM at ``layer`` (a cloning forward hook, the plain gradient), ReLU'd and resized
    bilinearly; times the guided gradient, channel max of the magnitude."""
    store: dict = {}

    def keep(module, args, out):
        store["a"] = out
        return out.clone()

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            y, c = _score(model, xg, classes)
            (g,) = torch.autograd.grad(y, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    guided = guided_gradient(model, x, c)
    return unit((guided * up).abs().amax(1).numpy())


def _scale(t: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` per 2-D map of ``[N,C,h,w]``: minus the min,
    over (1e-7 + the max), then ``cv2.resize`` to ``size``."""
    n, c = t.shape[:2]
    out = np.empty((n, c, *size), dtype=np.float32)
    for i in range(n):
        for k in range(c):
            m = t[i, k] - t[i, k].min()
            m = m / (1e-7 + m.max())
            out[i, k] = cv2.resize(m.astype(np.float32), (size[1], size[0]))
    return out


def fullgrad(model: nn.Module, x: Tensor, classes: Tensor | None = None) -> np.ndarray:
    """FullGrad with hooks on every Conv2d / BatchNorm2d (exact type) that has a bias."""
    layers = [
        m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None
    ]
    outs: list[tuple[nn.Module, Tensor]] = []

    def keep(module, args, out):
        outs.append((module, out))
        return out.clone()

    handles = [m.register_forward_hook(keep) for m in layers]
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            y, _ = _score(model, xg, classes)
            grads = torch.autograd.grad(y, [xg, *(o for _, o in outs)], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    size = tuple(x.shape[-2:])
    total = _scale((grads[0] * x).abs().numpy(), size).sum(1)
    for (module, out), g in zip(outs, grads[1:], strict=True):
        if g is None:
            g = torch.zeros_like(out)
        if isinstance(module, nn.BatchNorm2d):
            bias = module.bias - module.running_mean * module.weight / torch.sqrt(
                module.running_var + module.eps
            )
        else:
            bias = module.bias
        term = (bias.detach()[None, :, None, None] * g).abs().numpy()
        total += _scale(term, size).sum(1)
    return unit(total)

"""Independent references: Grad-CAM with autograd, and the channel sum in numpy + OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor, nn


def _capture(module: nn.Module, port: str, call: int, store: dict) -> object:
    """Keep the tapped tensor as it is at that point: the network gets a clone (so an in-place
    op later changes the clone), and the gradient reaches the original through the clone."""
    seen = []

    def keep(t):
        seen.append(t)
        if len(seen) != call + 1:
            return None
        store["a"] = t
        if t.requires_grad:
            t.retain_grad()
        return t.clone()

    if port == "input":
        return module.register_forward_pre_hook(lambda m, args: (keep(args[0]), *args[1:]))
    return module.register_forward_hook(lambda m, args, out: keep(out))


def normalize(image: Tensor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> Tensor:
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def numpy_finish(maps: np.ndarray, size: tuple[int, int], eps: float = 1e-12) -> np.ndarray:
    """cv2.resize(INTER_LINEAR) each [h,w] map to size, then per-image min-max."""
    out = []
    for m in maps:
        r = cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append((r - r.min()) / max(r.max() - r.min(), eps))
    return np.stack(out)[:, None]


def gradcam(
    model: nn.Module,
    x: Tensor,
    module: nn.Module,
    port: str = "output",
    call: int = 0,
    class_index: Tensor | None = None,
    layout: str = "NCHW",
) -> tuple[np.ndarray, Tensor]:
    """Grad-CAM the usual way: hook the map, backprop the target logit, weight by the spatial
    mean of the gradients, ReLU; then the same resize and min-max. ``x`` is normalized.
    ``layout="NHWC"``: the tapped tensor is channels-last ``[N,h,w,C]``."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)  # so every tapped map carries a gradient
            logits = model(x)
            c = logits.argmax(1) if class_index is None else class_index
            logits.gather(1, c[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"], store["a"].grad
    if layout == "NHWC":
        a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    return numpy_finish(m, tuple(x.shape[-2:])), logits.detach()


def channel_sum(
    model: nn.Module, x: Tensor, module: nn.Module, port="output", call=0
) -> np.ndarray:
    """The seed's superposition in numpy: sum over channels, cv2 resize, min-max."""
    store: dict = {}
    handle = _capture(module, port, call, store)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = store["a"].numpy()
    return numpy_finish(a.sum(axis=1), tuple(x.shape[-2:]))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-image Pearson correlation of two [N,1,H,W] batches."""
    return min(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b, strict=True))

"""A YOLO head's class branch, and a detection's score gradient in a window of its level's map.

Ultralytics' ``Detect`` (and a head built like it) computes, per level ``l``, the class logits
``z_l = branch_l(A_l)`` ``[N, K, h_l, w_l]`` from the map it reads, and its raw output's class
rows are their sigmoids, level after level: ``raw[n, 4 + c, o_l + y·w_l + x] = σ(z_l[n, c, y, x])``
(``o_l``: the anchors of the levels before ``l``). A detection at anchor ``a`` of level ``l``,
class ``c``, has score ``y = σ(z_l[c, y, x])``, so:

- ``∂y/∂A_m = 0`` for every other level ``m`` (the branch reads ``A_l`` alone);
- ``∂y/∂A_l`` is 0 outside the ``(2r+1)²`` window around ``(y, x)``, where ``r`` is the branch's
  reach: ``Σ dilation·(k−1)/2`` over its convolutions (all stride 1, size kept).

So the gradient is the branch run on that window of ``A_l`` alone, and one backward pass, for all
``N·D`` detections at once: a few pixels per detection instead of the whole head ``D`` times.
The window is clamped inside the map (its start ``clamp(y − r, 0, h_l − S)``, ``S = min(2r+1,
h_l)``): an edge of the window that is the map's edge pads as the map does, and the detection is
at least ``r`` from any other edge, so its logit and gradient are the full map's exactly.

:func:`find` takes the branch only where this is checked on the probe: a module list of the head
with one module per level whose sigmoids are the raw class rows, only convolutions (stride 1),
normalization and activations inside, and each level's windowed logits equal to the full map's at
the corners, edges and centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ClassBranch", "WindowGradient", "find", "reach", "window_gradients"]

# pointwise at each pixel in eval mode (GroupNorm is not: its statistics span the map)
_POINTWISE = (nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d)
# torch.nn.modules.activation's modules that act along a dimension: pointwise only along dim 1
_ALONG_A_DIM = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.GLU)


@dataclass(frozen=True)
class ClassBranch:
    """The head's attribute ``name`` (a module list, one per level) and each level's reach
    ``(r_y, r_x)``: the logit at ``(y, x)`` reads ``A_l`` within ``r`` pixels of it."""

    name: str
    radii: tuple[tuple[int, int], ...]

    def modules(self, head: nn.Module) -> list[nn.Module]:
        return list(getattr(head, self.name))


def reach(module: nn.Module) -> tuple[int, int] | None:
    """``(r_y, r_x)``: how far from a pixel the output there reads, where ``module`` holds only
    size-keeping stride-1 convolutions, normalization and activations; else None."""
    ry = rx = 0
    for m in module.modules():
        if len(list(m.children())):
            continue
        if isinstance(m, nn.Conv2d):
            (ky, kx), (dy, dx) = m.kernel_size, m.dilation
            if m.stride != (1, 1) or ky % 2 == 0 or kx % 2 == 0:
                return None
            want = (dy * (ky - 1) // 2, dx * (kx - 1) // 2)
            if m.padding != "same" and tuple(m.padding) != want:
                return None
            ry, rx = ry + want[0], rx + want[1]
        elif isinstance(m, _ALONG_A_DIM):
            if m.dim != 1:
                return None
        elif isinstance(m, nn.MultiheadAttention) or not (
            isinstance(m, _POINTWISE) or type(m).__module__ == nn.SiLU.__module__
        ):
            return None  # the rest of torch.nn.modules.activation (ReLU, SiLU, ...) is pointwise
    return ry, rx


def _levels(maps: list[Tensor]) -> list[tuple[int, int, int]]:
    """``(o_l, h_l, w_l)`` per level: its first anchor and its size."""
    out, offset = [], 0
    for a in maps:
        h, w = int(a.shape[2]), int(a.shape[3])
        out.append((offset, h, w))
        offset += h * w
    return out


def _windows(
    anchors: Tensor, level: tuple[int, int, int], radii: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[int, int]]:
    """For anchors ``[M]``: ``(in this level [M], flat pixel indices of each window [M, S_y·S_x],
    the anchor's row and column in its window [M] each, (S_y, S_x))``."""
    offset, h, w = level
    sy, sx = min(2 * radii[0] + 1, h), min(2 * radii[1] + 1, w)
    local = anchors - offset
    inside = (local >= 0) & (local < h * w)
    local = local.clamp(0, h * w - 1)
    y, x = local // w, local % w
    y0 = (y - radii[0]).clamp(0, h - sy)
    x0 = (x - radii[1]).clamp(0, w - sx)
    rows = y0[:, None] + torch.arange(sy, device=anchors.device)
    cols = x0[:, None] + torch.arange(sx, device=anchors.device)
    flat = (rows[:, :, None] * w + cols[:, None, :]).flatten(1)
    return inside, flat, y - y0, x - x0, (sy, sx)


def _crops(a: Tensor, flat: Tensor, size: tuple[int, int]) -> Tensor:
    """``A [N, C, h, w]`` at the windows ``flat [N·D, S]`` (D per image): ``[N·D, C, S_y, S_x]``."""
    n, c = a.shape[:2]
    per = flat.reshape(n, -1)  # [N, D·S]
    got = a.flatten(2).gather(2, per[:, None, :].expand(-1, c, -1))  # [N, C, D·S]
    got = got.reshape(n, c, -1, size[0] * size[1]).transpose(1, 2)
    return got.reshape(-1, c, size[0], size[1])


@dataclass(frozen=True)
class WindowGradient:
    """One level's gradient for ``M = N·D`` detections: ``grad`` ``[M, C, S_y, S_x]`` on the
    windows ``flat`` ``[M, S_y·S_x]`` (pixel indices) of a map of ``size`` ``(h, w)``; 0
    elsewhere."""

    grad: Tensor
    flat: Tensor
    size: tuple[int, int]

    def full(self) -> Tensor:
        """``∂y/∂A`` ``[M, C, h, w]``: the windows written into zeros."""
        m, c = self.grad.shape[:2]
        h, w = self.size
        out = torch.zeros(m, c, h * w, dtype=self.grad.dtype, device=self.grad.device)
        out = out.scatter(2, self.flat[:, None, :].expand(-1, c, -1), self.grad.flatten(2))
        return out.reshape(m, c, h, w)

    def channel_mean(self) -> Tensor:
        """``mean_ij ∂y/∂A_k(i, j)`` ``[M, C]`` (Grad-CAM's weights) from the windows alone."""
        h, w = self.size
        return self.grad.sum(dim=(2, 3)) / (h * w)


def window_gradients(
    branches: list[nn.Module],
    radii: tuple[tuple[int, int], ...],
    maps: list[Tensor],
    anchors: Tensor,
    classes: Tensor,
    weight: Tensor,
) -> list[WindowGradient]:
    r"""Per level, ``∂y/∂A_l`` of every detection (row ``n·D + j``),
    :math:`y_{nj} = w_{nj}\,\sigma(z_l[n, c_{nj}, y, x])` at its anchor ``a_{nj}``: 0 in the levels
    it is not in, and in its own the branch's gradient on the window around it (module
    docstring). ``anchors``, ``classes``, ``weight``: ``[N, D]`` (``weight``: 1 for a real
    detection, 0 for padding)."""
    anchors, classes, weight = anchors.reshape(-1), classes.reshape(-1), weight.reshape(-1)
    out = []
    for branch, r, a, level in zip(branches, radii, maps, _levels(maps), strict=True):
        inside, flat, ty, tx, size = _windows(anchors, level, r)
        crop = _crops(a.detach(), flat, size).requires_grad_(True)
        z = branch(crop)  # [N·D, K, S_y, S_x]
        at = z.flatten(2).gather(2, (ty * size[1] + tx)[:, None, None].expand(-1, z.shape[1], 1))
        y = torch.sigmoid(at.squeeze(2).gather(1, classes.clamp_min(0)[:, None]).squeeze(1))
        (g,) = torch.autograd.grad((y * weight * inside).sum(), crop)
        out.append(WindowGradient(g, flat, (level[1], level[2])))
    return out


def _window_logits(branch: nn.Module, a: Tensor, r: tuple[int, int], anchor: int) -> Tensor:
    """The logits at ``anchor`` (of a one-level map ``a [1, C, h, w]``) from its window."""
    level = (0, int(a.shape[2]), int(a.shape[3]))
    _, flat, ty, tx, size = _windows(torch.tensor([anchor]), level, r)
    z = branch(_crops(a, flat, size))
    return z.flatten(2)[0, :, int(ty * size[1] + tx)]


def _agrees(branch: nn.Module, a: Tensor, r: tuple[int, int], full: Tensor) -> bool:
    """Whether the window's logits equal the full map's at the corners, edges and centre."""
    h, w = int(a.shape[2]), int(a.shape[3])
    spots = {(y, x) for y in (0, h // 2, h - 1) for x in (0, w // 2, w - 1)}
    scale = float(full.abs().max()) + 1.0
    for y, x in spots:
        got = _window_logits(branch, a[:1], r, y * w + x)
        if float((got - full[0, :, y, x]).abs().max()) > 1e-5 * scale:
            return False
    return True


def find(head: nn.Module, maps: list[Tensor], raw: Tensor, num_classes: int) -> ClassBranch | None:
    """The head's class branch (module docstring), checked on the probe's ``maps`` (the head's
    inputs) and ``raw`` ``[N, 4+K, A]`` output; None where no module list of the head is one."""
    with torch.no_grad():
        for name, lst in head.named_children():
            if not isinstance(lst, nn.ModuleList) or len(lst) != len(maps):
                continue
            radii = [reach(m) for m in lst]
            if any(r is None for r in radii):
                continue
            try:
                logits = [m(a) for m, a in zip(lst, maps, strict=True)]
            except (RuntimeError, TypeError, ValueError):
                continue
            if any(z.shape[1:2] != (num_classes,) or z.shape[2:] != a.shape[2:]
                   for z, a in zip(logits, maps, strict=True)):  # fmt: skip
                continue
            probs = torch.cat([torch.sigmoid(z.flatten(2)) for z in logits], 2)
            if probs.shape != raw[:, 4:].shape or not torch.allclose(
                probs, raw[:, 4:], rtol=1e-4, atol=1e-6
            ):
                continue
            checked = [r for r in radii if r is not None]
            if all(
                _agrees(m, a, r, z) for m, a, r, z in zip(lst, maps, checked, logits, strict=True)
            ):
                return ClassBranch(name, tuple(checked))
    return None

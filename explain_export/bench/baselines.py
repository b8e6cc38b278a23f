"""The baselines the explainer is timed against: the model alone (:class:`Normalized`), Grad-CAM
with autograd as it is usually written (:class:`AutogradGradCAM`), and Grad-CAM as
pytorch-grad-cam computes it (:class:`NumpyGradCAM`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from ..builder.explainer import Explainer
from ..builder.inspect.tap import Tap, TapSpec
from ..builder.maths import heads
from ..errors import ExplainExportError, UsageError

__all__ = ["AutogradGradCAM", "Normalized", "NumpyGradCAM"]


class Normalized(nn.Module):
    """``model((image - mean) / std)``: the explainer's forward pass without the heatmap."""

    def __init__(self, explainer: Explainer) -> None:
        super().__init__()
        self.model = explainer.model
        self.output = explainer.plan.output
        self.register_buffer("mean", explainer.mean.detach().clone())
        self.register_buffer("std", explainer.std.detach().clone())

    def forward(self, image: Tensor) -> Tensor:
        return self.output.pick(self.model((image - self.mean) / self.std))


class AutogradGradCAM:
    r"""Grad-CAM with autograd, the way it is usually written (hooks + backward).

    A :class:`~.tap.Tap` on the explainer's layer (a forward hook, the tensor itself: no
    ``grad``, which would stop the backward at the tap) keeps the tapped map ``A``, and a tensor
    hook its gradient. Per call: zero the parameter gradients, forward with ``requires_grad`` on
    the input and on every parameter (as on a model in a notebook; a ``gradcam`` explainer
    freezes them), backward of :math:`\sum_n y_{n,c_n}` with :math:`c_n` the argmax, then
    :math:`m = \mathrm{ReLU}(\sum_k \alpha_k A_k)`, :math:`\alpha_k = \mathrm{mean}_{ij}\,
    \partial y_c/\partial A_k(i,j)`, and the explainer's resize + min-max (:func:`.heads.finish`).
    For a GAP + linear head this equals the ``cam`` heatmap.
    """

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer  # its model, and its mean/std wherever they were moved
        self.spec: TapSpec = explainer.tap.spec
        self._tap = Tap(explainer.model, self.spec)
        self._map: Tensor | None = None
        self._grad: Tensor | None = None

    def _held(self, t: Tensor) -> Tensor:
        """What is kept of ``A`` and of its gradient: the tensor itself, here."""
        return t

    def _keep_grad(self, g: Tensor) -> None:
        self._grad = self._held(g)

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """Within: the tap records, every parameter requires grad (its gradient zeroed first)
        and autograd is on. On exit the tap stops recording and the frozen parameters are
        frozen again."""
        model = self.explainer.model
        self._map = self._grad = None
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        self._tap.clear()
        try:
            with torch.enable_grad():
                yield
        finally:
            if self._map is None:  # the forward pass did not get to _forward's take()
                with contextlib.suppress(UsageError):
                    self._tap.take()  # stops recording (and forgets what it saw)
            for p in frozen:
                p.requires_grad_(False)
                p.grad = None

    def _forward(self, x: Tensor) -> Tensor:
        """The model's logits on ``x``; keeps ``A`` and hooks it, so the backward keeps its
        gradient."""
        logits = self.explainer.plan.output.pick(self.explainer.model(x))
        a = self._tap.take()
        self._map = self._held(a)
        if a.requires_grad:
            a.register_hook(self._keep_grad)
        return logits

    def _tapped(self) -> tuple[Tensor, Tensor]:
        """``A`` and its gradient at the tapped call."""
        if self._map is None or self._grad is None:
            raise ExplainExportError(f"no gradient reached layer '{self.spec}'")
        return self._map.detach(), self._grad

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.explainer.mean, self.explainer.std
        with self._recording():
            x = ((image - mean) / std).requires_grad_(True)
            logits = self._forward(x)
            target = logits.argmax(dim=1)
            logits.gather(1, target[:, None]).sum().backward()
        a, g = self._tapped()
        m = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        return logits.detach(), heads.finish(m, image.shape[-2:])

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._tap.remove()


class NumpyGradCAM(AutogradGradCAM):
    r"""Grad-CAM as pytorch-grad-cam computes it, the baseline users run today.

    ``A`` is copied to the host right after the forward pass, its gradient by the tensor hook as
    the backward reaches it. Per call: every parameter requires grad, ``model.zero_grad()``,
    forward (the input needs no gradient), targets :math:`c_n` = the argmax of the logits read
    back as numpy, backward of :math:`\sum_n y_{n,c_n}` summed image by image. Then in numpy, per
    image: :math:`w_k = \mathrm{mean}_{ij}\,\partial y_c/\partial A_k(i,j)`,
    :math:`m = \max(\sum_k w_k A_k, 0)`, :math:`m \leftarrow (m - \min m)/(10^{-7} + \max(m -
    \min m))`, ``cv2.resize(m, (W, H))`` (bilinear), and the library's final aggregation of its
    one layer: the same min-max again at full size. Min-max commutes with the resize up to the
    ``1e-7``, so this is the ``cam`` heatmap for a GAP + linear head, to float rounding.
    The heatmap comes back as a CPU tensor wrapping the numpy array; the logits stay on the
    device.
    """

    def _held(self, t: Tensor) -> Tensor:
        return t.detach().cpu()

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.explainer.mean, self.explainer.std
        with self._recording():
            logits = self._forward((image - mean) / std)
            targets = logits.detach().cpu().numpy().argmax(axis=-1)
            loss = sum(row[int(c)] for row, c in zip(logits, targets, strict=True))
            loss.backward(retain_graph=True)
        a, g = (t.numpy() for t in self._tapped())
        weights = g.mean(axis=(2, 3))
        cam = np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0)
        size = (image.shape[-1], image.shape[-2])  # cv2 takes (W, H)
        resized = [cv2.resize(m, size) for m in _unit_range(cam)]
        heat = np.stack(_unit_range(np.stack(resized)))[:, None]
        return logits.detach(), torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))


def _unit_range(maps: np.ndarray) -> list[np.ndarray]:
    r"""Per map, pytorch-grad-cam's scaling: :math:`m' = m - \min m`, then
    :math:`m' / (10^{-7} + \max m')`, in float32."""
    out = []
    for m in maps:
        m = m - np.min(m)
        out.append(np.float32(m / (1e-7 + np.max(m))))
    return out

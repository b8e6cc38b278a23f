"""Small one-stage detectors for the tests (torchvision and Ultralytics are not installed here).

:class:`TinyYolo` is YOLO-shaped: a backbone with maps at strides 8, 16 and 32, a neck that mixes
them (top-down), and a head module that takes the list of three maps and returns
``[N, 4+K, A]`` (``cx, cy, w, h`` in input pixels, then sigmoid class probabilities), as
Ultralytics' ``Detect`` does in eval mode (beside a dict of its raw tensors).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()
    )


class TinyDetect(nn.Module):
    """The head: per level a box branch and a class branch; boxes decoded on the anchor grid."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...]):
        super().__init__()
        self.nc = num_classes
        self.strides = strides
        self.box = nn.ModuleList(nn.Sequential(_conv(c, 16), nn.Conv2d(16, 4, 1)) for c in channels)
        self.cls = nn.ModuleList(
            nn.Sequential(_conv(c, 16), nn.Conv2d(16, num_classes, 1)) for c in channels
        )

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        boxes, logits = [], []
        for level, (x, s) in enumerate(zip(feats, self.strides, strict=True)):
            n, _, h, w = x.shape
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
            )
            grid = torch.stack([xs, ys]).reshape(1, 2, h * w)
            t = self.box[level](x).reshape(n, 4, h * w)
            xy = (grid + 0.5 + torch.tanh(t[:, :2])) * s
            wh = torch.exp(t[:, 2:].clamp(-4, 4)) * s * 2
            boxes.append(torch.cat([xy, wh], 1))
            logits.append(self.cls[level](x).reshape(n, self.nc, h * w))
        cls = torch.cat(logits, 2)
        out = torch.cat([torch.cat(boxes, 2), cls.sigmoid()], 1)
        return out, {"scores": cls}


class TinyYolo(nn.Module):
    """A YOLO-shaped detector: ``image [N,3,H,W] -> ([N, 4+K, A], raw)``; ``names`` per class."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 8, 2), _conv(8, 8, 2), _conv(8, 16, 2))  # stride 8
        self.down16 = _conv(16, 24, 2)
        self.down32 = _conv(24, 32, 2)
        self.lat16 = _conv(24 + 32, 24)
        self.lat8 = _conv(16 + 24, 16)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.detect = TinyDetect((16, 24, 32), num_classes, (8, 16, 32))
        self.names = {i: f"thing{i}" for i in range(num_classes)}

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        p8 = self.stem(x)
        p16 = self.down16(p8)
        p32 = self.down32(p16)
        n16 = self.lat16(torch.cat([p16, self.up(p32)], 1))
        n8 = self.lat8(torch.cat([p8, self.up(n16)], 1))
        return self.detect([n8, n16, p32])


def calibrate(model: nn.Module, images: Tensor) -> None:
    """BatchNorm statistics from ``images`` (a cumulative average over one pass), so that a
    randomly initialised network's maps keep their contrast layer after layer."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def tiny_yolo(seed: int = 0, num_classes: int = 3, size: tuple[int, int] = (128, 160)) -> TinyYolo:
    """A :class:`TinyYolo` with seeded weights, BatchNorm statistics from three scikit-image
    photos at ``size``, and class biases set so that about a tenth of the anchors score above
    0.25, in eval mode."""
    from explain_export.artifact import samples

    torch.manual_seed(seed)
    model = TinyYolo(num_classes)
    photos = ("astronaut.png", "coffee.png", "rocket.jpg")
    images = torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), size) for n in photos])
    )
    calibrate(model, images)
    for head in model.detect.cls:
        head[-1].bias.data = torch.linspace(-2.2, -1.2, num_classes)
    return model

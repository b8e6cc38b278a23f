"""The pieces of :mod:`rcnn`'s two-stage detector that torchvision keeps in ``torchvision.ops``
and its detection modules, written plainly: greedy NMS, RoIAlign by its CPU kernel's sampling
rules, the FPN level mapper, ``MultiScaleRoIAlign``, the mask paste, and the small modules
(``AnchorGenerator``, ``RPNHead``, ``TwoMLPHead``, ``FastRCNNPredictor``,
``MaskRCNNPredictor``) under torchvision's attribute names. The RoIAlign here (bilinear weights
as matrices, fast enough for a model's forward) is checked against ``tests/roi_reference.py``
(the kernel's loops) in ``tests/test_rcnn_model.py``, and against torchvision's own in
``benchmarks/rcnn_tiny_peers.py``."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ImageList:
    """torchvision's ``ImageList``: the padded batch and each image's size after the resize."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of each box of ``a`` with each of ``b``: ``inter / (area_a + area_b - inter)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """Greedy NMS within each group, a plain loop: best score first, a box is dropped when a kept
    box of its group overlaps it with IoU > ``iou``. The kept indices, best first."""
    b = boxes.detach()
    hits = ((box_iou(b, b) > iou) & (groups[:, None] == groups[None, :])).numpy()
    dropped, kept = np.zeros(len(b), bool), []
    for i in torch.argsort(scores.detach(), descending=True, stable=True).tolist():
        if not dropped[i]:
            kept.append(i)
            dropped |= hits[i]
    return torch.tensor(kept, dtype=torch.int64)


def remove_small(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose sides are both ``≥ min_size``."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((w >= min_size) & (h >= min_size))[0]


def _weights(t: Tensor, n: int) -> Tensor:
    """Bilinear sampling along one axis as a matrix ``[R, S, n]`` (row: one sample point), by the
    kernel's rules: a point outside ``[-1, n]`` reads 0; else it is clamped at 0, and at or past
    ``n - 1`` it reads the last row alone; else ``(1 - f)`` at ``floor`` and ``f`` above it."""
    inside = (t >= -1.0) & (t <= n)
    t = t.clamp(min=0)
    low = t.floor().long()
    edge = low >= n - 1
    low = torch.where(edge, n - 1, low)
    frac = torch.where(edge, torch.zeros_like(t), t - low)
    w = t.new_zeros(*t.shape, n + 1)
    w.scatter_add_(-1, low[..., None], (1 - frac)[..., None])
    w.scatter_add_(-1, low[..., None] + 1, frac[..., None])
    return w[..., :n] * inside[..., None]


def roi_align(
    fmap: Tensor, boxes: Tensor, size: tuple[int, int], scale: float, ratio: int
) -> Tensor:
    """RoIs ``[R, 4]`` of one map ``[C, H, W]`` -> ``[R, C, ph, pw]``, torchvision's
    ``roi_align`` with ``aligned=False`` and ``ratio > 0``: the box times ``scale``, its sides at
    least 1; each bin the mean of a ``ratio x ratio`` grid of bilinear samples at
    ``y = y1 + p·bh + (i + ½)·bh/ratio`` (``bh`` the side over the bins). The bilinear weights
    factor by axis, so a RoI is ``Wy · fmap · Wxᵀ`` (``Wy``: ``[ph, H]``, a bin's mean weights).
    Differentiable in ``fmap``, not in ``boxes``."""
    x1, y1, x2, y2 = (boxes.detach() * scale).unbind(1)
    rw, rh = (x2 - x1).clamp(min=1.0), (y2 - y1).clamp(min=1.0)
    (ph, pw), g = size, ratio
    iy, ix = torch.arange(ph * g), torch.arange(pw * g)
    bh, bw = (rh / ph)[:, None], (rw / pw)[:, None]
    ys = y1[:, None] + (iy // g) * bh + ((iy % g) + 0.5) * bh / g
    xs = x1[:, None] + (ix // g) * bw + ((ix % g) + 0.5) * bw / g
    # the bin's mean over its g x g samples factors too: mean of the rows times mean of the columns
    wy = _weights(ys, fmap.shape[1]).reshape(len(boxes), ph, g, -1).mean(2)
    wx = _weights(xs, fmap.shape[2]).reshape(len(boxes), pw, g, -1).mean(2)
    return torch.einsum("rph,chw,rqw->rcpq", wy, fmap, wx)


class TinyLevelMapper:
    """The FPN paper's level rule: ``floor(lvl0 + log2(√area / s0) + ε)``, clamped to
    ``[k_min, k_max]``, as an index from ``k_min``."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int, canonical_level: int):
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, 1e-6

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        b = torch.cat(boxlists).detach()
        s = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        lvl = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps))
        return lvl.clamp(self.k_min, self.k_max).to(torch.int64) - self.k_min


class TinyMultiScaleRoIAlign(nn.Module):
    """torchvision's ``MultiScaleRoIAlign``: on the first call ``scales`` (per map
    ``2^round(log2(h_map / h_image))``, the image the largest resized one) and ``map_levels``
    are set; each RoI is pooled from the map its level names."""

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.featmap_names, self.sampling_ratio = featmap_names, sampling_ratio
        self.output_size = (output_size, output_size)
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.scales: list[float] | None = None
        self.map_levels: TinyLevelMapper | None = None

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        maps = [v for k, v in x.items() if k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            top = max(s[0] for s in image_shapes)
            self.scales = [2.0 ** round(math.log2(m.shape[-2] / top)) for m in maps]
            lo, hi = (int(-math.log2(s)) for s in (self.scales[0], self.scales[-1]))
            self.map_levels = TinyLevelMapper(lo, hi, self.canonical_scale, self.canonical_level)
        levels = self.map_levels(boxes)
        out = maps[0].new_zeros(len(levels), maps[0].shape[1], *self.output_size)
        start = 0
        for n, bs in enumerate(boxes):
            lv = levels[start : start + len(bs)]
            for k, m in enumerate(maps):
                rows = torch.where(lv == k)[0]
                if len(rows):
                    pooled = roi_align(
                        m[n], bs[rows], self.output_size, self.scales[k], self.sampling_ratio
                    )
                    out = out.index_put((start + rows,), pooled)
            start += len(bs)
        return out


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int], padding: int = 1) -> Tensor:
    """torchvision's ``paste_masks_in_image``, one detection at a time: the ``M x M`` mask padded
    by ``padding`` zeros, its box widened by ``(M + 2·padding) / M`` about its centre and cut to
    int64 (toward zero); the mask resized (bilinear) to ``(y2 - y1 + 1, x2 - x1 + 1)`` and laid
    at ``(x1, y1)`` on a zero ``[H, W]`` image, the part inside the image. ``[D, 1, H, W]``."""
    im_h, im_w = size
    m = masks.shape[-1]
    scale = (m + 2 * padding) / m
    out = []
    for mask, box in zip(masks, boxes.detach(), strict=True):
        mask = F.pad(mask[0], (padding,) * 4)
        cx, cy = (box[0] + box[2]) * 0.5, (box[1] + box[3]) * 0.5
        hw, hh = (box[2] - box[0]) * 0.5 * scale, (box[3] - box[1]) * 0.5 * scale
        x1, y1, x2, y2 = torch.stack([cx - hw, cy - hh, cx + hw, cy + hh]).to(torch.int64).tolist()
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        resized = F.interpolate(
            mask[None, None], size=(h, w), mode="bilinear", align_corners=False
        )[0, 0]
        image = mask.new_zeros(im_h, im_w)
        xa, xb, ya, yb = max(x1, 0), min(x2 + 1, im_w), max(y1, 0), min(y2 + 1, im_h)
        image[ya:yb, xa:xb] = resized[ya - y1 : yb - y1, xa - x1 : xb - x1]
        out.append(image)
    return torch.stack(out)[:, None] if out else masks.new_zeros(0, 1, im_h, im_w)


class TinyAnchorGenerator(nn.Module):
    """torchvision's ``AnchorGenerator``: per level, cell anchors for each aspect ratio r (the
    outer loop) and size s (the inner): ``round([-w, -h, w, h] / 2)``, ``h = s√r``, ``w = s/√r``;
    shifted by ``(x·sw, y·sh)`` cell by cell, row-major, with the stride ``padded // grid``."""

    def __init__(self, sizes: tuple, aspect_ratios: tuple) -> None:
        super().__init__()
        self.sizes, self.aspect_ratios = sizes, aspect_ratios
        self.cell_anchors = []
        for level_sizes, ratios in zip(sizes, aspect_ratios, strict=True):
            rows = []
            for r in ratios:
                for s in level_sizes:
                    h, w = s * math.sqrt(r), s / math.sqrt(r)
                    rows.append([-w / 2, -h / 2, w / 2, h / 2])
            self.cell_anchors.append(torch.tensor(rows).round())

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        ph, pw = image_list.tensors.shape[-2:]
        levels = []
        for f, base in zip(feature_maps, self.cell_anchors, strict=True):
            gh, gw = f.shape[-2:]
            ys, xs = torch.meshgrid(
                torch.arange(gh) * (ph // gh), torch.arange(gw) * (pw // gw), indexing="ij"
            )
            shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
            levels.append((shifts + base[None]).reshape(-1, 4))
        return [torch.cat(levels)] * len(image_list.image_sizes)


class TinyRPNHead(nn.Module):
    """torchvision's ``RPNHead``: a shared 3x3 conv + ReLU, then 1x1 convs to ``A`` objectness
    logits and ``4A`` deltas per cell, level by level."""

    def __init__(self, channels: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        )
        self.cls_logits = nn.Conv2d(channels, anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * anchors, 1)

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        t = [self.conv(f) for f in x]
        return [self.cls_logits(f) for f in t], [self.bbox_pred(f) for f in t]


def clip(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``clip_boxes_to_image``: x in [0, w], y in [0, h]."""
    h, w = size
    x = boxes[:, 0::2].clamp(0, w)
    y = boxes[:, 1::2].clamp(0, h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)


class TinyTwoMLPHead(nn.Module):
    """``TwoMLPHead``: flatten, ReLU(fc6), ReLU(fc7)."""

    def __init__(self, in_channels: int, size: int) -> None:
        super().__init__()
        self.fc6, self.fc7 = nn.Linear(in_channels, size), nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class TinyPredictor(nn.Module):
    """``FastRCNNPredictor``: class logits ``[R, K]`` and per-class deltas ``[R, 4K]``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def mask_predictor(channels: int, num_classes: int) -> nn.Sequential:
    """``MaskRCNNPredictor``: ConvTranspose2d 2x, ReLU, 1x1 conv to K class logits."""
    return nn.Sequential(
        OrderedDict(
            conv5_mask=nn.ConvTranspose2d(channels, channels, 2, 2, 0),
            relu=nn.ReLU(),
            mask_fcn_logits=nn.Conv2d(channels, num_classes, 1),
        )
    )

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


# --- a torchvision-shaped one-stage detector (RetinaNet, FCOS or SSD), plain eager code ------


class TinyTransform:
    """What the adapter reads of ``GeneralizedRCNNTransform``: normalize, then resize so the
    short side is ``min_size[-1]`` (the long side at most ``max_size``), or to ``fixed_size``."""

    def __init__(self, min_size: int, max_size: int, divisible: int, fixed: tuple | None) -> None:
        self.image_mean = [0.485, 0.456, 0.406]
        self.image_std = [0.229, 0.224, 0.225]
        self.min_size, self.max_size = (min_size,), max_size
        self.size_divisible, self.fixed_size = divisible, fixed

    def __call__(self, image: Tensor) -> Tensor:
        """One ``[3, h, w]`` image -> normalized, resized ``[3, h', w']`` (torchvision's way)."""
        mean, std = torch.tensor(self.image_mean), torch.tensor(self.image_std)
        image = (image - mean[:, None, None]) / std[:, None, None]
        h, w = image.shape[-2:]
        if self.fixed_size is not None:
            size, scale = [self.fixed_size[1], self.fixed_size[0]], None
        else:
            size, scale = None, min(self.min_size[-1] / min(h, w), self.max_size / max(h, w))
        return nn.functional.interpolate(
            image[None],
            size=size,
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=scale is not None or None,
            align_corners=False,
        )[0]


class TinyAnchors:
    """Anchors per cell of each level, cell by cell (row-major), as torchvision's generator lays
    them out: shifts ``(x·s, y·s)`` plus the base boxes of stride ``s``."""

    def __init__(self, per_cell: int) -> None:
        self.per_cell = per_cell

    def __call__(self, images: object, feats: list[Tensor]) -> list[Tensor]:
        h = images.tensors.shape[-2]  # type: ignore[attr-defined]
        out = []
        for f in feats:
            s = h // f.shape[2]
            base = torch.tensor([[-2.0, -2, 2, 2], [-3, -1.5, 3, 1.5]][: self.per_cell]) * s
            ys, xs = torch.meshgrid(
                torch.arange(f.shape[2]) * s, torch.arange(f.shape[3]) * s, indexing="ij"
            )
            shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
            out.append((shifts + base[None]).reshape(-1, 4))
        return [torch.cat(out)] * len(images.image_sizes)  # type: ignore[attr-defined]


class TinyCoder:
    """``BoxCoder`` (``weights``) or, with ``weights`` None, FCOS's ``BoxLinearCoder``."""

    def __init__(self, weights: tuple | None) -> None:
        self.weights, self.bbox_xform_clip = weights, float(np.log(1000.0 / 16))

    def decode_single(self, codes: Tensor, anchors: Tensor) -> Tensor:
        x1, y1, x2, y2 = anchors.unbind(1)
        if self.weights is None:
            cx, cy, aw, ah = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            d = codes * torch.stack([aw, ah, aw, ah], 1)
            return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)
        aw, ah = x2 - x1, y2 - y1
        cx, cy = x1 + 0.5 * aw, y1 + 0.5 * ah
        wx, wy, ww, wh = self.weights
        px, py = codes[:, 0] / wx * aw + cx, codes[:, 1] / wy * ah + cy
        pw = torch.exp((codes[:, 2] / ww).clamp(max=self.bbox_xform_clip)) * aw
        ph = torch.exp((codes[:, 3] / wh).clamp(max=self.bbox_xform_clip)) * ah
        return torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)


class TinyHead(nn.Module):
    """``head(maps) -> {"cls_logits" [N, HWA, K], "bbox_regression" [N, HWA, 4]}`` (FCOS also
    ``"bbox_ctrness" [N, HWA, 1]``), shared across levels, laid out cell by cell."""

    def __init__(self, kind: str, channels: int, per_cell: int, num_classes: int) -> None:
        super().__init__()
        self.kind, self.per_cell = kind, per_cell
        out_reg = per_cell * (5 if kind == "fcos" else 4)
        self.classification_head = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, per_cell * num_classes, 1),
        )
        self.regression_head = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, out_reg, 1)
        )

    def forward(self, feats: list[Tensor]) -> dict[str, Tensor]:
        def flat(t: Tensor) -> Tensor:
            n, c, h, w = t.shape
            return (
                t.view(n, self.per_cell, -1, h, w)
                .permute(0, 3, 4, 1, 2)
                .reshape(n, -1, c // self.per_cell)
            )

        cls = torch.cat([flat(self.classification_head(f)) for f in feats], 1)
        reg = torch.cat([flat(self.regression_head(f)) for f in feats], 1)
        if self.kind != "fcos":
            return {"cls_logits": cls, "bbox_regression": reg}
        return {
            "cls_logits": cls,
            "bbox_regression": torch.relu(reg[..., :4]),
            "bbox_ctrness": reg[..., 4:],
        }


class TinyBackbone(nn.Module):
    """Three maps at strides 8, 16 and 32 with 16 channels each, as an FPN returns them."""

    def __init__(self) -> None:
        super().__init__()
        self.c8 = nn.Sequential(_conv(3, 8, 2), _conv(8, 16, 2), _conv(16, 16, 2))
        self.c16, self.c32 = _conv(16, 16, 2), _conv(16, 16, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        p8 = self.c8(x)
        p16 = self.c16(p8)
        return {"0": p8, "1": p16, "2": self.c32(p16)}


def greedy_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> list[int]:
    """Class-aware greedy NMS, a plain loop: best first, drop same-class overlaps above ``iou``."""

    def overlap(a: Tensor, b: Tensor) -> float:
        iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
        ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
        union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - iw * ih
        return iw * ih / union if union > 0 else 0.0

    kept: list[int] = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if all(labels[i] != labels[k] or overlap(boxes[i], boxes[k]) <= iou for k in kept):
            kept.append(i)
    return kept


class TinyOneStage(nn.Module):
    """A torchvision-shaped one-stage detector: ``model(images) -> [{"boxes", "scores",
    "labels", "anchors"}]`` per image (``anchors``: where each was read), by torchvision's
    eager steps written plainly: per image, per level (SSD: per class) boolean masks and topk,
    decode, clip, a plain greedy NMS, boxes scaled back to the input."""

    def __init__(self, kind: str = "retinanet", num_classes: int = 4) -> None:
        super().__init__()
        self.kind = kind
        per_cell = 1 if kind == "fcos" else 2
        if kind == "ssd":
            self.transform = TinyTransform(128, 128, 1, (128, 128))
            self.neg_to_pos_ratio = 3
        else:
            self.transform = TinyTransform(96, 160, 32, None)
        if kind == "fcos":
            self.center_sampling_radius = 1.5
        self.backbone = TinyBackbone()
        self.head = TinyHead(kind, 16, per_cell, num_classes)
        self.anchor_generator = TinyAnchors(per_cell)
        self.box_coder = TinyCoder(
            {"ssd": (10.0, 10, 5, 5), "fcos": None}.get(kind, (1.0, 1, 1, 1))
        )
        self.score_thresh, self.nms_thresh = 0.3, 0.5
        self.topk_candidates, self.detections_per_img = 40, 20

    def forward(self, images: list[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        from types import SimpleNamespace

        out = []
        for image in images:
            x = self.transform(image)
            h, w = x.shape[-2:]
            d = self.transform.size_divisible
            padded = x.new_zeros(3, -(-h // d) * d, -(-w // d) * d)
            padded[:, :h, :w] = x
            feats = list(self.backbone(padded[None]).values())
            head = self.head(feats)
            anchors = self.anchor_generator(
                SimpleNamespace(tensors=padded[None], image_sizes=[(h, w)]), feats
            )[0]
            dets = self._postprocess(head, anchors, feats, (h, w))
            ratio = torch.tensor([image.shape[2] / w, image.shape[1] / h] * 2, dtype=torch.float32)
            dets["boxes"] = dets["boxes"] * ratio
            out.append(dets)
        return out

    def _postprocess(self, head: dict, anchors: Tensor, feats: list, size: tuple) -> dict:
        logits, reg = head["cls_logits"][0], head["bbox_regression"][0]
        k = logits.shape[1]
        if self.kind == "ssd":
            probs = logits.softmax(-1)
            groups = [(c, torch.arange(len(anchors)), probs[:, c]) for c in range(1, k)]
        else:
            probs = logits.sigmoid()
            if self.kind == "fcos":
                probs = torch.sqrt(probs * head["bbox_ctrness"][0].sigmoid())
            per_cell = len(anchors) // sum(f.shape[2] * f.shape[3] for f in feats)
            groups, start = [], 0
            for f in feats:
                n = f.shape[2] * f.shape[3] * per_cell
                groups.append(
                    (None, torch.arange(start, start + n), probs[start : start + n].flatten())
                )
                start += n
        boxes, scores, labels, where = [], [], [], []
        for label, index, s in groups:
            keep = s > self.score_thresh
            idx = torch.where(keep)[0]
            top, order = s[keep].topk(min(self.topk_candidates, len(idx)))
            idx = idx[order]
            a = index[idx] if label is not None else index[idx // k]
            c = torch.full_like(a, label) if label is not None else idx % k
            b = self.box_coder.decode_single(reg[a], anchors[a])
            b = torch.stack(
                [
                    b[:, 0].clamp(0, size[1]),
                    b[:, 1].clamp(0, size[0]),
                    b[:, 2].clamp(0, size[1]),
                    b[:, 3].clamp(0, size[0]),
                ],
                1,
            )
            boxes.append(b), scores.append(top), labels.append(c), where.append(a)
        b, s, c, a = (torch.cat(t) for t in (boxes, scores, labels, where))
        keep = greedy_nms(b.detach(), s.detach(), c, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": b[keep], "scores": s[keep], "labels": c[keep], "anchors": a[keep]}


def tiny_one_stage(kind: str = "retinanet", seed: int = 0) -> TinyOneStage:
    """A seeded :class:`TinyOneStage` with BatchNorm statistics from three photos and class
    biases raised so that some (anchor, class) pairs pass ``score_thresh``, in eval mode."""
    from explain_export.artifact import samples

    torch.manual_seed(seed)
    model = TinyOneStage(kind)
    photos = ("astronaut.png", "coffee.png", "rocket.jpg")
    images = torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), (96, 144)) for n in photos])
    )
    mean, std = torch.tensor(model.transform.image_mean), torch.tensor(model.transform.image_std)
    calibrate(model.backbone, (images - mean[:, None, None]) / std[:, None, None])
    bias = model.head.classification_head[-1].bias
    bias.data = {
        "ssd": torch.linspace(-0.5, 0.5, bias.numel()),
        "fcos": torch.full_like(bias, 1.0),
    }.get(kind, torch.full_like(bias, -0.6))
    return model.eval()

"""A small torchvision-shaped two-stage detector (Faster R-CNN, Mask R-CNN), plain eager code.

torchvision is not installed here, so the tests build this one (issue 29). Its attributes and
call conventions are torchvision's (``transform``, ``backbone`` with ``out_channels``, ``rpn`` with
``anchor_generator``, ``head``, ``box_coder``, ``pre_nms_top_n()``..., ``roi_heads`` with
``box_roi_pool``, ``box_head``, ``box_predictor``, ``mask_roi_pool``...), and its eval steps are
torchvision's written plainly, dynamic shapes and Python loops allowed: it is the independent
reference the exported graph is compared against. NMS, RoIAlign, the level mapper, the mask
paste and the small heads are in :mod:`rcnn_parts`; the Grad-CAM references per detection
(:func:`capture`, :func:`fuse`, :func:`gradcam`, :func:`mask_target_gradcam`) end this module.
``benchmarks/rcnn_tiny_peers.py`` checks all of it against torchvision on the same weights.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from detectors import TinyCoder, TinyTransform, _conv, calibrate
from rcnn_parts import (
    ImageList,
    TinyAnchorGenerator,
    TinyMultiScaleRoIAlign,
    TinyPredictor,
    TinyRPNHead,
    TinyTwoMLPHead,
    clip,
    mask_predictor,
    nms,
    paste_masks,
    remove_small,
)
from torch import Tensor, nn


class TinyFPN(nn.Module):
    """Maps ``"0"``, ``"1"``, ``"2"`` at strides 8, 16, 32 (a top-down FPN of 16 channels) and
    ``"pool"`` = ``max_pool2d(k=1, s=2)`` of the last (torchvision's ``LastLevelMaxPool``)."""

    out_channels = 16

    def __init__(self) -> None:
        super().__init__()
        stem = nn.Sequential(_conv(3, 8, 2), _conv(8, 16, 2), _conv(16, 16, 2))
        self.body = nn.ModuleList([stem, _conv(16, 24, 2), _conv(24, 32, 2)])
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, 16, 1) for c in (16, 24, 32))
        self.layer_blocks = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(3))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        c = []
        for stage in self.body:
            x = stage(x)
            c.append(x)
        last = self.inner_blocks[2](c[2])
        maps = [self.layer_blocks[2](last)]
        for i in (1, 0):
            last = self.inner_blocks[i](c[i]) + F.interpolate(last, c[i].shape[-2:])
            maps.insert(0, self.layer_blocks[i](last))
        out = OrderedDict((str(i), m) for i, m in enumerate(maps))
        out["pool"] = F.max_pool2d(maps[-1], 1, 2, 0)
        return out


class TinyRPN(nn.Module):
    """torchvision's ``RegionProposalNetwork`` in eval mode, per image: per level the
    ``pre_nms_top_n()`` best objectness logits, their anchors decoded by the detached deltas,
    clipped, boxes with a side < ``min_size`` dropped, ``sigmoid ≥ score_thresh`` kept, NMS per
    level at ``nms_thresh``, the first ``post_nms_top_n()``. Returns ``(boxes, {})``; the kept
    objectness probabilities are in ``self.last_scores``."""

    def __init__(self, anchors: TinyAnchorGenerator, head: TinyRPNHead) -> None:
        super().__init__()
        self.anchor_generator, self.head = anchors, head
        self.box_coder = TinyCoder((1.0, 1.0, 1.0, 1.0))
        self._pre_nms_top_n = {"training": 100, "testing": 50}
        self._post_nms_top_n = {"training": 60, "testing": 30}
        self.nms_thresh, self.score_thresh, self.min_size = 0.7, 0.0, 1e-3
        self.last_scores: list[Tensor] = []

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def forward(self, images: ImageList, features: dict[str, Tensor]) -> tuple[list[Tensor], dict]:
        maps = list(features.values())
        objectness, deltas = self.head(maps)
        anchors = self.anchor_generator(images, maps)
        boxes_out, self.last_scores = [], []
        for n, size in enumerate(images.image_sizes):
            boxes, logits, level, start = [], [], [], 0
            for lv, (o, d) in enumerate(zip(objectness, deltas, strict=True)):
                a, h, w = o.shape[1:]
                o = o[n].detach().permute(1, 2, 0).reshape(-1)  # cell-major, then anchor
                d = d[n].detach().reshape(a, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4)
                top, idx = o.topk(min(self.pre_nms_top_n(), len(o)))
                boxes.append(self.box_coder.decode_single(d[idx], anchors[n][start + idx]))
                logits.append(top)
                level.append(torch.full_like(idx, lv))
                start += len(o)
            boxes = clip(torch.cat(boxes), size)
            scores, level = torch.cat(logits).sigmoid(), torch.cat(level)
            keep = remove_small(boxes, self.min_size)
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = scores >= self.score_thresh  # torchvision: ">=" here
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = nms(boxes, scores, level, self.nms_thresh)[: self.post_nms_top_n()]
            boxes_out.append(boxes[keep])
            self.last_scores.append(scores[keep])
        return boxes_out, {}


class TinyRoIHeads(nn.Module):
    """torchvision's ``RoIHeads`` in eval mode, per image: pool each proposal, box head, softmax;
    decode the per-class deltas with (10, 10, 5, 5) from the proposal, clip; drop the background;
    keep ``score > score_thresh`` and both sides ``≥ 1e-2``; NMS per class; the first
    ``detections_per_img``. Mask: pool the detections' boxes, mask head, the label's channel.
    The scores stay in the graph of the maps (only the RoI coordinates are detached)."""

    def __init__(self, channels: int, num_classes: int, mask: bool) -> None:
        super().__init__()
        self.box_roi_pool = TinyMultiScaleRoIAlign(["0", "1", "2"], 7, 2, canonical_scale=24)
        self.box_head = TinyTwoMLPHead(channels * 49, 32)
        self.box_predictor = TinyPredictor(32, num_classes)
        self.box_coder = TinyCoder((10.0, 10.0, 5.0, 5.0))
        self.score_thresh, self.nms_thresh, self.detections_per_img = 0.05, 0.5, 10
        self.mask_roi_pool = self.mask_head = self.mask_predictor = None
        if mask:
            self.mask_roi_pool = TinyMultiScaleRoIAlign(["0", "1", "2"], 14, 2, canonical_scale=24)
            self.mask_head = nn.Sequential(  # MaskRCNNHeads: 3x3 conv + ReLU blocks
                *(
                    nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
                    for _ in range(2)
                )
            )
            self.mask_predictor = mask_predictor(channels, num_classes)
        self.keypoint_roi_pool = self.keypoint_head = self.keypoint_predictor = None

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list
    ) -> tuple[list[dict[str, Tensor]], dict]:
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        logits, codes = self.box_predictor(self.box_head(pooled))
        result, start = [], 0
        for props, size in zip(proposals, image_shapes, strict=True):
            stop = start + len(props)
            result.append(self._detections(logits[start:stop], codes[start:stop], props, size))
            start = stop
        if self.mask_roi_pool is not None:
            pooled = self.mask_roi_pool(features, [r["boxes"] for r in result], image_shapes)
            logits = self.mask_predictor(self.mask_head(pooled))
            start = 0
            for r in result:
                stop = start + len(r["boxes"])
                rows = torch.arange(start, stop)
                r["mask_logits"] = logits[rows, r["labels"]]
                r["masks"] = r["mask_logits"].sigmoid()[:, None]
                start = stop
        return result, {}

    def _detections(self, logits: Tensor, codes: Tensor, props: Tensor, size: tuple) -> dict:
        p, k = logits.shape
        boxes = self.box_coder.decode_single(codes.reshape(-1, 4), props.repeat_interleave(k, 0))
        boxes = clip(boxes, size).reshape(p, k, 4)[:, 1:].reshape(-1, 4)
        scores = logits.softmax(-1)[:, 1:].reshape(-1)
        labels = torch.arange(1, k).repeat(p)
        proposal = torch.arange(p).repeat_interleave(k - 1)
        keep = torch.where(scores > self.score_thresh)[0]  # torchvision: ">" here
        keep = keep[remove_small(boxes[keep], 1e-2)]
        keep = keep[nms(boxes[keep], scores[keep], labels[keep], self.nms_thresh)]
        keep = keep[: self.detections_per_img]
        level = self.box_roi_pool.map_levels([props])[proposal[keep]]
        return {
            "boxes": boxes[keep],
            "scores": scores[keep],
            "labels": labels[keep],
            "proposals": proposal[keep],
            "levels": level,
        }


class TinyTwoStage(nn.Module):
    """A torchvision-shaped Faster R-CNN (``kind="faster"``) or Mask R-CNN (``"mask"``):
    ``model(images) -> [{"boxes", "scores", "labels"(, "masks"), ...}]`` per image, boxes in
    input pixels. Extra keys: ``proposals`` (each detection's index in ``rpn_boxes``),
    ``rpn_boxes`` (the RPN's kept proposals, resized-image pixels), ``rpn_scores`` (their
    objectness probabilities), ``levels`` (the RoI level of each detection's proposal, an index
    into ``box_roi_pool.featmap_names``) and, for Mask, ``mask_logits`` ``[D, 28, 28]`` (each
    detection's class channel, before the sigmoid)."""

    def __init__(self, kind: str = "faster", num_classes: int = 4) -> None:
        super().__init__()
        self.kind = kind
        self.transform = TinyTransform(96, 160, 32, None)
        self.backbone = TinyFPN()
        sizes = ((16, 32), (32, 64), (64, 128), (128, 256))
        anchors = TinyAnchorGenerator(sizes, ((0.5, 2.0),) * len(sizes))
        head = TinyRPNHead(16, anchors.num_anchors_per_location()[0])
        self.rpn = TinyRPN(anchors, head)
        self.roi_heads = TinyRoIHeads(16, num_classes, kind == "mask")

    def forward(self, images: list[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        originals = [tuple(im.shape[-2:]) for im in images]
        resized = [self.transform(im) for im in images]
        sizes = [tuple(r.shape[-2:]) for r in resized]
        d = self.transform.size_divisible
        hp = -(-max(s[0] for s in sizes) // d) * d
        wp = -(-max(s[1] for s in sizes) // d) * d
        batch = resized[0].new_zeros(len(resized), 3, hp, wp)
        for n, r in enumerate(resized):
            batch[n, :, : r.shape[1], : r.shape[2]] = r
        features = self.backbone(batch)
        proposals, _ = self.rpn(ImageList(batch, sizes), features)
        result, _ = self.roi_heads(features, proposals, sizes)
        scores = self.rpn.last_scores
        for r, props, p, size, orig in zip(
            result, proposals, scores, sizes, originals, strict=True
        ):
            r["rpn_boxes"], r["rpn_scores"] = props, p
            ratio_h = torch.tensor(orig[0], dtype=torch.float32) / size[0]
            ratio_w = torch.tensor(orig[1], dtype=torch.float32) / size[1]
            r["boxes"] = r["boxes"] * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
            if "masks" in r:
                r["masks"] = paste_masks(r["masks"], r["boxes"], orig)
        return result


def photos(names: tuple[str, ...], size: tuple[int, int]) -> Tensor:
    """scikit-image photos as float32 ``[N, 3, H, W]`` in [0, 1]."""
    from explain_export.artifact import samples

    return torch.from_numpy(
        np.stack([samples.load_rgb(samples.photo_path(n), size) for n in names])
    )


def tiny_two_stage(kind: str = "faster", seed: int = 0) -> TinyTwoStage:
    """A seeded :class:`TinyTwoStage` in eval mode: BatchNorm statistics from three photos
    (normalized, at the padded size); the box head and the mask branch drawn with Kaiming
    normal weights (as torchvision's mask heads are) so that RoIs differ; class logits of
    about ±1 and the background's bias 1, so that ~10 detections pass ``score_thresh`` (0.05)
    on chelsea.png and coffee.png at 100x150, scores 0.2 to 0.75; mask logits of about ±1
    inside a mask. The two kinds do not share weights (the mask modules take random draws)."""
    torch.manual_seed(seed)
    model = TinyTwoStage(kind)
    t = model.transform
    mean, std = torch.tensor(t.image_mean), torch.tensor(t.image_std)
    images = photos(("astronaut.png", "coffee.png", "rocket.jpg"), (96, 160))
    calibrate(model.backbone, (images - mean[:, None, None]) / std[:, None, None])
    heads = model.roi_heads
    for lin in (heads.box_head.fc6, heads.box_head.fc7):
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
    nn.init.normal_(heads.box_predictor.cls_score.weight, std=0.6)
    heads.box_predictor.cls_score.bias.data = torch.tensor([1.0, 0.0, 0.0, 0.0])
    if heads.mask_predictor is not None:
        for conv in [*heads.mask_head.modules(), *heads.mask_predictor.modules()]:
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        logits = heads.mask_predictor.mask_fcn_logits
        nn.init.normal_(logits.weight, std=4.0)  # logits of about ±1 within a mask
        nn.init.zeros_(logits.bias)
    return model.eval()


# --- Grad-CAM references per detection -------------------------------------------------------


def capture(model: TinyTwoStage, images: Tensor) -> tuple[list[dict[str, Tensor]], dict]:
    """Run ``model`` with the backbone's maps replaced by leaves that require grad (a forward
    hook), gradients on: its outputs, and the maps by name (``[N, C, h, w]``)."""
    maps: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: tuple, out: dict[str, Tensor]) -> dict[str, Tensor]:
        maps.update((k, v.detach().requires_grad_(True)) for k, v in out.items())
        return OrderedDict(maps)

    handle = model.backbone.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            outputs = model(images)
    finally:
        handle.remove()
    return outputs, maps


def fuse(cams: list[Tensor], window: tuple[int, int], padded: tuple, size: tuple) -> Tensor:
    """The fused-layer rule: each map ``[1, 1, h, w]`` covers the padded image, so it is resized
    (bilinear) to ``padded`` and cut to ``window`` (the resized image), then resized to ``size``
    and min-maxed; the mean of the levels, min-maxed again. ``[H, W]``."""

    def unit(m: Tensor) -> Tensor:
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        lo, hi = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
        return (m - lo) / (hi - lo).clamp_min(1e-7)

    def cut(m: Tensor) -> Tensor:
        m = F.interpolate(m, size=padded, mode="bilinear", align_corners=False)
        return m[:, :, : window[0], : window[1]]

    return unit(torch.stack([unit(cut(m)) for m in cams]).mean(0))[0, 0]


def _cam(
    model: TinyTwoStage,
    image: Tensor,
    target: str,
    j: int,
    levels: list | None,
    method: str = "gradcam",
) -> Tensor:
    outputs, maps = capture(model, image[None])
    out = outputs[0]
    if target == "score":
        y = out["scores"][j]
    else:
        z = out["mask_logits"][j]
        y = (z * (z.sigmoid() > 0.5)).sum()
    names = levels or model.roi_heads.box_roi_pool.featmap_names
    grads = torch.autograd.grad(y, [maps[k] for k in names], allow_unused=True)
    cams = []
    for k, g in zip(names, grads, strict=True):
        a = maps[k]
        g = torch.zeros_like(a) if g is None else g
        w = g if method == "hirescam" else g.mean((2, 3), keepdim=True)  # HiResCAM: no mean
        cams.append(torch.relu((w * a).sum(1, keepdim=True)).detach())
    window = tuple(model.transform(image).shape[-2:])
    d = model.transform.size_divisible
    padded = tuple(-(-s // d) * d for s in window)
    return fuse(cams, window, padded, tuple(image.shape[-2:]))


def gradcam(model: TinyTwoStage, image: Tensor, j: int, levels: list | None = None) -> Tensor:
    """Grad-CAM of detection j's score ``y_j`` (its softmax probability, as
    ``FasterRCNNBoxScoreTarget`` reads it) at each RoI level ``A_l`` (default: the box pooler's
    maps): ``α = mean_ij ∂y_j/∂A_l``, ``ReLU(Σ_k α_k A_l,k)``, fused by :func:`fuse`. ``[H, W]``."""
    return _cam(model, image, "score", j, levels)


def hirescam(model: TinyTwoStage, image: Tensor, j: int) -> Tensor:
    """HiResCAM of detection j's score, ``ReLU(Σ_k g_k ⊙ A_k)`` per level, fused as
    :func:`gradcam`: it needs the whole gradient map, not its channel means."""
    return _cam(model, image, "score", j, None, "hirescam")


def mask_target_gradcam(
    model: TinyTwoStage, image: Tensor, j: int, levels: list | None = None
) -> Tensor:
    """As :func:`gradcam` with ``y_j = Σ z·[σ(z) > ½]`` over detection j's 28x28 mask logits
    ``z`` of its class (the region held constant), ``SemanticSegmentationTarget``'s rule."""
    return _cam(model, image, "mask", j, levels)

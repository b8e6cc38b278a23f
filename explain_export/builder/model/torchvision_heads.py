"""torchvision's one-stage detectors (RetinaNet, FCOS, SSD, SSDlite) as a :class:`.Detector`.

Recognised by what they carry, never by importing torchvision (:func:`recognise`): a
``transform`` (``image_mean``, ``image_std``, ``min_size``, ``max_size``), a ``backbone``
returning a dict of maps, a ``head`` taking their list and returning a dict, an
``anchor_generator``, a ``box_coder``, and ``score_thresh``, ``nms_thresh``,
``topk_candidates``, ``detections_per_img``. At the export size ``H x W`` everything that
depends on the size is fixed when the record is built: the resize, the padding, the anchors.

The graph does what the model's own ``forward`` does in eval mode, as static-shape tensor ops:

1. :meth:`TorchvisionDetector.run`: ``(x - image_mean) / image_std``; bilinear resize to
   ``⌊H·s⌋ x ⌊W·s⌋`` with ``s = min(min_size / min(H, W), max_size / max(H, W))`` (SSD: its
   ``fixed_size``); zero padding to a multiple of ``size_divisible``; the backbone; the head
   (on the list of maps: the default taps; a map covers the padded image, so its heatmap is
   cut to the resized image first, :meth:`TorchvisionDetector.window`). The raw predictions
   are one tensor ``[N, A, 4 + E + K]``: per anchor its box regression, FCOS's centerness
   (``E = 1``), then ``K`` class logits.
2. :meth:`TorchvisionDetector.candidates`: ``postprocess_detections``. RetinaNet and FCOS, per
   level: the scores over (anchor, class) pairs, those not above ``score_thresh`` masked, the
   best ``min(topk_candidates, n_l·K)``; SSD, per class but the background 0: the same over
   anchors. Boxes decoded by the box coder's rule, clipped to the resized image, then scaled by
   ``input / resized`` per axis (``transform.postprocess``).
3. NMS (:func:`.boxes.select`) at ``nms_thresh``; ``D`` must not exceed ``detections_per_img``.

The score ``y`` a detection's map explains (:meth:`TorchvisionDetector.score`): RetinaNet
``σ(z_ac)``, FCOS ``sqrt(σ(z_ac)·σ(o_a))`` (``o``: centerness), SSD ``softmax_c(z_a)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..maths.boxes import clip_to, decode_deltas
from .detectors import Candidates, Detector

__all__ = ["TorchvisionDetector", "is_torchvision_detector", "recognise"]

SCORES = {
    "retinanet": "sigmoid of the class logit (torchvision RetinaNet)",
    "fcos": "sqrt(sigmoid(class logit) * sigmoid(centerness)) (torchvision FCOS)",
    "ssd": "softmax over the classes (torchvision SSD)",
}
NEEDS = (
    "transform",
    "backbone",
    "head",
    "anchor_generator",
    "box_coder",
    "score_thresh",
    "nms_thresh",
    "topk_candidates",
    "detections_per_img",
)


class _Images(NamedTuple):
    """What an anchor generator reads of torchvision's ``ImageList``."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


@dataclass(frozen=True)
class TorchvisionDetector(Detector):
    """A torchvision one-stage detector at a fixed export size (the module's docstring): the
    transform's ``image_mean``/``image_std``, the ``resized`` and ``padded`` sizes, the
    ``anchors [A, 4]`` (resized pixels), the anchors per level, the box coder (``coder``:
    ``weights`` and ``clip`` for ``BoxCoder``, ``linear`` for FCOS's ``BoxLinearCoder``), and
    ``topk`` candidates per level (SSD: per class)."""

    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    input_size: tuple[int, int] = (0, 0)
    resized: tuple[int, int] = (0, 0)
    padded: tuple[int, int] = (0, 0)
    levels: tuple[int, ...] = ()
    anchors: Tensor = field(default_factory=lambda: torch.zeros(0, 4), compare=False, repr=False)
    weights: tuple[float, float, float, float] | None = (1.0, 1.0, 1.0, 1.0)
    clip: float = math.log(1000.0 / 16)
    topk: int = 1000
    detections_per_img: int = 100

    @property
    def size_step(self) -> int:
        """Any export size: the model's transform resizes and pads the input itself."""
        return 1

    @property
    def extra(self) -> int:
        """Columns between the box regression and the class logits (FCOS: centerness)."""
        return 1 if self.family == "fcos" else 0

    def run(self, model: nn.Module, x: Tensor) -> Tensor:
        """``[N, A, 4 + E + K]`` for the batch ``x`` (``[0, 1]`` RGB at the export size)."""
        return self.from_head(model.head(self.features(model, x)))

    def features(self, model: nn.Module, x: Tensor) -> list[Tensor]:
        """The transform (normalize, resize, pad) and the backbone: the maps the head reads."""
        feats = model.backbone(self.prepare(x))
        return list(feats.values()) if isinstance(feats, dict) else [feats]

    def prepare(self, x: Tensor) -> Tensor:
        """The model's transform: ``(x - image_mean) / image_std``, resized, zero-padded."""
        mean = torch.tensor(self.image_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        if self.resized != (x.shape[2], x.shape[3]):
            x = F.interpolate(x, size=self.resized, mode="bilinear", align_corners=False)
        pad_h, pad_w = self.padded[0] - self.resized[0], self.padded[1] - self.resized[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def window(self, maps: Tensor) -> Tensor:
        """A map over the padded image ``[M, 1, h, w]`` resized (bilinear) to the padded size,
        then cut to the resized image: the part that is the graph's input (no padding)."""
        if self.padded == self.resized:
            return maps
        maps = F.interpolate(maps, size=self.padded, mode="bilinear", align_corners=False)
        return maps[:, :, : self.resized[0], : self.resized[1]]

    def from_head(self, out: Any) -> Tensor:
        """The head's dict as one tensor: box regression, (centerness), class logits."""
        parts = [out["bbox_regression"]]
        if self.family == "fcos":
            parts.append(out["bbox_ctrness"])
        parts.append(out["cls_logits"])
        return torch.cat(parts, dim=-1)

    def _probs(self, raw: Tensor) -> Tensor:
        """Every (anchor, class) score ``[N, A, K]``, as ``postprocess_detections`` rates it."""
        logits = raw[..., 4 + self.extra :]
        if self.family == "ssd":
            return logits.softmax(-1)
        if self.family == "fcos":
            return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(raw[..., 4:5]))
        return torch.sigmoid(logits)

    def decode(self, codes: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from the regression ``codes [..., 4]`` at ``anchors [..., 4]`` (corners), by
        the box coder's rule, clipped to the resized image and scaled to the input's pixels.

        ``BoxCoder``: centre ``c + d_xy/w_xy · s``, size ``s · exp(min(d_wh/w_wh, clip))``;
        ``BoxLinearCoder``: ``c ∓ d · s`` (distances to the edges, in anchor sizes)."""
        if self.weights is None:
            size = anchors[..., 2:] - anchors[..., :2]
            ctr = 0.5 * (anchors[..., :2] + anchors[..., 2:])
            rel = codes * torch.cat([size, size], -1)
            boxes = torch.cat([ctr - rel[..., :2], ctr + rel[..., 2:]], -1)
        else:
            boxes = decode_deltas(codes, anchors, self.weights, self.clip)
        return self.to_input(clip_to(boxes, self.resized))

    def to_input(self, boxes: Tensor) -> Tensor:
        """Boxes in the resized image's pixels scaled to the input's (``transform.postprocess``:
        ``input / resized`` per axis, in float32 as torchvision computes it)."""
        h, w = self.resized
        ratio_h = torch.tensor(self.input_size[0], dtype=torch.float32) / torch.tensor(
            float(h), dtype=torch.float32
        )
        ratio_w = torch.tensor(self.input_size[1], dtype=torch.float32) / torch.tensor(
            float(w), dtype=torch.float32
        )
        ratio = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device, boxes.dtype)
        return boxes * ratio

    def candidates(self, raw: Tensor) -> Candidates:
        """``postprocess_detections`` up to its NMS, with static shapes (the module's docstring);
        a candidate that did not pass the threshold has score ``-inf``."""
        probs = self._probs(raw)
        n, a, k = probs.shape
        anchors = self.anchors.to(raw.device, raw.dtype)
        if self.family == "ssd":
            boxes = self.decode(raw[..., :4], anchors.expand(n, -1, -1))  # [N, A, 4]
            s = probs[..., 1:].transpose(1, 2)  # [N, K-1, A]: per class but the background
            s = s.masked_fill(~(s > self.score_threshold), float("-inf"))
            scores, index = s.topk(min(self.topk, a), dim=2)
            classes = torch.arange(1, k, device=raw.device)[None, :, None].expand_as(index)
            index, scores, classes = index.flatten(1), scores.flatten(1), classes.flatten(1)
            picked = boxes.gather(1, index[..., None].expand(-1, -1, 4))
            return Candidates(picked, scores, classes, index)
        out: list[list[Tensor]] = [[], [], [], []]
        start = 0
        for count in self.levels:
            s = probs[:, start : start + count].flatten(1)  # [N, n_l·K], anchor-major
            s = s.masked_fill(~(s > self.score_threshold), float("-inf"))
            scores, flat = s.topk(min(self.topk, count * k), dim=1)
            index = torch.div(flat, k, rounding_mode="floor") + start
            codes = raw[..., :4].gather(1, index[..., None].expand(-1, -1, 4))
            boxes = self.decode(codes, anchors[index])
            for part, value in zip(out, (boxes, scores, flat % k, index), strict=True):
                part.append(value)
            start += count
        boxes, scores, classes, index = (torch.cat(p, dim=1) for p in out)
        return Candidates(boxes, scores, classes, index)

    def score(self, raw: Tensor, anchors: Tensor, classes: Tensor) -> Tensor:
        """``y [N, D]``: the score of class ``classes[n, j]`` at anchor ``anchors[n, j]`` as
        the model rates it (the module's docstring), differentiably."""
        at = raw.gather(1, anchors[..., None].expand(-1, -1, raw.shape[2]))  # [N, D, 4+E+K]
        probs = self._probs(at)
        return probs.gather(2, classes.clamp_min(0)[..., None]).squeeze(2)


def is_torchvision_detector(model: nn.Module) -> bool:
    """Whether ``model`` carries what a torchvision one-stage detector does (the module's
    docstring), with a transform that has a mean, a std and sizes."""
    if not all(hasattr(model, name) for name in NEEDS):
        return False
    t = model.transform
    return all(hasattr(t, name) for name in ("image_mean", "image_std", "min_size", "max_size"))


def resized_size(transform: Any, size: tuple[int, int]) -> tuple[int, int]:
    """The size ``GeneralizedRCNNTransform.resize`` gives an image of ``size`` in eval mode."""
    fixed = getattr(transform, "fixed_size", None)
    if fixed is not None:
        return int(fixed[1]), int(fixed[0])
    h, w = size
    min_size = transform.min_size
    target = min_size[-1] if isinstance(min_size, Sequence) else min_size
    scale = min(float(target) / min(h, w), float(transform.max_size) / max(h, w))
    return math.floor(float(h) * scale), math.floor(float(w) * scale)


def _family(model: nn.Module) -> str:
    if hasattr(model, "center_sampling_radius"):
        return "fcos"
    if hasattr(model, "neg_to_pos_ratio"):
        return "ssd"
    return "retinanet"


def recognise(model: nn.Module, size: tuple[int, int]) -> TorchvisionDetector | None:
    """The record of a torchvision one-stage detector at the export ``size`` (one run of the
    backbone and head on zeros fixes the levels and anchors); None where ``model`` is none."""
    if not is_torchvision_detector(model):
        return None
    family = _family(model)
    t = model.transform
    resized = resized_size(t, size)
    step = int(getattr(t, "size_divisible", 32))
    padded = (-(-resized[0] // step) * step, -(-resized[1] // step) * step)
    coder = model.box_coder
    weights = getattr(coder, "weights", None)
    probe = TorchvisionDetector(
        family,
        0,
        "head",
        (),
        image_mean=tuple(float(v) for v in t.image_mean),
        image_std=tuple(float(v) for v in t.image_std),
        input_size=size,
        resized=resized,
        padded=padded,
    )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        x = torch.zeros(1, 3, *size, device=device)
        feats = probe.features(model, x)
        out = model.head(feats)
        if not isinstance(out, dict) or "cls_logits" not in out:
            return None
        image = torch.zeros(1, 3, *padded, device=device)
        anchors = model.anchor_generator(_Images(image, [resized]), feats)[0].detach()
    k = int(out["cls_logits"].shape[-1])
    cells = [int(f.shape[2] * f.shape[3]) for f in feats]
    per_cell = int(out["cls_logits"].shape[1]) // sum(cells)
    strides = tuple(padded[0] // int(f.shape[2]) for f in feats)
    return TorchvisionDetector(
        family,
        k,
        "head",
        strides,
        score_kind=SCORES[family],
        score_threshold=float(model.score_thresh),
        iou_threshold=float(model.nms_thresh),
        head_output=True,
        image_mean=probe.image_mean,
        image_std=probe.image_std,
        input_size=size,
        resized=resized,
        padded=padded,
        levels=tuple(c * per_cell for c in cells),
        anchors=anchors.cpu(),
        weights=None if weights is None else tuple(float(w) for w in weights),  # type: ignore[arg-type]
        clip=float(getattr(coder, "bbox_xform_clip", math.log(1000.0 / 16))),
        topk=int(model.topk_candidates),
        detections_per_img=int(model.detections_per_img),
    )

"""torchvision's two-stage detectors (Faster R-CNN, Mask R-CNN) as static-shape tensor ops.

Recognised by what they carry, never by importing torchvision (:func:`recognise`): the
``transform``, ``backbone`` and ``head``-less layout of ``GeneralizedRCNN``: an ``rpn``
(``anchor_generator``, ``head``, ``box_coder``, ``pre_nms_top_n()``, ``post_nms_top_n()``,
``nms_thresh``, ``score_thresh``, ``min_size``) and ``roi_heads`` (``box_roi_pool``,
``box_head``, ``box_predictor``, ``box_coder``, ``score_thresh``, ``nms_thresh``,
``detections_per_img``; Mask R-CNN also ``mask_roi_pool``, ``mask_head``, ``mask_predictor``).
At the export size everything that depends on the size is fixed when the record is built: the
resize, the padding, the RPN's anchors, the RoI pooling's scales.

What the model's own eval ``forward`` does, with static shapes (:class:`TwoStageDetector`):

1. the transform and the backbone (:meth:`~.TorchvisionDetector.features`): every level's map;
2. :meth:`TwoStageDetector.proposals`, the RPN: per level the ``pre_nms_top_n`` anchors of the
   highest objectness logit, their boxes decoded (weights 1), clipped to the resized image; a
   box with a side under ``min_size`` or ``σ(objectness) < score_thresh`` drops out; greedy NMS
   per level at ``nms_thresh`` (:func:`.boxes.select`, the levels as classes), the first
   ``post_nms_top_n`` kept: ``P`` proposals, fewer where fewer are left (``valid``);
3. :meth:`TwoStageDetector.classify`: RoIAlign of every proposal at its level
   (:class:`.roi_align.RoiPooler`), the box head and predictor: class logits ``[N·P, K]`` and
   box regression ``[N·P, 4K]``;
4. :meth:`TwoStageDetector.box_candidates`, ``postprocess_detections`` up to its NMS: per proposal
   and class but the background, the softmax score and the box decoded (weights 10, 10, 5, 5),
   clipped; a candidate drops out where its score is not above ``score_thresh``, a side is under
   0.01 px, or its proposal is padding. Class-aware NMS then keeps ``D`` as for one-stage models.

A detection's score ``y_j = softmax(z_p)[c]`` (``p``: its proposal, ``c``: its class) reads the
maps only through RoIAlign of its proposal (the proposals themselves are decoded from detached
deltas), which is what its map explains (:mod:`..rcnn_explainer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..maths.boxes import clip_to, decode_deltas, select
from ..maths.roi_align import RoiPooler
from .detectors import Candidates
from .torchvision_heads import TorchvisionDetector, _Images, resized_size

__all__ = ["TwoStageDetector", "is_two_stage", "recognise", "run_masks"]

SCORE = "softmax over the classes of the proposal's box head (torchvision R-CNN)"
MIN_BOX = 1e-2  # postprocess_detections' remove_small_boxes


@dataclass(frozen=True)
class TwoStageDetector(TorchvisionDetector):
    """A torchvision R-CNN at a fixed export size (the module's docstring). Beside the
    one-stage record's transform sizes: the RPN's ``rpn_anchors [A, 4]`` and anchors per level,
    its top-n, thresholds and box coder clip; the RoI heads' level indices ``roi_levels`` (which
    of the backbone's maps ``box_roi_pool`` reads), their ``pooler`` (and Mask R-CNN's
    ``mask_pooler``), the box coder ``weights``/``clip`` (inherited) and ``detections_per_img``.
    """

    rpn_anchors: Tensor = field(
        default_factory=lambda: torch.zeros(0, 4), compare=False, repr=False
    )
    rpn_levels: tuple[int, ...] = ()
    rpn_pre: int = 1000
    rpn_post: int = 1000
    rpn_nms: float = 0.7
    rpn_score: float = 0.0
    rpn_min_size: float = 1e-3
    rpn_clip: float = math.log(1000.0 / 16)
    roi_levels: tuple[int, ...] = ()
    pooler: RoiPooler | None = None
    mask_pooler: RoiPooler | None = None

    @property
    def has_masks(self) -> bool:
        return self.mask_pooler is not None

    def proposals(self, model: nn.Module, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The RPN's kept proposals ``[N, P, 4]`` (resized pixels) and ``valid [N, P]``."""
        objectness, deltas = model.rpn.head(feats)
        logits = torch.cat([_flat(o, 1) for o in objectness], 1)[..., 0]  # [N, A]
        codes = torch.cat([_flat(d, 4) for d in deltas], 1)  # [N, A, 4]
        anchors = self.rpn_anchors.to(codes.device, codes.dtype)
        parts: list[list[Tensor]] = [[], [], []]
        start = 0
        for level, count in enumerate(self.rpn_levels):
            top, index = logits[:, start : start + count].topk(min(self.rpn_pre, count), dim=1)
            index = index + start
            c = codes.gather(1, index[..., None].expand(-1, -1, 4))
            boxes = clip_to(
                decode_deltas(c, anchors[index], (1.0,) * 4, self.rpn_clip), self.resized
            )  # type: ignore[arg-type]
            score = torch.sigmoid(top)
            size = boxes[..., 2:] - boxes[..., :2]
            ok = (size >= self.rpn_min_size).all(-1) & (score >= self.rpn_score)
            parts[0].append(boxes)
            parts[1].append(score.masked_fill(~ok, float("-inf")))
            parts[2].append(torch.full_like(index, level))
            start += count
        boxes, scores, levels = (torch.cat(p, 1) for p in parts)
        picked = select(boxes, scores, levels, self.rpn_post, self.rpn_nms, float("-inf"))
        kept = boxes.gather(1, picked.index[..., None].expand(-1, -1, 4))
        return kept * picked.valid[..., None], picked.valid

    def roi_maps(self, feats: list[Tensor]) -> list[Tensor]:
        """The maps ``box_roi_pool`` reads, finest first."""
        return [feats[i] for i in self.roi_levels]

    def classify(
        self, model: nn.Module, maps: list[Tensor], proposals: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(pooled [N·P, C, s, s], class logits [N·P, K], box regression [N·P, 4K])``."""
        n, p = proposals.shape[:2]
        batch = torch.arange(n, device=proposals.device).repeat_interleave(p)
        assert self.pooler is not None
        pooled = self.pooler.pool(maps, proposals.reshape(-1, 4), batch)
        logits, regression = self.box_scores(model, pooled)
        return pooled, logits, regression

    @staticmethod
    def box_scores(model: nn.Module, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """The box head and predictor on pooled RoIs: ``(class logits, box regression)``."""
        return model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))

    def box_candidates(
        self, logits: Tensor, regression: Tensor, proposals: Tensor, valid: Tensor
    ) -> Candidates:
        """Every (proposal, class ≥ 1) pair: boxes ``[N, P·(K−1), 4]`` in resized pixels,
        scores (``-inf`` where dropped), classes, and ``anchors``: the pair's flat index
        ``p·(K−1) + c − 1`` (its proposal is ``index // (K−1)``)."""
        n, p = proposals.shape[:2]
        k = logits.shape[-1]
        probs = logits.softmax(-1).reshape(n, p, k)[..., 1:]
        codes = regression.reshape(n, p, k, 4)[:, :, 1:]
        boxes = decode_deltas(codes, proposals[:, :, None], self.weights, self.clip)  # type: ignore[arg-type]
        boxes = clip_to(boxes, self.resized)
        size = boxes[..., 2:] - boxes[..., :2]
        ok = (probs > self.score_threshold) & (size >= MIN_BOX).all(-1) & valid[..., None]
        scores = probs.masked_fill(~ok, float("-inf")).reshape(n, -1)
        classes = torch.arange(1, k, device=logits.device).repeat(p).expand(n, -1)
        index = torch.arange(p * (k - 1), device=logits.device).expand(n, -1)
        return Candidates(boxes.reshape(n, -1, 4), scores, classes, index)

    def score_of(self, logits: Tensor, classes: Tensor) -> Tensor:  # type: ignore[override]
        """``y = softmax(z)[c]`` of each row's logits ``[M, K]`` at its class ``[M]``."""
        return logits.softmax(-1).gather(1, classes.clamp_min(0)[:, None])[:, 0]


def _flat(t: Tensor, c: int) -> Tensor:
    """An RPN level's ``[N, A·c, h, w]`` as ``[N, h·w·A, c]``, cell by cell (torchvision's
    ``permute_and_flatten``)."""
    n, ac, h, w = t.shape
    return t.view(n, ac // c, c, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, c)


def is_two_stage(model: nn.Module) -> bool:
    """Whether ``model`` carries what a torchvision R-CNN does (the module's docstring)."""
    rpn, roi = getattr(model, "rpn", None), getattr(model, "roi_heads", None)
    if rpn is None or roi is None or not hasattr(model, "transform"):
        return False
    need_rpn = ("anchor_generator", "head", "box_coder", "nms_thresh", "score_thresh", "min_size")
    need_roi = ("box_roi_pool", "box_head", "box_predictor", "box_coder", "detections_per_img")
    return all(hasattr(rpn, n) for n in need_rpn) and all(hasattr(roi, n) for n in need_roi)


def _read_by(pool: nn.Module, names: list[str]) -> list[int]:
    """The indices of the backbone's maps that ``MultiScaleRoIAlign`` ``pool`` reads: those
    of its ``featmap_names`` the backbone has, in the backbone's order (``_filter_input``; a
    mobilenet FPN has ``"0"``, ``"1"``, ``"pool"`` where the pool names ``"0"`` to ``"3"``)."""
    read = [i for i, n in enumerate(names) if n in pool.featmap_names]
    if not read:
        raise ValueError(
            f"the RoI pooler reads {list(pool.featmap_names)}; the backbone has {names}"
        )
    return read


def _pooler(pool: nn.Module, names: list[str], feats: list[Tensor], resized: tuple[int, int]):
    """A :class:`.RoiPooler` of torchvision's ``MultiScaleRoIAlign`` ``pool``: the scales
    ``2^round(log2(map side / resized side))`` of the maps it reads, as ``_setup_scales``."""
    scales = []
    for i in _read_by(pool, names):
        ratio = float(feats[i].shape[2]) / float(resized[0])
        scales.append(2.0 ** round(math.log2(ratio)))
    return RoiPooler(
        scales=tuple(scales),
        output_size=tuple(int(s) for s in pool.output_size),
        sampling_ratio=int(pool.sampling_ratio),
        canonical_scale=int(getattr(pool, "canonical_scale", 224)),
        canonical_level=int(getattr(pool, "canonical_level", 4)),
    )


def recognise(model: nn.Module, size: tuple[int, int]) -> TwoStageDetector | None:
    """The record of a torchvision R-CNN at the export ``size`` (one run of the backbone and
    the RPN head on zeros fixes the levels, anchors and scales); None where ``model`` is none.

    Raises ValueError for a model this cannot export (keypoints; adaptive RoI sampling)."""
    if not is_two_stage(model):
        return None
    model = model.eval()
    t, rpn, roi = model.transform, model.rpn, model.roi_heads
    if getattr(roi, "keypoint_roi_pool", None) is not None:
        raise ValueError("Keypoint R-CNN is not supported; export its Faster R-CNN part")
    resized = resized_size(t, size)
    step = int(getattr(t, "size_divisible", 32))
    padded = (-(-resized[0] // step) * step, -(-resized[1] // step) * step)
    mean = tuple(float(v) for v in t.image_mean)
    std = tuple(float(v) for v in t.image_std)
    probe = TorchvisionDetector(
        "faster-rcnn", 0, None, (), image_mean=mean, image_std=std, input_size=size,
        resized=resized, padded=padded,
    )  # fmt: skip
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        x = torch.zeros(1, 3, *size, device=device)
        raw = model.backbone(probe.prepare(x))
        names = list(raw.keys()) if isinstance(raw, dict) else ["0"]
        feats = list(raw.values()) if isinstance(raw, dict) else [raw]
        objectness, _ = rpn.head(feats)
        image = torch.zeros(1, 3, *padded, device=device)
        anchors = rpn.anchor_generator(_Images(image, [resized]), feats)[0].detach()
        pooled_at = _read_by(roi.box_roi_pool, names)
        pooler = _pooler(roi.box_roi_pool, names, feats, resized)
        mask = getattr(roi, "mask_roi_pool", None)
        mask_pooler = None if mask is None else _pooler(mask, names, feats, resized)
        k = int(roi.box_predictor.cls_score.out_features)
    for p in (pooler, mask_pooler):
        if p is not None and p.sampling_ratio <= 0:
            raise ValueError("RoIAlign with an adaptive sampling ratio (<= 0) is not supported")
    coder = roi.box_coder
    return TwoStageDetector(
        "mask-rcnn" if mask_pooler is not None else "faster-rcnn",
        k,
        None,
        tuple(padded[0] // int(feats[i].shape[2]) for i in pooled_at),
        score_kind=SCORE,
        score_threshold=float(roi.score_thresh),
        iou_threshold=float(roi.nms_thresh),
        head_output=False,
        image_mean=mean,
        image_std=std,
        input_size=size,
        resized=resized,
        padded=padded,
        weights=tuple(float(w) for w in coder.weights),  # type: ignore[arg-type]
        clip=float(coder.bbox_xform_clip),
        detections_per_img=int(roi.detections_per_img),
        rpn_anchors=anchors.cpu(),
        rpn_levels=tuple(int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness),
        rpn_pre=int(rpn.pre_nms_top_n()),
        rpn_post=int(rpn.post_nms_top_n()),
        rpn_nms=float(rpn.nms_thresh),
        rpn_score=float(rpn.score_thresh),
        rpn_min_size=float(rpn.min_size),
        rpn_clip=float(rpn.box_coder.bbox_xform_clip),
        roi_levels=tuple(pooled_at),
        pooler=pooler,
        mask_pooler=mask_pooler,
    )


def run_masks(model: nn.Module, pooled: Tensor, classes: Tensor) -> Tensor:
    """Mask R-CNN's mask logits of each row's class: ``[M, s, s]`` from pooled RoIs
    ``[M, C, s', s']`` (the mask head and predictor)."""
    roi: Any = model.roi_heads
    logits = roi.mask_predictor(roi.mask_head(pooled))  # [M, K, s, s]
    index = classes.clamp_min(0)[:, None, None, None].expand(-1, 1, *logits.shape[2:])
    return logits.gather(1, index)[:, 0]

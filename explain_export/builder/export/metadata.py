"""The metadata of an export, from its plan and its verification: what a runner needs to feed
the graph and read its outputs, as the contract's type
(:class:`explain_export.artifact.contract.ArtifactMetadata`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ...artifact.contract import ArtifactMetadata, TensorSpec
from ..plan import Plan
from . import parity64, verify
from .writers import versions

__all__ = ["build_metadata"]


def _sampling(info: Plan) -> dict[str, Any] | None:
    """A sampling method's settings: ``steps`` (and ``noise``, ``seed`` for noise)."""
    kind, sampling = info.method_spec.samples, info.sampling
    if kind is None or sampling is None:
        return None
    if kind == "path":
        return {"kind": kind, "steps": sampling.steps, "rule": "gauss-legendre", "baseline": 0}
    return {"kind": kind, "steps": sampling.steps, "noise": sampling.noise, "seed": sampling.seed}


SCORE_MEANINGS = {  # --faithfulness: per map m of class c on the image x (RGB in [0, 1])
    "score": "softmax(logits(x))[c]",
    "masked_score": "softmax(logits(x * m))[c], m broadcast over the channels",
    "complexity": "mean(m)",
    "coherency": "(pearson(m, m') + 1) / 2, m' the map of c on x * m",
}


REGION_MEANINGS = {  # a segmentation model's: the class's pixels R on x
    "score": "mean over R of softmax(scores(x))[c], R the pixels predicted as c on x",
    "masked_score": "mean over R of softmax(scores(x * m))[c]",
}


def _score_specs(k: int | None, segmentation: bool) -> list[TensorSpec]:
    """The four faithfulness outputs, ``[N]`` or ``[N, k]``."""
    shape: tuple[Any, ...] = ("N",) if k is None else ("N", k)
    meanings = {**SCORE_MEANINGS, **(REGION_MEANINGS if segmentation else {})}
    return [
        TensorSpec(name, "float32", shape, {"meaning": meaning, "range": [0.0, 1.0]})
        for name, meaning in meanings.items()
    ]


def build_metadata(
    info: Plan,
    *,
    model: str,
    labels: list[str] | None,
    dynamic_size: bool,
    class_input: bool,
    opset: int,
    faithfulness: bool = False,
    parity: list[verify.ParityRow],
    overlay_tol: float | None = None,
    gpu_rows: list[verify.DeviceRow] | None = None,
) -> ArtifactMetadata:
    """Everything a runner needs to feed the graph and read its outputs."""
    h, w = info.input_size
    hw: tuple[Any, ...] = ("H", "W") if dynamic_size else (h, w)
    g = info.graph
    if g.input_format == "uint8-nhwc":
        image = TensorSpec(
            "image", "uint8", ("N", *hw, 3), {"layout": "NHWC", "range": [0, 255], "color": "RGB"}
        )
    else:
        image = TensorSpec(
            "image",
            "float32",
            ("N", 3, *hw),
            {"layout": "NCHW", "range": [0.0, 1.0], "color": "RGB"},
        )
    inputs = [image]
    if class_input:
        meaning = f"target class per image for {info.method}; -1 takes the default class"
        inputs.append(TensorSpec("class_index", "int64", ("N",), {"meaning": meaning}))
    heat_range: dict[str, Any] = (
        {"range": [0, 255], "meaning": "round(255 * heatmap)"}
        if g.heatmap_dtype == "uint8"
        else {"range": [0.0, 1.0]}
    )
    k = info.top_k
    logits = TensorSpec("logits", "float32", ("N", info.num_classes))
    if info.segmentation:
        scores_hw = ("H'", "W'") if dynamic_size else tuple(info.output_size or ())
        logits = TensorSpec(
            "logits",
            "float32",
            ("N", info.num_classes, *scores_hw),
            {"meaning": "per-pixel scores"},
        )
    outputs = [logits, TensorSpec("heatmap", g.heatmap_dtype, ("N", k or 1, *hw), heat_range)]
    if g.overlay:
        outputs.append(TensorSpec("overlay", "uint8", ("N", *hw, 3), {"color": "RGB"}))
    if k is not None:
        meaning = f"the {k} classes heatmap[:, j] explains, best first"
        outputs.append(TensorSpec("classes", "int64", ("N", k), {"meaning": meaning}))
    elif info.segmentation:
        meaning = "the class whose predicted pixels the heatmap explains"
        outputs.append(TensorSpec("classes", "int64", ("N", 1), {"meaning": meaning}))
    if faithfulness:
        outputs += _score_specs(k, info.segmentation)
    return ArtifactMetadata(
        input_size=(h, w),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        model=model,
        output=None if info.output.kind == "tensor" else str(info.output),
        method=info.method,
        method_requested=info.requested or info.method,
        method_reason=info.reason,
        layer=info.layer,
        layers=tuple(p.layer for p in info.layers),
        fuse=info.fuse if info.fused else None,
        layout=info.layout,
        tap_copied=info.cloned,
        head=info.head,
        target_class=info.target,
        target=info.target_spec.name if info.method_spec.has_class else "none",
        top_k=k,
        sampling=_sampling(info),
        task="segmentation" if info.segmentation else None,
        background=getattr(info.target_spec, "background", None),
        feature_shape=tuple(info.feature_shape),
        num_classes=info.num_classes,
        dynamic_size=dynamic_size,
        mean=tuple(info.mean),
        std=tuple(info.std),
        input_format=g.input_format,
        half=g.half,
        heatmap_dtype=g.heatmap_dtype,
        overlay=(
            {"alpha": g.overlay_alpha, "colormap": g.colormap, "color": "RGB"}
            if g.overlay
            else None
        ),
        labels=None if labels is None else tuple(labels),
        opset=opset,
        versions=versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        parity={
            "logits_tol": verify.limits(g.half)[0],
            "logits_tol_times": "max(1, max |eager logits|)",
            "heatmap_tol": verify.limits(g.half)[1],
            "overlay_tol": overlay_tol,
            "float64_rule": parity64.RULE,
            "spread_max": verify.SPREAD_MAX,
            "rules": verify.RULES,  # what each row's "rule" means
            **(
                {"scores_tol": verify.SCORES_TOL, "scores_tol_times": verify.SCORES_TIMES}
                if faithfulness
                else {}
            ),
            "rows": [r.to_dict() for r in parity],
            "gpu": [r.to_dict() for r in gpu_rows or []],
            "gpu_rule": f"same top-1 and heatmap correlation >= {verify.CORR_MIN} on the photos",
        },
    )

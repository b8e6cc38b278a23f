#!/usr/bin/env python
"""Ultralytics YOLO detectors against independent references, exported, and timed (issue 27,
sections 1, 2, 4 "In the separate venv" and 5 "Speed").

Not part of the test suite, and nothing imports it: it needs ``ultralytics`` (AGPL-3.0, never a
dependency) and ``grad-cam``, so it runs in the venv that ``make peers`` builds::

    make peers && .peers/bin/python benchmarks/detectors_peers.py \\
        --out benchmarks/results/detectors-peers-cpu2

Per model (``ultralytics.nn.tasks.DetectionModel("<name>.yaml")``, torch.manual_seed(0), random
init, nothing downloaded), at 640x640:

- **Preparation** (random init detects nothing): BatchNorm statistics set from the scikit-image
  photos (train mode, ``momentum=None``: the cumulative average over one batch of the photos),
  then eval; the bias of the last conv of each ``Detect.cv3[i]`` (the class branch) set to 0, so
  class probabilities sit around 0.5 and detections pass Ultralytics' 0.25.
- **Detections**: our eager ``DetectionExplainer`` (D=10) against
  ``ultralytics.utils.nms.non_max_suppression(raw, 0.25, 0.7, return_idxs=True)`` on the same raw
  output ``[1, 84, 8400]``, its first D rows: count, classes, boxes and scores (exactly, and to
  1e-4).
- **Grad-CAM per detection**: each of our maps against an autograd Grad-CAM written here: a
  forward pre-hook on Detect clones its input maps (``A_l``, each still in the graph; only the
  clones feed Detect, so the gradient runs through the head alone), ``y_j = raw[0, 4+c_j,
  a_j]`` for Ultralytics' detection j (its class and anchor), ``torch.autograd.grad`` to the
  three clones, ``α = mean_hw g``, ``ReLU(Σ_k α_k A_k)``; per map bilinear resize
  (align_corners False) and min-max; the mean of the three, min-maxed (our fusion rule).
- **EigenCAM**: our ``eigencam`` (one map per image, the Detect inputs) against
  pytorch-grad-cam's ``EigenCAM`` on a wrapper that returns ``raw`` with ``target_layers`` the
  modules whose outputs feed Detect (``model.model[i] for i in Detect.f``, the same tensors).
  Its fusion differs from ours in order only (per layer: ReLU, min-max, then resize; ours
  resize, then min-max) and its SVD's sign is arbitrary while ours makes ``max ≥ |min|``. So:
  (1) per layer, ours (``layers=["model.<i>"]``) against its single-layer ``EigenCAM``; (2)
  fused, ours against its three-layer ``EigenCAM``; (3) fused, ours against its own
  ``get_2d_projection`` with our sign rule, then its fusion (``scale_cam_image``, mean, min-max)
  -- the same maths with its SVD.
- **Export**: ``export_detector`` to ONNX and TorchScript (gradcam and eigencam), its parity rows
  and times.
- **Speed** (``--speed``, batch 1, ONNX Runtime CPU with ``--threads`` threads, torch the same,
  in one run, ``explain_export.bench.timing.time_rounds``, each timed call after an untimed one of
  the same variant and a 0.2 s pause): (a) the detector exported with NMS and
  no maps (model -> ``Detector.candidates`` -> ``boxes.select`` -> boxes, scores, classes,
  count, by ``writers.to_onnx``); (b) our D=10 gradcam export; (c) our eigencam export; (d)
  pytorch-grad-cam ``GradCAM`` over the three layers once per detection (10 calls, the target
  the detection's class probability at its anchor); (e) pytorch-grad-cam ``EigenCAM`` over the
  same layers. Its GradCAM hooks the layer outputs, so its gradient also flows through the
  neck (``model.16`` feeds ``model.17``): its maps are not ours; (d) is timed, not compared.

Results: ``OUT.json`` and ``OUT.md`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE = (640, 640)
D = 10
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")
TARGETS = {"b/a": 2.0, "c/a": 1.2, "d/b": 20.0, "e/c": 50.0}  # b/a, c/a at most; d/b, e/c at least


def photos() -> np.ndarray:
    from explain_export.artifact import samples

    return np.stack([samples.load_rgb(samples.photo_path(p), SIZE) for p in PHOTOS])


def prepared(name: str, images: np.ndarray) -> nn.Module:
    """The random-init model with BatchNorm statistics from ``images`` and class bias 0."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(f"{name}.yaml", verbose=False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images))
    model.eval()
    detect = model.model[-1]
    with torch.no_grad():
        for branch in [*detect.cv3, *getattr(detect, "one2one_cv3", [])]:
            last = [m for m in branch.modules() if isinstance(m, nn.Conv2d)][-1]
            last.bias.zero_()
    return model


def raw_of(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out[0] if isinstance(out, list | tuple) else out


def ultralytics_nms(raw: Tensor) -> tuple[Tensor, Tensor]:
    """Ultralytics' own detections (``[n, 6]``: x1 y1 x2 y2 conf cls) and anchors, first D."""
    from ultralytics.utils.nms import non_max_suppression

    out, idx = non_max_suppression(raw.detach(), 0.25, 0.7, return_idxs=True)
    return out[0][:D], idx[0][:D].long()


def unit(m: Tensor, eps: float = 1e-7) -> Tensor:
    lo = m.amin(dim=(-2, -1), keepdim=True)
    span = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > eps, (m - lo) / span.clamp_min(eps), torch.zeros_like(m))


def reference_gradcam(model: nn.Module, x: Tensor, classes: Tensor, anchors: Tensor) -> Tensor:
    """``[D', H, W]``: the autograd Grad-CAM of each detection (the module's docstring)."""
    detect = model.model[-1]
    kept: list[Tensor] = []

    def pre(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        clones = [a.clone() for a in args[0]]
        kept[:] = clones
        return (clones, *args[1:])

    handle = detect.register_forward_pre_hook(pre)
    try:
        xg = x.clone().requires_grad_(True)  # so the maps are in a graph
        raw = raw_of(model, xg)
    finally:
        handle.remove()
    maps = []
    for j, (c, a) in enumerate(zip(classes.tolist(), anchors.tolist(), strict=True)):
        y = raw[0, 4 + int(c), int(a)]
        grads = torch.autograd.grad(y, kept, retain_graph=j < len(classes) - 1)
        units = []
        for a_l, g in zip(kept, grads, strict=True):
            alpha = g.mean(dim=(2, 3), keepdim=True)
            m = torch.relu((alpha * a_l).sum(dim=1, keepdim=True)).detach()
            m = F.interpolate(m, size=SIZE, mode="bilinear", align_corners=False)
            units.append(unit(m))
        maps.append(unit(torch.stack(units).mean(dim=0))[0, 0])
    return torch.stack(maps) if maps else torch.zeros(0, *SIZE)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


class Raw(nn.Module):
    """The model's raw predictions ``[N, 4+K, A]`` alone (pytorch-grad-cam wants a tensor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return raw_of(self.model, x)


class DetectionTarget:
    """pytorch-grad-cam target: the class probability of class ``c`` at anchor ``a``."""

    def __init__(self, c: int, a: int) -> None:
        self.c, self.a = c, a

    def __call__(self, out: Tensor) -> Tensor:
        return out[4 + self.c, self.a]


class NmsOnly(nn.Module):
    """(a): the detector with our NMS in the graph and no maps."""

    def __init__(self, model: nn.Module, detector: Any) -> None:
        super().__init__()
        self.model, self.detector = model, detector

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        from explain_export.builder.maths.boxes import select

        cand = self.detector.candidates(raw_of(self.model, image))
        picked = select(cand.boxes, cand.scores, cand.classes, D, 0.7, 0.25)
        index, valid = picked.index, picked.valid
        boxes = cand.boxes.gather(1, index[..., None].expand(-1, -1, 4)) * valid[..., None]
        scores = cand.scores.gather(1, index) * valid
        classes = torch.where(valid, cand.classes.gather(1, index), -1)
        return boxes, scores, classes, valid.sum(dim=1)


def their_eigen(model: nn.Module, layers: list[nn.Module], x: Tensor) -> np.ndarray:
    from pytorch_grad_cam import EigenCAM

    with EigenCAM(Raw(model), target_layers=layers) as cam:
        return cam(input_tensor=x, targets=None)


def eigen_rows(model: nn.Module, images: np.ndarray, ours_fused: np.ndarray) -> dict[str, Any]:
    """Our eigencam against pytorch-grad-cam's EigenCAM: per layer, fused, and fused with our
    sign rule on its own SVD projection (the module's docstring)."""
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from explain_export.builder.detect_build import build_detector

    detect = model.model[-1]
    x = torch.from_numpy(images)
    per_layer = {}
    acts: list[np.ndarray] = []
    hooks = [
        model.model[i].register_forward_hook(lambda _m, _a, o: acts.append(o.detach().numpy()))
        for i in detect.f
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    signed = []
    for i, a in zip(detect.f, acts, strict=True):
        with build_detector(copy.deepcopy(model), SIZE, "eigencam", layers=[f"model.{i}"]) as e:
            ours = e(x)[4][:, 0].numpy()
        theirs = their_eigen(model, [model.model[i]], x)
        proj = get_2d_projection(a)
        agree = [bool(p.max() >= -p.min()) for p in proj]  # its SVD sign is ours
        flip = np.where(np.array(agree)[:, None, None], proj, -proj)
        signed.append(scale_cam_image(np.maximum(flip, 0), SIZE[::-1])[:, None])
        per_layer[f"model.{i}"] = {
            "min_corr": round(min(pearson(o, t) for o, t in zip(ours, theirs, strict=True)), 6),
            "max_abs_diff": float(np.abs(ours - theirs).max()),
            "min_corr_where_its_sign_is_ours": round(
                min(
                    (pearson(o, t) for o, t, s in zip(ours, theirs, agree, strict=True) if s),
                    default=float("nan"),
                ),
                6,
            ),
            "its_sign_is_ours": agree,
        }
    theirs = their_eigen(model, [model.model[i] for i in detect.f], x)
    ref = scale_cam_image(np.concatenate(signed, axis=1).mean(axis=1))
    return {
        "per_layer": per_layer,
        "fused_vs_EigenCAM": {
            "min_corr": round(
                min(pearson(o, t) for o, t in zip(ours_fused, theirs, strict=True)), 6
            ),
            "max_abs_diff": float(np.abs(ours_fused - theirs).max()),
        },
        "fused_vs_its_projection_our_sign": {
            "min_corr": round(min(pearson(o, t) for o, t in zip(ours_fused, ref, strict=True)), 6),
            "max_abs_diff": float(np.abs(ours_fused - ref).max()),
        },
    }


def check_model(name: str, images: np.ndarray, out_dir: str | None) -> dict[str, Any]:
    """Detections, Grad-CAM and EigenCAM comparisons, and the exports, for one model."""
    from explain_export.builder.detect_build import build_detector

    model = prepared(name, images)
    pristine = copy.deepcopy(model)
    result: dict[str, Any] = {"model": name}
    t0 = time.perf_counter()
    explainer = build_detector(copy.deepcopy(model), SIZE, "gradcam", max_detections=D)
    result["detector"] = {
        "family": explainer.detector.family,
        "head": explainer.detector.head,
        "strides": list(explainer.detector.strides),
        "head_output": explainer.detector.head_output,
    }
    photos_rows, diffs, corrs = [], [], []
    for p, img in zip(PHOTOS, images, strict=True):
        x = torch.from_numpy(img[None])
        boxes, scores, classes, count, heat = (t.detach() for t in explainer(x))
        with torch.no_grad():
            raw = raw_of(pristine, x)
        theirs, anchors = ultralytics_nms(raw)
        n = int(count[0])
        k = min(n, len(theirs))
        same_cls = n == len(theirs) and bool((classes[0, :n] == theirs[:n, 5].long()).all())
        exact = int(
            sum(
                bool(
                    torch.equal(boxes[0, j], theirs[j, :4])
                    and scores[0, j] == theirs[j, 4]
                    and classes[0, j] == int(theirs[j, 5])
                )
                for j in range(k)
            )
        )
        close = int(
            sum(
                bool(
                    torch.allclose(boxes[0, j], theirs[j, :4], atol=1e-4, rtol=0)
                    and abs(float(scores[0, j] - theirs[j, 4])) <= 1e-4
                    and classes[0, j] == int(theirs[j, 5])
                )
                for j in range(k)
            )
        )
        ref = reference_gradcam(pristine, x, theirs[:, 5].long(), anchors)
        ours = heat[0, : len(ref)]
        dmax = float((ours - ref).abs().max()) if len(ref) else 0.0
        cmin = min(
            (pearson(o.numpy(), r.numpy()) for o, r in zip(ours, ref, strict=True)), default=1.0
        )
        diffs.append(dmax)
        corrs.append(cmin)
        photos_rows.append(
            {
                "photo": p,
                "ours": n,
                "ultralytics": len(theirs),
                "same_count_and_classes": same_cls,
                "exact": exact,
                "within_1e-4": close,
                "gradcam_max_abs_diff": dmax,
                "gradcam_min_corr": round(cmin, 6),
            }
        )
    explainer.remove()
    result["photos"] = photos_rows
    result["gradcam"] = {"max_abs_diff": max(diffs), "min_corr": round(min(corrs), 6)}
    result["eager_s"] = round(time.perf_counter() - t0, 1)
    with build_detector(copy.deepcopy(model), SIZE, "eigencam") as eig, torch.no_grad():
        ours_fused = eig(torch.from_numpy(images))[4][:, 0].numpy()
    result["eigencam"] = eigen_rows(copy.deepcopy(pristine), images, ours_fused)
    if out_dir is not None:
        result["export"] = {
            m: export(copy.deepcopy(pristine), m, os.path.join(out_dir, name, m))
            for m in ("gradcam", "eigencam")
        }
    return result


def export(model: nn.Module, method: str, folder: str) -> dict[str, Any]:
    """``export_detector`` to ONNX and TorchScript: parity rows and the time, or the error."""
    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.detection import export_detector

    logged: list[str] = []
    t0 = time.perf_counter()
    try:
        with build_detector(model, SIZE, method, max_detections=D) as e:
            res = export_detector(
                e, folder, ("onnx", "torchscript"), model="yolo", log=logged.append
            )
    except Exception as exc:  # report what happens
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "log": logged}
    from explain_export.artifact import runtime

    art = runtime.load(res.paths["onnx"])
    rows = art.metadata.get("parity", {}).get("rows", []) if isinstance(art.metadata, dict) else []
    del art
    return {
        "ok": all(r["ok"] for r in rows) if rows else True,
        "s": round(time.perf_counter() - t0, 1),
        "paths": res.paths,
        "log": logged,
        "rows": rows,
    }


def staged(model: nn.Module, method: str, folder: str) -> str:
    """``--unverified``: the ONNX file as ``export_detector`` stages it, not checked."""
    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.detection import stage_files as _stage

    os.makedirs(folder, exist_ok=True)
    with build_detector(model, SIZE, method, max_detections=D) as e:
        return _stage(e, folder, ("onnx",), 18, print)["onnx"]


def speed(
    name: str,
    images: np.ndarray,
    folder: str,
    threads: int,
    rounds: int,
    methods: tuple[str, ...] = ("gradcam", "eigencam"),
    unverified: bool = False,
) -> dict[str, Any]:
    """(a)-(e) of the module's docstring, batch 1, in one run (``methods``: which of ours)."""
    from pytorch_grad_cam import EigenCAM, GradCAM

    from explain_export.artifact.providers import ort_session
    from explain_export.bench.timing import time_rounds
    from explain_export.builder.detect_build import build_detector
    from explain_export.builder.export.writers import to_onnx

    torch.set_num_threads(threads)
    model = prepared(name, images)
    x = images[:1]
    xt = torch.from_numpy(x)
    paths, exports = {}, {}
    for m in methods:
        p = os.path.join(folder, name, m, "explainer.onnx")
        if unverified:
            p = staged(copy.deepcopy(model), m, os.path.dirname(p))
        elif not os.path.isfile(p):
            exports[m] = export(copy.deepcopy(model), m, os.path.dirname(p))
            exports[m].pop("paths", None)
            if not exports[m]["ok"]:
                return {"model": name, "error": f"{m} export: {exports[m].get('error')}"}
        paths[m] = p
    with build_detector(copy.deepcopy(model), SIZE, "gradcam", max_detections=D) as e:
        detector = e.detector
    plain = os.path.join(folder, name, "plain.onnx")
    wrapper = NmsOnly(copy.deepcopy(model), detector).eval()
    to_onnx(
        wrapper,
        (xt,),
        plain,
        18,
        {"image": {0: torch.export.Dim("batch")}},
        ["boxes", "scores", "classes", "count"],
    )
    files = {"a": plain, "b": paths.get("gradcam"), "c": paths.get("eigencam")}
    sessions = {k: ort_session(p, "cpu", threads) for k, p in files.items() if p}
    a_out = sessions["a"].run(None, {"image": x})
    b_out = sessions["b"].run(None, {"image": x})
    same_nms = bool(np.array_equal(a_out[2], b_out[2]) and np.array_equal(a_out[3], b_out[3]))
    raw = raw_of(model, xt)
    dets, anchors = ultralytics_nms(raw)
    theirs_model = Raw(copy.deepcopy(model)).eval()
    for p in theirs_model.parameters():
        p.requires_grad_(True)
    layers = [theirs_model.model.model[i] for i in model.model[-1].f]
    grad_cam = GradCAM(theirs_model, target_layers=layers)
    eigen_cam = EigenCAM(theirs_model, target_layers=layers)
    targets = [DetectionTarget(int(c), int(a)) for c, a in zip(dets[:, 5], anchors, strict=True)]

    def d_call() -> None:
        for t in targets:
            grad_cam(input_tensor=xt, targets=[t])

    calls = {
        "a_nms_no_maps": lambda: sessions["a"].run(None, {"image": x}),
        "b_ours_gradcam_D10": lambda: sessions["b"].run(None, {"image": x}),
        "c_ours_eigencam": lambda: sessions["c"].run(None, {"image": x}),
        "d_pgc_gradcam_x10": d_call,
        "e_pgc_eigencam": lambda: eigen_cam(input_tensor=xt, targets=None),
    }
    if "c" not in sessions:
        del calls["c_ours_eigencam"], calls["e_pgc_eigencam"]
    time_rounds(calls, 2, lambda: None)  # warm-up
    # each timed call after an untimed one of its own and a pause: no variant is timed while
    # another's threads (ORT's spinning pool, torch's) still hold the two cores
    times, _ = time_rounds(calls, rounds, lambda: None, prime=1, settle_s=0.2)
    med = {k: float(np.median(v)) for k, v in times.items()}
    a, b = med["a_nms_no_maps"], med["b_ours_gradcam_D10"]
    ratios = {"b/a": b / a, "d/b": med["d_pgc_gradcam_x10"] / b}
    if "c_ours_eigencam" in med:
        c = med["c_ours_eigencam"]
        ratios |= {"c/a": c / a, "e/c": med["e_pgc_eigencam"] / c}
    return {
        "model": name,
        "exports": exports,
        "unverified": unverified,
        "threads": threads,
        "rounds": rounds,
        "detections": len(targets),
        "nms_only_same_detections_as_gradcam_export": same_nms,
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "targets": TARGETS,
        "met": {
            k: (v <= TARGETS[k]) if k in ("b/a", "c/a") else (v >= TARGETS[k])
            for k, v in ratios.items()
        },
    }


def markdown(results: list[dict[str, Any]], speeds: list[dict[str, Any]]) -> str:
    lines = [
        "# Ultralytics YOLO detectors (random init, BN from the photos, class bias 0), 640x640",
        "",
    ]
    lines += [
        "| model | photo | ours / Ultralytics detections | same count+classes | exact "
        "| within 1e-4 | Grad-CAM max\\|diff\\| | min corr |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for p in r.get("photos", []):
            lines.append(
                f"| {r['model']} | {p['photo']} | {p['ours']} / {p['ultralytics']} | "
                f"{p['same_count_and_classes']} | {p['exact']} | {p['within_1e-4']} | "
                f"{p['gradcam_max_abs_diff']:.1e} | {p['gradcam_min_corr']:.6f} |"
            )
    lines += [
        "",
        "| model | EigenCAM comparison | min corr | max\\|diff\\| | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        eig = r.get("eigencam")
        if not eig:
            continue
        for layer, v in eig["per_layer"].items():
            signs = sum(v["its_sign_is_ours"])
            lines.append(
                f"| {r['model']} | per layer `{layer}` | {v['min_corr']:.6f} | "
                f"{v['max_abs_diff']:.1e} | "
                f"its SVD sign = ours on {signs}/{len(v['its_sign_is_ours'])} photos; min corr "
                f"on those: {v['min_corr_where_its_sign_is_ours']:.6f} |"
            )
        for k in ("fused_vs_EigenCAM", "fused_vs_its_projection_our_sign"):
            v = eig[k]
            lines.append(
                f"| {r['model']} | {k} | {v['min_corr']:.6f} | {v['max_abs_diff']:.1e} | |"
            )
    lines += [
        "",
        "| model | method | export ok | s | worst box IoU | worst score | worst heatmap | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for m, v in r.get("export", {}).items():
            rows = v.get("rows", [])
            iou = min((x["box_iou_min"] for x in rows), default=float("nan"))
            sc = max((x["score_err"] for x in rows), default=float("nan"))
            hm = max((x["heatmap_err"] for x in rows), default=float("nan"))
            err = v.get("error", "").replace("|", "/")[:300]
            lines.append(
                f"| {r['model']} | {m} | {v['ok']} | {v.get('s', '')} | {iou:.4f} | {sc:.1e} "
                f"| {hm:.1e} | {err} |"
            )
    lines += [f"\n{r['model']} failed: {r['error']}" for r in results if "error" in r]
    lines += [f"\nspeed, {s['model']}, failed: {s['error']}" for s in speeds if "error" in s]
    for s in (s for s in speeds if "error" not in s):
        lines += [
            "",
            f"Speed, {s['model']}, batch 1, {s['threads']} threads, median of {s['rounds']} "
            "rounds (ms):",
            "",
        ]
        lines += ["| " + " | ".join(s["median_ms"]) + " |", "|" + " --- |" * len(s["median_ms"])]
        lines.append("| " + " | ".join(f"{v:.1f}" for v in s["median_ms"].values()) + " |")
        lines += ["", "| ratio | measured | target | met |", "| --- | --- | --- | --- |"]
        for k, v in s["ratios"].items():
            op = "≤" if k in ("b/a", "c/a") else "≥"
            lines.append(f"| {k} | {v:.2f} | {op} {s['targets'][k]:g} | {s['met'][k]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="yolo11n,yolov8n")
    parser.add_argument("--out", default="benchmarks/results/detectors-peers-cpu2")
    parser.add_argument("--exports", default=None, help="export folder (default: a temp dir)")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--speed", default="yolo11n", help="models to time ('' for none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--methods", default="gradcam,eigencam", help="ours, timed")
    parser.add_argument("--unverified", action="store_true", help="time staged, unchecked files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = photos()
    folder = args.exports or tempfile.mkdtemp(prefix="detectors-peers-")
    results, speeds = [], []
    for name in [m for m in args.models.split(",") if m]:
        t0 = time.perf_counter()
        try:
            results.append(check_model(name, images, None if args.no_export else folder))
        except Exception as exc:
            results.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
        print(
            f"{name}: {time.perf_counter() - t0:.0f}s",
            json.dumps(results[-1], default=str)[:3000],
            flush=True,
        )
    for name in [m for m in args.speed.split(",") if m]:
        speeds.append(
            speed(
                name,
                images,
                folder,
                args.threads,
                args.rounds,
                tuple(args.methods.split(",")),
                args.unverified,
            )
        )
        print(json.dumps(speeds[-1]), flush=True)
    env = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        **{p: version(p) for p in ("torch", "ultralytics", "grad-cam", "onnxruntime")},
    }
    for r in results:
        for v in r.get("export", {}).values():
            v.pop("paths", None)
    if os.path.isfile(args.out + ".json"):  # keep the entries of models not run this time
        with open(args.out + ".json") as f:
            before = json.load(f)
        ran = {r["model"] for r in results}
        results = [r for r in before.get("models", []) if r["model"] not in ran] + results
        timed = {s["model"] for s in speeds}
        speeds = [s for s in before.get("speed", []) if s["model"] not in timed] + speeds
    with open(args.out + ".json", "w") as f:
        json.dump({"env": env, "models": results, "speed": speeds}, f, indent=1, default=str)
    text = markdown(results, speeds)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

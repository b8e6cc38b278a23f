#!/usr/bin/env python
"""Sweep explain-export over torchvision and timm architectures (random init, nothing downloaded).

For every model: build it in this process with torch.manual_seed(0), save its state_dict to
OUT_ROOT/NAME/model.pt, run the real CLI as a subprocess

    explain-export --ckpt OUT/model.pt --arch MOD:FN [--arch-kwargs JSON] --out OUT [extra]

and record exit code, wall time, peak resident memory (the process group is killed past
RSS_LIMIT_GB, 14 by default), the layer:/method:/auto: lines, the worst parity values and the
last stderr line on failure. Then, for each export that succeeded, run its ONNX file on three
scikit-image photos and compare the heatmap with pytorch-grad-cam's GradCAM on the same weights
at the same tensor (Pearson correlation per image, and max |diff|): for a classifier, the top-1
class (token maps laid out by its usual reshape_transform); for a segmentation model, the class
the export explained with SemanticSegmentationTarget(c, argmax == c) on the model's chosen
output, through a wrapper that returns it.

Usage, in the venv that ``make peers`` builds (``.peers/``: torch 2.14.1 + torchvision 0.29.1,
timm, grad-cam (pytorch-grad-cam), onnxruntime, scikit-image and this package, installed
``--no-deps -e .``); docs/models.md#architectures-tried shows its results:

    make peers && .peers/bin/python benchmarks/architectures.py   # everything
    .peers/bin/python benchmarks/architectures.py --only resnet18,timm-vgg11
    .peers/bin/python benchmarks/architectures.py --list

Results go to benchmarks/results/architectures.json and .md; with --only, the entries of the
named models replace theirs in an existing JSON and the others are kept. Checkpoints and exports
go to OUT_ROOT (about 10 GB for the whole list).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results"
OUT_ROOT = Path("/tmp/explain-export-architectures")
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "explain-export")
TIMEOUT_S = 600
RSS_LIMIT_GB = float(os.environ.get("RSS_LIMIT_GB", 14))  # a shared host: stop past it
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


def tv(name, kwargs=None, extra=(), key=None, ckpt=True, note="", head_init=None):
    return {
        "head_init": head_init,
        "key": key or name,
        "family": "torchvision",
        "arch": f"torchvision.models:{name}",
        "kwargs": kwargs or {},
        "extra": list(extra),
        "ckpt": ckpt,
        "note": note,
    }


def seg(name, extra=(), note="", key=None):
    """A torchvision segmentation model; ``weights_backbone=None`` so nothing is downloaded."""
    spec = tv(name, {"weights_backbone": None}, extra, key=key, note=note)
    spec["arch"] = f"torchvision.models.segmentation:{name}"
    return spec


def tm(name, extra=(), note="", head_init=None, key=None, bn_calibrate=False):
    return {
        "head_init": head_init,
        "bn_calibrate": bn_calibrate,
        "key": key or f"timm-{name}",
        "family": "timm",
        "arch": "timm:create_model",
        "kwargs": {"model_name": name, "pretrained": False},
        "extra": list(extra),
        "ckpt": True,
        "note": note,
    }


INCEPTION = {"init_weights": True, "aux_logits": True}
SEG_NOTE = (
    "224x224 (the default size); the default class (most pixels, background 0 left out), "
    "against SemanticSegmentationTarget(c, argmax == c) on the model's 'out'"
)
MODELS = [
    tv("resnet18"),
    tv("resnet50"),
    tv("convnext_tiny"),
    tv("mobilenet_v3_small"),
    tv("mobilenet_v3_large"),
    tv("densenet121"),
    tv("vgg11"),
    tv("vgg16"),
    tv("squeezenet1_0"),
    tv("squeezenet1_1"),
    tv("mnasnet0_5", note="state_dict saved with torch.save, exported with --ckpt"),
    tv(
        "mnasnet0_5",
        key="mnasnet0_5-nockpt",
        ckpt=False,
        note="control: no --ckpt (weights differ, no Grad-CAM comparison)",
    ),
    tv("inception_v3", INCEPTION),
    tv("inception_v3", INCEPTION, extra=["--input-size", "299", "299"], key="inception_v3-299"),
    tv("efficientnet_b0"),
    tv("regnet_y_400mf"),
    tv("shufflenet_v2_x1_0"),
    tv("googlenet", {"init_weights": True, "aux_logits": False}),
    tv("maxvit_t"),
    tv("swin_t"),
    tv(
        "vit_b_16",
        head_init="heads.head",
        note="torchvision zero-initialises the classifier (every logit 0, every gradient 0: "
        "refused as flat), so the head is drawn from N(0, 0.02^2) after seeding. Before the "
        "lowering folded a weight broadcast over the tokens into one mm, ONNX Runtime needed "
        "over 14 GB at batch 1 and the default formats were OOM-killed at 19.5 GB",
    ),
    tv("mobilenet_v2"),
    tv("resnext50_32x4d"),
    tv("wide_resnet50_2"),
    tv("efficientnet_v2_s"),
    tv("convnext_small"),
    tm("resnet18"),
    tm("convnext_tiny"),
    tm("mobilenetv3_large_100"),
    tm("efficientnet_b0"),
    tm("densenet121"),
    tm("vgg11"),
    tm("regnety_008"),
    tm("vit_tiny_patch16_224"),
    tm("deit_tiny_distilled_patch16_224"),
    tm("eva02_tiny_patch14_224"),
    tm("pit_ti_224"),
    tm("xcit_nano_12_p16_224"),
    tm("efficientformer_l1"),
    tm("twins_pcpvt_small"),
    tm(
        "mixer_s16_224",
        head_init="head",
        note="timm zero-initialises the head (every logit equal: refused as flat), so the head "
        "is drawn from N(0, 0.02^2) after seeding",
    ),
    tm(
        "levit_128s",
        note="at random init every token after stage 0 is the same: the activations are ~0.01, "
        "so the attention that subsamples the tokens is uniform and returns their mean, and "
        "every residual branch is zero (timm initialises its last BatchNorm weight to 0); "
        "the head is already N(0, 0.02^2)",
    ),
    tm(
        "levit_128s",
        key="timm-levit_128s-bn",
        bn_calibrate=True,
        note="BatchNorm statistics set from 4 train-mode passes over random normal images "
        "(no weight changed), so activations are O(1) and attention is not uniform. The 4x4 "
        "map spans 0.39-0.43 before min-max, which magnifies float32 rounding about 10x: "
        "against float64 Grad-CAM, eager float32 is 5.4e-4 off, pytorch-grad-cam's float32 "
        "2.3e-4 and the ONNX file 1.1e-3 (rocket.jpg; within the float64 rule's 4x)",
    ),
    tm("tiny_vit_5m_224"),
    tm("visformer_tiny"),
    tm(
        "convit_tiny",
        note="issue 26: the default was the attention probabilities after "
        "blocks.11.attn.attn_drop, [4, 197, 197], drawn as a 4-channel map",
    ),
    tm(
        "tnt_s_patch16_224",
        note="issue 26: the default was the outer attention's probabilities "
        "(blocks.11.attn_out.attn_drop, [6, 197, 197]); TNT records no map of the image",
    ),
    tm(
        "coat_lite_tiny",
        note="issue 26: the default was crpe4@1, [8, 50, 40], a tensor of the convolutional "
        "position encoding that both stage-4 blocks share",
    ),
    tm(
        "coat_tiny",
        note="issue 26: the default was the MLP norm's input (parallel_blocks.5.norm24:input), "
        "whose patch tokens nothing later reads",
    ),
    tm("cait_xxs24_224"),
    tm(
        "cait_xxs24_224",
        extra=["--layer", "blocks.10"],
        key="timm-cait_xxs24_224-blocks10",
        note="issue 26: a block before the class token joins (no prefix token) was refused as "
        "fitting no patch grid",
    ),
    tm("nest_tiny", note="issue 26: the ONNX export crashed on the 5-D attention"),
    seg("fcn_resnet50", note=SEG_NOTE),
    seg(
        "fcn_resnet50",
        extra=["--class-index", "1"],
        key="fcn_resnet50-class1",
        note="--class-index 1: a class with a few per cent of the pixels, so the region "
        "is a partial mask (by default, the class of most pixels covers 97% of each photo)",
    ),
    seg("deeplabv3_mobilenet_v3_large", note=SEG_NOTE),
    seg("lraspp_mobilenet_v3_large", note=SEG_NOTE),
]


# ---------------------------------------------------------------------------------------------
# building the model, running the CLI


def build(spec):
    import torch

    torch.manual_seed(0)
    if spec["family"] == "timm":
        import timm

        model = timm.create_model(**spec["kwargs"])
    else:
        module, fn = spec["arch"].split(":")
        model = getattr(importlib.import_module(module), fn)(weights=None, **spec["kwargs"])
    if spec.get("head_init"):
        torch.nn.init.normal_(model.get_submodule(spec["head_init"]).weight, std=0.02)
    if spec.get("bn_calibrate"):
        calibrate_batchnorm(model)
    return model.float().eval()


def calibrate_batchnorm(model, passes=4, batch=8, size=224):
    """Set every BatchNorm's running statistics to those of its inputs over ``passes``
    train-mode forwards of random normal images (a cumulative mean; no weight changes)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, 3, size, size, generator=gen))
    model.eval()


def _group_rss_kb(pgid):
    """Resident memory (kB) of the processes in process group ``pgid``, from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024  # rss in pages
    return total


def run_cli(cmd, log_path):
    """Run ``cmd`` in a process group of its own; kill the group past TIMEOUT_S or past
    RSS_LIMIT_GB of resident memory (sampled twice a second). Returns (rc, seconds, stdout,
    stderr, peak RSS in MB: /usr/bin/time's maximum where it exists, else the samples')."""
    timed = Path("/usr/bin/time").exists()
    rss_file = log_path.with_name("peak_rss_kb.txt")
    rss_file.unlink(missing_ok=True)
    full = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd] if timed else cmd
    t0 = time.monotonic()
    proc = subprocess.Popen(
        full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(OUT_ROOT),
        start_new_session=True,
    )
    state = {"peak_kb": 0, "killed": None}

    def watch():
        while proc.poll() is None:
            kb = _group_rss_kb(proc.pid)
            state["peak_kb"] = max(state["peak_kb"], kb)
            if kb > RSS_LIMIT_GB * 2**20:
                state["killed"] = f"memory: {kb / 2**20:.1f} GB RSS > {RSS_LIMIT_GB} GB"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the process group this script started
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        rc = state["killed"] or proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this script started
        out, err = proc.communicate()
        rc = "timeout"
    watcher.join()
    secs = time.monotonic() - t0
    peak_kb = state["peak_kb"]
    with contextlib.suppress(OSError, ValueError):
        peak_kb = int(rss_file.read_text().split()[-1])
    log_path.write_text(
        "$ " + " ".join(cmd) + f"\n# rc={rc} {secs:.1f}s peak RSS {peak_kb / 1024:.0f} MB"
        f"\n--- stdout\n{out}\n--- stderr\n{err}"
    )
    return rc, secs, out, err, round(peak_kb / 1024)


_FORMATS = ("torchscript", "onnx", "pt2")


def parse_stdout(out):
    rec = {"layer_line": None, "method_line": None, "auto_line": None, "table_rows": []}
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("layer:") and rec["layer_line"] is None:
            rec["layer_line"] = s
        elif s.startswith("method:") and rec["method_line"] is None:
            rec["method_line"] = s
        elif s.startswith("auto:") and rec["auto_line"] is None:
            rec["auto_line"] = s
        tok = s.split()
        if len(tok) >= 5 and tok[0] in _FORMATS and tok[-1] in ("ok", "FAIL"):
            # format input... batch size logits heatmap ok (no overlay column by default)
            with contextlib.suppress(ValueError):
                rec["table_rows"].append(
                    {
                        "format": tok[0],
                        "logits_err": float(tok[-3]),
                        "heatmap_err": float(tok[-2]),
                        "ok": tok[-1] == "ok",
                    }
                )
    return rec


def last_line(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


# ---------------------------------------------------------------------------------------------
# the pytorch-grad-cam comparison


def load_photos(h, w):
    import cv2
    import numpy as np
    import skimage.data
    import skimage.io

    batch = []
    for name in PHOTOS:
        img = skimage.io.imread(os.path.join(skimage.data.data_dir, name))
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        batch.append(img.astype(np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(batch).astype(np.float32)


class _Pick:
    """Factory for a wrapper that routes one call's input or output through an Identity."""

    @staticmethod
    def make(inner, port, call):
        import torch.nn as nn

        class Pick(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner
                self.tap = nn.Identity()
                self.n = 0

            def forward(self, *args, **kwargs):
                k = self.n
                self.n += 1
                hit = call is None or k == call
                if hit and port == "input":
                    # hand the module a copy, so in-place ops there cannot change the
                    # activation pytorch-grad-cam keeps (the gradient still flows to the tap)
                    args = (self.tap(args[0]).clone(), *tuple(args[1:]))
                out = self.inner(*args, **kwargs)
                if hit and port == "output":
                    out = self.tap(out).clone()
                return out

        return Pick()


def install_tap(model, layer):
    """Wrap the module of ``layer`` (NAME[:input|:output][@CALL]); return the Identity to hook."""
    m = re.match(r"^(?P<name>[^:@\s]+)(?::(?P<port>input|output))?(?:@(?P<call>\d+))?$", layer)
    if m is None:
        raise ValueError(f"cannot parse layer {layer!r}")
    name, port = m.group("name"), m.group("port") or "output"
    call = None if m.group("call") is None else int(m.group("call"))
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    inner = model.get_submodule(name)
    pick = _Pick.make(inner, port, call)
    setattr(parent, child, pick)

    def reset(_module, _args):
        pick.n = 0

    model.register_forward_pre_hook(reset)
    return pick.tap


def _token_reshape(meta):
    """pytorch-grad-cam's ``reshape_transform`` for the export's layout (None for NCHW)."""
    if meta.get("layout") == "NHWC":
        return lambda t: t.permute(0, 3, 1, 2)
    tokens = re.match(r"^tokens:(\d+)\+(\d+)x(\d+)$", meta.get("layout") or "")
    if not tokens:
        return None
    # its usual ViT reshape_transform: drop the prefix tokens, lay the rest on the grid
    prefix, gh, gw = map(int, tokens.groups())
    return lambda t: t[:, prefix:].reshape(t.size(0), gh, gw, t.size(2)).permute(0, 3, 1, 2)


def _classifier_reference(model, meta, xn, res):
    """GradCAM of the top-1 class; returns (reference maps, eager logits, top-1 pair)."""
    import torch
    from pytorch_grad_cam import GradCAM

    with torch.no_grad():
        logits_eager = model(xn).numpy()
    tap = install_tap(model, meta["layer"])
    torch.set_grad_enabled(True)
    for p in model.parameters():
        p.requires_grad_(True)
    with GradCAM(model=model, target_layers=[tap], reshape_transform=_token_reshape(meta)) as cam:
        ref = cam(input_tensor=xn, targets=None)  # [N,H,W], top-1 class, min-max per image
    top1 = (res["logits"].argmax(1).tolist(), logits_eager.argmax(1).tolist())
    return ref, logits_eager, top1


def _segmentation_reference(model, meta, xn, res):
    """GradCAM with ``SemanticSegmentationTarget(c, argmax == c)`` on the model's chosen output
    (a wrapper that returns it, as pytorch-grad-cam's segmentation tutorial does), for the class
    c that the export explained; the eager default class (most pixels, background left out) is
    returned beside the export's."""
    import numpy as np
    import torch
    import torch.nn as nn
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    key = re.fullmatch(r"\['(.+)'\]", meta.get("output") or "")

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out[key.group(1)] if key else out

    wrapped = Scores().eval()
    with torch.no_grad():
        scores = wrapped(xn)
    pred = scores.argmax(1).numpy()  # [N,H',W']
    k = scores.shape[1]
    counts = np.stack([np.bincount(p.ravel(), minlength=k) for p in pred]).astype(np.int64)
    if meta.get("background") is not None:
        counts[:, meta["background"]] = -1
    chosen = [int(c) for c in res["classes"][:, 0]]
    targets = [
        SemanticSegmentationTarget(c, (p == c).astype(np.float32))
        for c, p in zip(chosen, pred, strict=True)
    ]
    tap = install_tap(model, meta["layer"])
    torch.set_grad_enabled(True)
    for p in wrapped.parameters():
        p.requires_grad_(True)
    with GradCAM(model=wrapped, target_layers=[tap], reshape_transform=_token_reshape(meta)) as cam:
        ref = cam(input_tensor=xn, targets=targets)
    extra = {
        "pixels_of_class": [int((p == c).sum()) for c, p in zip(chosen, pred, strict=True)],
        "pixels": int(pred[0].size),
    }
    fixed = meta.get("target_class")  # --class-index, else the class with most pixels
    expected = [fixed] * len(pred) if fixed is not None else counts.argmax(1).tolist()
    return ref, scores.numpy(), (chosen, expected), extra


def compare_gradcam(model, out_dir):
    import numpy as np
    import onnxruntime as ort
    import torch

    meta = json.loads((out_dir / "explainer.json").read_text())
    h, w = meta["input_size"]
    x01 = load_photos(h, w)

    sess = ort.InferenceSession(str(out_dir / "explainer.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    res = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x01}), strict=False))
    heat_onnx, logits_onnx = res["heatmap"][:, 0], res["logits"]

    mean = np.asarray(meta["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(1, 3, 1, 1)
    xn = torch.from_numpy((x01 - mean) / std)
    extra = {}
    if meta.get("task") == "segmentation":
        ref, logits_eager, top1, extra = _segmentation_reference(model, meta, xn, res)
    else:
        ref, logits_eager, top1 = _classifier_reference(model, meta, xn, res)

    # pytorch-grad-cam divides by (1e-7 + max), an absolute epsilon: for maps of tiny magnitude
    # (random init can give activations ~1e-13) its output stays far below 1. Re-min-maxing it
    # gives a diff that is free of that artifact.
    lo, hi = ref.min((1, 2), keepdims=True), ref.max((1, 2), keepdims=True)
    ref_mm = (ref - lo) / np.where(hi > lo, hi - lo, 1)
    corrs = []
    for a, b in zip(heat_onnx, ref, strict=False):
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        corrs.append(
            float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        )
    return {
        "corr_per_image": corrs,
        "corr_min": min(corrs),
        "max_abs_diff": float(np.abs(heat_onnx - ref).max()),
        "max_abs_diff_renorm": float(np.abs(heat_onnx - ref_mm).max()),
        "ref_max": [float(v) for v in ref.max((1, 2))],
        "onnx_vs_eager_logits_photos": float(np.abs(logits_onnx - logits_eager).max()),
        "top1_onnx": top1[0],
        "top1_eager": top1[1],
        "onnx_heat_range": [float(heat_onnx.min()), float(heat_onnx.max())],
        "flat_onnx": [bool(np.ptp(a) == 0) for a in heat_onnx],
        "flat_ref": [bool(np.ptp(b) == 0) for b in ref],
        **extra,
    }


# ---------------------------------------------------------------------------------------------


def compare_only(spec, rec):
    """Redo the pytorch-grad-cam comparison on an existing export (no CLI run)."""
    out_dir = OUT_ROOT / spec["key"]
    rec["note"] = spec["note"]
    if not (spec["ckpt"] and rec.get("rc") == 0 and (out_dir / "explainer.onnx").exists()):
        return rec
    import torch

    model = build(spec)
    model.load_state_dict(torch.load(out_dir / "model.pt", weights_only=True))
    rec.pop("gradcam_error", None)
    t0 = time.monotonic()
    try:
        rec["gradcam"] = compare_gradcam(model, out_dir)
    except Exception as exc:
        rec.pop("gradcam", None)
        rec["gradcam_error"] = f"{type(exc).__name__}: {str(exc).strip()}".splitlines()[0]
    rec["gradcam_seconds"] = round(time.monotonic() - t0, 1)
    return rec


def sweep_one(spec):
    import torch

    key = spec["key"]
    out_dir = OUT_ROOT / key
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("explainer.json", "explainer.onnx", "explainer.torchscript.pt"):
        (out_dir / stale).unlink(missing_ok=True)
    rec = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "key": key,
        "arch": spec["arch"],
        "kwargs": spec["kwargs"],
        "extra": spec["extra"],
        "note": spec["note"],
    }
    model = None
    try:
        model = build(spec)
        if spec["ckpt"]:
            torch.save(model.state_dict(), out_dir / "model.pt")
    except Exception as exc:
        rec.update(rc="build-failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        return rec

    cmd = [CLI]
    if spec["ckpt"]:
        cmd += ["--ckpt", str(out_dir / "model.pt")]
    cmd += ["--arch", spec["arch"]]
    if spec["kwargs"]:
        cmd += ["--arch-kwargs", json.dumps(spec["kwargs"])]
    cmd += ["--out", str(out_dir), *spec["extra"]]
    rec["cmd"] = " ".join(a if re.fullmatch(r"[\w./:=,@+-]+", a) else f"'{a}'" for a in cmd)
    print(f"[{time.strftime('%H:%M:%S')}] {key}: {rec['cmd']}", flush=True)

    rc, secs, out, err, peak_mb = run_cli(cmd, out_dir / "cli.log")
    rec.update(rc=rc, seconds=round(secs, 1), peak_rss_mb=peak_mb, **parse_stdout(out))
    if rc != 0:
        rec["error"] = last_line(err) or "(no stderr)"
    meta_path = out_dir / "explainer.json"
    if rc == 0 and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        rows = meta["parity"]["rows"]
        rec.update(
            method=meta["method"],
            method_requested=meta["method_requested"],
            method_reason=meta["method_reason"],
            layer=meta["layer"],
            layout=meta.get("layout"),
            feature_shape=meta.get("feature_shape"),
            input_size=meta["input_size"],
            tap_copied=meta.get("tap_copied"),
            parity_rows=rows,
            worst_logits=max(r["logits_err"] for r in rows),
            worst_heatmap=max(r["heatmap_err"] for r in rows),
        )
    elif rec["table_rows"]:
        rec.update(
            worst_logits=max(r["logits_err"] for r in rec["table_rows"]),
            worst_heatmap=max(r["heatmap_err"] for r in rec["table_rows"]),
        )
    if rc == 0 and spec["ckpt"] and (out_dir / "explainer.onnx").exists():
        t0 = time.monotonic()
        try:
            rec["gradcam"] = compare_gradcam(model, out_dir)
        except Exception as exc:
            rec["gradcam_error"] = f"{type(exc).__name__}: {str(exc).strip()}".splitlines()[0]
            (out_dir / "gradcam_error.txt").write_text(traceback.format_exc())
        rec["gradcam_seconds"] = round(time.monotonic() - t0, 1)
    del model
    return rec


def fmt(v, spec=".1e"):
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "nan"
        return format(v, spec)
    return str(v)


def write_outputs(results):
    order = {s["key"]: i for i, s in enumerate(MODELS)}
    results = sorted(results, key=lambda r: order.get(r["key"], 1e9))
    (HERE / "architectures.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| model | exit | method | layer | worst logits | worst heatmap | corr vs pytorch-grad-cam "
        "(min of 3) | max\\|diff\\| (raw / ref re-min-maxed) | s | peak RSS GB | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        g = r.get("gradcam") or {}
        notes = [r.get("note") or ""]
        if r.get("error"):
            notes.append("error: " + r["error"].replace("|", "\\|"))
        if r.get("gradcam_error"):
            notes.append("grad-cam compare failed: " + r["gradcam_error"].replace("|", "\\|"))
        if r.get("layout") == "NHWC":
            notes.append("NHWC map")
        if g and g.get("pixels_of_class"):
            share = [f"{n / g['pixels']:.0%}" for n in g["pixels_of_class"]]
            notes.append(f"classes {g['top1_onnx']}, pixel shares {share}")
        if g and g["top1_onnx"] != g["top1_eager"]:
            notes.append(f"top-1 differs onnx {g['top1_onnx']} vs eager {g['top1_eager']}")
        if g and (any(g["flat_onnx"]) or any(g["flat_ref"])):
            notes.append(f"flat maps onnx {g['flat_onnx']} ref {g['flat_ref']}")
        method = r.get("method") or ""
        if method and r.get("method_requested") not in (None, method):
            method = f"{method} ({r['method_requested']})"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["key"],
                    str(r.get("rc")),
                    method,
                    f"`{r['layer']}`" if r.get("layer") else "",
                    fmt(r.get("worst_logits")),
                    fmt(r.get("worst_heatmap")),
                    fmt(g.get("corr_min"), ".5f") if g else "",
                    (
                        f"{fmt(g['max_abs_diff'])} / {fmt(g.get('max_abs_diff_renorm'))}"
                        if g
                        else ""
                    ),
                    fmt(r.get("seconds"), ".0f"),
                    fmt(r["peak_rss_mb"] / 1024, ".1f") if r.get("peak_rss_mb") else "",
                    "; ".join(n for n in notes if n),
                ]
            )
            + " |"
        )
    dated = sorted(r["date"] for r in results if r.get("date"))
    when = f"{dated[0]} to {dated[-1]}" if dated else "(no dated rows)"
    footer = (
        "Rerun: `make peers && .peers/bin/python benchmarks/architectures.py` (a subset: "
        "`--only KEY1,KEY2`), in the venv that `make peers` builds; these rows ran with "
        f"{_versions()} and this package, on the 2-core CPU machine. `s`: "
        "seconds of the export (a shared machine: other jobs ran beside these); `peak RSS GB`: "
        "its peak resident memory (`/usr/bin/time`). Rows with a peak RSS ran from "
        f"{when} (each row's `date` is in architectures.json); the rows without one ran on "
        "2026-11-26 14:48-14:57 UTC, before the peak was recorded."
    )
    (HERE / "architectures.md").write_text(
        "# explain-export sweep (random init, default flags, --ckpt of a saved state_dict)\n\n"
        + "\n".join(lines)
        + f"\n\n{footer}\n"
    )


def _versions():
    from importlib import metadata

    names = ("torch", "torchvision", "timm", "grad-cam", "onnxruntime")
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", help="comma list of keys (see --list) to (re)run")
    ap.add_argument("--list", action="store_true", help="print the keys and exit")
    ap.add_argument(
        "--compare-only",
        action="store_true",
        help="no exports: redo the pytorch-grad-cam comparison on the existing exports "
        "(entries of architectures.json with exit code 0)",
    )
    args = ap.parse_args()
    if args.list:
        for s in MODELS:
            print(s["key"], s["arch"], json.dumps(s["kwargs"]), " ".join(s["extra"]))
        return 0
    specs = MODELS
    if args.only:
        want = [k.strip() for k in args.only.split(",") if k.strip()]
        keys = {s["key"] for s in MODELS}
        bad = [k for k in want if k not in keys]
        if bad:
            ap.error(f"unknown keys {bad}; see --list")
        specs = [s for s in MODELS if s["key"] in want]

    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    if (args.only or args.compare_only) and (HERE / "architectures.json").exists():
        results = {r["key"]: r for r in json.loads((HERE / "architectures.json").read_text())}
    for spec in specs:
        if args.compare_only:
            if spec["key"] not in results:
                continue
            rec = compare_only(spec, results[spec["key"]])
        else:
            rec = sweep_one(spec)
        results[spec["key"]] = rec
        g = rec.get("gradcam")
        print(
            f"    rc={rec.get('rc')} {rec.get('seconds')}s method={rec.get('method')} "
            f"layer={rec.get('layer')} logits={fmt(rec.get('worst_logits'))} "
            f"heat={fmt(rec.get('worst_heatmap'))}"
            + (f" corr={g['corr_min']:.5f} diff={g['max_abs_diff']:.1e}" if g else "")
            + (f" ERR {rec['error']}" if rec.get("error") else "")
            + (f" GCERR {rec['gradcam_error']}" if rec.get("gradcam_error") else ""),
            flush=True,
        )
        write_outputs(list(results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

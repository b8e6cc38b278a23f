#!/usr/bin/env python
"""Sweep explain-export over torchvision and timm architectures (random init, nothing downloaded).

For every model: build it in this process with torch.manual_seed(0), save its state_dict to
OUT_ROOT/NAME/model.pt, run the real CLI as a subprocess

    explain-export --ckpt OUT/model.pt --arch MOD:FN [--arch-kwargs JSON] --out OUT [extra]

and record exit code, wall time, the layer:/method:/auto: lines, the worst parity values and the
last stderr line on failure. Then, for each export that succeeded, run its ONNX file on three
scikit-image photos and compare the heatmap with pytorch-grad-cam's GradCAM on the same weights
at the same layer (Pearson correlation per image, and max |diff|).

Usage, in a venv of its own with torch, torchvision, timm, grad-cam (pytorch-grad-cam),
onnxruntime, scikit-image and this package (``pip install --no-deps -e .``); the README's
"Architectures tried" ran torch 2.14.1 + torchvision 0.29.1:

    VENV/bin/python benchmarks/architectures.py                 # everything
    VENV/bin/python benchmarks/architectures.py --only resnet18,timm-vgg11
    VENV/bin/python benchmarks/architectures.py --list

Results go to benchmarks/results/architectures.json and .md; with --only, the entries of the
named models replace theirs in an existing JSON and the others are kept. Checkpoints and exports
go to OUT_ROOT (about 10 GB for the whole list).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results"
OUT_ROOT = Path("/tmp/explain-export-architectures")
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "explain-export")
TIMEOUT_S = 600
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


def tm(name, extra=(), note="", head_init=None):
    return {
        "head_init": head_init,
        "key": f"timm-{name}",
        "family": "timm",
        "arch": "timm:create_model",
        "kwargs": {"model_name": name, "pretrained": False},
        "extra": list(extra),
        "ckpt": True,
        "note": note,
    }


INCEPTION = {"init_weights": True, "aux_logits": True}
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
        extra=["--formats", "onnx"],
        note="torchvision zero-initialises the classifier (every logit 0, every gradient 0: "
        "refused as flat), so the head is drawn from N(0, 0.02^2) after seeding; ONNX only: "
        "with the default formats the export was OOM-killed at 19.5 GB RSS on a 23 GB host",
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
    tm("levit_128s", note="at random init its logits vary by 2e-5: every map is flat"),
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
        import torchvision.models as tvm

        model = getattr(tvm, spec["arch"].split(":")[1])(weights=None, **spec["kwargs"])
    if spec.get("head_init"):
        torch.nn.init.normal_(model.get_submodule(spec["head_init"]).weight, std=0.02)
    return model.float().eval()


def run_cli(cmd, log_path):
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(OUT_ROOT),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this script started
        out, err = proc.communicate()
        rc = "timeout"
    secs = time.monotonic() - t0
    log_path.write_text(
        "$ " + " ".join(cmd) + f"\n# rc={rc} {secs:.1f}s\n--- stdout\n{out}\n--- stderr\n{err}"
    )
    return rc, secs, out, err


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


def compare_gradcam(model, out_dir):
    import numpy as np
    import onnxruntime as ort
    import torch
    from pytorch_grad_cam import GradCAM

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
    with torch.no_grad():
        logits_eager = model(xn).numpy()

    tap = install_tap(model, meta["layer"])
    reshape = (lambda t: t.permute(0, 3, 1, 2)) if meta.get("layout") == "NHWC" else None
    tokens = re.match(r"^tokens:(\d+)\+(\d+)x(\d+)$", meta.get("layout") or "")
    if tokens:  # pytorch-grad-cam's usual ViT reshape_transform: drop the prefix, lay on the grid
        prefix, gh, gw = map(int, tokens.groups())

        def reshape(t):
            return t[:, prefix:].reshape(t.size(0), gh, gw, t.size(2)).permute(0, 3, 1, 2)

    torch.set_grad_enabled(True)
    for p in model.parameters():
        p.requires_grad_(True)
    with GradCAM(model=model, target_layers=[tap], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=xn, targets=None)  # [N,H,W], top-1 class, min-max per image

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
        "top1_onnx": logits_onnx.argmax(1).tolist(),
        "top1_eager": logits_eager.argmax(1).tolist(),
        "onnx_heat_range": [float(heat_onnx.min()), float(heat_onnx.max())],
        "flat_onnx": [bool(np.ptp(a) == 0) for a in heat_onnx],
        "flat_ref": [bool(np.ptp(b) == 0) for b in ref],
    }


# ---------------------------------------------------------------------------------------------


def compare_only(spec, rec):
    """Redo the pytorch-grad-cam comparison on an existing export (no CLI run)."""
    out_dir = OUT_ROOT / spec["key"]
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

    rc, secs, out, err = run_cli(cmd, out_dir / "cli.log")
    rec.update(rc=rc, seconds=round(secs, 1), **parse_stdout(out))
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
        "(min of 3) | max\\|diff\\| (raw / ref re-min-maxed) | s | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
                    "; ".join(n for n in notes if n),
                ]
            )
            + " |"
        )
    rerun = f"{sys.executable} {Path(__file__).resolve()}"
    (HERE / "architectures.md").write_text(
        "# explain-export sweep (random init, default flags, --ckpt of a saved state_dict)\n\n"
        + "\n".join(lines)
        + f"\n\nRerun everything: `{rerun}`; a subset: `{rerun} --only KEY1,KEY2`.\n"
    )


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

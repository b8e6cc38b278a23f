#!/usr/bin/env python
"""The seven pixel-level methods against captum's and pytorch-grad-cam's own classes, and their
speed (issue 28, section 4 "In the separate venv" and section 5 "Speed").

Not part of the test suite, and nothing imports it: it needs ``captum``, ``grad-cam`` and
``torchvision``, which the project must not depend on, so it runs in the venv that ``make
peers`` builds::

    PYTHONPATH=$PWD .peers/bin/python benchmarks/pixel_peers.py --threads 1 \\
        --models /tmp/pixel-peers-models --out benchmarks/results/pixel-peers-cpu2
    PYTHONPATH=$PWD .peers/bin/python benchmarks/pixel_peers.py --check "" --speed \\
        --warmup 1 --prime 0 --rounds 3 \\
        --models /tmp/pixel-peers-models --out benchmarks/results/pixel-peers-cpu2

(the second run keeps the first's correctness in ``OUT.json`` and adds the timing; ``--check
lite0`` or ``resnet18`` runs one model). About 15 min for the comparisons and 10 for the timing
on the busy 2-core VM, plus about 4 min per ONNX export that ``--models`` does not hold yet.

Models (nothing downloaded):

- ``lite0``: the embedded EfficientNet-Lite0 (``zoo.load_default()``, its ImageNet weights;
  ReLU6 activations);
- ``resnet18``: torchvision ``resnet18(weights=None)`` after ``torch.manual_seed(0)``, random
  weights, BatchNorm statistics set from the scikit-image photos (train mode,
  ``momentum=None``: the cumulative average over one batch of the photos and their mirror
  images), then eval. Plain ``nn.ReLU(inplace=True)``; the references' copy has
  ``inplace=False`` (captum's module backward hooks refuse a ReLU that overwrites its input),
  our explainer's copy keeps it.

Correctness, per model, method and photo (``samples.PHOTOS``, 224x224, RGB in [0,1]): our eager
explainer (``build_explainer``) and our exported ONNX file (``export_explainer`` to ONNX,
verified as ``explain-export`` verifies it, opened with ``artifact.runtime.load``) against the
reference, for our top-1 class: the Pearson correlation of the heatmaps (ours min-maxed by the
graph, the reference min-maxed per image here); target ≥ 0.99. The references see the same
function as ours: the model wrapped with the normalization, ``model((x − mean)/std)``, ImageNet
mean/std, so their input is the [0,1] image:

- ``saliency``: captum ``Saliency``, ``abs=True``, then the max over channels;
- ``inputxgradient``: captum ``InputXGradient``, then ReLU of the channel sum;
- ``integrated-gradients``: captum ``IntegratedGradients``, ``method="gausslegendre"``,
  ``n_steps=32``, baseline 0, then ReLU of the channel sum;
- ``smoothgrad``: captum ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``,
  ``nt_samples=32``, ``stdevs=0.15``, ``abs=True``, after ``torch.manual_seed(0)``, then the
  channel max. Ours draws its noise at export from ``torch.Generator().manual_seed(0)``; the
  inputs captum's forward sees are recorded and compared with ours (``noise_identical``);
- ``guided-backprop``: captum ``GuidedBackprop``, then the channel max of ``|.|``;
- ``guided-gradcam``: captum ``GuidedGradCam`` at the global pooling's input (our default
  layer; ``attribute_to_layer_input=True``), ``interpolate_mode="bilinear"``, then the channel
  max of ``|.|``;
- ``fullgrad``: pytorch-grad-cam ``FullGrad`` (its own bias layers), its map as it returns it.

captum's ``GuidedBackprop`` rectifies the gradient at ``nn.ReLU`` modules only; Lite0's
activations are ``nn.ReLU6``, so on Lite0 captum's guided classes compute the plain gradient.
The rows ``guided-backprop*`` / ``guided-gradcam*`` rerun them with every ``nn.ReLU6`` of the
references' copy made an ``nn.ReLU`` subclass with ReLU6's forward (``ReLU6AsReLU``), so that
captum's hook rectifies there too: ReLU6's own backward ``[0 < x < 6] g``, then ReLU, which is
our rule.

Speed (``--speed``, Lite0, batch 1, CPU, torch and ONNX Runtime with ``--threads`` threads, in
one run): each reference object constructed once and called as above; our ONNX file called as
``explain-run`` calls it; our eager explainer. ``explain_export.bench.timing.time_rounds``:
warm-up rounds, then rounds in which every call takes one turn (an idle pause, ``--prime``
untimed calls, one timed call), the order rotated each round. Reported: the median ms, the
speedup reference / ours (ratio of the medians, and the round-by-round ratio's median), ours
``integrated-gradients`` / ``saliency``, the load average and the share of the CPUs other
processes used while timing.

Results: ``OUT.json`` and ``OUT.md``, and the tables on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

SIZE = (224, 224)
METHODS = (
    "saliency",
    "inputxgradient",
    "integrated-gradients",
    "smoothgrad",
    "guided-backprop",
    "guided-gradcam",
    "fullgrad",
)
GUIDED = ("guided-backprop", "guided-gradcam")
SAMPLING = ("integrated-gradients", "smoothgrad")  # exported without export_explainer's check
STEPS, NOISE, SEED = 32, 0.15, 0
REFERENCE = {
    "saliency": "captum Saliency(abs=True), max_ch",
    "inputxgradient": "captum InputXGradient, ReLU(Σ_ch)",
    "integrated-gradients": "captum IntegratedGradients(gausslegendre, 32), ReLU(Σ_ch)",
    "smoothgrad": "captum NoiseTunnel(Saliency), smoothgrad, 32, σ 0.15, max_ch",
    "guided-backprop": "captum GuidedBackprop, max_ch |.|",
    "guided-gradcam": "captum GuidedGradCam(bilinear), max_ch |.|",
    "fullgrad": "pytorch-grad-cam FullGrad",
}
TARGET_CORR, TARGET_SPEEDUP, TARGET_FULLGRAD, TARGET_IG = 0.99, 5.0, 20.0, 32.0


def photos() -> np.ndarray:
    """The bundled photos, float32 ``[n,3,224,224]`` RGB in [0,1]."""
    from explain_export.artifact import samples

    return np.stack([samples.load_rgb(samples.photo_path(p), SIZE) for p in samples.PHOTOS])


class Normalized(nn.Module):
    """``model((x − mean)/std)``: the function our graph explains, of the [0,1] image."""

    def __init__(self, model: nn.Module) -> None:
        from explain_export.builder.plan import IMAGENET_MEAN, IMAGENET_STD

        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.recording = False
        self.seen: list[Tensor] = []  # the inputs of each call, while recording

    def forward(self, x: Tensor) -> Tensor:
        if self.recording:
            self.seen.append(x.detach().clone())
        return self.model((x - self.mean) / self.std)


class ReLU6AsReLU(nn.ReLU):
    """ReLU6's forward on an ``nn.ReLU`` subclass, so captum's guided hooks take it."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, 0.0, 6.0)


def relu6_as_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU6`` replaced by :class:`ReLU6AsReLU`."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.ReLU6:
                setattr(parent, name, ReLU6AsReLU())
    return model


def lite0() -> nn.Module:
    from explain_export.builder.model.zoo import load_default

    return load_default(SIZE).model.eval()


def resnet18(images: np.ndarray) -> nn.Module:
    """Random ResNet-18 with BatchNorm statistics from ``images`` and their mirror images."""
    import torchvision

    from explain_export.builder.plan import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    x = torch.from_numpy(images)
    x = torch.cat([x, x.flip(3)])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.train()
    with torch.no_grad():
        model((x - mean) / std)
    return model.eval()


def pool_layer(model: nn.Module) -> nn.Module:
    """The global pooling module, whose input is our default layer."""
    return model._avg_pooling if hasattr(model, "_avg_pooling") else model.avgpool


def references(model: nn.Module, relu6_guided: bool = False) -> dict[str, Callable[..., Any]]:
    """Per method, ``f(x [1,3,H,W], c) -> map [H,W]`` (before min-max), each reference object
    constructed once on its own copy of ``model`` (inplace ReLUs off)."""
    from captum.attr import (
        GuidedBackprop,
        GuidedGradCam,
        InputXGradient,
        IntegratedGradients,
        NoiseTunnel,
        Saliency,
    )
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    base = relu6_as_relu(model) if relu6_guided else copy.deepcopy(model)
    for m in base.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    for p in base.parameters():
        p.requires_grad_(True)  # as a user's model has them
    net = Normalized(base).eval()
    sal, ixg, ig = Saliency(net), InputXGradient(net), IntegratedGradients(net)
    nt, gb = NoiseTunnel(Saliency(net)), GuidedBackprop(net)
    ggc = GuidedGradCam(net, pool_layer(base))
    fg = FullGrad(Normalized(copy.deepcopy(base)).eval(), [])

    def smooth(x: Tensor, c: int) -> Tensor:
        torch.manual_seed(SEED)
        a = nt.attribute(
            x, nt_type="smoothgrad", nt_samples=STEPS, stdevs=NOISE, target=c, abs=True
        )
        return a.amax(1)

    refs: dict[str, Callable[..., Any]] = {
        "saliency": lambda x, c: sal.attribute(x, target=c, abs=True).amax(1),
        "inputxgradient": lambda x, c: torch.relu(ixg.attribute(x, target=c).sum(1)),
        "integrated-gradients": lambda x, c: torch.relu(
            ig.attribute(x, target=c, n_steps=STEPS, method="gausslegendre").sum(1)
        ),
        "smoothgrad": smooth,
        "guided-backprop": lambda x, c: gb.attribute(x, target=c).abs().amax(1),
        "guided-gradcam": lambda x, c: (
            ggc.attribute(x, target=c, interpolate_mode="bilinear", attribute_to_layer_input=True)
            .abs()
            .amax(1)
        ),
        "fullgrad": lambda x, c: torch.from_numpy(fg(x, targets=[ClassifierOutputTarget(c)])),
    }
    refs["_net"] = net  # type: ignore[assignment]
    return refs


def ours(model: nn.Module, method: str, folder: str | None, threads: int) -> tuple[Any, Any]:
    """Our eager explainer for ``method`` on its own copy of ``model``, and its ONNX file (kept
    in ``folder/method`` and reused from there; None: no ONNX). The sampling methods are
    written as ``explain-bench`` writes its ``ort_<method>`` files (lowered, ``export_onnx``,
    the batch free), not verified by ``export_explainer``: its check runs a batch of 3 random
    images, ``3 + 3·32`` through the lowered graph, which on Lite0 grew past 20 GB and the
    kernel's OOM killer ended it; the correlations here check those files instead."""
    from explain_export.artifact import runtime
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    explainer = build_explainer(copy.deepcopy(model), None, method, input_size=SIZE)
    if folder is None:
        return explainer, None
    path = os.path.join(folder, method, "explainer.onnx")
    if not os.path.isfile(path):
        t0 = time.perf_counter()
        if method in SAMPLING:
            from explain_export.bench.ort import export_onnx
            from explain_export.bench.variants import exportable
            from explain_export.builder.export.export import DEFAULT_OPSET

            os.makedirs(os.path.dirname(path), exist_ok=True)
            example = torch.from_numpy(photos()[:1])
            lowered = exportable(explainer, example)
            export_onnx(lowered, example, path, DEFAULT_OPSET, ["logits", "heatmap"])
        else:
            path = export_explainer(explainer, os.path.dirname(path), ("onnx",)).paths["onnx"]
        print(f"exported {method} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return explainer, runtime.load(path, threads=threads)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def correctness(
    name: str, model: nn.Module, onnx: tuple[str, ...], folder: str | None, threads: int
) -> dict[str, Any]:
    """Per method and photo: corr(ours eager, ref) and corr(ours ONNX, ref); see the module."""
    from explain_export.artifact import samples

    images = photos()
    refs = references(model)
    relu6 = any(type(m) is nn.ReLU6 for m in model.modules())
    refs6 = references(model, relu6_guided=True) if relu6 else {}
    rows: dict[str, Any] = {}
    for method in METHODS:
        t0 = time.perf_counter()
        where = folder and os.path.join(folder, name) if method in onnx else None
        explainer, art = ours(model, method, where, threads)
        eager = [explainer(torch.from_numpy(im[None])) for im in images]
        classes = [int(lg.argmax()) for lg, _ in eager]
        runs = [("", refs)] + ([("*", refs6)] if method in GUIDED and refs6 else [])
        for suffix, rs in runs:
            row: dict[str, Any] = {"reference": REFERENCE[method], "photos": {}}
            for i, im in enumerate(images):
                x = torch.from_numpy(im[None])
                ref = minmax(rs[method](x, classes[i]).detach().double().numpy().reshape(SIZE))
                cell = {"class": classes[i], "eager": pearson(eager[i][1][0, 0].numpy(), ref)}
                if art is not None:
                    logits, heat = art(im[None])
                    cell["onnx"] = pearson(heat[0, 0].astype(np.float64), ref)
                    cell["onnx_top1_same"] = int(logits.argmax()) == classes[i]
                row["photos"][samples.PHOTOS[i]] = cell
            for side in ("eager", "onnx"):
                vals = [c[side] for c in row["photos"].values() if side in c]
                if vals:
                    row[f"min_{side}"] = round(min(vals), 5)
            rows[method + suffix] = row
        if method == "smoothgrad":
            rows[method]["noise_identical"] = noise_identical(refs, explainer, images[0])
        explainer.remove()
        print(f"{name} {method}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rows


def noise_identical(refs: dict[str, Any], explainer: Any, image: np.ndarray) -> dict[str, Any]:
    """Are captum's NoiseTunnel draws, after ``torch.manual_seed(SEED)``, ours? (1) captum's
    draw repeated here as its ``_add_noise_to_inputs`` makes it (``torch.normal(0,
    stdev.repeat(S,3,H,W))`` on the global RNG) against our buffer, bit for bit; (2) the inputs
    its forward actually saw, minus the image, against our draws (float32 rounding of
    ``x + n − x`` aside)."""
    mine = explainer.sampler.noise
    torch.manual_seed(SEED)
    draw = torch.normal(0, torch.tensor(NOISE).repeat(STEPS, 3, *SIZE))
    net = refs["_net"]
    net.seen, net.recording = [], True
    try:
        refs["smoothgrad"](torch.from_numpy(image[None]), 0)
    finally:
        net.recording = False
    theirs = torch.cat(net.seen) - torch.from_numpy(image[None])
    same_shape = tuple(theirs.shape) == tuple(mine.shape)
    diff = float((theirs - mine).abs().max()) if same_shape else float("nan")
    return {
        "draw_bit_identical": bool(torch.equal(draw, mine)),
        "seen_inputs_shape": list(theirs.shape),
        "seen_minus_image_max_abs_diff": diff,
    }


def speed(model: nn.Module, folder: str, args: argparse.Namespace) -> dict[str, Any]:
    """Batch 1 on Lite0: every reference, our ONNX and our eager call in the same rounds."""
    from explain_export.bench.stats import time_ratio
    from explain_export.bench.timing import cpu_snapshot, others_cpu_share, time_rounds

    image = photos()[:1]
    x = torch.from_numpy(image)
    refs = references(model)
    calls: dict[str, Callable[[], Any]] = {}
    for method in METHODS:
        explainer, art = ours(model, method, folder, args.threads)
        c = int(explainer(x)[0].argmax())
        calls[f"ref:{method}"] = lambda m=method, c=c: refs[m](x, c)
        calls[f"onnx:{method}"] = lambda a=art: a(image)
        calls[f"eager:{method}"] = lambda e=explainer: e(x)
    failed: dict[str, str] = {}

    def fail(name: str, exc: BaseException) -> None:
        failed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def tick() -> None:
        print(".", end="", file=sys.stderr, flush=True)

    load0 = os.getloadavg()
    time_rounds(dict(calls), args.warmup, lambda: None, tick, fail)
    before = cpu_snapshot()
    times, _ = time_rounds(
        dict(calls), args.rounds, lambda: None, tick, fail, args.prime, args.settle / 1000
    )
    others = others_cpu_share(before, cpu_snapshot())
    print(file=sys.stderr)
    rows = {}
    for method in METHODS:
        ref, onnx, eager = (times.get(f"{k}:{method}") for k in ("ref", "onnx", "eager"))
        if not (ref and onnx and eager):
            continue
        rows[method] = {
            "reference": REFERENCE[method],
            "ref_ms": round(float(np.median(ref)), 2),
            "onnx_ms": round(float(np.median(onnx)), 2),
            "eager_ms": round(float(np.median(eager)), 2),
            "speedup_onnx": time_ratio(ref, onnx),
            "speedup_eager": time_ratio(ref, eager),
        }
    ig_over_sal = {
        side: time_ratio(times[f"{side}:integrated-gradients"], times[f"{side}:saliency"])
        for side in ("ref", "onnx", "eager")
        if times.get(f"{side}:integrated-gradients") and times.get(f"{side}:saliency")
    }
    return {
        "loadavg_before": [round(v, 2) for v in load0],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "others_cpu_share": others,
        "methods": rows,
        "ig_over_saliency": ig_over_sal,
        "failed": failed,
    }


def correctness_table(result: dict[str, Any]) -> str:
    """Markdown: per model and method, the smallest corr over the photos, eager and ONNX."""
    lines = [
        "| model | method | reference | min corr eager | min corr ONNX | ≥ 0.99 |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for name, rows in result["correctness"].items():
        for method, r in rows.items():
            vals = [r[k] for k in ("min_eager", "min_onnx") if k in r]
            ok = "yes" if min(vals) >= TARGET_CORR else "**no**"
            onnx = f"{r['min_onnx']:.5f}" if "min_onnx" in r else "—"
            ref = r["reference"] + (" on ReLU6AsReLU" if method.endswith("*") else "")
            ref = ref.replace("|", "\\|")
            lines.append(f"| {name} | `{method}` | {ref} | {r['min_eager']:.5f} | {onnx} | {ok} |")
    for name, rows in result["correctness"].items():
        noise = rows.get("smoothgrad", {}).get("noise_identical")
        if noise:
            diff = noise["seen_minus_image_max_abs_diff"]
            lines.append(
                f"\n{name}: captum's SmoothGrad draws after torch.manual_seed({SEED}) are ours bit "
                f"for bit: {noise['draw_bit_identical']}; the inputs its forward saw minus the "
                f"image differ from our draws by at most {diff:.1e}"
            )
    return "\n".join(lines)


def speed_table(s: dict[str, Any]) -> str:
    """Markdown: per method, the medians and the speedups, and the IG / saliency ratios."""
    lines = [
        "| method | reference | reference ms | ours ONNX ms | ours eager ms | ONNX speedup "
        "(paired) | eager speedup | goal |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for method, r in s["methods"].items():
        goal = TARGET_FULLGRAD if method == "fullgrad" else TARGET_SPEEDUP
        so, se = r["speedup_onnx"], r["speedup_eager"]
        ok = "yes" if so["paired_median"] >= goal else "**no**"
        ref = r["reference"].replace("|", "\\|")
        lines.append(
            f"| `{method}` | {ref} | {r['ref_ms']:.1f} | {r['onnx_ms']:.1f} | "
            f"{r['eager_ms']:.1f} | {so['value']:.2f}× ({so['paired_median']:.2f}×) | "
            f"{se['value']:.2f}× | ≥ {goal:g}×: {ok} |"
        )
    lines.append("")
    for side, r in s["ig_over_saliency"].items():
        ok = (
            ""
            if side != "onnx"
            else (" (≤ 32×: " + ("yes" if r["value"] <= TARGET_IG else "**no**") + ")")
        )
        lines.append(
            f"- `integrated-gradients` (32 steps) / `saliency`, {side}: {r['value']:.1f}× "
            f"(paired {r['paired_median']:.1f}×){ok}"
        )
    share = s["others_cpu_share"]
    lines.append(
        f"- load average before/after: {s['loadavg_before']} / {s['loadavg_after']}; other "
        f"processes used {'?' if share is None else format(share, '.0%')} of the CPUs while "
        "timing"
    )
    if s["failed"]:
        lines.append(f"- failed: {s['failed']}")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The whole report: machine, versions, models, then both tables."""
    md = [f"# Pixel-level methods against captum / pytorch-grad-cam ({result['created']})", ""]
    md += [f"{result['machine']}; {result['versions']}; {result['threads']} threads", ""]
    md += [f"- {k}: {v}" for k, v in result["models"].items()] + [""]
    if result.get("correctness"):
        md += ["## Correctness (min corr over the photos)", "", correctness_table(result), ""]
    if "speed_batch1_lite0" in result:
        md += ["## Speed, Lite0, batch 1", "", speed_table(result["speed_batch1_lite0"]), ""]
    return "\n".join(md)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="keep our ONNX files here, reuse them")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    p.add_argument("--threads", type=int, default=2, help="torch and ORT threads (default: 2)")
    p.add_argument(
        "--check",
        default="lite0,resnet18",
        help="models to compare with the references (default: lite0,resnet18; '': none)",
    )
    p.add_argument("--speed", action="store_true", help="time batch 1 on Lite0")
    p.add_argument(
        "--resnet-onnx",
        default=",".join(GUIDED),
        help="methods exported to ONNX on ResNet-18 (eager for all; default: the guided ones)",
    )
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds (default: 1)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    p.add_argument("--prime", type=int, default=1, help="untimed calls per turn (default: 1)")
    p.add_argument("--settle", type=float, default=100.0, help="idle ms per turn (default: 100)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "versions": {
            k: version(k)
            for k in ("torch", "torchvision", "captum", "grad-cam", "onnxruntime", "numpy")
        },
        "threads": args.threads,
        "models": {
            "lite0": "EfficientNet-Lite0 (embedded, ImageNet weights, ReLU6)",
            "resnet18": "torchvision resnet18(weights=None), seed 0, random weights, BatchNorm "
            "statistics from the photos and their mirror images; references' copy ReLU "
            "inplace=False",
        },
        "settings": {"steps": STEPS, "noise": NOISE, "seed": SEED},
        "targets": {
            "corr_at_least": TARGET_CORR,
            "speedup_at_least": TARGET_SPEEDUP,
            "fullgrad_speedup_at_least": TARGET_FULLGRAD,
            "ig_over_saliency_at_most": TARGET_IG,
        },
    }
    if args.out and os.path.isfile(args.out + ".json"):  # a part run earlier is kept
        with open(args.out + ".json") as f:
            earlier = json.load(f)
        result["correctness"] = earlier.get("correctness", {})
        result.update({k: v for k, v in earlier.items() if k.startswith("correctness_created")})
        if "speed_batch1_lite0" in earlier:
            result["speed_batch1_lite0"] = earlier["speed_batch1_lite0"]
    lite = lite0()
    checks = [m for m in args.check.split(",") if m]
    for name in checks:
        if name == "lite0":
            got = correctness("lite0", lite, METHODS, args.models, args.threads)
        else:
            onnx = tuple(m for m in args.resnet_onnx.split(",") if m)
            got = correctness(name, resnet18(photos()), onnx, args.models, args.threads)
        result.setdefault("correctness", {})[name] = got
        result["correctness_created_" + name] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if result.get("correctness"):
        print(correctness_table(result))
    if args.speed:
        result["speed_batch1_lite0"] = speed(lite, os.path.join(args.models, "lite0"), args)
        print(speed_table(result["speed_batch1_lite0"]))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(result))
        print(f"wrote {args.out}.json, {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

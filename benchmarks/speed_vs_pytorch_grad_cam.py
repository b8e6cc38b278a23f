"""Speed: our exported ONNX explainer per method against pytorch-grad-cam's class for the same
method, on the embedded EfficientNet-Lite0, side by side in one process (issue 18, "Speed").

Not part of the test suite, and nothing imports it: it needs ``grad-cam``, which the project
must not depend on, so it runs in the venv that ``make peers`` builds::

    make peers && .peers/bin/python benchmarks/speed_vs_pytorch_grad_cam.py \\
        --out benchmarks/results/speed-vs-pgc-cpu2-1.json

Ours, per method: ``build_explainer`` + ``export_explainer`` (ONNX, verified, as
``explain-export`` writes it) at the default layer ``_avg_pooling:input``, opened with
``artifact.runtime.load(path, threads=T)`` and called as ``explain-run`` calls it: a float32
``[N,3,224,224]`` RGB batch in [0,1] in, numpy ``(logits, heatmap)`` out (the normalization is
in the graph).

Theirs, per class (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, GradCAMElementWise, LayerCAM,
EigenGradCAM, EigenCAM): the object constructed once on its own copy of the model (weights
requiring grad, as a user's model has them), then called per batch as its README does,
``cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])``, which returns
the ``[N,224,224]`` maps. ``x`` is normalized once, outside the timed call, and the classes are
our top-1 (the same as theirs: the logits agree). Its target layer is the ``nn.Identity`` that a
pre-hook on ``_avg_pooling`` passes the pooling's input through (``vs_pytorch_grad_cam.py``
explains why: hooked as it is, ``_swish`` runs twice and pytorch-grad-cam would explain the
stem). ``cam`` is timed against ``GradCAM``, which computes the same map there.

Timing: ``explain_export.bench.timing.time_rounds``, as ``explain-bench`` times: per batch size,
warm-up rounds, then rounds in which every call (ours and theirs) takes one turn, the order
rotated by one each round; a turn is an idle pause (``--settle``, ONNX Runtime's threads spin
after a run), ``--prime`` untimed calls, one timed call. torch and ONNX Runtime both get
``--threads`` threads. Reported per batch size and method: the median ms of each side, the
speedup (the ratio of the medians, and the round-by-round ratio's median and quartiles), and
``eigencam`` / ``cam`` on our side; the share of the CPUs other processes used while timing.
On a shared machine, ``--wait-idle S`` waits before each batch size for a quiet 10 s (other
processes under 8% of the CPUs); ``others_cpu_share`` says how quiet the timing itself was.
``--profile`` adds ONNX Runtime's profiler on our cam and eigencam files (the heatmap-only
nodes' kernel time), to show where eigencam's extra time goes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
from vs_pytorch_grad_cam import PGC_CLASS, pearson, pgc_target

SIZE = (224, 224)
GRADIENT = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "gradcam-elementwise",
    "layercam",
    "eigengradcam",
)
METHODS = (*GRADIENT, "eigencam", "cam")
TARGET_SPEEDUP, TARGET_EIGEN = 10.0, 1.3


def export_ours(model: torch.nn.Module, method: str, folder: str, threads: int) -> Any:
    """Our explainer for ``method`` at the default layer, exported to ONNX and verified as
    ``explain-export`` does (unless ``folder`` has it already), opened as ``explain-run`` opens
    it."""
    from explain_export.artifact import runtime
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    path = os.path.join(folder, method, "explainer.onnx")
    if not os.path.isfile(path):  # else kept from an earlier run (--models)
        explainer = build_explainer(model, "_avg_pooling:input", method, input_size=SIZE)
        try:
            path = export_explainer(explainer, os.path.join(folder, method), ("onnx",)).paths[
                "onnx"
            ]
        finally:
            explainer.remove()
    return runtime.load(path, threads=threads)


def theirs(pristine: torch.nn.Module, cls_name: str) -> Any:
    """pytorch-grad-cam's ``cls_name`` on its own copy of the model, constructed once."""
    import pytorch_grad_cam

    model = copy.deepcopy(pristine).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    target, _hook = pgc_target(model, "<pre:_avg_pooling>")  # the hook stays for the run
    return getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[target])


def batch_of(n: int) -> np.ndarray:
    """``n`` images: the bundled photos in turn, float32 ``[n,3,224,224]`` RGB in [0,1]."""
    from explain_export.artifact import samples

    photos = [samples.load_rgb(samples.photo_path(p), SIZE) for p in samples.PHOTOS]
    return np.stack([photos[i % len(photos)] for i in range(n)]).astype(np.float32)


def normalized(images: np.ndarray) -> torch.Tensor:
    from explain_export.builder.plan import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((torch.from_numpy(images) - mean) / std).contiguous()


def agreement(ours: np.ndarray, gray: np.ndarray) -> dict[str, float]:
    """Smallest per-image Pearson correlation and largest |difference| of the two maps (the
    eigen methods' sign is the SVD's on their side, so theirs may be the other half)."""
    corr = [pearson(a[0], b) for a, b in zip(ours, gray, strict=True)]
    return {
        "min_corr": round(min(corr), 6),
        "max_abs_diff": float(np.abs(ours[:, 0] - gray).max()),
    }


def wait_idle(limit_s: float, window_s: float = 10.0, most: float = 0.08) -> float | None:
    """Wait (at most ``limit_s``) for a ``window_s`` in which other processes use under
    ``most`` of the CPUs; the seconds waited, or None if the machine never got that quiet."""
    from explain_export.bench.timing import cpu_snapshot, others_cpu_share

    t0 = time.monotonic()
    while True:
        before = cpu_snapshot()
        time.sleep(window_s)
        share = others_cpu_share(before, cpu_snapshot())
        if share is not None and share < most:
            return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > limit_s:
            return None
        print(f"waiting: other processes use {share:.0%} of the CPUs", file=sys.stderr)


def measure(
    ours: dict[str, Any], cams: dict[str, Any], batch: int, rounds: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One batch size: check agreement once, then time every call in the same rounds."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from explain_export.bench.stats import time_ratio
    from explain_export.bench.timing import cpu_snapshot, others_cpu_share, time_rounds

    images = batch_of(batch)
    x = normalized(images)
    logits, heat = {}, {}
    for method, art in ours.items():
        logits[method], heat[method] = art(images)
    classes = logits["gradcam"].argmax(axis=1)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    agree = {}
    for method in METHODS:
        cls_name = PGC_CLASS[method]
        gray = cams[cls_name](input_tensor=x, targets=targets)
        agree[method] = agreement(heat[method], np.asarray(gray, np.float32))
        theirs_top1 = cams[cls_name].outputs.detach().numpy().argmax(axis=1)
        agree[method]["top1_agree"] = bool((theirs_top1 == classes).all())
    calls = {f"ours:{m}": (lambda a=art: a(images)) for m, art in ours.items()}
    for cls_name, cam in cams.items():
        calls[f"pgc:{cls_name}"] = lambda c=cam: c(input_tensor=x, targets=targets)
    failed: dict[str, str] = {}

    def fail(name: str, exc: BaseException) -> None:
        failed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def tick() -> None:
        print(".", end="", file=sys.stderr, flush=True)

    time_rounds(dict(calls), args.warmup, lambda: None, tick, fail)
    before = cpu_snapshot()
    times, _ = time_rounds(
        dict(calls), rounds, lambda: None, tick, fail, args.prime, args.settle / 1000
    )
    others = others_cpu_share(before, cpu_snapshot())
    print(file=sys.stderr)
    rows = {}
    for method in METHODS:
        mine, their = times[f"ours:{method}"], times[f"pgc:{PGC_CLASS[method]}"]
        if not mine or not their:
            continue
        rows[method] = {
            "pgc_class": PGC_CLASS[method],
            "ours_ms": _quartiles(mine),
            "pgc_ms": _quartiles(their),
            "speedup": time_ratio(their, mine),
            "agreement": agree[method],
        }
    eigen = None
    if times.get("ours:eigencam") and times.get("ours:cam"):
        eigen = time_ratio(times["ours:eigencam"], times["ours:cam"])
    return {
        "others_cpu_share": others,
        "methods": rows,
        "eigencam_over_cam": eigen,
        "failed": failed,
    }


def _quartiles(samples: list[float]) -> dict[str, float]:
    p25, p50, p75 = np.percentile(samples, [25, 50, 75])
    return {
        "median": round(float(p50), 3),
        "p25": round(float(p25), 3),
        "p75": round(float(p75), 3),
    }


def profile_eigen(ours: dict[str, Any], threads: int, runs: int) -> dict[str, Any]:
    """ONNX Runtime's profiler on our cam and eigencam files at batch 1: the kernel time of the
    nodes ``logits`` does not need (the heatmap head), and of all nodes."""
    from explain_export.bench.profile import ort_head_share

    image = batch_of(1)
    out = {}
    for method in ("cam", "eigencam"):
        p = ort_head_share(ours[method].path, image, threads, runs)
        out[method] = {
            k: p[k] for k in ("head_nodes", "nodes", "head_ms", "total_kernel_ms", "share", "top")
        }
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown: per batch size and method, both sides' medians and the speedup."""
    lines = [
        "| batch | method | pytorch-grad-cam class | ours ms | pytorch-grad-cam ms | speedup "
        "(paired p25…p75) | ≥ 10× |",
        "| ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for batch, res in result["batches"].items():
        for method, r in res["methods"].items():
            s = r["speedup"]
            ok = "—" if method not in GRADIENT else "yes" if s["paired_median"] >= 10 else "**no**"
            lines.append(
                f"| {batch} | `{method}` | {r['pgc_class']} | {r['ours_ms']['median']:.2f} | "
                f"{r['pgc_ms']['median']:.1f} | {s['paired_median']:.1f}× "
                f"({s['paired_p25']:.1f}…{s['paired_p75']:.1f}) | {ok} |"
            )
    for batch, res in result["batches"].items():
        e = res["eigencam_over_cam"]
        if e:
            ok = "yes" if e["paired_median"] <= TARGET_EIGEN else "**no**"
            share = res["others_cpu_share"]
            lines.append(
                f"\nbatch {batch}: ours eigencam / cam = {e['paired_median']:.2f}× (paired "
                f"{e['paired_p25']:.2f}…{e['paired_p75']:.2f}; ratio of medians "
                f"{e['value']:.2f}×), ≤ 1.3×: {ok}; other processes used "
                f"{'?' if share is None else format(share, '.0%')} of the CPUs while timing"
            )
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,8", help="comma list (default: 1,8)")
    p.add_argument("--threads", type=int, default=2, help="torch and ORT threads (default: 2)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up rounds (default: 3)")
    p.add_argument(
        "--rounds",
        default="30,10",
        help="timed rounds per batch size, a comma list (the last one for the rest; default: "
        "30,10)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each batch size, wait up to S seconds for 10 s in which other processes "
        "use under 8%% of the CPUs (a shared machine); default: 0, no wait",
    )
    p.add_argument("--prime", type=int, default=1, help="untimed calls per turn (default: 1)")
    p.add_argument("--settle", type=float, default=100.0, help="idle ms per turn (default: 100)")
    p.add_argument("--profile", type=int, default=200, help="profiled runs; 0: none (200)")
    p.add_argument("--models", help="keep our ONNX files here, and reuse those found there")
    p.add_argument("--out", help="JSON results (small: no samples)")
    args = p.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    rounds = [int(r) for r in args.rounds.split(",") if r]
    torch.set_num_threads(args.threads)

    from explain_export.builder.model.zoo import load_default

    zoo = load_default(SIZE)
    pristine = copy.deepcopy(zoo.model)  # before any explainer touches requires_grad
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="speed-vs-pgc-") as temporary:
        folder = args.models or temporary
        ours = {}
        for method in METHODS:
            t0 = time.perf_counter()
            ours[method] = export_ours(zoo.model, method, folder, args.threads)
            print(f"exported {method} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        cams = {
            name: theirs(pristine, name) for name in dict.fromkeys(PGC_CLASS[m] for m in METHODS)
        }
        batches = {}
        for i, batch in enumerate(sizes):
            waited = wait_idle(args.wait_idle) if args.wait_idle else 0.0
            print(f"timing batch {batch} (waited {waited} s for quiet)", file=sys.stderr)
            batches[str(batch)] = measure(ours, cams, batch, rounds[min(i, len(rounds) - 1)], args)
            batches[str(batch)]["waited_for_quiet_s"] = waited
        profile = profile_eigen(ours, args.threads, args.profile) if args.profile else None
    result = {
        "created": started,
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "versions": {
            k: version(k) for k in ("torch", "grad-cam", "onnxruntime", "numpy", "explain-export")
        },
        "model": "EfficientNet-Lite0 (embedded), 224x224, ours at _avg_pooling:input",
        "threads": args.threads,
        "timing": {
            "warmup": args.warmup,
            "rounds": rounds,
            "prime": args.prime,
            "settle_ms": args.settle,
            "order": "round-robin over all calls, ours and theirs; rotated by one each round",
        },
        "loadavg": {"start": list(load_start), "end": list(os.getloadavg())},
        "targets": {
            "gradient_speedup_at_least": TARGET_SPEEDUP,
            "eigencam_over_cam_at_most": TARGET_EIGEN,
        },
        "batches": batches,
        "profile_batch1": profile,
    }
    print(table(result))
    if profile:
        for m, r in profile.items():
            print(
                f"profile {m}: head {r['head_nodes']} of {r['nodes']} nodes, {r['head_ms']:.3f} ms "
                f"of {r['total_kernel_ms']:.3f} ms kernel time; top {r['top'][:3]}"
            )
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

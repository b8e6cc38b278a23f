"""Write a benchmark result (:func:`.run.run_bench`) as JSON, a Markdown report and a PNG plot.

The plot shows the median latency (ms per batch) against the batch size, one line per variant,
both axes logarithmic. It is drawn with OpenCV, so no plotting library is needed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import cv2
import numpy as np

from ..artifact.files import ensure_out_dir, write_atomic
from ..artifact.overlay import encode_png
from ..errors import ExplainExportError

__all__ = [
    "FILES",
    "head_profile_line",
    "head_profile_table",
    "markdown",
    "plot",
    "ratio_table",
    "table",
    "target_value",
    "write_report",
]

FILES = {"json": "bench.json", "markdown": "bench.md", "plot": "bench.png"}

# BGR, one per variant in .config.VARIANTS order; distinguishable in colour and in grey.
_COLORS = {
    "eager": (180, 119, 31),
    "eager_logits": (232, 199, 174),
    "torchscript": (44, 160, 44),
    "ort": (40, 39, 214),
    "ort_logits": (150, 152, 255),
    "compile": (189, 103, 148),
    "autograd": (14, 127, 255),
    "eager_gradcam": (127, 127, 127),
    "ort_gradcam": (34, 189, 188),
    "gradcam_numpy": (75, 86, 140),
    "ort_numpy": (0, 0, 128),
    "ort_cudagraph": (194, 119, 227),
}
_DASHED = {"eager_logits", "ort_logits"}
_LEGEND_STEP = 22  # px per legend entry


def write_report(result: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out_dir`` (each atomically);
    return their paths."""
    ensure_out_dir(out_dir)
    paths = {k: os.path.join(out_dir, name) for k, name in FILES.items()}
    try:
        png = encode_png(plot(result), compression=9)
    except ValueError as exc:
        raise ExplainExportError("OpenCV could not encode the plot as PNG") from exc
    write_atomic(paths["json"], (json.dumps(result, indent=1) + "\n").encode())
    write_atomic(paths["markdown"], markdown(result, plot=FILES["plot"]).encode())
    write_atomic(paths["plot"], png)
    return paths


def _fmt_ratio(r: dict[str, float] | None, percent: bool = False) -> str:
    """The round-by-round (paired) median and quartiles: the figure lies within its own range,
    where the ratio of two medians need not."""
    if r is None:
        return "–"
    if percent:
        return f"{r['paired_median']:+.1%} (paired {r['paired_p25']:+.1%}…{r['paired_p75']:+.1%})"
    return f"{r['paired_median']:.2f}× (paired {r['paired_p25']:.2f}…{r['paired_p75']:.2f})"


def _label(result: dict[str, Any], name: str) -> str:
    return result["variants"][name]["label"]


_PERCENT_KINDS = ("heatmap_overhead", "gradcam_overhead", "head_profile")


def target_value(t: dict[str, Any]) -> str:
    """A target's measured value in its unit: ``3.52×``, ``+1.2%``, ``0.412 ms``,
    ``12,345 images/s`` (rows written before units were recorded: by their kind)."""
    unit = t.get("unit") or ("%" if t["kind"] in _PERCENT_KINDS else "×")
    value = t["value"]
    if unit == "%":
        return f"{value:+.1%}"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:,.0f} {unit}"


def head_profile_line(batch: str, p: dict[str, Any]) -> str:
    """One console line for a batch's :func:`.profile.ort_head_share`."""
    share = "–" if p["share"] is None else f"{p['share']:+.2%}"
    return (
        f"ORT heatmap head, batch {batch} (profiler, {p['runs']} runs): {p['head_nodes']} "
        f"heatmap-only nodes, {p['head_ms']:.3f} ms of {p['total_kernel_ms']:.3f} ms kernel "
        f"time per run, {share} over the logits-only path"
    )


def head_profile_table(result: dict[str, Any]) -> str:
    """The heatmap head as ONNX Runtime's profiler sees it, one row per batch size."""
    lines = [
        "| batch | heatmap-only nodes | head ms | total kernel ms | share | runs | "
        "costliest heatmap-only nodes (µs) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for batch, p in result.get("head_profile", {}).items():
        share = "–" if p["share"] is None else f"{p['share']:+.2%}"
        top = ", ".join(f"{n['op']} {n['us']:.0f}" for n in p["top"]) or "–"
        lines.append(
            f"| {batch} | {p['head_nodes']} | {p['head_ms']:.3f} | {p['total_kernel_ms']:.3f} | "
            f"{share} | {p['runs']} | {top} |"
        )
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    """The latency table: one row per measured variant and batch size."""
    speedups = result["ratios"]["speedup_vs_eager"]
    lines = [
        "| variant | backend | batch | median ms | p90 ms | p99 ms | images/s | vs eager "
        "| page faults/call |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch in result["config"]["batch_sizes"]:
        for name, v in result["variants"].items():
            m = v["batches"].get(str(batch))
            if not m or "median_ms" not in m:
                continue
            ratio = speedups.get(name, {}).get(str(batch))
            vs = f"{ratio['paired_median']:.2f}×" if ratio else ("1.00×" if name == "eager" else "")
            lines.append(
                f"| {v['label']} | {v['backend']} | {batch} | {m['median_ms']:.2f} | "
                f"{m['p90_ms']:.2f} | {m['p99_ms']:.2f} | {m['images_per_s']:.1f} | {vs} | "
                f"{m.get('page_faults_per_call', 0):.0f} |"
            )
    return "\n".join(lines)


def ratio_table(result: dict[str, Any]) -> str:
    """Every ratio of the run, one row per ratio, one column per batch size."""
    r = result["ratios"]
    batches = [str(b) for b in result["config"]["batch_sizes"]]
    rows: list[tuple[str, dict[str, Any], bool]] = []
    for name, by_batch in r["speedup_vs_eager"].items():
        rows.append((f"{_label(result, name)}: speedup vs eager explainer", by_batch, False))
    for name, by_batch in r["heatmap_overhead"].items():
        rows.append((f"{_label(result, name)}: heatmap overhead vs logits only", by_batch, True))
    if r["ort_vs_autograd"]:
        rows.append(("ORT explainer / autograd Grad-CAM, heatmaps/s", r["ort_vs_autograd"], False))
    for name, by_batch in r.get("gradcam_overhead", {}).items():
        rows.append((f"{_label(result, name)}: gradcam's extra time over it", by_batch, True))
    if r.get("ort_gradcam_vs_autograd"):
        rows.append(
            (
                "ORT gradcam / autograd Grad-CAM, heatmaps/s",
                r["ort_gradcam_vs_autograd"],
                False,
            )
        )
    for name, by_batch in r.get("vs_gradcam_numpy", {}).items():
        rows.append(
            (
                f"{_label(result, name)} / pytorch-grad-cam style Grad-CAM, heatmaps/s",
                by_batch,
                False,
            )
        )
    for name, by_batch in r.get("time_vs_cam", {}).items():
        rows.append((f"{_label(result, name)}: time over ORT explainer, cam", by_batch, False))
    for name, by_batch in r.get("time_vs_top1", {}).items():
        rows.append((f"{_label(result, name)}: time over its top-1", by_batch, False))
    if r.get("best_exported_vs_gradcam_numpy"):
        rows.append(
            (
                "fastest exported explainer / pytorch-grad-cam style Grad-CAM, heatmaps/s",
                r["best_exported_vs_gradcam_numpy"],
                False,
            )
        )
    lines = [
        "| ratio | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- |" + " ---: |" * len(batches),
    ]
    for text, by_batch, percent in rows:
        cells = " | ".join(_fmt_ratio(by_batch.get(b), percent) for b in batches)
        lines.append(f"| {text} | {cells} |")
    return "\n".join(lines)


def markdown(result: dict[str, Any], plot: str | None = None) -> str:
    """The whole report: setup, latency table, ratios, targets, plot link, notes."""
    c, m, v = result["config"], result["machine"], result["versions"]
    load = result["loadavg"]
    providers = result["providers"]
    used = sorted({p for k, ps in providers.items() if k != "available" for p in ps or []})
    gpu = m["gpu"] or "none used"
    out = [
        f"# explain-bench: {c['model']} on {c['device']}",
        "",
        f"{result['created']}" + (f" · `{result['command']}`" if result.get("command") else ""),
        "",
        "| | |",
        "| --- | --- |",
        f"| machine | {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{m['cpu_capability'] or '?'}; GPU: {gpu} |",
        f"| threads | torch {m['torch_threads']}, "
        f"ONNX Runtime intra-op {m['ort_intra_op_threads']} |",
        "| versions | " + ", ".join(f"{k} {val}" for k, val in v.items()) + " |",
        f"| ONNX Runtime providers | available: {', '.join(providers['available'])}; "
        f"used: {', '.join(used) or 'none'} |",
        f"| model | method {c['method']} at `{c['layer']}`, input {c['input_size'][0]}x"
        f"{c['input_size'][1]}, {c['num_classes']} classes, opset {c['opset']} |",
        f"| torch variants | {'channels-last' if c['channels_last'] else 'contiguous (NCHW)'} "
        f"layout; malloc: {c['malloc']} |",
        f"| timing | {c['warmup']} warm-up + {c['iters']} timed rounds per batch size; "
        f"{c['order']}; a turn is {c['settle_s'] * 1000:g} ms idle, {c['prime']} untimed "
        f"call(s), one timed call; {c['timer']} |",
    ]
    others = result.get("others_cpu_share") or {}
    if any(v is not None for v in others.values()):
        shares = ", ".join(f"batch {b}: {v:.0%}" for b, v in others.items() if v is not None)
        out.append(f"| CPU used by other processes while timing | {shares} |")
    if load.get("start") and load.get("end"):
        out.append(
            f"| load average (1 min) | {load['start'][0]:.2f} at start, "
            f"{load['end'][0]:.2f} at end |"
        )
    out += [
        "",
        "## Latency (ms per batch) and throughput",
        "",
        table(result),
        "",
        "## Ratios (this run; the ratio round by round: its median, and its 25th…75th percentile)",
        "",
        ratio_table(result),
    ]
    fastest = result.get("best_exported") or {}
    if fastest:
        out += [
            "",
            "Fastest exported explainer (of ORT, ORT with a CUDA graph, TorchScript): "
            + "; ".join(
                f"batch {b}: {_label(result, f['variant'])}, {f['median_ms']:.3f} ms, "
                f"{f['images_per_s']:,.0f} images/s"
                for b, f in fastest.items()
            )
            + ".",
        ]
    if result.get("head_profile"):
        out += [
            "",
            "## Heatmap head, ONNX Runtime profiler (CPU)",
            "",
            "Kernel time per run of the nodes of ORT's optimized graph that `logits` does not "
            "depend on (head), and of all nodes; share = head / (total − head), the head's "
            "cost over the logits-only path. No executor overhead, no run-to-run noise of "
            "the end-to-end ratio.",
            "",
            head_profile_table(result),
        ]
    if result["targets"]:
        out += [
            "",
            "## Targets (from the issue; the CPU ones set for 2 threads, EfficientNet-Lite0 "
            "224x224; the CUDA ones checked on --device cuda runs only)",
            "",
            "| target | measured | met |",
            "| --- | ---: | --- |",
        ]
        for t in result["targets"]:
            verdict = "yes" if t["met"] else "**no**"
            if not t.get("judged", True):
                verdict = "not judged (machine busy)"
            out.append(f"| {t['target']} | {target_value(t)} | {verdict} |")
    notes = [
        f"{var['label']}: {var['note']}" for var in result["variants"].values() if var["note"]
    ] + result["notes"]
    if notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    if plot:
        out += ["", f"![median latency vs batch size]({plot})"]
    return "\n".join(out) + "\n"


def _series(result: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    series = {}
    for name, v in result["variants"].items():
        points = [(int(b), m["median_ms"]) for b, m in v["batches"].items() if "median_ms" in m]
        if points:
            series[name] = sorted(points)
    return series


def _method_color(i: int) -> tuple[int, ...]:
    """The ``i``-th ``--methods`` variant's colour (BGR): TURBO, ten steps apart."""
    lut = cv2.applyColorMap(np.uint8([[(20 + 24 * i) % 256]]), cv2.COLORMAP_TURBO)
    return tuple(int(c) for c in lut[0, 0])


def _dashed_line(img: np.ndarray, p: tuple[int, int], q: tuple[int, int], color: Any) -> None:
    length = math.hypot(q[0] - p[0], q[1] - p[1])
    steps = max(int(length // 6), 1)
    for i in range(0, steps, 2):
        a = (p[0] + (q[0] - p[0]) * i // steps, p[1] + (q[1] - p[1]) * i // steps)
        j = min(i + 1, steps)
        b = (p[0] + (q[0] - p[0]) * j // steps, p[1] + (q[1] - p[1]) * j // steps)
        cv2.line(img, a, b, color, 2, cv2.LINE_AA)


def plot(result: dict[str, Any], size: tuple[int, int] = (720, 420)) -> np.ndarray:
    """Median ms per batch vs batch size (log-log), one line per variant, legend at the right
    (the image grows where the legend needs it; ``--methods`` variants dashed).

    Returns a BGR uint8 image.
    """
    series = _series(result)
    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (40, 40, 40)
    labels = [cv2.getTextSize(result["variants"][n]["label"], font, 0.42, 1)[0][0] for n in series]
    left, right, top, bottom = 62, max([230, *(56 + w for w in labels)]), 36, 48
    width = size[0] + right - 230
    height = max(size[1], top + bottom + 10 + _LEGEND_STEP * len(series))
    img = np.full((height, width, 3), 255, np.uint8)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    c = result["config"]
    title = f"{c['model'].split(',')[0]} {c['input_size'][0]}x{c['input_size'][1]}, {c['device']}"
    title += f", {result['machine']['torch_threads']} threads: median ms per batch"
    cv2.putText(img, title, (left, 22), font, 0.45, black, 1, cv2.LINE_AA)
    if not series:
        cv2.putText(img, "nothing measured", (x0 + 20, (y0 + y1) // 2), font, 0.6, black, 1)
        return img
    batches = sorted({b for pts in series.values() for b, _ in pts})
    values = [ms for pts in series.values() for _, ms in pts]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    bx_lo, bx_hi = math.log2(batches[0]), math.log2(batches[-1])
    span = bx_hi - bx_lo or 1.0

    def px(batch: int) -> int:
        if len(batches) == 1:
            return (x0 + x1) // 2
        return round(x0 + 20 + (x1 - x0 - 40) * (math.log2(batch) - bx_lo) / span)

    def py(ms: float) -> int:
        return round(y1 - (y1 - y0) * (math.log10(ms) - lo) / (hi - lo))

    for decade in range(lo, hi + 1):
        for mult in (1, 2, 5):
            ms = mult * 10.0**decade
            if ms > 10.0**hi:
                break
            y = py(ms)
            cv2.line(img, (x0, y), (x1, y), grey if mult == 1 else (235, 235, 235), 1)
            if mult == 1 or hi - lo <= 2:
                text = f"{ms:g}"
                tw = cv2.getTextSize(text, font, 0.4, 1)[0][0]
                cv2.putText(img, text, (x0 - 6 - tw, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    for b in batches:
        x = px(b)
        cv2.line(img, (x, y0), (x, y1), (235, 235, 235), 1)
        tw = cv2.getTextSize(str(b), font, 0.4, 1)[0][0]
        cv2.putText(img, str(b), (x - tw // 2, y1 + 16), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), black, 1)
    cv2.putText(img, "batch size", ((x0 + x1) // 2 - 30, y1 + 36), font, 0.45, black, 1)
    cv2.putText(img, "ms", (x0 - 30, y0 - 8), font, 0.45, black, 1, cv2.LINE_AA)

    extra = itertools.count()
    for i, (name, points) in enumerate(series.items()):
        color = _COLORS.get(name) or _method_color(next(extra))
        dashed = name in _DASHED or name not in _COLORS
        xy = [(px(b), py(ms)) for b, ms in points]
        for p, q in itertools.pairwise(xy):
            if dashed:
                _dashed_line(img, p, q, color)
            else:
                cv2.line(img, p, q, color, 2, cv2.LINE_AA)
        for p in xy:
            cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
        ly = y0 + 10 + _LEGEND_STEP * i
        lx = x1 + 14
        if dashed:
            _dashed_line(img, (lx, ly), (lx + 26, ly), color)
        else:
            cv2.line(img, (lx, ly), (lx + 26, ly), color, 2, cv2.LINE_AA)
        cv2.circle(img, (lx + 13, ly), 4, color, -1, cv2.LINE_AA)
        label = result["variants"][name]["label"]
        cv2.putText(img, label, (lx + 34, ly + 4), font, 0.42, black, 1, cv2.LINE_AA)
    return img

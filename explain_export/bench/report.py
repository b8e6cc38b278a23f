"""Write a benchmark result (:func:`.run.run_bench`) as JSON, a Markdown report and a PNG plot
(:mod:`.plot`)."""

from __future__ import annotations

import json
import os
from typing import Any

from ..artifact.files import ensure_out_dir, write_atomic
from ..artifact.overlay import encode_png
from ..errors import ExplainExportError, OptionError
from .plot import plot

__all__ = [
    "FILES",
    "MODELS",
    "SPEEDUP_LEGEND",
    "check_out_dir",
    "console_lines",
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
MODELS = "models"  # with --save-models: the ONNX files and ORT's optimized graphs


def check_out_dir(out_dir: str, overwrite: bool = False, save_models: bool = False) -> None:
    """Create ``out_dir`` and check that it takes files, before any work; unless ``overwrite``,
    an :class:`.OptionError` where a report file (or, with ``save_models``, the models folder)
    of an earlier run is there, as ``explain-run`` refuses to replace its outputs."""
    ensure_out_dir(out_dir)
    if overwrite:
        return
    planned = [*FILES.values(), *([MODELS] if save_models else [])]
    existing = [f for f in planned if os.path.exists(os.path.join(out_dir, f))]
    if existing:
        more = f" and {len(existing) - 1} more already exist" if len(existing) > 1 else ""
        raise OptionError(
            "overwrite",
            "'{path}'{more}; pass {name} to replace, or choose another {out_dir}",
            path=os.path.join(out_dir, existing[0]),
            more=more or " already exists",
        )


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


def console_lines(result: dict[str, Any]) -> list[str]:
    """What ``explain-bench`` prints on stdout after a run: the latency table, the profiler's
    lines, the notes (not the variants ``--skip`` left out), a warning where the machine was
    busy, and the project's targets where the run judged them (``--targets``)."""
    lines = [table(result)]
    lines += [head_profile_line(b, p) for b, p in result.get("head_profile", {}).items()]
    lines += [f"note: {n}" for n in result["notes"] if not n.endswith(": skipped: --skip")]
    if result.get("busy"):
        shares = ", ".join(
            f"{s:.0%} of the CPUs while timing batch {b}" for b, s in result["busy"].items()
        )
        judged = "; their targets are not judged" if result["targets"] else ""
        lines.append(
            f"warning: the machine was busy: other processes used {shares}; those figures are "
            f"not reliable{judged}; rerun on an idle machine"
        )
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        if not t.get("judged", True):
            verdict = "not judged (machine busy)"
        lines.append(f"target {verdict}: {t['target']} ({target_value(t)})")
    return lines


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
    ``12,345 images/s`` (rows written before units were recorded: by their kind); a ratio
    taken round by round says ``paired`` (``3.41× paired``, as the latency table's column)."""
    unit = t.get("unit") or ("%" if t["kind"] in _PERCENT_KINDS else "×")
    value = t["value"]
    paired = " paired" if t.get("key") == "paired_median" else ""
    if unit == "%":
        return f"{value:+.1%}{paired}"
    if unit == "×":
        return f"{value:.2f}×{paired}"
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


SPEEDUP_LEGEND = (
    "speedup = the eager explainer's time / this variant's (2.00×: twice as fast); medians: "
    "eager's median / this one's, from the median ms column; paired: the median of that ratio "
    "taken round by round (both timed in the same round), which drift disturbs less"
)
_DISAGREE = 1.5  # the two speedups of a row differ by more than this factor: a note says so


def table(result: dict[str, Any]) -> str:
    """The latency table: one row per measured variant and batch size, each with its speedup
    over the eager explainer two ways (``t_eager / t``: of the medians, and the median of the
    round-by-round ratios); then :data:`SPEEDUP_LEGEND`, and a note for each row whose two
    speedups disagree (one above 1 and one below, or more than 1.5x apart)."""
    speedups = result["ratios"]["speedup_vs_eager"]
    lines = [
        "| variant | backend | batch | median ms | p90 ms | p99 ms | images/s "
        "| speedup (medians) | speedup (paired) | page faults/call |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for batch in result["config"]["batch_sizes"]:
        for name, v in result["variants"].items():
            m = v["batches"].get(str(batch))
            if not m or "median_ms" not in m:
                continue
            ratio = speedups.get(name, {}).get(str(batch))
            of_medians = paired = "1.00×" if name == "eager" else ""
            if ratio:
                of_medians, paired = f"{ratio['value']:.2f}×", f"{ratio['paired_median']:.2f}×"
                notes += _disagreement(v["label"], batch, ratio)
            lines.append(
                f"| {v['label']} | {v['backend']} | {batch} | {m['median_ms']:.2f} | "
                f"{m['p90_ms']:.2f} | {m['p99_ms']:.2f} | {m['images_per_s']:.1f} | "
                f"{of_medians} | {paired} | {m.get('page_faults_per_call', 0):.0f} |"
            )
    return "\n".join([*lines, "", SPEEDUP_LEGEND, *(part for n in notes for part in ("", n))])


def _disagreement(label: str, batch: int, r: dict[str, float]) -> list[str]:
    """A note where a row's two speedups disagree, else none."""
    a, b = r["value"], r["paired_median"]
    if min(a, b) <= 0 or ((a - 1) * (b - 1) >= 0 and max(a, b) / min(a, b) <= _DISAGREE):
        return []
    return [
        f"note: {label}, batch {batch}: {a:.2f}× by the medians but {b:.2f}× paired: the "
        "times varied widely from round to round, so neither figure is reliable; rerun with "
        "more --iters on an idle machine"
    ]


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

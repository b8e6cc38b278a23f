"""Write a detector's benchmark result (:func:`.detection.run_detection_bench`): the latency
table on the console, ``bench.json`` and a Markdown report ``bench.md``."""

from __future__ import annotations

import json
import os
from typing import Any

from ..artifact.files import ensure_out_dir, write_atomic
from .report import FILES, target_value

__all__ = ["detection_console_lines", "detection_markdown", "detection_table", "write_detection"]

_BASELINE = "ort_nms"


def _ratio(r: dict[str, float] | None) -> str:
    if not r:
        return ""
    return f"{r['value']:.2f}× ({r['paired_median']:.2f}× paired)"


def _same(m: dict[str, Any]) -> str:
    p = m.get("vs_eager") or {}
    if "same_detections" not in p:
        return ""
    same = "yes" if p["same_detections"] else "NO"
    mask = f"; mask {p['masks_max_abs_diff']:.1e}" if "masks_max_abs_diff" in p else ""
    return f"{same} ({p['detections']}; box {p['boxes_max_abs_diff']:.1e}{mask})"


def detection_table(result: dict[str, Any]) -> str:
    """One row per measured variant and batch size: median and p90 ms per call, images/s, its
    time over ``ort_nms``'s (of the medians, and paired), and whether its detections are
    eager's (the same count and classes; the detections in the batch; the largest box
    difference in pixels)."""
    over = result["ratios"]["time_vs_nms"]
    lines = [
        "| variant | backend | batch | median ms | p90 ms | images/s | time / ORT NMS-only "
        "| same detections as eager |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for batch in result["config"]["batch_sizes"]:
        for name, v in result["variants"].items():
            m = v["batches"].get(str(batch))
            if not m or "median_ms" not in m:
                continue
            ratio = "1.00×" if name == _BASELINE else _ratio(over.get(name, {}).get(str(batch)))
            lines.append(
                f"| {v['label']} | {v['backend']} | {batch} | {m['median_ms']:.2f} | "
                f"{m['p90_ms']:.2f} | {m['images_per_s']:.1f} | {ratio} | {_same(m)} |"
            )
    return "\n".join(lines)


def _ratio_lines(result: dict[str, Any]) -> list[str]:
    out = []
    labels = {n: v["label"] for n, v in result["variants"].items()}
    for name, by_batch in result["ratios"]["time_vs_nms"].items():
        for batch, r in by_batch.items():
            out.append(
                f"{labels[name]} / {labels[_BASELINE]}, batch {batch}: {r['value']:.2f}× of the "
                f"medians, {r['paired_median']:.2f}× paired ({r['paired_p25']:.2f}…"
                f"{r['paired_p75']:.2f})"
            )
    return out


def _verdict(t: dict[str, Any]) -> str:
    if not t.get("judged", True):
        return "not judged (machine busy)"
    return "met" if t["met"] else "MISSED"


def detection_console_lines(result: dict[str, Any]) -> list[str]:
    """What ``explain-bench`` prints for a detector: the table, the ratios, the notes, a warning
    where the machine was busy, and the targets where judged (``--targets``)."""
    lines = [detection_table(result), *_ratio_lines(result)]
    lines += [f"note: {n}" for n in result["notes"]]
    if result.get("busy"):
        shares = ", ".join(f"{s:.0%} at batch {b}" for b, s in result["busy"].items())
        lines.append(
            f"warning: the machine was busy (other processes used {shares} of the CPUs); "
            "those figures are not reliable; rerun on an idle machine"
        )
    for t in result["targets"]:
        lines.append(f"target {_verdict(t)}: {t['target']} ({target_value(t)})")
    return lines


def detection_markdown(result: dict[str, Any]) -> str:
    """The whole report: setup, latency table, ratios, targets, notes."""
    c, m = result["config"], result["machine"]
    out = [
        f"# explain-bench: {c['model']} (detector) on {c['device']}",
        "",
        f"{result['created']}" + (f" · `{result['command']}`" if result.get("command") else ""),
        "",
        "| | |",
        "| --- | --- |",
        f"| machine | {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{m['cpu_capability'] or '?'} |",
        f"| threads | torch {m['torch_threads']}, ONNX Runtime intra-op "
        f"{m['ort_intra_op_threads']} |",
        "| versions | " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + " |",
        f"| detector | {c['family']}, {c['num_classes']} classes, input {c['input_size'][0]}x"
        f"{c['input_size'][1]}, D = {c['max_detections']}, score > {c['score_threshold']:g}, "
        f"NMS IoU {c['iou_threshold']:g}; taps {', '.join(f'`{n}`' for n in c['layers'])}; "
        f"opset {c['opset']} |",
        f"| inputs | {c['inputs']} |",
        f"| timing | {c['warmup']} warm-up + {c['iters']} timed rounds per batch size; "
        f"{c['order']}; a turn is {c['settle_s'] * 1000:g} ms idle, {c['prime']} untimed "
        f"call(s), one timed call; {c['timer']} |",
        "",
        "## Latency (ms per call) and throughput",
        "",
        detection_table(result),
        "",
        "## What the maps cost over the detector with NMS alone",
        "",
        *(f"- {line}" for line in _ratio_lines(result)),
    ]
    if result["targets"]:
        out += ["", "## Targets (from the issue)", "", "| target | measured | met |"]
        out.append("| --- | ---: | --- |")
        for t in result["targets"]:
            out.append(f"| {t['target']} | {target_value(t)} | {_verdict(t)} |")
    notes = [
        f"{v['label']}: {v['note']}" for v in result["variants"].values() if v["note"]
    ] + result["notes"]
    if notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"


def write_detection(result: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``bench.json`` and ``bench.md`` into ``out_dir`` (each atomically; no plot: four
    variants read better as the table, and an earlier run's ``bench.png`` is removed); return
    their paths."""
    ensure_out_dir(out_dir)
    paths = {k: os.path.join(out_dir, FILES[k]) for k in ("json", "markdown")}
    write_atomic(paths["json"], (json.dumps(result, indent=1) + "\n").encode())
    write_atomic(paths["markdown"], detection_markdown(result).encode())
    stale = os.path.join(out_dir, FILES["plot"])  # an earlier run's plot, replaced (--overwrite)
    if os.path.exists(stale):
        os.remove(stale)
    return paths

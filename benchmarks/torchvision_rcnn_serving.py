#!/usr/bin/env python
"""torchvision's Faster / Mask R-CNN through the user's path after the export: explain-run,
explain-serve and the Triton repository, on real exported files (issue 29, "run, serve and go
to Triton").

For each model (random init, made to detect by ``benchmarks/torchvision_rcnn.py``'s
:func:`prepare`, imported, not copied), as a user would, each command a child process:

1. ``torch.save(model.state_dict())`` and ``explain-export --ckpt ... --arch
   torchvision.models.detection:NAME --formats onnx,torchscript --triton-repo REPO``: one export
   per model, reused by every step below (``--reuse`` keeps an earlier one);
2. ``explain-run --per-detection`` on chelsea, coffee, rocket with the ONNX file and with the
   TorchScript file. ``predictions.jsonl``: one row per photo, one detection per real row of the
   file's outputs (the file run here with ONNX Runtime on the same stretched batch): the same
   classes, scores within 1e-6, boxes mapped back (``x·w/W``, ``y·h/H``) within 0.011
   px; Mask R-CNN: each ``mask`` decoded with ``pycocotools.mask.decode`` equals the file's
   ``masks`` resized bilinearly to the photo (OpenCV) and taken at 0.5, pixel for pixel. The
   overlays: ``NAME.overlay.png`` and one ``NAME.detJ.overlay.png`` per detection, at the photo's
   size; for Mask R-CNN the share of each mask's contour pixels (away from its box) drawn in the
   class's colour on ``NAME.detJ.overlay.png``. TorchScript's rows against ONNX's: each paired
   with ONNX's of its class that overlaps it most, box IoU >= 0.99, score within 1e-4, mask IoU
   >= 0.99, rows swapped only at near ties (ONNX's scores within 1e-4);
3. ``explain-serve`` on the ONNX file (one replica), ``/healthz``, then each photo POSTed, one
   by one and then the three at once: each answer's ``detections`` equal explain-run's rows
   exactly (boxes, classes, labels, scores, mask RLE), and it has its ``overlay_png``; and
   chelsea with ``?detections=3``: the run's first three;
4. every ``config.pbtxt`` of the Triton repository checked as ``tests/test_triton.py`` checks
   them (its functions, imported): strict parse into ``ModelConfig``, names, types and dims
   against the ONNX graph and a TorchScript run on a batch of 2; and the detection contract's
   static dims (``boxes [D,4]``, ``scores``, ``classes [D]``, ``count [1]`` reshaped to
   ``[]``, ``heatmap``/``masks [D,H,W]``).

Usage, in the venv that ``make peers`` builds (torchvision, pycocotools), with this checkout on
the path. ``explain-serve`` needs Ray: ``--serve-python`` names a venv's python that has it (the
project's ``.venv``). ``--triton-repo`` needs ``tritonclient[grpc]``: where the peers venv has
none, ``--site DIR`` adds a folder that holds it (``pip install --target DIR --no-deps
"tritonclient[grpc]" grpcio python-rapidjson``) to this script's and the export's path::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .peers/bin/python benchmarks/torchvision_rcnn_serving.py \\
        --work /tmp/rcnn-serving --serve-python .venv/bin/python --site /tmp/triton-site \\
        --out benchmarks/results/torchvision-rcnn-serving

``--only`` takes any model of ``torchvision_rcnn.MODELS`` (default: the two above).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rcnn_serving_checks as checks  # noqa: E402
import torchvision_rcnn as tvr  # noqa: E402

MODELS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn")
D = 10


def env_with(*extra: str) -> dict[str, str]:
    """This environment with this checkout (and ``extra``) first on PYTHONPATH."""
    path = [str(ROOT), *extra, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def command(python: str, module: str, *args: str, env: dict, timeout: float = 1800) -> dict:
    """``python -m module args``; its exit code, seconds and the last lines it printed."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [python, "-m", module, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    tail = (done.stdout + done.stderr).strip().splitlines()[-25:]
    return {"rc": done.returncode, "s": round(time.perf_counter() - t0, 1), "tail": tail}


def export(name: str, work: Path, site: list[str], reuse: bool) -> dict:
    """Step 1: the checkpoint and ``explain-export`` with ``--triton-repo``."""
    import torch

    size, kwargs = tvr.MODELS[name]
    out, repo = work / "export", work / "triton"
    done = work / "export.json"  # the export's own row, kept for --reuse
    if reuse and done.is_file() and (out / "explainer.onnx").is_file() and repo.is_dir():
        return {**json.loads(done.read_text()), "reused": True}
    t0 = time.perf_counter()
    model = tvr.prepare(name, size, kwargs)
    ckpt = work / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    prepared = round(time.perf_counter() - t0, 1)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    arch_kwargs = {"weights": None, "weights_backbone": None, **kwargs}
    args = ["--ckpt", str(ckpt), "--arch", f"torchvision.models.detection:{name}"]
    args += ["--arch-kwargs", json.dumps(arch_kwargs), "--input-size", *map(str, size)]
    args += ["--labels", "coco", "--max-detections", str(D), "--formats", "onnx,torchscript"]
    args += ["--out", str(out), "--triton-repo", str(repo)]
    row = command(sys.executable, "explain_export", *args, env=env_with(*site))
    row = {**row, "prepare_s": prepared, "size": size, "reused": False}
    if row["rc"] == 0:
        done.write_text(json.dumps(row))
    return row


def run(python: str, model: Path, photos: Path, out: Path) -> dict:
    """``explain-run --per-detection`` into ``out``."""
    args = ["--model", str(model), "--images", str(photos), "--out", str(out)]
    return command(python, "explain_export.cli.run", *args, "--per-detection", "--overwrite",
                   env=env_with())  # fmt: skip


def one_model(name: str, args: argparse.Namespace) -> dict:
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)
    photos = Path(args.work) / "photos"
    row: dict = {"model": name, "checks": {}, "times": {}}
    exp = export(name, work, args.site, args.reuse)
    row["size"] = list(exp["size"])
    row["times"]["export"] = exp["s"]
    row["times"]["prepare"] = exp.get("prepare_s")
    row["checks"]["export (onnx, torchscript, --triton-repo)"] = checks.verdict(
        exp["rc"] == 0, f"rc {exp['rc']}" + (" (an earlier run's, reused)" if exp["reused"] else "")
    )
    if exp["rc"] != 0:
        row["export_tail"] = exp["tail"]
        return row
    onnx_file = work / "export" / "explainer.onnx"
    ts_file = next((work / "export").glob("*.pt"), None)
    want = checks.file_outputs(onnx_file, photos, tuple(exp["size"]))

    runs = {}
    for fmt, path, python in (("onnx", onnx_file, sys.executable),
                              ("torchscript", ts_file, sys.executable)):  # fmt: skip
        res = run(python, path, photos, work / f"run_{fmt}")
        row["times"][f"explain-run {fmt}"] = res["s"]
        if res["rc"] != 0:
            row["checks"][f"explain-run {fmt}"] = checks.verdict(False, " / ".join(res["tail"]))
            continue
        runs[fmt] = checks.read_rows(work / f"run_{fmt}" / "predictions.jsonl")
    if "onnx" in runs:
        row["checks"]["predictions.jsonl = file outputs"] = checks.rows_match_file(
            runs["onnx"], want
        )
        row["checks"]["overlays written"] = checks.overlays(
            work / "run_onnx", runs["onnx"], want["shapes"]
        )
        if want["masks"]:
            row["checks"]["mask outlines drawn"] = checks.outlines(work / "run_onnx", runs["onnx"])
        row["detections"] = {k: len(v["detections"]) for k, v in runs["onnx"].items()}
    if len(runs) == 2:
        row["checks"]["explain-run torchscript = onnx"] = checks.rows_close(
            runs["torchscript"], runs["onnx"]
        )

    t0 = time.perf_counter()
    try:
        served = checks.serve(args.serve_python, env_with(), onnx_file, photos)
        row["times"]["explain-serve (start, 7 posts, stop)"] = round(time.perf_counter() - t0, 1)
        health = served["health"]
        row["checks"]["explain-serve /healthz"] = checks.verdict(
            health.get("task") == "detection" and health.get("max_detections") == D,
            f"task {health.get('task')}, max_detections {health.get('max_detections')}",
        )
        if "onnx" in runs:
            for how in ("one by one", "3 at once"):
                row["checks"][f"explain-serve = explain-run ({how})"] = checks.same_answers(
                    served[how], runs["onnx"]
                )
            first = {s: {"detections": r["detections"][:3]} for s, r in runs["onnx"].items()}
            row["checks"]["explain-serve ?detections=3 = the run's first 3"] = checks.same_answers(
                served["first_3"], {"chelsea": first["chelsea"]}
            )
    except Exception as exc:
        traceback.print_exc()
        row["checks"]["explain-serve"] = checks.verdict(False, f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    for fmt in ("onnx", "torchscript"):
        try:
            row["checks"][f"triton {fmt} config"] = checks.triton_config(
                work / "triton", fmt, work / "export", D, tuple(exp["size"]), want["masks"]
            )
        except Exception as exc:
            traceback.print_exc()
            row["checks"][f"triton {fmt} config"] = checks.verdict(
                False, f"{type(exc).__name__}: {str(exc)[:300]}"
            )
    row["times"]["triton checks"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a folder for the exports and runs")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--reuse", action="store_true", help="keep an earlier export in --work")
    parser.add_argument("--serve-python", default=sys.executable, help="a python with Ray Serve")
    parser.add_argument("--site", action="append", default=[], help="a folder for the path")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    args.site = [str(Path(s).resolve()) for s in args.site]
    sys.path[1:1] = args.site
    checks.copy_photos(Path(args.work) / "photos")
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    rows = []
    for name in names:
        try:
            row = one_model(name, args)
        except Exception as exc:
            traceback.print_exc()
            row = {"model": name, "checks": {"run": checks.verdict(False, repr(exc)[:300])}}
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    versions = checks.versions(args.serve_python, env_with())
    text = checks.report(rows, versions, " ".join(sys.argv[1:] if argv is None else argv))
    print(text)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({"versions": versions, "rows": rows}, indent=1, default=str) + "\n"
        )
        Path(args.out).with_suffix(".md").write_text(text)
    ok = all(c["ok"] for r in rows for c in r["checks"].values())
    found = all(sum(r.get("detections", {}).values()) > 0 for r in rows)
    return 0 if ok and found else 1


if __name__ == "__main__":
    sys.exit(main())

"""The checks of ``torchvision_rcnn_serving.py``: explain-run's files against the model file,
explain-serve's answers against explain-run's rows, the Triton configs against the model files
(``tests/test_triton.py``'s functions), and the report. Each check returns
``{"ok": bool, "detail": str}``."""

from __future__ import annotations

import datetime
import http.client
import json
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from explain_export.artifact import detections, samples

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
TESTS = Path(__file__).resolve().parents[1] / "tests"


def verdict(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


def copy_photos(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        shutil.copy(samples.photo_path(name), folder / name)


def _stem(name: str) -> str:
    return Path(name).stem


def file_outputs(onnx_file: Path, photos: Path, size: tuple[int, int]) -> dict[str, Any]:
    """The ONNX file's outputs for the photos as one stretched batch (as explain-run feeds
    them), run here with a plain ONNX Runtime session; per photo its original ``(h, w)``."""
    import onnxruntime as ort

    files = [photos / n for n in PHOTOS]
    batch = np.stack([samples.load_rgb(str(f), size) for f in files])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: batch}), strict=True))
    shapes = {_stem(f.name): cv2.imread(str(f)).shape[:2] for f in files}
    return {"out": out, "shapes": shapes, "size": size, "masks": "masks" in out}


def read_rows(path: Path) -> dict[str, dict]:
    """predictions.jsonl by photo stem."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {_stem(r["file"]): r for r in rows}


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as coco

    return coco.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def rows_match_file(rows: dict[str, dict], want: dict[str, Any]) -> dict[str, Any]:
    """predictions.jsonl against the file's outputs (``torchvision_rcnn_serving.py``, step 2)."""
    out, (hh, ww) = want["out"], want["size"]
    bad, worst_box, worst_score, pixels, masks = [], 0.0, 0.0, 0, 0
    if sorted(rows) != sorted(want["shapes"]):
        return verdict(False, f"rows for {sorted(rows)}, photos {sorted(want['shapes'])}")
    for n, stem in enumerate(_stem(p) for p in PHOTOS):
        found, (h, w) = rows[stem]["detections"], want["shapes"][stem]
        count = int(out["count"][n])
        if len(found) != count:
            bad.append(f"{stem}: {len(found)} rows, count {count}")
            continue
        for j, d in enumerate(found):
            x1, y1, x2, y2 = out["boxes"][n, j].astype(np.float64)
            back = np.clip([x1 * w / ww, y1 * h / hh, x2 * w / ww, y2 * h / hh], 0, [w, h, w, h])
            worst_box = max(worst_box, float(np.abs(np.array(d["box"]) - back).max()))
            worst_score = max(worst_score, abs(d["score"] - float(out["scores"][n, j])))
            if d["class"] != int(out["classes"][n, j]):
                bad.append(f"{stem} #{j}: class {d['class']} vs {int(out['classes'][n, j])}")
            if want["masks"]:
                mine = cv2.resize(out["masks"][n, j], (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
                theirs = _decode(d["mask"])
                pixels += int((mine != theirs).sum()) if mine.shape == theirs.shape else mine.size
                masks += 1
    ok = not bad and worst_box <= 0.011 and worst_score <= 1e-6 and pixels == 0
    text = f"box max abs diff {worst_box:.3g} px, score {worst_score:.2g}"
    if want["masks"]:
        text += f", {masks} masks (pycocotools), {pixels} pixels differ"
    return verdict(ok, "; ".join([text, *bad[:3]]))


def overlays(folder: Path, rows: dict[str, dict], shapes: dict) -> dict[str, Any]:
    """``NAME.overlay.png`` and ``NAME.detJ.overlay.png`` per detection, at the photo's size."""
    missing, files = [], 0
    for stem, r in rows.items():
        h, w = shapes[stem]
        names = [f"{stem}.overlay.png"] + [
            f"{stem}.det{j}.overlay.png" for j in range(len(r["detections"]))
        ]
        for name in names:
            image = cv2.imread(str(folder / name))
            if image is None or image.shape[:2] != (h, w):
                missing.append(name)
            files += 1
    return verdict(not missing, f"{files - len(missing)}/{files} overlays" + (
        f"; bad: {', '.join(missing[:4])}" if missing else ""))  # fmt: skip


def outlines(folder: Path, rows: dict[str, dict]) -> dict[str, Any]:
    """Per detection with a mask: the share of its contour pixels, at least 4 px from its box's
    edges, whose colour on ``NAME.detJ.overlay.png`` is the class's (within 24 per channel)."""
    shares, total = [], 0
    for stem, r in rows.items():
        for j, d in enumerate(r["detections"]):
            total += 1
            mask = _decode(d["mask"])
            if not mask.any():
                continue
            image = cv2.imread(str(folder / f"{stem}.det{j}.overlay.png")).astype(int)
            contours, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
            )
            xy = np.concatenate([c[:, 0] for c in contours])
            x1, y1, x2, y2 = d["box"]
            edges = np.abs(xy[:, [0, 0, 1, 1]] - np.array([x1, x2, y1, y2]))
            xy = xy[edges.min(1) >= 4]
            if len(xy) == 0:
                continue
            colour = np.array(detections.class_colour(d["class"]))
            near = np.abs(image[xy[:, 1], xy[:, 0]] - colour).max(1) <= 24
            shares.append(float(near.mean()))
    if not shares:
        return verdict(False, "no mask with contour pixels away from its box")
    return verdict(min(shares) >= 0.5, f"{len(shares)} of {total} masks have contour pixels "
                   f"away from their box; share in the class colour: "
                   f"min {min(shares):.2f}, mean {np.mean(shares):.2f}")  # fmt: skip


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def _box_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return 1.0 if union <= 0 else w * h / union


def rows_close(rows: dict[str, dict], ref: dict[str, dict]) -> dict[str, Any]:
    """TorchScript's rows against ONNX's. Each detection is paired with the reference's of its
    class whose box overlaps it most: IoU >= 0.99, score within 1e-4, mask IoU >= 0.99. Two
    rows may trade places only at a near tie: their reference scores within 1e-4 (a random-init
    ResNet-50's scores differ by up to ~1e-4 between backends, so close ones can swap)."""
    bad, box, score, iou, swaps = [], 1.0, 0.0, 1.0, 0
    masks = any("mask" in d for r in ref.values() for d in r["detections"])
    for stem, r in ref.items():
        a, b = rows[stem]["detections"], r["detections"]
        if sorted(d["class"] for d in a) != sorted(d["class"] for d in b):
            bad.append(f"{stem}: classes differ")
            continue
        free = list(range(len(b)))
        for j, x in enumerate(a):
            k = max((k for k in free if b[k]["class"] == x["class"]),
                    key=lambda k: _box_iou(x["box"], b[k]["box"]))  # fmt: skip
            free.remove(k)
            y = b[k]
            box = min(box, _box_iou(x["box"], y["box"]))
            score = max(score, abs(x["score"] - y["score"]))
            if k != j:
                swaps += 1
                if abs(b[j]["score"] - y["score"]) > 1e-4:
                    bad.append(f"{stem}: row {j} is the reference's row {k}, not at a tie")
            if masks:
                iou = min(iou, _iou(_decode(x["mask"]), _decode(y["mask"])))
    ok = not bad and box >= 0.99 and score <= 1e-4 and iou >= 0.99
    text = f"box IoU min {box:.4f}, score {score:.2g}" + (f", mask IoU {iou:.4f}" if masks else "")
    text += f", {swaps} rows swapped at near ties" if swaps else ", same order"
    return verdict(ok, "; ".join([text, *bad]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"{}")


def serve(python: str, env: dict, model: Path, photos: Path) -> dict[str, dict]:
    """``explain-serve --model model`` (one replica); ``/healthz``, then each photo POSTed in
    turn, then all three at once (Serve may batch them), then chelsea with ``?detections=3``;
    stopped with SIGTERM. Returns ``health`` and each round's answers by stem."""
    port = _free_port()
    cmd = [python, "-m", "explain_export.cli.serve", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    console: list[str] = []
    threading.Thread(target=lambda: console.extend(proc.stdout), daemon=True).start()
    try:
        end = time.time() + 600
        while not any(line.startswith("serving on") for line in console):
            if proc.poll() is not None or time.time() > end:
                raise RuntimeError("explain-serve did not start: " + " / ".join(console[-8:]))
            time.sleep(0.5)
        _, health = _request(port, "GET", "/healthz")

        def post(name: str) -> dict:
            file, _, query = name.partition("?")
            path = "/explain" + (f"?{query}" if query else "")
            status, answer = _request(port, "POST", path, (photos / file).read_bytes())
            if status != 200:
                raise RuntimeError(f"POST {name}: {status} {answer}")
            return answer

        one_by_one = {_stem(n): post(n) for n in PHOTOS}
        with ThreadPoolExecutor(len(PHOTOS)) as pool:
            together = dict(zip(map(_stem, PHOTOS), pool.map(post, PHOTOS), strict=True))
        first_3 = {_stem(n): post(f"{n}?detections=3") for n in PHOTOS[:1]}
        return {"health": health, "one by one": one_by_one, "3 at once": together,
                "first_3": first_3}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(120)


def same_answers(answers: dict[str, dict], rows: dict[str, dict]) -> dict[str, Any]:
    """The answers' ``detections`` equal explain-run's rows, field for field; overlay given."""
    keys = ("box", "class", "label", "score", "mask")  # a run's rows also list their files

    def fields(found: list[dict]) -> list[dict]:
        return [{k: d[k] for k in keys if k in d} for d in found]

    differ = [s for s in rows if fields(answers[s]["detections"]) != fields(rows[s]["detections"])]
    drawn = all(a.get("overlay_png") for a in answers.values())
    n = sum(len(r["detections"]) for r in rows.values())
    detail = f"{n} detections, {len(rows) - len(differ)}/{len(rows)} photos equal"
    if differ:
        s = differ[0]
        got, ref = fields(answers[s]["detections"]), fields(rows[s]["detections"])
        if len(got) != len(ref):
            detail += f"; {s}: {len(got)} detections vs {len(ref)}"
        else:
            j = next(j for j in range(len(ref)) if got[j] != ref[j])
            keys = [k for k in keys if got[j].get(k) != ref[j].get(k)]
            detail += f"; {s} #{j}: {', '.join(keys)} differ"
    return verdict(not differ and drawn, detail + ("" if drawn else "; no overlay_png"))


def triton_config(repo: Path, fmt: str, export: Path, d: int, size: tuple[int, int],
                  masks: bool) -> dict[str, Any]:  # fmt: skip
    """``tests/test_triton.py``'s checks of one config, and the detection contract's dims."""
    import filecmp

    sys.path.insert(0, str(TESTS))
    import test_triton as tt
    from tritonclient.grpc import model_config_pb2 as pb2

    folder = repo / f"explainer_{fmt}"
    model = folder / "1" / ("model.onnx" if fmt == "onnx" else "model.pt")
    source = export / "explainer.onnx" if fmt == "onnx" else next(export.glob("*.pt"))
    config = tt._parse(pb2, folder / "config.pbtxt")
    if fmt == "onnx":
        tt.check_onnx(pb2, config, str(model))
    else:
        tt.check_torchscript(pb2, config, str(model), size)
    names = ["boxes", "scores", "classes", "count", "heatmap"] + (["masks"] if masks else [])
    if fmt == "torchscript":
        names = [f"{n}__{i}" for i, n in enumerate(names)]
    dims = [[d, 4], [d], [d], [1], [d, *size]] + ([[d, *size]] if masks else [])
    types = ["TYPE_FP32", "TYPE_FP32", "TYPE_INT64", "TYPE_INT64", "TYPE_FP32", "TYPE_FP32"]
    got = [(o.name, tt._type(pb2, o), list(o.dims)) for o in config.output]
    want = list(zip(names, types, dims, strict=False))
    assert got == want, f"outputs {got} != {want}"
    count = config.output[3]
    assert count.HasField("reshape") and list(count.reshape.shape) == []
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [3, *size])]
    assert filecmp.cmp(model, source, shallow=False), f"{model} is not the exported file"
    return verdict(True, f"parsed; {len(got)} outputs match the file; max_batch_size "
                   f"{config.max_batch_size}, {tt._groups(pb2, config)}")  # fmt: skip


def versions(serve_python: str, env: dict) -> dict[str, str]:
    import onnxruntime
    import torch
    import torchvision

    probe = "import ray, onnxruntime; print(ray.__version__, onnxruntime.__version__)"
    ray_ort = subprocess.run([serve_python, "-c", probe], capture_output=True, text=True, env=env)
    ray, ort = [*ray_ort.stdout.split(), "?", "?"][:2]
    from importlib.metadata import version

    git = ["git", "-C", str(TESTS.parent), "rev-parse", "--short", "HEAD"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(git, capture_output=True, text=True).stdout.strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime (export, runs)": onnxruntime.__version__,
        "onnxruntime (serve)": ort,
        "ray": ray,
        "tritonclient": version("tritonclient"),
        "pycocotools": version("pycocotools"),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
    }


LEGEND = (
    "Random init, made to detect by `benchmarks/torchvision_rcnn.py`'s `prepare`; the state_dict "
    "saved and exported by `explain-export --ckpt --arch torchvision.models.detection:NAME "
    "--formats onnx,torchscript --triton-repo`; each command a child process. "
    "predictions.jsonl = file outputs: explain-run's rows (ONNX file) against the file run "
    "here on the same stretched batch: classes, scores within 1e-6, boxes mapped back within "
    "0.011 px, each mask decoded by pycocotools equal pixel for pixel to the file's `masks` "
    "resized bilinearly and taken at 0.5. mask outlines: the share of each mask's contour "
    "pixels (4 px or more from its box) drawn in the class colour on NAME.detJ.overlay.png. "
    "explain-run torchscript = onnx: paired by class and box, IoU >= 0.99, score 1e-4, mask "
    "IoU 0.99, order swapped only at near ties. explain-serve: the answers' detections equal "
    "the run's rows field for field. triton: tests/test_triton.py's checks (strict parse, "
    "names, types, dims against the ONNX graph and a TorchScript run on a batch of 2) and the "
    "detection contract's dims. Times on the shared 2-core machine; with --reuse the export's "
    "are the run that made it."
)


def report(rows: list[dict], versions: dict[str, str], argv: str) -> str:
    lines = [
        "# torchvision R-CNN: explain-run, explain-serve, Triton (issue 29)",
        "",
        f"`benchmarks/torchvision_rcnn_serving.py {argv}`",
        "",
        ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        LEGEND,
        "",
    ]
    for r in rows:
        lines += [f"## {r['model']}", ""]
        if r.get("size"):
            lines += [f"input {r['size'][0]}x{r['size'][1]}, D = 10; detections per photo: "
                      f"{r.get('detections')}", ""]  # fmt: skip
        lines += ["| check | ok | detail |", "|---|---|---|"]
        for name, c in r["checks"].items():
            lines.append(f"| {name} | {'ok' if c['ok'] else 'FAILED'} | {c['detail']} |")
        times = ", ".join(f"{k} {v} s" for k, v in r.get("times", {}).items() if v is not None)
        lines += ["", f"times: {times}", ""]
        if r.get("export_tail"):
            lines += ["```", *r["export_tail"], "```", ""]
    return "\n".join(lines) + "\n"

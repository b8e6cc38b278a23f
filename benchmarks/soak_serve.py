"""Soak explain-serve: many requests at high concurrency, photos mixed with bombs and junk.

Starts ``explain-serve`` (default flags unless given after ``--``) on an exported model, then
sends ``--requests`` POSTs from ``--concurrency`` threads, drawn in a fixed shuffled order from:

- ``photo``: the bundled photos (heatmap asked for, no overlay), each answer checked against
  what the runner computes for the same file (top-1 class and the heatmap PNG, to one gray level);
- ``png-bomb``: a valid 15000 x 15000 PNG of about 0.7 MB (675 MB decoded);
- ``jpeg-huge``: a valid 12000 x 12000 JPEG (432 MB decoded);
- ``jpeg-big``: a valid 8000 x 6000 JPEG, under the default 50 MP cap: decoded, the costliest
  request a default server accepts;
- ``truncated``, ``garbage``, ``empty``: the first half of a photo, random bytes, no bytes.

A photo answered 503 (the replica is full) is sent again after its ``Retry-After``, as a client
should; every 503 is counted, and whether it carried ``Retry-After``. Then a second phase sends
``--bombs-at-once`` (8) PNG bombs together with a stream of photos (``--bomb-photos``).

It samples the resident memory of the server's whole process tree (``/proc``, every 50 ms), and
reports every status per kind, the photos' p50/p99 (from the first send, retries included), the
photos answered while a bomb was in flight, and the peak memory against ``--budget-gb``. Linux
only (``/proc``); outside the suite.

    python benchmarks/soak_serve.py --model explainer/explainer.onnx \\
        --out benchmarks/results/soak-cpu2.json
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from explain_export.artifact import overlay, pipeline, runtime, samples

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")
MIX = {"photo": 0.80, "png-bomb": 0.04, "jpeg-huge": 0.02, "jpeg-big": 0.02}
MIX |= {"truncated": 0.04, "garbage": 0.04, "empty": 0.04}
CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "explain-export-soak")


def png_bomb(side: int = 15000) -> bytes:
    """A valid gray+RGB PNG of ``side``² black pixels, compressed row by row (never whole)."""
    path = os.path.join(CACHE, f"bomb-{side}.png")
    if not os.path.exists(path):
        import struct

        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body)
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        packer = zlib.compressobj(9)
        row = b"\x00" * (1 + 3 * side)  # filter byte 0, then RGB
        idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
        _write(path, data + chunk(b"IEND", b""))
    with open(path, "rb") as f:
        return f.read()


def jpeg_of(h: int, w: int) -> bytes:
    """A valid ``h x w`` JPEG: a photo tiled, so it compresses like one."""
    path = os.path.join(CACHE, f"jpeg-{h}x{w}.jpg")
    if not os.path.exists(path):
        tile = cv2.imread(samples.photo_path("coffee.png"))
        reps = (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1)
        _, buf = cv2.imencode(".jpg", np.tile(tile, reps)[:h, :w], [cv2.IMWRITE_JPEG_QUALITY, 70])
        _write(path, buf.tobytes())
    with open(path, "rb") as f:
        return f.read()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    os.makedirs(CACHE, exist_ok=True)
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.replace(path + ".part", path)


def expected(model: str) -> dict[str, tuple[int, np.ndarray]]:
    """The runner's top-1 and heatmap (uint8, original size) per photo: what a 200 must match."""
    artifact = runtime.load(model)
    opts = pipeline.OverlayOptions()
    out = {}
    for name in PHOTOS:
        size = tuple(artifact.metadata["input_size"])
        fitted = pipeline.read(samples.photo_path(name), size, opts)
        inferred = pipeline.infer(artifact, [fitted.input])[0]
        rendered = pipeline.render(fitted, inferred.logits, inferred.heatmaps, 1, None, opts, False)
        out[name] = (int(inferred.logits.argmax()), overlay.levels(rendered.heatmap))
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant (Ray's raylet, workers, proxy)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) * 1024
        except (OSError, StopIteration):
            continue
    return total


class Sampler(threading.Thread):
    """Peak of :func:`tree_rss` every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stopped = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(self.every)


def post(port: int, body: bytes, timeout: float) -> tuple[int, bytes, str | None]:
    """One POST: status (0: no answer), body, its Retry-After header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/explain?overlay=0&heatmap=1&topk=1", body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Retry-After")
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc).encode(), None
    finally:
        conn.close()


def send(port: int, body: bytes, timeout: float, retries: int = 60) -> dict:
    """POST, and again after Retry-After while the answer is 503 (at most ``retries`` times)."""
    t0, busy, with_header = time.perf_counter(), 0, 0
    while True:
        status, data, retry_after = post(port, body, timeout)
        if status != 503 or busy >= retries:
            break
        busy += 1
        with_header += retry_after is not None
        time.sleep(float(retry_after or 1))
    ms = 1000 * (time.perf_counter() - t0)
    return {"status": status, "data": data, "ms": ms, "busy": busy, "retry_after": with_header}


def wait_ready(port: int, proc: subprocess.Popen, limit: float = 300) -> None:
    end = time.time() + limit
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"explain-serve exited with {proc.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("explain-serve was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an explainer.onnx to serve")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--timeout", type=float, default=300, help="client timeout, s")
    parser.add_argument("--budget-gb", type=float, default=4.5, help="the stated memory budget")
    parser.add_argument("--bombs-at-once", type=int, default=8)
    parser.add_argument("--bomb-photos", type=int, default=64)
    parser.add_argument("--out", help="write the JSON summary here")
    parser.add_argument("serve_args", nargs="*", help="extra explain-serve flags, after --")
    args = parser.parse_args()

    bodies = {name: _read(samples.photo_path(name)) for name in PHOTOS}
    junk = {
        "png-bomb": png_bomb(),
        "jpeg-huge": jpeg_of(12000, 12000),
        "jpeg-big": jpeg_of(6000, 8000),
        "truncated": bodies["coffee.png"][: len(bodies["coffee.png"]) // 2],
        "garbage": random.Random(0).randbytes(200_000),
        "empty": b"",
    }
    want = expected(args.model)
    rng = random.Random(0)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=args.requests)
    plan = [(k, PHOTOS[i % len(PHOTOS)] if k == "photo" else k) for i, k in enumerate(kinds)]

    exe = os.path.join(os.path.dirname(sys.executable), "explain-serve")
    cmd = [exe, "--model", args.model, "--port", str(args.port), *args.serve_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    console: list[str] = []
    threading.Thread(target=lambda: console.extend(proc.stdout), daemon=True).start()
    try:
        wait_ready(args.port, proc)
        idle_rss = tree_rss(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        bombs_in_flight = [0]
        lock = threading.Lock()

        def one(item: tuple[str, str]) -> dict:
            kind, name = item
            body = bodies[name] if kind == "photo" else junk[kind]
            bomb = kind in ("png-bomb", "jpeg-huge", "jpeg-big")
            with lock:
                during = bombs_in_flight[0] > 0
                bombs_in_flight[0] += bomb
            sent = send(args.port, body, args.timeout)
            with lock:
                bombs_in_flight[0] -= bomb
            status, data = sent["status"], sent.pop("data")
            row = {"kind": kind, **sent, "during_bomb": during}
            if kind == "photo" and status == 200:
                answer = json.loads(data)
                png = base64.b64decode(answer["heatmap_png"])
                heat = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
                top1, ref = want[name]
                row["correct"] = bool(
                    answer["topk"][0]["class"] == top1
                    and heat.shape == ref.shape
                    and int(np.abs(heat.astype(int) - ref).max()) <= 1
                )
            return row

        t_start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            rows = list(pool.map(one, plan))
        wall = time.perf_counter() - t_start
        sampler.stopped.set()
        sampler.join()
        # phase 2: the bombs all at once, photos streaming past them
        phase2 = [("png-bomb", "png-bomb")] * args.bombs_at_once
        phase2 += [("photo", PHOTOS[i % len(PHOTOS)]) for i in range(args.bomb_photos)]
        sampler2 = Sampler(proc.pid)
        sampler2.start()
        with ThreadPoolExecutor(args.bombs_at_once + 8) as pool:
            rows2 = list(pool.map(one, phase2))
        sampler2.stopped.set()
        sampler2.join()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = summarize(rows, wall, sampler.peak, idle_rss, args, alive, console)
    bombs2 = [r for r in rows2 if r["kind"] == "png-bomb"]
    photos2 = [r for r in rows2 if r["kind"] == "photo"]
    summary["bombs_at_once"] = {
        "bombs": len(bombs2),
        "bomb_statuses": dict(collections.Counter(str(r["status"]) for r in bombs2)),
        "bomb_max_ms": round(max(r["ms"] for r in bombs2), 1) if bombs2 else None,
        "photos": len(photos2),
        "photos_correct": sum(bool(r.get("correct")) for r in photos2),
        "photo_statuses": dict(collections.Counter(str(r["status"]) for r in photos2)),
        "peak_rss_gb": round(sampler2.peak / 2**30, 2),
        "under_budget": sampler2.peak <= args.budget_gb * 2**30,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def summarize(rows, wall, peak, idle, args, alive, console) -> dict:
    codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        codes[r["kind"]][str(r["status"])] += 1
    photos = [r for r in rows if r["kind"] == "photo"]
    ok = [r["ms"] for r in photos if r["status"] == 200]
    during = [r for r in photos if r["during_bomb"]]
    q = statistics.quantiles(ok, n=100) if len(ok) > 1 else [float("nan")] * 99
    return {
        "command": " ".join(sys.argv),
        "requests": len(rows),
        "concurrency": args.concurrency,
        "wall_s": round(wall, 1),
        "server_alive_after": alive,
        "statuses": {k: dict(v) for k, v in codes.items()},
        "photos_ok": len(ok),
        "photos_correct": sum(bool(r.get("correct")) for r in photos),
        "photos_wrong": sum(r.get("correct") is False for r in photos),
        "busy_503": sum(r["busy"] for r in rows),
        "busy_503_with_retry_after": sum(r["retry_after"] for r in rows),
        "photo_p50_ms": round(q[49], 1),
        "photo_p99_ms": round(q[98], 1),
        "photos_during_bombs": len(during),
        "photos_during_bombs_ok": sum(r["status"] == 200 for r in during),
        "idle_rss_gb": round(idle / 2**30, 2),
        "peak_rss_gb": round(peak / 2**30, 2),
        "budget_gb": args.budget_gb,
        "under_budget": peak <= args.budget_gb * 2**30,
        "console_lines": len(console),
        "console_tail": [line.rstrip() for line in console[-8:]],
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    main()

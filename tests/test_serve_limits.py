"""What bounds explain-serve and explain-run (issue 21): the drawn size (--max-overlay-side), the
decoding slots (--max-decoding), the queue limit (503 with Retry-After, at once), the deadline
(504, its work dropped), and a bomb in explain-run's folder refused from its header.

The server's handling runs here through :class:`app.Handler` without Ray, with a model call
the test holds back, so the states it answers in can be made at will."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import subprocess
import sys
import threading
import zlib

import cv2
import numpy as np
import pytest

from explain_export.artifact import images, runner, runtime, samples
from explain_export.artifact.serve import admission, app


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> str:
    """A small explainer (TinyResNet, 64x64) exported to ONNX, with labels."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_resnet

    out = tmp_path_factory.mktemp("tiny")
    explainer = build_explainer(tiny_resnet(), input_size=(64, 64))
    export_explainer(explainer, str(out), labels=[f"class{i}" for i in range(10)], formats=["onnx"])
    return str(out / "explainer.onnx")


@pytest.fixture(scope="module")
def model(tiny_onnx) -> app.Model:
    return app.open_model(tiny_onnx, threads=1)


def _bytes(name: str) -> bytes:
    with open(samples.photo_path(name), "rb") as f:
        return f.read()


def _png(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


def _bomb_header(side: int = 15000) -> bytes:
    """A PNG that declares ``side``² RGB pixels in its header, then one empty IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * side))  # one row of the image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Held:
    """A model call the test releases: each call waits for :attr:`go`, then runs the batch."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.handler: app.Handler | None = None

    async def __call__(self, item):
        await self.go.wait()
        (out,) = await self.handler.run_batch([item])
        return out


def _handler(model, opts) -> tuple[app.Handler, Held]:
    held = Held()
    held.handler = app.Handler(model, opts, held)
    return held.handler, held


async def _post(handler: app.Handler, body: bytes, params=None) -> app.Reply:
    async def chunks():
        yield body

    params = {"heatmap": "1"} if params is None else params
    return await handler.handle("POST", "/explain", params, str(len(body)), chunks())


def test_a_full_replica_answers_503_with_retry_after_at_once(model):
    """--max-decoding 1 --max-queued 1: two requests held (their model call waits), the third
    is refused before its body is read, with our one-line JSON and Retry-After; once the first
    two are answered, the replica takes requests again."""
    opts = app.ServeOptions(max_decoding=1, max_queued=1)
    handler, held = _handler(model, opts)
    photo = _bytes("chelsea.png")

    async def scenario():
        first = [asyncio.create_task(_post(handler, photo)) for _ in range(2)]
        while handler.admission.held < 2:
            await asyncio.sleep(0.01)
        read = []

        async def body():
            read.append(True)
            yield photo

        third = await handler.handle("POST", "/explain", {}, str(len(photo)), body())
        health = await handler.handle("GET", "/healthz", {}, None, body())
        held.go.set()
        answered = await asyncio.gather(*first)
        fourth = await _post(handler, photo)
        return third, read, health, answered, fourth

    third, read, health, answered, fourth = asyncio.run(scenario())
    assert third.status == 503 and third.headers == {"Retry-After": str(admission.RETRY_AFTER_S)}
    assert set(third.body) == {"error"} and "\n" not in third.body["error"]
    assert "busy" in third.body["error"] and "--max-queued 1" in third.body["error"]
    assert read == []  # refused before its body was read
    assert health.status == 200  # /healthz is always answered
    assert [r.status for r in answered] == [200, 200] and fourth.status == 200
    assert handler.admission.held == 0 and handler.admission.working == 0


def test_a_request_past_the_timeout_gets_504_and_is_not_drawn(model, monkeypatch):
    """The model call never comes back in time: 504 with one line; when it does come back, the
    request's overlay is never drawn or encoded (answer is not called)."""
    drawn = []
    real_answer = app.answer
    monkeypatch.setattr(app, "answer", lambda *a: drawn.append(1) or real_answer(*a))
    handler, held = _handler(model, app.ServeOptions(request_timeout_s=0.3))

    async def scenario():
        late = await _post(handler, _bytes("chelsea.png"))
        held.go.set()  # the model answers after the deadline
        await asyncio.sleep(0.3)
        in_time = await _post(handler, _bytes("rocket.jpg"))
        return late, in_time

    late, in_time = asyncio.run(scenario())
    assert late.status == 504 and set(late.body) == {"error"}
    assert "--request-timeout" in late.body["error"] and "\n" not in late.body["error"]
    assert in_time.status == 200 and len(drawn) == 1  # only the request in time was drawn
    assert handler.admission.held == 0


def test_at_most_max_decoding_images_are_decoded_or_drawn_at_once(model, monkeypatch):
    lock, now, most = threading.Lock(), [0], [0]

    def counted(fn):
        def run(*args):
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            try:
                return fn(*args)
            finally:
                with lock:
                    now[0] -= 1

        return run

    monkeypatch.setattr(app, "prepare", counted(app.prepare))
    monkeypatch.setattr(app, "answer", counted(app.answer))
    handler, held = _handler(model, app.ServeOptions(max_decoding=2, max_queued=10))
    held.go.set()
    photos = [_bytes(n) for n in ("chelsea.png", "rocket.jpg", "coffee.png")] * 3

    async def scenario():
        return await asyncio.gather(*(_post(handler, p) for p in photos))

    assert [r.status for r in asyncio.run(scenario())] == [200] * len(photos)
    assert most[0] == 2


def test_overlays_are_drawn_at_the_cap_and_heatmaps_equal_explain_runs(tiny_onnx, model, tmp_path):
    """A 2400 x 1600 JPEG (made here from a photo) with --max-overlay-side 1000: the answer
    reports the file's size and the drawn one; the PNGs are at the cap; the heatmap equals
    explain-run's for the same file and cap, and so does the overlay."""
    tile = cv2.imread(samples.photo_path("coffee.png"))
    big = cv2.resize(tile, (2400, 1600), interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    opts = app.ServeOptions(max_overlay_side=1000)
    handler, held = _handler(model, opts)
    held.go.set()
    reply = asyncio.run(_post(handler, path.read_bytes(), {"heatmap": "1", "overlay": "1"}))
    assert reply.status == 200
    body = reply.body
    assert (body["height"], body["width"]) == (1600, 2400)
    assert (body["drawn_height"], body["drawn_width"]) == (667, 1000)
    heatmap, overlay_png = _png(body["heatmap_png"]), _png(body["overlay_png"])
    assert heatmap.shape == (667, 1000) and overlay_png.shape == (667, 1000, 3)

    out = tmp_path / "run"
    run_opts = runner.RunOptions(out_dir=str(out), save_heatmaps=True, max_overlay_side=1000)
    report = runner.run(runtime.load(tiny_onnx), [str(path)], run_opts)
    assert report.failed == []
    np.testing.assert_array_equal(cv2.imread(str(out / "big.heatmap.png"), -1), heatmap)
    np.testing.assert_array_equal(cv2.imread(str(out / "big.overlay.png"), -1), overlay_png)
    assert report.results[0].topk == body["topk"]

    small = asyncio.run(_post(handler, _bytes("chelsea.png")))  # under the cap: as it is
    assert "drawn_height" not in small.body
    assert _png(small.body["heatmap_png"]).shape == (small.body["height"], small.body["width"])


def test_no_cap_draws_at_the_files_size(model):
    """--max-overlay-side 0: the old behaviour, every image drawn at its own size."""
    photo = _bytes("rocket.jpg")
    handler, held = _handler(model, app.ServeOptions(max_overlay_side=0))
    held.go.set()
    reply = asyncio.run(_post(handler, photo))
    h, w = images.decode_bgr(photo).shape[:2]
    assert _png(reply.body["heatmap_png"]).shape == (h, w) and "drawn_height" not in reply.body


def test_limits_are_checked_when_made():
    for bad in ({"max_decoding": 0}, {"max_queued": -1}, {"request_timeout_s": 0.0}):
        with pytest.raises(app.OptionError):
            app.ServeOptions(**bad)
    with pytest.raises(app.OptionError):
        runner.RunOptions(max_overlay_side=-1)


def test_explain_run_refuses_a_bomb_in_a_folder_by_its_header_and_goes_on(tiny_onnx, tmp_path):
    """A 15000 x 15000 PNG among two photos: its row says it is over --max-pixels (its header
    was read: decoding it would say 'not a readable image', since it holds one row), the
    photos are explained with overlays at --max-overlay-side, and the run exits 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(samples.photo_path(name), folder / name)
    (folder / "bomb.png").write_bytes(_bomb_header())
    code = "from explain_export.cli.run import main; raise SystemExit(main())"
    out = tmp_path / "o"
    args = ["--model", tiny_onnx, "--images", str(folder), "--out", str(out), "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--max-overlay-side", "200"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in map(json.loads, proc_lines(out))}
    assert (
        "15000x15000 is 225,000,000 pixels, over the limit of 50,000,000"
        in rows["bomb.png"]["error"]
    )
    assert "bomb.png" in proc.stderr and "over the limit" in proc.stderr
    for name in ("chelsea", "rocket"):
        assert "error" not in rows[f"{name}.{'png' if name == 'chelsea' else 'jpg'}"]
        drawn = cv2.imread(str(out / f"{name}.overlay.png"))
        assert max(drawn.shape[:2]) == 200


def proc_lines(out) -> list[str]:
    return (out / "predictions.jsonl").read_text().splitlines()

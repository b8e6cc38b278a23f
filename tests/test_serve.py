"""explain-serve: the request handling (no Ray) answers exactly what explain-run writes; the live
server (marker ``serve``) answers real photos, refuses bad requests, keeps up under load, and
shuts down cleanly on SIGTERM.

Set ``EXPLAIN_SERVE_LOAD_OUT=benchmarks/results/serve-load.json`` to keep the load figures.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from explain_export.artifact import images, samples
from explain_export.artifact.serve import app
from explain_export.cli.run import main as run_main
from explain_export.cli.serve import main as serve_main
from explain_export.errors import UsageError

PHOTOS = samples.PHOTOS
ALL = app.Query(overlay=True, heatmap=True, topk=5)


class _OneBatch:
    """What ``@serve.batch`` does with requests that all arrive within its wait: the graph inputs
    of ``n`` concurrent requests go to ``run`` in one call, once each request has sent its input
    or finished without one (a body that does not decode)."""

    def __init__(self, n: int) -> None:
        self.n, self.finished, self.run = n, 0, None
        self.waiting: list[tuple[np.ndarray, asyncio.Future]] = []
        self.calls: list[asyncio.Task] = []

    async def __call__(self, image_input: np.ndarray):
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((image_input, future))
        self._flush()
        return await future

    def done(self, _task: asyncio.Task) -> None:
        self.finished += 1
        self._flush()

    def _flush(self) -> None:
        if self.waiting and len(self.waiting) + self.finished == self.n:
            waiting, self.waiting = self.waiting, []
            self.calls.append(asyncio.ensure_future(self._call(waiting)))

    async def _call(self, waiting: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            outputs = await self.run([image_input for image_input, _ in waiting])
        except Exception as exc:
            for _, future in waiting:
                future.set_exception(exc)
        else:
            for (_, future), out in zip(waiting, outputs, strict=True):
                future.set_result(out)


def explain_batch(model, requests, opts):
    """``(body, query)`` requests sent together through the deployment's own handling, without
    Ray: :meth:`app.Handler.explain` per request (a bad image gets its own 4xx reply and the rest
    go on), the graph inputs of the others to :meth:`app.Handler.run_batch` in one call."""
    batch = _OneBatch(len(requests))
    handler = app.Handler(model, opts, batch)
    batch.run = handler.run_batch

    async def send_all():
        tasks = [asyncio.create_task(handler.explain(body, query)) for body, query in requests]
        for task in tasks:
            task.add_done_callback(batch.done)
        return await asyncio.gather(*tasks)

    return asyncio.run(send_all())


def _huge_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A PNG header that claims ``w`` x ``h`` pixels, with no image data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4


def _png(b64: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), flags)


@pytest.fixture(scope="module")
def model_path(default_export) -> str:
    return str(default_export / "explainer.onnx")


@pytest.fixture(scope="module")
def model(model_path) -> app.Model:
    return app.open_model(model_path, threads=1)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """The encoded bytes of scikit-image's four photos, as a client would send them."""
    out = {}
    for name in PHOTOS:
        with open(samples.photo_path(name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def expected(model_path, tmp_path_factory) -> dict[str, dict]:
    """explain-run's answers for the four photos: top-5, 8-bit heatmap and overlay per file."""
    out = tmp_path_factory.mktemp("explain_run")
    paths = [samples.photo_path(n) for n in PHOTOS]
    args = ["--model", model_path, "--images", *paths, "--out", str(out), "--quiet"]
    assert run_main([*args, "--save-heatmaps", "--topk", "5", "--batch-size", "4"]) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    result = {}
    for name, line in zip(PHOTOS, lines, strict=True):
        stem = os.path.splitext(name)[0]
        result[name] = {
            "topk": line["topk"],
            "explained": named_classes(line),
            "heatmap": cv2.imread(str(out / f"{stem}.heatmap.png"), cv2.IMREAD_UNCHANGED),
            "overlay": cv2.imread(str(out / f"{stem}.overlay.png"), cv2.IMREAD_UNCHANGED),
        }
    return result


def named_classes(line: dict) -> list[dict]:
    """A predictions.jsonl row's ``explained`` as the server answers it (no file names)."""
    return [{k: e[k] for k in ("class", "label", "score")} for e in line["explained"]]


def assert_same_answer(body: dict, want: dict, exact: bool = True) -> None:
    """A JSON answer against explain-run's files; ``exact=False`` allows the few-ulp changes
    that another batch composition may cause on some CPUs (never a different class)."""
    got = body["topk"]
    assert [(t["class"], t["label"]) for t in got] == [
        (t["class"], t["label"]) for t in want["topk"]
    ]
    named = [(e["class"], e["label"]) for e in body["explained"]]  # the class the map explains
    assert named == [(e["class"], e["label"]) for e in want["explained"]]
    heatmap, overlay_bgr = _png(body["heatmap_png"]), _png(body["overlay_png"])
    assert heatmap.dtype == np.uint8 and heatmap.shape == want["heatmap"].shape
    assert overlay_bgr.shape == want["overlay"].shape
    assert (body["height"], body["width"]) == want["heatmap"].shape
    if exact:
        assert got == want["topk"] and body["explained"] == want["explained"]
        np.testing.assert_array_equal(heatmap, want["heatmap"])
        np.testing.assert_array_equal(overlay_bgr, want["overlay"])
    else:
        scores = [t["score"] for t in got]
        np.testing.assert_allclose(scores, [t["score"] for t in want["topk"]], atol=1e-5)
        assert np.abs(heatmap.astype(int) - want["heatmap"]).max() <= 1
        assert np.abs(overlay_bgr.astype(int) - want["overlay"]).max() <= 3


# ---- the plain functions, no Ray ---------------------------------------------------------------


def test_a_batch_answers_exactly_what_explain_run_writes(model, photos, expected):
    replies = explain_batch(model, [(photos[n], ALL) for n in PHOTOS], app.ServeOptions())
    assert [r.status for r in replies] == [200] * 4
    for name, reply in zip(PHOTOS, replies, strict=True):
        assert reply.body["batch_size"] == 4
        assert_same_answer(reply.body, expected[name])
    assert 281 <= replies[0].body["topk"][0]["class"] <= 285  # chelsea.png is a cat


def test_one_image_at_a_time_gives_the_same_answers(model, photos, expected):
    for name in PHOTOS:
        (reply,) = explain_batch(model, [(photos[name], ALL)], app.ServeOptions())
        assert reply.status == 200 and reply.body["batch_size"] == 1
        assert_same_answer(reply.body, expected[name], exact=False)


def test_query_chooses_the_images_and_topk(model, photos, expected):
    asks = [app.Query(overlay=False, heatmap=False, topk=1), app.Query()]
    replies = explain_batch(model, [(photos["rocket.jpg"], q) for q in asks], app.ServeOptions())
    bare, default = (r.body for r in replies)
    assert set(bare) == {"topk", "height", "width", "batch_size", "explained"}
    assert bare["topk"] == expected["rocket.jpg"]["topk"][:1] == bare["explained"]  # the top-1
    assert "overlay_png" in default and "heatmap_png" not in default
    assert len(default["topk"]) == 5


def test_bad_bodies_fail_alone_with_one_line_errors(model, photos, expected):
    bodies = [
        b"",
        b"this is not an image",
        _huge_png(),
        photos["coffee.png"],
        photos["rocket.jpg"][:200],  # a JPEG cut off in its header
        os.urandom(4096),
    ]
    replies = explain_batch(model, [(b, ALL) for b in bodies], app.ServeOptions())
    assert [r.status for r in replies] == [400, 400, 413, 200, 400, 400]
    for r in replies[:3] + replies[4:]:
        assert set(r.body) == {"error"} and "\n" not in r.body["error"]
    assert replies[0].body["error"].startswith("empty body")
    assert f"over the limit of {images.DEFAULT_MAX_PIXELS:,}" in replies[2].body["error"]
    assert replies[3].body["batch_size"] == 1
    assert_same_answer(replies[3].body, expected["coffee.png"], exact=False)
    small = app.ServeOptions(max_body_bytes=1000, max_pixels=10_000)
    too_big = explain_batch(model, [(photos["coffee.png"], ALL)], small)
    assert too_big[0].status == 413 and "over the limit of 1,000" in too_big[0].body["error"]


@pytest.fixture(scope="module")
def uint8_export(tmp_path_factory) -> str:
    """A small explainer exported for servers: uint8 NHWC input, in-graph overlay, any size."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer
    from explain_export.builder.plan import GraphOptions

    from models import tiny_resnet

    out = tmp_path_factory.mktemp("uint8")
    graph = GraphOptions(input_format="uint8-nhwc", overlay=True)
    explainer = build_explainer(tiny_resnet(seed=3), input_size=(48, 64), graph=graph)
    labels = [f"class{i}" for i in range(10)]
    export_explainer(explainer, str(out), ("onnx",), labels=labels, dynamic_size=True)
    return str(out / "explainer.onnx")


@pytest.mark.slow
def test_uint8_graphs_with_an_overlay_output_are_served_like_explain_run(
    uint8_export, photos, tmp_path
):
    """The runtime feeds uint8 NHWC graphs; the overlay is still drawn at the original size."""
    model = app.open_model(uint8_export)
    assert model.artifact.input_format == "uint8-nhwc" and model.size == (48, 64)
    paths = [samples.photo_path(n) for n in PHOTOS]
    args = ["--model", uint8_export, "--images", *paths, "--out", str(tmp_path), "--quiet"]
    assert run_main([*args, "--save-heatmaps", "--topk", "3", "--resize", "pad"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    query = app.Query(overlay=True, heatmap=True, topk=3)
    opts = app.ServeOptions(resize="pad")
    replies = explain_batch(model, [(photos[n], query) for n in PHOTOS], opts)
    for name, line, reply in zip(PHOTOS, lines, replies, strict=True):
        stem = os.path.splitext(name)[0]
        assert reply.status == 200 and reply.body["topk"][0]["label"].startswith("class")
        assert_same_answer(
            reply.body,
            {
                "topk": line["topk"],
                "explained": named_classes(line),
                "heatmap": cv2.imread(str(tmp_path / f"{stem}.heatmap.png"), cv2.IMREAD_UNCHANGED),
                "overlay": cv2.imread(str(tmp_path / f"{stem}.overlay.png"), cv2.IMREAD_UNCHANGED),
            },
        )


def test_decode_bgr_for_request_bodies(photos):
    """The server decodes bodies with images.decode_bgr: same pixels as a file, 413 cases apart."""
    for name in PHOTOS:
        path = samples.photo_path(name)
        np.testing.assert_array_equal(images.decode_bgr(photos[name]), images.read_bgr(path))
    for data, limit in ((_huge_png(), images.DEFAULT_MAX_PIXELS), (photos["coffee.png"], 1000)):
        with pytest.raises(images.PixelLimitError, match="over the limit"):
            images.decode_bgr(data, limit)
    for data in (b"", b"not an image at all"):
        with pytest.raises(images.ImageError) as err:
            images.decode_bgr(data)
        assert not isinstance(err.value, images.PixelLimitError)


def test_jpeg_header_with_fill_bytes(photos):
    data = photos["rocket.jpg"]
    assert images.header_size(data) == (427, 640)
    assert images.header_size(data[:2] + b"\xff\xff\xff" + data[2:]) == (427, 640)


def test_query_parsing():
    assert app.parse_query({}, 1000) == app.Query(overlay=True, heatmap=False, topk=5)
    assert app.parse_query({}, 3).topk == 3
    q = app.parse_query({"heatmap": "", "overlay": "false", "topk": "10"}, 1000)
    assert q == app.Query(overlay=False, heatmap=True, topk=10)
    for params, message in [
        ({"topk": "0"}, "topk='0' must be an integer 1 to 1000"),
        ({"topk": "1001"}, "topk='1001' must be an integer 1 to 1000"),
        ({"topk": "abc"}, "must be an integer"),
        ({"topk": "9" * 5000}, "must be an integer"),
        ({"topk": "²"}, "must be an integer"),
        ({"overlay": "maybe"}, "overlay='maybe' is not a boolean"),
        ({"heatmpa": "1"}, "unknown query parameter 'heatmpa'; use overlay, heatmap, topk"),
    ]:
        with pytest.raises(app.RequestError, match=message) as err:
            app.parse_query(params, 1000)
        assert err.value.status == 400


def test_routes_and_declared_lengths():
    assert app.route("POST", "/explain") == "/explain"
    assert app.route("GET", "/healthz/") == "/healthz"
    with pytest.raises(app.RequestError) as err:
        app.route("GET", "/explain")
    assert err.value.status == 405 and err.value.headers == {"Allow": "POST"}
    with pytest.raises(app.RequestError) as err:
        app.route("POST", "/predict\nmore")
    assert err.value.status == 404 and "\n" not in str(err.value)
    assert str(err.value) == "no route '/predict\\nmore'; use POST /explain or GET /healthz"
    app.check_length(None, 10)
    app.check_length("10", 10)
    for value, status in [("11", 413), ("9" * 5000, 413), ("-1", 400), ("ten", 400), ("²", 400)]:
        with pytest.raises(app.RequestError) as err:
            app.check_length(value, 10)
        assert err.value.status == status


def test_health_and_models_that_cannot_be_served(model, model_path, default_export, tmp_path):
    h = app.health(model)
    assert h["status"] == "ok" and h["model"] == os.path.abspath(model_path)
    assert h["providers"] == ["CPUExecutionProvider"] and h["input_size"] == [224, 224]
    assert h["classes"] == 1000 and h["method"] == "cam" and h["threads"] == 1
    with pytest.raises(UsageError, match="not .onnx"):
        app.open_model(str(default_export / "explainer.torchscript.pt"))
    with pytest.raises(UsageError, match="no model at"):
        app.open_model(str(tmp_path / "missing.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(UsageError, match=r"junk\.onnx' is not a readable ONNX file \(damaged"):
        app.open_model(str(tmp_path / "junk.onnx"))


def test_the_deployment_hands_requests_and_batches_to_the_handler(monkeypatch, model_path):
    """The Ray deployment only adapts: its __call__ is Handler.handle, its @serve.batch method
    Handler.run_batch (called here undecorated, with no Ray instance)."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    from explain_export.artifact.serve import ray_app

    calls = []

    async def handle(self, *args):
        calls.append(("handle", args[:4], [chunk async for chunk in args[4]]))
        return app.Reply(405, {"error": "no"}, {"Allow": "GET"})

    async def run_batch(self, inputs):
        calls.append(("run_batch", inputs))
        return ["outputs"] * len(inputs)

    monkeypatch.setattr(app.Handler, "handle", handle)
    monkeypatch.setattr(app.Handler, "run_batch", run_batch)
    cls = ray_app.make_deployment(ray_app.ServerConfig(model_path)).func_or_class
    replica = cls.__new__(cls)  # not __init__: that opens the model inside a Ray replica
    replica.handler = app.Handler(None, app.ServeOptions(), replica.infer)

    async def stream():
        yield b"ab"
        yield b"c"

    request = SimpleNamespace(
        method="PUT",
        url=SimpleNamespace(path="/explain"),
        query_params={"topk": "1"},
        headers={"content-length": "3"},
        stream=stream,
    )
    response = asyncio.run(replica(request))
    assert (response.status_code, response.headers["allow"]) == (405, "GET")
    assert json.loads(response.body) == {"error": "no"}
    assert asyncio.run(cls.infer.__wrapped__(replica, ["x", "y"])) == ["outputs"] * 2
    assert calls == [
        ("handle", ("PUT", "/explain", {"topk": "1"}, "3"), [b"ab", b"c"]),
        ("run_batch", ["x", "y"]),
    ]


def test_importing_the_app_imports_neither_ray_nor_torch():
    code = (
        "import sys\n"
        "import explain_export.artifact.serve.app, explain_export.cli.serve\n"
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_usage_errors_exit_2_before_ray_starts(model_path, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            (["--model", str(tmp_path / "none.onnx")], "no model at"),
            (["--model", model_path, "--replicas", "0"], "--replicas must be at least 1"),
            (["--model", model_path, "--colormap", "nope"], "unknown --colormap 'nope'"),
            (["--model", model_path, "--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
        ]
        for args, message in cases:
            assert serve_main(args) == 2
            err = capsys.readouterr().err
            assert err.startswith("explain-serve: error: ") and message in err
            assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        serve_main(["--max-batch-size", "x"])
    assert exc.value.code == 2


class _Health:
    """A stand-in for the Serve proxy: GET /healthz answers 200 on ``port`` once started."""

    def __init__(self, port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/healthz" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("answers", [True, False])
def test_serving_on_is_said_once_healthz_answers_before_every_replica_is_up(
    answers, model_path, monkeypatch
):
    """``deploy`` (Serve's wait for the whole application) is held until the command says
    "serving on": the line comes once /healthz answers, not when deploy returns. Where nothing
    answers, it comes when deploy returns; where deploy fails, never."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    from explain_export.artifact.serve import ray_app
    from explain_export.cli import serve as serve_cli

    said: list[str] = []
    serving = threading.Event()

    def log(message: str) -> None:
        said.append(message)
        if message.startswith("serving on"):
            serving.set()
            os.kill(os.getpid(), signal.SIGTERM)  # the command's own handler: stop

    def deploy(config) -> None:
        said.append("deploy: waiting for every replica")
        if answers:  # held until the line is said, while deploy still waits
            health = _Health(config.port)
            try:
                assert serving.wait(60)
            finally:
                health.close()
        said.append("deploy: every replica up")

    monkeypatch.setattr(serve_cli, "log", log)
    monkeypatch.setattr(ray_app, "start_ray", lambda config: None)
    monkeypatch.setattr(ray_app, "deploy", deploy)
    monkeypatch.setattr(ray_app, "stop", lambda: said.append("ray stopped"))
    port = _free_port()
    assert serve_main(["--model", model_path, "--port", str(port), "--num-cpus", "1"]) == 0
    line = f"serving on http://127.0.0.1:{port} (POST /explain, GET /healthz); Ctrl-C to stop"
    up, done = (
        said.index("deploy: waiting for every replica"),
        said.index("deploy: every replica up"),
    )
    assert said.index(line) in ((up + 1,) if answers else (done + 1,))
    assert said[-3:] == ["shutting down", "ray stopped", "stopped"]


def test_serving_on_is_not_said_where_deploy_fails(model_path, monkeypatch, capsys):
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    from explain_export.artifact.serve import ray_app

    def deploy(config) -> None:
        raise RuntimeError("Deploying application explain-export failed: replica died")

    monkeypatch.setattr(ray_app, "start_ray", lambda config: None)
    monkeypatch.setattr(ray_app, "deploy", deploy)
    monkeypatch.setattr(ray_app, "stop", lambda: None)
    assert serve_main(["--model", model_path, "--port", str(_free_port())]) == 1
    err = capsys.readouterr().err
    assert "serving on" not in err and "replica died" in err
    assert "(onnxruntime CPUExecutionProvider, input " in err  # the model: line

    # with --device cuda the model is checked here on the CPU; the line names where it runs
    args = ["--model", model_path, "--port", str(_free_port()), "--device", "cuda"]
    assert serve_main(args) == 1
    model_line = next(s for s in capsys.readouterr().err.splitlines() if "model: " in s)
    assert "(replicas on CUDA, input " in model_line and "CPUExecutionProvider" not in model_line


# ---- the live server (Ray Serve on 127.0.0.1) -------------------------------------------------

REPLICAS, MAX_BATCH, WAIT_MS, MAX_BODY_MB = 2, 8, 10, 1
LOAD_REQUESTS, LOAD_CONCURRENCY = 200, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data, headers = response.read(), dict(response.getheaders())
        is_json = headers.get("content-type") == "application/json"
        return response.status, json.loads(data) if is_json else data.decode(), headers
    finally:
        conn.close()


class Server:
    """``explain-serve`` in a subprocess (its own session), logging to a file."""

    def __init__(self, model_path: str, log_path: str, replicas: int = REPLICAS) -> None:
        self.port = _free_port()
        self.log_path = log_path
        cmd = [sys.executable, "-m", "explain_export.cli.serve", "--model", model_path]
        cmd += ["--port", str(self.port), "--replicas", str(replicas), "--num-cpus", "2"]
        cmd += ["--max-batch-size", str(MAX_BATCH), "--batch-wait-ms", str(WAIT_MS)]
        cmd += ["--max-body-mb", str(MAX_BODY_MB)]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout: float = 150, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"explain-serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if _request(self.port, "GET", "/healthz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(poll)
        pytest.fail(f"explain-serve not ready in {timeout:.0f} s:\n{self.log()[-3000:]}")

    def wait_said(self, text: str, timeout: float = 150, poll: float = 0.1) -> None:
        """Until the log has ``text`` (a failure if the server exits or the time runs out)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                pytest.fail(f"explain-serve exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"explain-serve never said {text!r}:\n{self.log()[-3000:]}")
            time.sleep(poll)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # only the session this test started
            self.proc.wait(10)
            raise


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    srv = Server(model_path, str(tmp_path_factory.mktemp("serve") / "server.log"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop()


def _post(port: int, body: bytes, query: str = "heatmap=1&overlay=1&topk=5"):
    return _request(port, "POST", f"/explain?{query}", body)


@pytest.mark.serve
def test_live_healthz_reports_the_model_and_no_torch_in_any_replica(server, model_path):
    seen = set()
    for _ in range(20):
        status, body, _ = _request(server.port, "GET", "/healthz")
        assert status == 200 and body["status"] == "ok"
        assert body["model"] == os.path.abspath(model_path) and body["input_size"] == [224, 224]
        assert body["backend"] == "onnxruntime CPUExecutionProvider" and body["threads"] == 1
        assert body["torch_imported"] is False
        seen.add(body["replica"])
    assert 1 <= len(seen) <= REPLICAS


@pytest.mark.serve
def test_live_answers_equal_explain_run(server, photos, expected):
    for name in PHOTOS:
        status, body, headers = _post(server.port, photos[name])
        assert status == 200 and headers["content-type"] == "application/json"
        assert_same_answer(body, expected[name], exact=False)


@pytest.mark.serve
def test_live_bad_requests_get_4xx_and_the_server_keeps_serving(server, photos, expected):
    big = b"\0" * (MAX_BODY_MB * 2**20 + 1)
    cases = [
        ("POST", "/explain", b"", 400, "empty body"),
        ("POST", "/explain", b"%PDF-1.4 not an image", 400, "not a readable image"),
        ("POST", "/explain", os.urandom(10_000), 400, "not a readable image"),
        ("POST", "/explain", _huge_png(), 413, "10,000,000,000 pixels, over the limit"),
        ("POST", "/explain", big, 413, "over the limit of 1,048,576"),
        ("POST", "/explain?topk=0", photos["coffee.png"], 400, "topk='0'"),
        ("POST", "/explain?color=red", photos["coffee.png"], 400, "unknown query parameter"),
        ("GET", "/explain", None, 405, "GET /explain is not allowed; use POST /explain"),
        ("PUT", "/explain", photos["coffee.png"], 405, "use POST /explain"),
        ("POST", "/healthz", b"x", 405, "use GET /healthz"),
        ("GET", "/", None, 404, "no route '/'"),
        ("POST", "/predict", photos["coffee.png"], 404, "no route '/predict'"),
        ("GET", "/a%0Ab", None, 404, "no route '/a"),  # an encoded newline stays off the line
    ]
    for method, path, body, want, message in cases:
        status, answer, headers = _request(server.port, method, path, body)
        assert (status, set(answer)) == (want, {"error"}), (method, path, answer)
        assert message in answer["error"] and "\n" not in answer["error"], answer
        if want == 405:
            assert headers["allow"] in ("GET", "POST")
        assert _request(server.port, "GET", "/healthz")[0] == 200
    status, body, _ = _post(server.port, photos["chelsea.png"])
    assert status == 200
    assert_same_answer(body, expected["chelsea.png"], exact=False)
    assert server.proc.poll() is None


@pytest.mark.serve
def test_live_a_form_upload_is_answered_like_the_bytes(server, photos, expected, tmp_path):
    """``curl -F file=@chelsea.png``, the way many clients send a file, as a user types it."""
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    cat = tmp_path / "chelsea.png"
    cat.write_bytes(photos["chelsea.png"])
    url = f"http://127.0.0.1:{server.port}/explain?heatmap=1"
    proc = subprocess.run(
        ["curl", "-sS", "-F", f"file=@{cat}", url], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert_same_answer(json.loads(proc.stdout), expected["chelsea.png"], exact=False)


@pytest.mark.serve
def test_live_load_every_answer_correct_none_lost(server, photos, expected):
    """LOAD_REQUESTS requests from LOAD_CONCURRENCY threads, each on a keep-alive connection."""
    names = [PHOTOS[i % len(PHOTOS)] for i in range(LOAD_REQUESTS)]
    latencies = [0.0] * LOAD_REQUESTS
    answers: list[tuple[int, dict] | None] = [None] * LOAD_REQUESTS
    errors: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            for i in range(w, LOAD_REQUESTS, LOAD_CONCURRENCY):
                t0 = time.perf_counter()
                conn.request("POST", "/explain", body=photos[names[i]])
                response = conn.getresponse()
                data = response.read()
                latencies[i] = time.perf_counter() - t0
                answers[i] = (response.status, json.loads(data))
        except Exception as exc:
            with lock:
                errors.append(f"worker {w}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        list(pool.map(worker, range(LOAD_CONCURRENCY)))
    wall = time.perf_counter() - start

    assert not errors, errors
    assert all(a is not None for a in answers), "lost requests"
    batch_sizes = []
    for name, (status, body) in zip(names, answers, strict=True):
        assert status == 200, body
        assert body["topk"][0]["class"] == expected[name]["topk"][0]["class"], name
        overlay_png = base64.b64decode(body["overlay_png"])
        assert images.header_size(overlay_png) == expected[name]["overlay"].shape[:2]
        batch_sizes.append(body["batch_size"])
    ms = np.array(latencies) * 1000
    figures = {
        "requests": LOAD_REQUESTS,
        "concurrency": LOAD_CONCURRENCY,
        "replicas": REPLICAS,
        "max_batch_size": MAX_BATCH,
        "batch_wait_ms": WAIT_MS,
        "query": "default (overlay, top-5)",
        "photos": list(PHOTOS),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "throughput_rps": round(LOAD_REQUESTS / wall, 1),
        "wall_s": round(wall, 2),
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2),
        "max_batch_seen": int(max(batch_sizes)),
        "cpus": os.cpu_count(),
    }
    print(f"\nexplain-serve load: {json.dumps(figures)}")
    out = os.environ.get("EXPLAIN_SERVE_LOAD_OUT")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
    assert max(batch_sizes) > 1, "requests were never batched"
    assert max(batch_sizes) <= MAX_BATCH


@pytest.mark.serve
def test_live_ctrl_c_shuts_down_cleanly_and_frees_the_port(model_path, tmp_path):
    """A server of its own (the shared one stays up for the other tests, in any order): it says
    "serving on" when it takes requests (/healthz answers right after), SIGINT stops it, it
    exits 0, and its port can be bound again."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    srv = Server(model_path, str(tmp_path / "server.log"), replicas=1)
    try:
        srv.wait_said(f"serving on http://127.0.0.1:{srv.port} (POST /explain, GET /healthz)")
        status, body, _ = _request(srv.port, "GET", "/healthz")  # said once it answers
        assert status == 200 and body["status"] == "ok"
    finally:
        code = srv.stop(signal.SIGINT)
    log = srv.log()
    assert code == 0, log[-3000:]
    assert "shutting down" in log and "stopped" in log and "Traceback" not in log
    # nothing from Ray that reads as a problem: no WARNING lines (its token note), no
    # "graceful_shutdown failed ... killed by ray.kill"
    assert "WARNING" not in log and "graceful_shutdown" not in log and "ray.kill" not in log, log
    with socket.socket() as s:
        s.bind(("127.0.0.1", srv.port))


@pytest.mark.serve
def test_live_sigterm_while_starting_up_still_shuts_down_cleanly(model_path, tmp_path):
    """SIGTERM as soon as the replica answers, while the command still waits for the deployment
    (where Ray's own SIGTERM handler would abort the process)."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    srv = Server(model_path, str(tmp_path / "server.log"), replicas=1)
    try:
        srv.wait_ready(poll=0.05)
    finally:
        code = srv.stop(signal.SIGTERM)
    log = srv.log()
    assert code == 0, log[-3000:]
    assert "shutting down" in log and "stopped" in log and "SIGTERM received" not in log
    with socket.socket() as s:
        s.bind(("127.0.0.1", srv.port))


@pytest.mark.serve
def test_live_top_k_answers_carry_k_maps_with_their_labels(photos, tmp_path):
    """A top-2 export behind the live server: ``explained`` holds two maps, best first, each
    with its label and PNGs, as the handling without Ray answers; ``class`` is refused."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

    from models import tiny_resnet

    explainer = build_explainer(tiny_resnet(seed=3), None, "cam", (64, 64), top_k=2)
    labels = [f"class{i}" for i in range(10)]
    path = export_explainer(explainer, str(tmp_path), ("onnx",), labels=labels).paths["onnx"]
    explainer.remove()
    query = app.Query(overlay=True, heatmap=True, topk=3)
    requests = [(photos[n], query) for n in PHOTOS]
    here = explain_batch(app.open_model(path), requests, app.ServeOptions())
    srv = Server(path, str(tmp_path / "server.log"), replicas=1)
    try:
        srv.wait_ready()
        assert _request(srv.port, "GET", "/healthz")[1]["top_k"] == 2
        for name, want in zip(PHOTOS, here, strict=True):
            status, body, _ = _post(srv.port, photos[name], "heatmap=1&topk=3")
            assert status == 200 and "overlay_png" not in body
            got, expected_maps = body["explained"], want.body["explained"]
            assert [(m["class"], m["label"]) for m in got] == [
                (m["class"], m["label"]) for m in expected_maps
            ]
            assert [m["label"] for m in got] == [labels[m["class"]] for m in got]
            for a, b in zip(got, expected_maps, strict=True):
                for key in ("overlay_png", "heatmap_png"):
                    diff = _png(a[key]).astype(int) - _png(b[key])
                    assert np.abs(diff).max() <= 3
        status, body, _ = _post(srv.port, photos["coffee.png"], "class=1")
        assert status == 400 and "explains the 2 best classes" in body["error"]
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-3000:]

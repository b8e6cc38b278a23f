"""``explain-serve``: serve an exported explainer.onnx over HTTP with Ray Serve (no torch).

Needs the ``serve`` extra: ``pip install "explain-export[serve]"``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from ..words import count
from ._common import ArgumentParser, add_overlay_flags, log, overlay_options, run_main

__all__ = ["DEFAULT_MODEL", "EPILOG", "PROG", "build_parser", "main"]

if TYPE_CHECKING:
    from ..artifact.serve.ray_app import ServerConfig

PROG = "explain-serve"
DEFAULT_MODEL = os.path.join("explainer", "explainer.onnx")

EPILOG = """\
examples:
  explain-serve --model explainer/explainer.onnx
  explain-serve --model explainer/explainer.onnx --replicas 2 --max-batch-size 8 --port 8080
  curl --data-binary @cat.png 'http://127.0.0.1:8000/explain?heatmap=1&topk=3'
  curl -F file=@cat.png http://127.0.0.1:8000/explain           (a form upload works too)
  curl http://127.0.0.1:8000/healthz

POST /explain: the body is the image file's bytes, or a multipart form with the file in one
field. Query: overlay=1|0 (default 1), heatmap=1|0 (default 0), topk=K (default 5), class=K
(default -1, the top-1; a model exported with --class-input). Answer: JSON with topk (class,
label, score), explained (the class the heatmap explains: [{class, label, score}]), height,
width (the file's), batch_size, and overlay_png / heatmap_png as base64 PNGs at the original
resolution, or at most --max-overlay-side on the longer side (then drawn_height, drawn_width
say their size), computed as explain-run computes them. A model
exported with --top-k K answers K maps instead, best first: explained = [{class, label, score,
overlay_png, heatmap_png}, ...] (no class= then). A segmentation model answers the region of
the class explained in place of topk: class, label, pixel_share (the fraction of the image's
pixels predicted as it), predicted (the topk classes with most pixels), a note where no pixel
is the class; overlay_png outlines the region. A detection model answers detections
([{box: [x1, y1, x2, y2] in the file's pixels, class, label, score}], best first, as
explain-run's predictions.jsonl) in place of topk; detections=K keeps the K best (no topk= or
class= then); overlay_png is the best detection's map with those boxes drawn.
Errors: {"error": "..."}, status 400 (empty, not an image, bad query), 413 (too many bytes or
pixels; pixels are read from the header, before decoding), 404, 405; 500 model failure; 503
with Retry-After (the replica holds --max-decoding + --max-queued requests already; answered
at once), 504 (past --request-timeout).

Memory: one request holds its body, then its image decoded at most --max-overlay-side on the
longer side; at most --max-decoding images per replica are decoded or drawn at once (a decode
holds the file's full size, up to --max-pixels, for a moment), and a replica holds at most
--max-decoding + --max-queued requests.

CPUs: Ray gets --num-cpus; each replica reserves num-cpus/replicas of them and runs ONNX
Runtime with --threads intra-op threads (default: num-cpus // replicas, at least 1).
Ctrl-C or SIGTERM shuts the app and Ray down.

exit codes: 0 stopped cleanly, 1 failure, 2 usage (bad flag or model, port in use).
"""


def build_parser() -> argparse.ArgumentParser:
    from ..artifact.serve.admission import DEFAULT_MAX_QUEUED, DEFAULT_TIMEOUT_S
    from ..artifact.serve.app import DEFAULT_MAX_BODY_BYTES

    p = ArgumentParser(
        prog=PROG,
        description="Serve an exported explainer.onnx over HTTP with Ray Serve: "
        "top-k labels, heatmap and overlay per posted image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        metavar="PATH",
        default=DEFAULT_MODEL,
        help="an explainer.onnx from explain-export, or the folder it wrote (its "
        f"explainer.onnx; default: {DEFAULT_MODEL})",
    )
    s = p.add_argument_group("serving")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    s.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="copies of the model, each its own process (default: 1)",
    )
    s.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="most images per model call (default: 8)",
    )
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        metavar="T",
        help="longest wait for a batch to fill, in ms (default: 10)",
    )
    s.add_argument(
        "--num-cpus",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help=f"CPUs Ray may use, shared by the replicas (default: {os.cpu_count() or 1})",
    )
    s.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="ONNX Runtime intra-op threads per replica (default: num-cpus // replicas)",
    )
    s.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: replicas run ONNX Runtime's CUDA provider with IO binding and CUDA graphs, "
        "sharing --num-gpus (default: cpu)",
    )
    s.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        metavar="N",
        help="GPUs Ray may use with --device cuda, shared by the replicas (default: 1)",
    )
    s.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="with --device cuda: run every batch without CUDA graph replay",
    )
    s.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_BYTES / 2**20,
        metavar="MB",
        help=f"refuse bodies larger than this (default: {DEFAULT_MAX_BODY_BYTES // 2**20})",
    )
    s.add_argument(
        "--max-decoding",
        type=int,
        metavar="N",
        help="images decoded or drawn at once per replica; more threads than the replica's "
        "CPUs add memory but no speed (default: its CPUs, num-cpus // replicas, at least 1)",
    )
    s.add_argument(
        "--max-queued",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        metavar="N",
        help="requests a replica holds beyond the --max-decoding it works on; one more is "
        f"answered 503 with Retry-After at once (default: {DEFAULT_MAX_QUEUED})",
    )
    s.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="answer 504 to a request still unanswered after S seconds, and drop its work; 0: "
        f"no limit (default: {DEFAULT_TIMEOUT_S:g})",
    )
    s.add_argument("--access-log", action="store_true", help="log every request")
    o = p.add_argument_group("images (as in explain-run)")
    add_overlay_flags(o)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _config(args: argparse.Namespace) -> ServerConfig:
    from ..artifact.serve.app import ServeOptions
    from ..artifact.serve.ray_app import ServerConfig
    from ..errors import UsageError

    for flag, value, least in (
        ("--replicas", args.replicas, 1),
        ("--max-batch-size", args.max_batch_size, 1),
        ("--num-cpus", args.num_cpus, 1),
        ("--num-gpus", args.num_gpus, 1),
        ("--max-pixels", args.max_pixels, 1),
        ("--port", args.port, 1),
    ):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}")
    if args.port > 65535:
        raise UsageError("--port must be at most 65535")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.batch_wait_ms < 0:
        raise UsageError("--batch-wait-ms must not be negative")
    if args.max_body_mb <= 0:
        raise UsageError("--max-body-mb must be positive")
    if args.max_decoding is not None and args.max_decoding < 1:
        raise UsageError("--max-decoding must be at least 1")
    if args.max_queued < 0:
        raise UsageError("--max-queued must not be negative")
    if not args.request_timeout >= 0:
        raise UsageError("--request-timeout must not be negative (0: no limit)")
    decoding = args.max_decoding or max(1, args.num_cpus // args.replicas)
    return ServerConfig(
        model_path=os.path.abspath(args.model),
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000.0,
        num_cpus=args.num_cpus,
        threads=args.threads or max(1, args.num_cpus // args.replicas),
        access_log=args.access_log,
        device=args.device,
        num_gpus=args.num_gpus if args.device == "cuda" else 0,
        cuda_graph=not args.no_cuda_graphs,
        onnxruntime_logs=args.debug,
        options=overlay_options(
            ServeOptions,
            args,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_decoding=decoding,
            max_queued=args.max_queued,
            request_timeout_s=args.request_timeout or None,
        ),
    )


def _check_port(host: str, port: int) -> None:
    import socket

    from ..errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--host '{host}' is not an address here: {exc.strerror or exc}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
            ) from exc


def _announce(
    host: str, port: int, stop: threading.Event, deployed: threading.Event, poll_s: float = 0.05
) -> None:
    """Log the "serving on" line as soon as ``GET /healthz`` answers 200 on ``host:port``: the
    proxy routes to a replica that is up (Serve's own wait for the whole application ends
    later). Where nothing answers by the time ``deployed`` is set (the app runs), the line is
    logged then; a stop first logs nothing."""
    import http.client

    local = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    address = f"[{local}]" if ":" in local else local
    answered = False
    while not (answered or stop.is_set() or deployed.is_set()):
        conn = http.client.HTTPConnection(address, port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            answered = conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if not answered:
            stop.wait(poll_s)
    if not stop.is_set():
        shown = f"[{host}]" if ":" in host else host
        log(f"serving on http://{shown}:{port} (POST /explain, GET /healthz); Ctrl-C to stop")


def _serve(args: argparse.Namespace) -> int:
    from ..artifact.serve import app, ray_app
    from ..errors import UsageError

    config = _config(args)
    model = app.open_model(config.model_path, config.threads)  # usage errors before Ray starts
    _check_port(config.host, config.port)
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"Ray Serve is not installed ({exc.name}); pip install 'explain-export[serve]'"
        ) from exc
    task = f", {model.meta.task}" if model.meta.task else ""  # segmentation: regions drawn
    # the model was opened here on the CPU, to check it; the replicas open it on config.device
    backend = model.artifact.backend if config.device == "cpu" else "replicas on CUDA"
    log(
        f"model: {model.path} ({backend}, input {model.size[0]}x{model.size[1]}"
        f"{task}); "
        f"{count(config.replicas, 'replica')} x {config.replica_cpus:g} CPU, "
        f"{count(config.threads, 'thread')}; "
        f"batches of up to {config.max_batch_size}, {args.batch_wait_ms:g} ms wait"
    )
    del model
    stop = threading.Event()

    def on_signal(_sig: int, _frame: object) -> None:
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    deployed = threading.Event()  # deploy() returned or failed: the announcer stops polling
    announcer = threading.Thread(
        target=_announce, args=(config.host, config.port, stop, deployed), daemon=True
    )
    try:
        ray_app.start_ray(config)
        signal.signal(signal.SIGTERM, on_signal)  # ray.init installs its own
        announcer.start()  # says "serving on" once /healthz answers: the first replica is up
        try:
            ray_app.deploy(config)  # returns once every replica is up
        except BaseException:
            stop.set()  # nothing to announce
            raise
        finally:
            deployed.set()
        announcer.join()
        while not stop.wait(0.5):
            pass
        log("shutting down")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # a second Ctrl-C interrupts the shutdown
        ray_app.stop()
    log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _serve(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())

"""The Ray Serve adapter for :mod:`.app`: a deployment that batches the model call.

:func:`build_app` wraps the request functions of :mod:`.app` (decode and fit per request, one
model call per batch with ``@serve.batch``, map back and draw per request, the per-request
steps in threads); :func:`start_ray`, :func:`deploy` and :func:`stop` run it on a local Ray
instance. Ray is imported only inside these functions.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..images import quiet_decoder_warnings
from .app import (
    Reply,
    RequestError,
    ServeOptions,
    answer,
    check_length,
    health,
    internal_error,
    model_failure,
    open_model,
    parse_query,
    prepare,
    route,
    run_model,
    too_long,
)

__all__ = ["APP_NAME", "ServerConfig", "build_app", "deploy", "start_ray", "stop"]

APP_NAME = "explain-export"  # the Serve application's name


@dataclass(frozen=True)
class ServerConfig:
    """How the app runs: Ray resources, batching, and the HTTP address."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    num_cpus: int = os.cpu_count() or 1
    threads: int | None = None  # ONNX Runtime intra-op threads per replica
    access_log: bool = False
    options: ServeOptions = field(default_factory=ServeOptions)
    device: str = "cpu"  # cuda: replicas run ONNX Runtime's CUDA provider
    num_gpus: int = 0  # GPUs given to Ray (device cuda), shared out among the replicas
    cuda_graph: bool = True  # with device cuda: replay CUDA graphs (ORT enable_cuda_graph)

    @property
    def replica_cpus(self) -> float:
        """Ray CPUs reserved per replica: the CPUs shared out, so every replica fits."""
        return self.num_cpus / self.replicas

    @property
    def replica_gpus(self) -> float:
        """Ray GPUs reserved per replica (0 on the CPU): the GPUs shared out."""
        return self.num_gpus / self.replicas if self.device == "cuda" else 0.0


def build_app(config: ServerConfig) -> Any:
    """The Ray Serve application (``Deployment.bind()``) for ``config``; imports Ray."""
    from ray import serve
    from starlette.responses import JSONResponse

    opts = config.options

    def to_response(reply: Reply) -> JSONResponse:
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers or None)

    @serve.deployment(
        name="explainer",
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
        # room for a full batch while the previous one runs
        max_ongoing_requests=2 * config.max_batch_size,
        graceful_shutdown_wait_loop_s=0.2,
        graceful_shutdown_timeout_s=10.0,
    )
    class ExplainerDeployment:
        def __init__(self) -> None:
            if config.threads:
                cv2.setNumThreads(config.threads)
            quiet_decoder_warnings()  # a bad body gets its own one-line 400, not a log line
            self.model = open_model(
                config.model_path, config.threads, config.device, config.cuda_graph
            )
            self.replica = serve.get_replica_context().replica_id.unique_id

        async def __call__(self, request: Any) -> JSONResponse:
            try:
                path = route(request.method, request.url.path)
                if path == "/healthz":
                    return to_response(Reply(200, {**health(self.model), "replica": self.replica}))
                query = parse_query(dict(request.query_params), self.model.num_classes)
                check_length(request.headers.get("content-length"), opts.max_body_bytes)
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > opts.max_body_bytes:
                        raise RequestError(413, too_long(len(body), opts.max_body_bytes))
                # decoding and drawing run in threads, concurrently with other requests;
                # only the model call is batched
                image = await asyncio.to_thread(prepare, bytes(body), self.model, opts)
            except RequestError as exc:
                return to_response(exc.reply())
            except Exception as exc:
                return to_response(internal_error(exc))
            try:
                logits, heatmap, n = await self.infer(image.input)
            except Exception as exc:
                return to_response(model_failure(exc))
            try:
                result = await asyncio.to_thread(
                    answer, self.model, image, logits, heatmap, query, opts, n
                )
            except Exception as exc:
                return to_response(internal_error(exc))
            return to_response(Reply(200, result))

        @serve.batch(max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.batch_wait_s)
        async def infer(self, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, int]]:
            outputs = await asyncio.to_thread(run_model, self.model, inputs)
            return [(lg, hm, len(inputs)) for lg, hm in outputs]

    return ExplainerDeployment.bind()


def start_ray(config: ServerConfig) -> None:
    """Start a local Ray instance with ``config.num_cpus`` CPUs (it replaces the SIGTERM
    handler: a command that handles SIGTERM installs its handler again after this)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports sent anywhere
    import ray

    ray.init(
        address="local",
        num_cpus=config.num_cpus,
        num_gpus=config.num_gpus if config.device == "cuda" else 0,
        include_dashboard=False,
        # not Ray's notes on local instances and tokens; Serve's logger is set in deploy()
        logging_level=logging.ERROR,
    )


def deploy(config: ServerConfig) -> None:
    """Start Serve's HTTP proxy on ``config.host:config.port`` and run the app (after
    :func:`start_ray`); returns when every replica is up."""
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.INFO if config.access_log else logging.WARNING)
    logging_config = {
        "log_level": "INFO" if config.access_log else "WARNING",
        "enable_access_log": config.access_log,
    }
    serve.start(
        http_options={"host": config.host, "port": config.port}, logging_config=logging_config
    )
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", logging_config=logging_config)


def stop() -> None:
    """Shut the app down (its replicas drain their requests), then the local Ray instance with
    Serve's controller and proxy in it. Not ``serve.shutdown()``: its controller can be killed
    while its own shutdown task runs, and Ray then prints "Task ServeController.graceful_shutdown
    failed ... killed by ray.kill" on the console, which reads as an error."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()

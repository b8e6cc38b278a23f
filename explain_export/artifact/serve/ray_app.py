"""The Ray Serve adapter for :mod:`.app`: a deployment that batches the model call.

:func:`make_deployment` (and :func:`build_app`, its application) wraps an :class:`.app.Handler`
per replica: each request goes to :meth:`~.app.Handler.handle` (decode and fit, map back and
draw, in threads), each ``@serve.batch`` batch of graph inputs to
:meth:`~.app.Handler.run_batch` (one model call); :func:`start_ray`, :func:`deploy` and
:func:`stop` run it on a local Ray instance. Ray is imported only inside these functions.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ...errors import DeviceFallbackWarning
from ..images import quiet_decoder_warnings
from ..providers import quiet_onnxruntime_logs
from .app import Handler, Outputs, Reply, ServeOptions, open_model

__all__ = [
    "APP_NAME",
    "ServerConfig",
    "build_app",
    "deploy",
    "make_deployment",
    "start_ray",
    "stop",
]

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
    onnxruntime_logs: bool = False  # ONNX Runtime's own log lines in the replicas (--debug)

    @property
    def replica_cpus(self) -> float:
        """Ray CPUs reserved per replica: the CPUs shared out, so every replica fits."""
        return self.num_cpus / self.replicas

    @property
    def ray_max_ongoing(self) -> int:
        """Ray's ``max_ongoing_requests`` per replica: twice the requests a replica admits
        (:class:`.admission.Admission`), so the refusals in flight fit too."""
        return 2 * (self.options.max_decoding + self.options.max_queued) + self.max_batch_size

    @property
    def replica_gpus(self) -> float:
        """Ray GPUs reserved per replica (0 on the CPU): the GPUs shared out."""
        return self.num_gpus / self.replicas if self.device == "cuda" else 0.0


def make_deployment(config: ServerConfig) -> Any:
    """The Ray Serve deployment for ``config`` (its class is ``.func_or_class``); imports Ray
    but needs no Ray instance until it runs."""
    from ray import serve
    from starlette.responses import JSONResponse

    def to_response(reply: Reply) -> JSONResponse:
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers or None)

    @serve.deployment(
        name="explainer",
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
        # more than the Handler admits (config.options.max_decoding + max_queued), so that its
        # admission sees every request and answers the ones over its most with our 503 at
        # once; Ray's own queue at the proxy (its plain-text 503 beyond max_queued_requests)
        # is a backstop only
        max_ongoing_requests=config.ray_max_ongoing,
        max_queued_requests=config.ray_max_ongoing,
        graceful_shutdown_wait_loop_s=0.2,
        graceful_shutdown_timeout_s=10.0,
    )
    class ExplainerDeployment:
        def __init__(self) -> None:
            if config.threads:
                cv2.setNumThreads(config.threads)
            quiet_decoder_warnings()  # a bad body gets its own one-line 400, not a log line
            # a CUDA provider that does not start: one line of ours (theirs too with --debug)
            quiet_onnxruntime_logs(not config.onnxruntime_logs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeviceFallbackWarning)
                graphs = None if config.cuda_graph else False  # None: on where CUDA runs
                model = open_model(config.model_path, config.threads, config.device, graphs)
            if model.artifact.note:
                logging.getLogger("ray.serve").warning(f"explain-serve: {model.artifact.note}")
            replica = serve.get_replica_context().replica_id.unique_id
            # decoding and drawing run in threads, concurrently with other requests; only the
            # model call is batched (self.infer)
            self.handler = Handler(model, config.options, self.infer, {"replica": replica})

        async def __call__(self, request: Any) -> JSONResponse:
            headers, params = request.headers, dict(request.query_params)
            reply = await self.handler.handle(
                request.method,
                request.url.path,
                params,
                headers.get("content-length"),
                request.stream(),
                headers.get("content-type"),
            )
            return to_response(reply)

        @serve.batch(max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.batch_wait_s)
        async def infer(self, inputs: list[tuple[np.ndarray, int]]) -> list[Outputs]:
            return await self.handler.run_batch(inputs)

    return ExplainerDeployment


def build_app(config: ServerConfig) -> Any:
    """The Ray Serve application (``Deployment.bind()``) for ``config``; imports Ray."""
    return make_deployment(config).bind()


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
    # Serve's controller and proxy: errors only (with --access-log, their access lines too). Under
    # load the proxy warns "Failed to get queue length from Replica ... within 0.1s" whenever a
    # busy replica answers its probe late; requests are routed all the same, and a full replica
    # answers 503 itself, so those lines say nothing the user can act on.
    system_logging = {**logging_config, "log_level": "INFO" if config.access_log else "ERROR"}
    serve.start(
        http_options={"host": config.host, "port": config.port}, logging_config=system_logging
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

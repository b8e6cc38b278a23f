"""Which device an artifact really runs on, and why not the one asked for.

ONNX Runtime: :func:`ort_session` opens a session, the CUDA provider first where asked for and
listed; ``onnxruntime-gpu`` lists it even where its CUDA libraries are missing, and then runs on
the CPU, so :func:`cuda_missing` reads back what started and says why not. TorchScript and pt2:
:func:`torch_device`. A fallback is a :class:`~..errors.DeviceFallbackWarning`
(:func:`fall_back`) and the artifact's ``note``; ONNX Runtime's own lines about the CUDA provider
that did not start are kept off stderr while the session opens (:func:`_cuda_quiet`), so the
warning is the one line the user reads. :func:`quiet_onnxruntime_logs` keeps all of ONNX
Runtime's log lines off stderr: the commands call it (not with ``--debug``). No torch here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import DeviceFallbackWarning

__all__ = [
    "CUDA_PROVIDER",
    "cuda_missing",
    "fall_back",
    "ort_session",
    "quiet_onnxruntime_logs",
    "torch_device",
]

CUDA_PROVIDER = "CUDAExecutionProvider"
_ORT_FATAL = 4  # ONNX Runtime's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
_ORT_WARNING = 2  # ONNX Runtime's own default
# the default logger's severity as this module last set it (ONNX Runtime has no getter), and
# whether a CUDA session's opening is quiet (:func:`_cuda_quiet`)
_logs = {"severity": _ORT_WARNING, "hold_cuda": True}


def quiet_onnxruntime_logs(quiet: bool = True) -> None:
    """Show ONNX Runtime's fatal log lines only, for this process: not the red ``[E:onnxruntime
    ...] Failed to load library libonnxruntime_providers_cuda.so`` of a CUDA provider whose
    libraries are missing, which the commands say in their own line. ``quiet=False`` (a
    command's ``--debug``): all its warnings and errors, a CUDA session's included. A command
    calls this once at start."""
    import onnxruntime as ort

    _logs["severity"] = _ORT_FATAL if quiet else _ORT_WARNING
    _logs["hold_cuda"] = quiet
    ort.set_default_logger_severity(_logs["severity"])


@contextlib.contextmanager
def _cuda_quiet(ort: Any) -> Iterator[None]:
    """ONNX Runtime's default logger at fatal while a session with the CUDA provider opens:
    where the provider's libraries or the GPU are missing, ORT writes ``[E:onnxruntime ...]
    Failed to load library ...`` and ``[W:onnxruntime ...] Failed to create
    CUDAExecutionProvider`` straight to the C stderr; :func:`cuda_missing` says why in one
    line instead. Then the severity goes back to what it was (:func:`quiet_onnxruntime_logs`'s
    fatal, else ORT's default, warning). Not after ``quiet_onnxruntime_logs(False)``."""
    if not _logs["hold_cuda"]:
        yield
        return
    ort.set_default_logger_severity(_ORT_FATAL)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_logs["severity"])


def ort_session(
    path: str,
    device: str = "cpu",
    threads: int | None = None,
    *,
    device_id: int = 0,
    cuda_graph: bool = False,
    optimized_path: str | None = None,
    profile_prefix: str | None = None,
) -> Any:
    """An ONNX Runtime session for ``path``: the CUDA provider first on ``device="cuda"`` where
    this onnxruntime lists it (with ``enable_cuda_graph`` if ``cuda_graph``; ONNX Runtime raises
    where a node would run on the CPU provider), the CPU provider always; ``session
    .get_providers()`` says which loaded (:func:`cuda_missing` says why CUDA did not).
    ``threads``: ``intra_op_num_threads`` (the executor is sequential:
    ``inter_op_num_threads=1``). ``optimized_path`` saves the optimized graph there;
    ``profile_prefix`` turns the profiler on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers: list[Any] = ["CPUExecutionProvider"]
    if device == "cuda" and CUDA_PROVIDER in ort.get_available_providers():
        cuda: dict[str, Any] = {"device_id": device_id}
        if cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        providers.insert(0, (CUDA_PROVIDER, cuda))
        with _cuda_quiet(ort):
            return ort.InferenceSession(path, options, providers=providers)
    return ort.InferenceSession(path, options, providers=providers)


def cuda_missing(session: Any) -> str | None:
    """Why ``session`` (asked for CUDA) does not run on ONNX Runtime's CUDA provider; None where
    it does. Where the provider is listed but did not start, its library is loaded once more to
    name what it lacks (``libcublasLt.so.13 is missing``); a library that loads means no GPU."""
    import onnxruntime as ort

    if session.get_providers()[0] == CUDA_PROVIDER:
        return None
    if CUDA_PROVIDER not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    why = "no CUDA device, or the CUDA and cuDNN libraries it needs are missing"
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    for name in ("libonnxruntime_providers_cuda.so", "onnxruntime_providers_cuda.dll"):
        library = os.path.join(capi, name)
        if not os.path.isfile(library):
            continue
        try:
            ctypes.CDLL(library)
            why = "no CUDA device"
        except OSError as exc:
            missing = str(exc).split(":")[0].strip()
            why = f"{missing} is missing" if missing else why
        break
    return f"ONNX Runtime's CUDA provider did not start: {why}"


def torch_device(torch: Any, device: str) -> tuple[str, str | None]:
    """The device a torch artifact runs on for ``device``, and why not CUDA where it was asked
    for: ``("cuda", None)`` or ``("cpu", reason)``; ``("cpu", None)`` where the CPU was asked."""
    if device != "cuda":
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", None
    if torch.version.cuda is None:
        return "cpu", f"torch {torch.__version__} is a CPU build"
    return "cpu", f"torch {torch.__version__} sees no CUDA device"


def fall_back(path: str, why: str) -> str:
    """Warn that ``path`` runs on the CPU although CUDA was asked for, because ``why``; returns
    the artifact's ``note``."""
    note = f"cuda asked for, but {why}; running on the CPU"
    warnings.warn(f"{path}: {note}", DeviceFallbackWarning, stacklevel=4)
    return note

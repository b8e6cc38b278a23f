"""Load an exported explainer and run it on numpy batches.

ONNX models run on ONNX Runtime and never import torch; TorchScript imports torch lazily.
Both return ``(logits, heatmap)`` as float32 numpy arrays, and both carry the metadata that
``explain-export`` wrote: from the file itself, or else from ``explainer.json`` beside it.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

METADATA_KEY = "explain_export"  # ONNX metadata_props key
TS_EXTRA_FILE = "explainer.json"  # TorchScript extra file, and the sidecar file's name
DEVICES = ("cpu", "cuda")


def sidecar_metadata(path: str) -> dict[str, Any] | None:
    """The ``explainer.json`` in the artifact's folder, if there is one."""
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), TS_EXTRA_FILE)
    if not os.path.isfile(sidecar):
        return None
    with open(sidecar) as f:
        return json.load(f)


def _class_feed(n: int, class_index: np.ndarray | None) -> np.ndarray:
    return np.full(n, -1, np.int64) if class_index is None else class_index.astype(np.int64)


class OnnxExplainer:
    """An ``explainer.onnx`` on ONNX Runtime.

    ``device="cuda"`` asks for the CUDA provider when ONNX Runtime lists it; ``providers`` then
    says what the session really uses (a CUDA provider that cannot start falls back to CPU).
    """

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        wanted = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            wanted.insert(0, "CUDAExecutionProvider")
            # A CUDA provider whose libraries are missing logs a red error and falls back to
            # the CPU; silence that and report what was really used (see `providers`).
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(path, options, providers=wanted)
        finally:
            ort.set_default_logger_severity(3)
        self.path = path
        self.device = device
        self.providers: list[str] = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # per tensor, dims as ints, or names where dynamic (e.g. ["batch", 3, 224, 224])
        self.shapes = {
            t.name: list(t.shape) for t in self.session.get_inputs() + self.session.get_outputs()
        }
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata: dict[str, Any] | None = json.loads(raw) if raw else sidecar_metadata(path)

    @property
    def backend(self) -> str:
        return f"onnxruntime {self.providers[0]}"

    def __call__(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if "class_index" in self.input_names:
            feeds["class_index"] = _class_feed(image.shape[0], class_index)
        logits, heatmap = self.session.run(["logits", "heatmap"], feeds)
        return logits, heatmap


class TorchScriptExplainer:
    """An ``explainer.torchscript.pt`` on TorchScript, on the CPU or a CUDA device."""

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        extra = {TS_EXTRA_FILE: ""}
        self.path = path
        with warnings.catch_warnings():  # torch >= 2.11 flags TorchScript as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(path, map_location=self.device, _extra_files=extra)
        self.providers = [self.device]
        self.input_names = [a.name for a in self.module.forward.schema.arguments][1:]
        self.output_names = ["logits", "heatmap"]
        self.shapes: dict[str, list] = {}  # TorchScript does not declare shapes
        self.metadata: dict[str, Any] | None = (
            json.loads(extra[TS_EXTRA_FILE]) if extra[TS_EXTRA_FILE] else sidecar_metadata(path)
        )

    @property
    def backend(self) -> str:
        return f"torchscript {self.device}"

    def __call__(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        args = [x]
        if "class_index" in self.input_names:
            args.append(torch.from_numpy(_class_feed(image.shape[0], class_index)).to(self.device))
        with torch.inference_mode():
            logits, heatmap = self.module(*args)
        return logits.cpu().numpy(), heatmap.cpu().numpy()


Artifact = OnnxExplainer | TorchScriptExplainer


def load(path: str, device: str = "cpu", threads: int | None = None) -> Artifact:
    """Open an artifact by its file name: ``.onnx`` (ONNX Runtime) or ``.pt`` (TorchScript)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no artifact at '{path}'")
    if path.endswith(".onnx"):
        return OnnxExplainer(path, device, threads)
    if path.endswith(".pt"):
        return TorchScriptExplainer(path, device, threads)
    raise ValueError(f"'{path}' is neither .onnx nor .pt")

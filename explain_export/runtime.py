"""Load an exported explainer and run it on numpy batches.

ONNX models run on ONNX Runtime and never import torch; TorchScript imports torch lazily.
Both return ``(logits, heatmap)`` as float32 numpy arrays.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

METADATA_KEY = "explain_export"  # ONNX metadata_props key and TorchScript extra file stem
TS_EXTRA_FILE = "explainer.json"


class OnnxExplainer:
    """An ``explainer.onnx`` on ONNX Runtime (CPU provider unless told otherwise)."""

    def __init__(
        self, path: str, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(
            path, options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata: dict[str, Any] | None = json.loads(raw) if raw else None

    def __call__(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if "class_index" in self.input_names:
            n = image.shape[0]
            feeds["class_index"] = (
                np.full(n, -1, np.int64) if class_index is None else class_index.astype(np.int64)
            )
        logits, heatmap = self.session.run(["logits", "heatmap"], feeds)
        return logits, heatmap


class TorchScriptExplainer:
    """An ``explainer.torchscript.pt`` on TorchScript (CPU)."""

    def __init__(self, path: str) -> None:
        import torch

        self._torch = torch
        extra = {TS_EXTRA_FILE: ""}
        self.path = path
        with warnings.catch_warnings():  # torch >= 2.11 flags TorchScript as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        self.metadata: dict[str, Any] | None = (
            json.loads(extra[TS_EXTRA_FILE]) if extra[TS_EXTRA_FILE] else None
        )
        self.input_names = [a.name for a in self.module.forward.schema.arguments][1:]

    def __call__(
        self, image: np.ndarray, class_index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))]
        if "class_index" in self.input_names:
            n = image.shape[0]
            ci = np.full(n, -1, np.int64) if class_index is None else class_index
            args.append(torch.from_numpy(ci.astype(np.int64)))
        with torch.inference_mode():
            logits, heatmap = self.module(*args)
        return logits.numpy(), heatmap.numpy()


def load(path: str, **kwargs: Any) -> OnnxExplainer | TorchScriptExplainer:
    """Open an artifact by its file name: ``.onnx`` or ``.pt``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no artifact at '{path}'")
    if path.endswith(".onnx"):
        return OnnxExplainer(path, **kwargs)
    if path.endswith(".pt"):
        return TorchScriptExplainer(path)
    raise ValueError(f"'{path}' is neither .onnx nor .pt")

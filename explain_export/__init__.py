"""explain-export: one graph from image to (logits, heatmap), exported and verified.

The public API is loaded lazily, so importing the package (or its ONNX runtime) does not import
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Explainer": "explainer",
    "ExplainerInfo": "explainer",
    "GraphOptions": "explainer",
    "build_explainer": "explainer",
    "export_explainer": "export",
    "load_model": "checkpoint",
    "load_default": "zoo",
    "TapSpec": "tap",
    "load": "runtime",
    "ExplainExportError": "errors",
    "UsageError": "errors",
    "ParityError": "errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'explain_export' has no attribute '{name}'")

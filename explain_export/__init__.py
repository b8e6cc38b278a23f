"""explain-export: one graph from image to (logits, heatmap), exported and verified.

The public API is loaded lazily, so importing the package (or its ONNX runtime) does not import
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Explainer": "builder.explainer",
    "Plan": "builder.plan",
    "GraphOptions": "builder.plan",
    "build_explainer": "builder.explainer",
    "export_explainer": "builder.export.export",
    "load_model": "builder.model.checkpoint",
    "load_default": "builder.model.zoo",
    "TapSpec": "builder.inspect.tap",
    "load": "artifact.runtime",
    "ExplainExportError": "errors",
    "UsageError": "errors",
    "ParityError": "errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'explain_export' has no attribute '{name}'")

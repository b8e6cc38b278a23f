"""An export folder as a model: the file a runtime opens from it.

``explain-export --out DIR`` writes ``explainer.onnx``, ``explainer.torchscript.pt`` and
``explainer.pt2`` (:data:`.contract.FILES`), those asked for. Given the folder, the runtime
opens the first of them in :data:`ORDER` that is there: ONNX first, since it runs without torch
(``explain-run`` then never imports it), on every engine (the Ray engine and ``explain-serve``
run ONNX only), and it is in the default export; then TorchScript, then pt2. No torch here.
"""

from __future__ import annotations

import os

from ..errors import OptionError
from .contract import FILES

__all__ = ["ORDER", "artifact_in"]

ORDER = ("onnx", "torchscript", "pt2")


def artifact_in(path: str, formats: tuple[str, ...] = ORDER) -> str:
    """``path`` where it is not a folder; in a folder, its first file of ``formats`` (in that
    order, named as :data:`.contract.FILES`). A folder with none is an :class:`.OptionError`
    in one line that names the files looked for."""
    if not os.path.isdir(path):
        return path
    for fmt in formats:
        found = os.path.join(path, FILES[fmt])
        if os.path.isfile(found):
            return found
    names = [FILES[f] for f in formats]
    wanted = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    hint = "export one with explain-export --out {v}"
    if formats == ("onnx",):
        hint = "this command runs ONNX explainers: export with explain-export --formats onnx"
    raise OptionError(
        "path",
        "{name} '{v}' is a folder with no " + wanted + "; " + hint + ", or give the model file",
        v=path,
    )

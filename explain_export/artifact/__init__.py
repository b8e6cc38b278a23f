"""The artifact side: no PyTorch, at run time.

The contract an exported file keeps (:mod:`.contract`), sessions that run it (:mod:`.runtime`,
:mod:`.device_io`), images in and out (:mod:`.images`, :mod:`.overlay`, :mod:`.samples`), the one
image pipeline (:mod:`.pipeline`) and what calls it: the local engine (:mod:`.runner`), the Ray
Data engine (:mod:`.ray_run`) and the server (:mod:`.serve`); the Triton repository writer
(:mod:`.triton`) and atomic file sets (:mod:`.files`).

Nothing here imports torch or :mod:`explain_export.builder` at import time; the TorchScript and
pt2 sessions import torch when one is opened.
"""

__all__: list[str] = []

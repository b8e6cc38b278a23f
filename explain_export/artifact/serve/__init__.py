"""Serving: a Triton model repository (:mod:`.triton`) and a Ray Serve app (:mod:`.app`).

Importing this package imports neither Ray nor torch.
"""

__all__ = []

"""Serving with Ray Serve: request handling and the per-batch work as plain code (:mod:`.app`),
and the Ray Serve deployment over it (:mod:`.ray_app`).

Importing this package imports neither Ray nor torch.
"""

__all__ = []

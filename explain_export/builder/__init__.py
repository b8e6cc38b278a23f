"""The build side: PyTorch, at export time.

The model and what was found in it (:mod:`.checkpoint`, :mod:`.zoo`, :mod:`.source`), what runs
and which map to explain (:mod:`.probe`, :mod:`.gap_head`, :mod:`.layers`, :mod:`.tap`), what is
explained and how (:mod:`.targets`, :mod:`.methods`, :mod:`.heads`, :mod:`.cams`), decided once
as a plan (:mod:`.plan`), the explainer module (:mod:`.heatmap_head`, :mod:`.explainer`,
:mod:`.graph_io`), the gradient as forward ops (:mod:`.lowering`, :mod:`.adjoints`), and the
export itself: stage, verify, commit (:mod:`.writers`, :mod:`.verify`, :mod:`.metadata`,
:mod:`.export`).

It reads the artifact contract (:mod:`explain_export.artifact.contract`) to write what the
artifact side reads; nothing on the artifact side imports this package.
"""

__all__: list[str] = []

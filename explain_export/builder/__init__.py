"""The build side: PyTorch, at export time, in folders by stage.

The model (:mod:`.model`: where it comes from, its checkpoint, its outputs), looking inside it
(:mod:`.inspect`: one recorded forward pass, the maps on the image, the tap), the maths
(:mod:`.maths`: targets, methods, the heatmap head), decided once as a plan (:mod:`.plan`, its
option checks in :mod:`.conflicts`) and assembled into the explainer module
(:mod:`.explainer`), the gradient as forward ops (:mod:`.lower`), and the export itself: stage,
verify, commit (:mod:`.export`). The assembly (options -> plan -> explainer) stays at this
level; each stage's package imports none of its modules.

It reads the artifact contract (:mod:`explain_export.artifact.contract`) to write what the
artifact side reads; nothing on the artifact side imports this package.
"""

__all__: list[str] = []

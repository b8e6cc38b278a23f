"""Looking inside the model: one recorded forward pass and what it shows.

Which modules run with which shapes (:mod:`.probe`), the global-average-pool + linear head
(:mod:`.gap_head`), which tensors are maps on the image (:mod:`.maps`, :mod:`.tokens` for token
grids), the default layer and the ``--list-layers`` table (:mod:`.layers`), capturing the chosen
tensor (:mod:`.tap`), and why every map is flat (:mod:`.dead_head`). Importing this package
imports none of its modules.
"""

__all__: list[str] = []

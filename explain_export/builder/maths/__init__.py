"""The maths: what is explained and how, as tensor functions and modules.

The target ``y`` (:mod:`.targets`), the methods' registry (:mod:`.methods`), the heatmap's
pure tensor functions (:mod:`.heads`, :mod:`.cams` for the rest of the CAM family), the heatmap
head as a module (:mod:`.heatmap_head`), and the ops at the graph's edges: input format and
in-graph overlay (:mod:`.graph_io`). Importing this package imports none of its modules.
"""

__all__: list[str] = []

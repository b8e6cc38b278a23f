"""Lowering: the gradient ``∂y_c/∂A`` as one graph of forward ops, with no autograd.

The ``make_fx`` trace and its checks (:mod:`.lowering`), backward ops written as forward ops
(:mod:`.adjoints`), rewrites the exporters need or that keep the file lean (:mod:`.rewrites`),
and a model's plain attributes put back after the trace (:mod:`.trace_state`). Importing this
package imports none of its modules.
"""

__all__: list[str] = []

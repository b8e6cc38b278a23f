"""Leave a model's plain attributes as a trace found them (:func:`kept_attributes`).

``make_fx`` (:mod:`.lowering`) runs the model on fake tensors. A module that caches a tensor in
a plain attribute keeps the fake one: timm's TinyViT ``Attention`` clears its
``attention_bias_cache`` dict on ``eval()`` and refills it, in eval mode, with
``attention_biases[:, idxs]`` on the first forward, here a ``FakeTensor``. Eager then computes
with it, and every output is a ``FakeTensor`` (``.numpy()`` refuses a tensor subclass).
``torch.export`` undoes such assignments itself (with a warning); ``make_fx`` does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["kept_attributes"]

# nn.Module's own slots (parameters, buffers, submodules, hooks, training): never touched, so a
# hook's RemovableHandle still finds its dict and eval()/train() stays as the trace left it.
_MODULE_SLOTS = frozenset(vars(nn.Module()))


def _contents(value: Any) -> Any:
    """A shallow copy of a dict's or list's items (a cache filled in place), else None."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return None


@contextlib.contextmanager
def kept_attributes(module: nn.Module) -> Iterator[None]:
    """Within: anything. After: every submodule's plain attributes (not its parameters,
    buffers, submodules or hooks) are the objects they were before, a dict or list among them
    holds the items it held, and attributes added within are gone (one level deep)."""
    saved = [
        (m, {k: (v, _contents(v)) for k, v in vars(m).items() if k not in _MODULE_SLOTS})
        for m in module.modules()
    ]
    try:
        yield
    finally:
        for m, attrs in saved:
            state = vars(m)
            for key in [k for k in state if k not in _MODULE_SLOTS and k not in attrs]:
                del state[key]
            for key, (value, items) in attrs.items():
                state[key] = value
                if items is not None and not _same_items(value, items):
                    if isinstance(value, dict):
                        value.clear()
                        value.update(items)
                    else:
                        value[:] = items


def _same_items(now: Any, before: Any) -> bool:
    """The same keys and the same objects (identity: ``==`` on tensors is elementwise)."""
    if isinstance(now, dict):
        return now.keys() == before.keys() and all(now[k] is before[k] for k in before)
    return len(now) == len(before) and all(a is b for a, b in zip(now, before, strict=True))

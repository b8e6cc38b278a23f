"""Device-resident I/O for the runtime: buffers at fixed addresses, and CUDA graph replay.

:class:`Binding` keeps one batch shape's input and output buffers on an ONNX Runtime session's
device (IO binding): a call copies the batch in, and a captured CUDA graph can replay on the
same memory. :class:`GraphReplay` replays a torch callable from a ``torch.cuda.CUDAGraph`` per
input shape. :mod:`.runtime` uses both; neither imports torch or ONNX Runtime at import time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_GRAPHS", "Binding", "GraphReplay"]

MAX_GRAPHS = 16  # batch shapes that get a CUDA graph; further shapes run without one


class Binding:
    """One batch shape's IO binding: the input and output buffers stay at fixed addresses on
    the session's device, as a CUDA graph replay needs; a call copies the batch in."""

    def __init__(
        self,
        session: Any,
        kind: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        first_run: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.binding = session.io_binding()
        self.inputs = {n: ort.OrtValue.ortvalue_from_numpy(a, kind, 0) for n, a in inputs.items()}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        # a first run allocates the outputs on the device; they are then bound by value, so
        # every later run (and a captured graph) writes to the same memory
        for name in outputs:
            self.binding.bind_output(name, kind, 0)
        session.run_with_iobinding(self.binding, first_run)
        self.outputs = dict(zip(outputs, self.binding.get_outputs(), strict=True))
        self.binding.clear_binding_outputs()
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)

    def feed(self, inputs: dict[str, np.ndarray]) -> None:
        for name, array in inputs.items():
            self.inputs[name].update_inplace(array)


class GraphReplay:
    """Run ``fn`` by replaying a ``torch.cuda.CUDAGraph``, one per input shape (at most
    ``limit``; further shapes run plainly). A shape's first call warms up on a side stream,
    captures, then replays; later calls copy the inputs into the captured ones and replay.
    The outputs are the captured tensors, overwritten by the next call of that shape."""

    def __init__(self, fn: Any, limit: int = MAX_GRAPHS) -> None:
        import torch

        self._torch = torch
        self.fn = fn
        self.limit = limit
        self.graphs: dict[tuple[Any, ...], tuple[Any, list[Any], Any]] = {}

    def __call__(self, *args: Any) -> Any:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.limit:
                return self.fn(*args)
            entry = self.graphs[key] = self._capture([a.clone() for a in args])
        graph, inputs, outputs = entry
        for static, arg in zip(inputs, args, strict=True):
            static.copy_(arg)
        graph.replay()
        return outputs

    def _capture(self, inputs: list[Any]) -> tuple[Any, list[Any], Any]:
        torch = self._torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # TorchScript's executor specializes over the first runs
                self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.fn(*inputs)
        return graph, inputs, outputs

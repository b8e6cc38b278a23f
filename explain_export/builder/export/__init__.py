"""Export: write the explainer to TorchScript, ONNX and pt2, verify it, commit it.

Stage, verify, commit (:mod:`.export`), one file format each (:mod:`.writers`), parity against
eager (:mod:`.verify`, :mod:`.parity64` against float64 eager, :mod:`.device_parity` on another
device), and the metadata written with the files (:mod:`.metadata`). Importing this package
imports none of its modules.
"""

__all__: list[str] = []

"""Prove that an exported artifact computes what the eager explainer computes.

For each artifact: run it and the eager :class:`~.explainer.Explainer` on the same inputs (random
images at batch 1 and 3, a real photo, other sizes where the size is dynamic) and compare.
The export fails if any ``max |logits - eager|`` exceeds 1e-3 or ``max |heatmap - eager|``
exceeds 1e-4. ONNX files also pass ``onnx.checker`` with ``full_check=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import samples
from .explainer import Explainer

LOGITS_TOL = 1e-3
HEATMAP_TOL = 1e-4

Runner = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One verification input: a label and an image batch ``[N,3,H,W]`` in [0, 1]."""

    label: str
    image: np.ndarray
    class_index: np.ndarray | None = None


@dataclass(frozen=True)
class ParityRow:
    format: str
    input: str
    batch: int
    size: tuple[int, int]
    logits_err: float
    heatmap_err: float
    ok: bool

    def to_dict(self) -> dict:
        """JSON-ready (the size as a list)."""
        return {**asdict(self), "size": list(self.size)}


def cases(
    input_size: tuple[int, int],
    dynamic_size: bool = False,
    class_input: bool = False,
    num_classes: int = 1,
) -> list[Case]:
    """Random batches of 1 and 3, the cat photo, and (dynamic size) two other sizes.

    With ``class_input``, batches of more than one image get ``class_index = [-1, 7, 14, ...]``
    (mod ``num_classes``): the argmax for the first image, chosen classes for the others.
    """
    rng = np.random.default_rng(0)
    h, w = input_size

    def rand(n: int, hh: int, ww: int) -> np.ndarray:
        return rng.random((n, 3, hh, ww), dtype=np.float32)

    out = [Case("random", rand(1, h, w)), Case("random", rand(3, h, w))]
    try:
        photo = samples.load_rgb(samples.photo_path("chelsea.png"), input_size)[None]
        out.append(Case("photo chelsea.png", photo))
    except FileNotFoundError:
        pass  # scikit-image missing: random inputs only
    if dynamic_size:
        for hh, ww in ((h + 32, w + 32), (h, w + 64)):
            out.append(Case("random", rand(2, hh, ww)))
    if class_input:
        out = [
            Case(c.label + ", class_index", c.image, _class_indices(c.image.shape[0], num_classes))
            if c.image.shape[0] > 1
            else c
            for c in out
        ]
    return out


def _class_indices(n: int, num_classes: int) -> np.ndarray:
    chosen = (np.arange(n, dtype=np.int64) * 7) % num_classes
    chosen[0] = -1
    return chosen


@torch.inference_mode()
def eager(explainer: Explainer, case: Case) -> tuple[np.ndarray, np.ndarray]:
    args = [torch.from_numpy(case.image)]
    if case.class_index is not None:
        args.append(torch.from_numpy(case.class_index))
    logits, heatmap = explainer(*args)
    return logits.numpy(), heatmap.numpy()


def parity(fmt: str, run: Runner, explainer: Explainer, all_cases: list[Case]) -> list[ParityRow]:
    """Compare ``run`` with the eager explainer on every case."""
    rows = []
    for case in all_cases:
        ref_logits, ref_heat = eager(explainer, case)
        logits, heat = run(case.image, case.class_index)
        if logits.shape != ref_logits.shape or heat.shape != ref_heat.shape:
            le = he = float("inf")
        else:
            le = float(np.abs(logits - ref_logits).max())
            he = float(np.abs(heat - ref_heat).max())
        ok = bool(le <= LOGITS_TOL and he <= HEATMAP_TOL)  # NaN fails
        n, _, hh, ww = case.image.shape
        rows.append(ParityRow(fmt, case.label, n, (hh, ww), le, he, ok))
    return rows


def check_onnx(path: str) -> None:
    """``onnx.checker`` with the full check (shape inference included)."""
    import onnx

    onnx.checker.check_model(path, full_check=True)


def format_report(rows: list[ParityRow]) -> str:
    """The parity table printed after export."""
    lines = [
        f"parity vs eager (max |diff|; limits: logits {LOGITS_TOL:g}, heatmap {HEATMAP_TOL:g})",
        f"  {'format':<12} {'input':<28} {'batch':>5} {'size':>9} {'logits':>9} {'heatmap':>9}",
    ]
    for r in rows:
        size = f"{r.size[0]}x{r.size[1]}"
        lines.append(
            f"  {r.format:<12} {r.input:<28} {r.batch:>5} {size:>9} "
            f"{r.logits_err:>9.2e} {r.heatmap_err:>9.2e}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)

#!/usr/bin/env python
"""Which layer ``explain-export`` takes by default for timm's token models (random init).

For each model name: build ``timm.create_model(name)`` with ``torch.manual_seed(0)``, save its
state_dict to OUT_ROOT/NAME/model.pt and run the real CLI as a subprocess,

    explain-export --ckpt OUT/model.pt --arch timm:create_model \\
        --arch-kwargs '{"model_name": NAME}' --list-layers

(cheap: a probe, no export), or with ``--export`` a full export with default flags into
OUT/explainer. Each row: exit code, seconds, the default layer, its shape as the table prints it,
whether that shape is a map on the image (two sides the input's divided by one stride s >= 2, or
T = prefix + h*w tokens on such a grid), and the last stderr line on failure. Results are
printed as a Markdown table and written to OUT_ROOT/token_defaults.json.

Usage, in the venv that ``make peers`` builds:

    make peers && .peers/bin/python benchmarks/token_defaults.py cait_xxs24_224 coat_tiny
    .peers/bin/python benchmarks/token_defaults.py --export nest_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

OUT_ROOT = Path(os.environ.get("OUT_ROOT", "/tmp/explain-export-token-defaults"))
CLI = str(Path(sys.executable).parent / "explain-export")


def save(name: str, folder: Path) -> tuple[int, int]:
    """Save a seeded random-init state_dict; the model's input size (H, W)."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return int(size[1]), int(size[2])


def on_image(shape: list[int], tokens: bool, size: tuple[int, int]) -> str:
    """'map sN (hxw)', 'tokens on hxw sN (+p)' or 'NOT a map' for a map's [C,h,w] or [h,w,C],
    or a token sequence's [T,C] (p prefix tokens, at most 8)."""
    if tokens and len(shape) == 2:
        for s in (4, 8, 14, 16, 32):
            h, w = size[0] // s, size[1] // s
            if 0 <= shape[0] - h * w <= 8:
                return f"tokens on {h}x{w} s{s} (+{shape[0] - h * w})"
    if not tokens and len(shape) == 3:
        for h, w in ((shape[1], shape[2]), (shape[0], shape[1])):
            s = round(size[0] / h)
            if (
                s >= 2
                and round(size[1] / w) == s
                and max(abs(h * s - size[0]), abs(w * s - size[1])) < s
            ):
                return f"map s{s} ({h}x{w})"
    return "NOT a map on the image"


def run(name: str, export: bool, timeout: int) -> dict:
    folder = OUT_ROOT / name
    size = save(name, folder)
    cmd = [CLI, "--ckpt", str(folder / "model.pt"), "--arch", "timm:create_model"]
    cmd += ["--arch-kwargs", json.dumps({"model_name": name})]
    if size != (224, 224):
        cmd += ["--input-size", str(size[0]), str(size[1])]
    cmd += ["--out", str(folder / "explainer")] if export else ["--list-layers"]
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = 124, str(exc.stdout or ""), f"timed out after {timeout} s"
    row = {"model": name, "rc": rc, "s": round(time.time() - start, 1), "input": list(size)}
    found = re.search(r"^default: (\S+) \((.*)\)$", out, re.M)
    if export:
        found = re.search(r"^layer:\s+(\S+)\s+\(feature map ([\dx]+)\)", out, re.M)
    if found:
        row["default"] = found.group(1)
        row["why"] = "" if export else found.group(2)
        kind, shape = ("", found.group(2)) if export else _shape_of(out, found.group(1))
        row["shape"] = f"{kind} {shape}".strip()
        if shape:
            dims = [int(v) for v in re.findall(r"\d+", shape)]
            row["on_image"] = on_image(dims, kind == "tokens", size)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    row["stderr"] = lines[-1][:300] if rc and lines else ""
    row["stdout_tail"] = out.strip().splitlines()[-12:]
    return row


def _shape_of(table: str, layer: str) -> tuple[str, str | None]:
    """('tokens' or '', the shape 'AxBxC') of ``layer``'s row in the --list-layers table."""
    for line in table.splitlines():
        parts = line.split()
        if parts and parts[0] == layer:
            shape = next((p for p in parts[2:] if re.fullmatch(r"\d+(x\d+)+", p)), None)
            return ("tokens" if "tokens" in parts else ""), shape
    return "", None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--export", action="store_true", help="a full export, default flags")
    p.add_argument("--timeout", type=int, default=600)
    args = p.parse_args()
    results_path = OUT_ROOT / "token_defaults.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.models:
        row = run(name, args.export, args.timeout)
        results[f"{name}{'-export' if args.export else ''}"] = row
        results_path.write_text(json.dumps(results, indent=1))
        print(
            f"| {name} | {row['rc']} | {row['s']} | {row.get('default')} | {row.get('shape')} | "
            f"{row.get('on_image', '')} | {row['stderr']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

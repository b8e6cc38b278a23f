"""The README's Python blocks run as written (issue 20).

Each ```` ```python ```` block of README.md is run in its own process, in a folder that holds
what the README's commands before it make: ``explainer/explainer.onnx`` (``explain-export
--class-input``) and ``top3/explainer.onnx`` (``--top-k 3``), here a small model with the
embedded one's input size and class count. A block right after ``<!-- not run: why -->`` is
left out, and only such a block. The fast test checks that every block compiles and uses no
name it does not define; the slow one runs them.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^(\s*)```python\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<why>\S.*?) -->\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, from 1
    code: str
    not_run: str | None  # the reason given in the marker right before the fence


def blocks(text: str) -> list[Block]:
    """The python blocks of a Markdown text, each with the marker just before it, if any."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, start = fence.group(1), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = NOT_RUN.match(before)
        found.append(Block(start + 1, "\n".join(body) + "\n", marker and marker.group("why")))
        i += 1
    return found


ALL = blocks(README.read_text(encoding="utf-8"))
RUN = [b for b in ALL if b.not_run is None]


def _undefined(code: str) -> set[str]:
    """Names a block reads but never binds (assignment, import, def, for, with, ...)."""
    tree = ast.parse(code)
    bound, read = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store | ast.Del) else read).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound


def test_the_parser_finds_blocks_and_honours_only_the_marker():
    text = (
        "```python\na = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\nb = 2\n```\n"
        "<!-- a comment -->\n```python\nc = 3\n```\n  ```python\n  d = 4\n  ```\n"
    )
    found = blocks(text)
    assert [(b.code, b.not_run) for b in found] == [
        ("a = 1\n", None),
        ("b = 2\n", "needs a GPU"),
        ("c = 3\n", None),
        ("d = 4\n", None),
    ]
    assert _undefined("import numpy as np\nx = np.zeros(2)\nprint(y, x)\n") == {"y"}


def test_every_block_compiles_and_defines_what_it_uses():
    assert len(RUN) >= 4 and all(b.not_run for b in ALL if b not in RUN)
    for block in ALL:
        compile(block.code, f"README.md:{block.line}", "exec")
    missing = {b.line: _undefined(b.code) for b in RUN if _undefined(b.code)}
    assert not missing, f"README blocks use names they do not define: {missing}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the exports the README's commands make before its Python blocks."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export import export_explainer

    from models import tiny_resnet

    folder = tmp_path_factory.mktemp("readme")
    for name, kwargs, export in (
        ("explainer", {}, {"class_input": True}),
        ("top3", {"top_k": 3}, {}),
    ):
        explainer = build_explainer(tiny_resnet(num_classes=1000), **kwargs)
        export_explainer(explainer, str(folder / name), ("onnx",), **export)
        explainer.remove()
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[f"line{b.line}" for b in RUN])
def test_readme_block_runs_as_written(block, workdir):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"README.md:{block.line}\n{proc.stderr[-3000:]}"

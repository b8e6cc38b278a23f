"""The code of README.md and docs/*.md runs as written (issues 20 and 26).

Each ```` ```python ```` block of a page is run in its own process, in a folder that holds
what the pages' commands make: ``explainer/explainer.onnx`` (``explain-export --class-input
--out explainer``) and ``top3/explainer.onnx`` (``--top-k 3 --out top3``), here a small model
with the embedded one's input size and class count. A block that reads one of them comes after
that command on its own page. A block right after ``<!-- not run: why -->`` is left out, and
only such a block. The fast tests check that every block compiles and uses no name it does not
define, that every flag a shell block gives a command exists, and that the README's sample
printout is what ``explain-export`` prints; the slow one runs the blocks.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```python\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<why>\S.*?) -->\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, from 1
    code: str
    not_run: str | None  # the reason given in the marker right before the fence
    page: str = ""  # relative to the repository, e.g. docs/methods.md

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(text: str, page: str = "", fence: re.Pattern = FENCE) -> list[Block]:
    """The blocks of a Markdown text that open with ``fence`` (python by default), each with the
    marker just before it, if any."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        opening = fence.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, start = opening.group(1), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = NOT_RUN.match(before)
        why = marker and marker.group("why")
        found.append(Block(start + 1, "\n".join(body) + "\n", why, page))
        i += 1
    return found


def _page(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


TEXT = {_page(p): p.read_text(encoding="utf-8") for p in PAGES}
ALL = [b for page, text in TEXT.items() for b in blocks(text, page)]
RUN = [b for b in ALL if b.not_run is None]
# What the ``workdir`` fixture holds: folder -> the flags of the command that makes it.
MADE = {"explainer": ("--class-input",), "top3": ("--top-k", "3")}
READS = re.compile(r"""["'](\w+)/explainer\.\w+["']""")


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
        compile(block.code, str(block), "exec")
    missing = {str(b): _undefined(b.code) for b in RUN if _undefined(b.code)}
    assert not missing, f"blocks use names they do not define: {missing}"


def _made_before(block: Block, folder: str) -> bool:
    """Whether the block itself exports ``folder``, or the last ``explain-export ... --out
    folder`` on its page before it has the flags the ``workdir`` fixture exported it with."""
    if re.search(rf"""export_explainer\([^)]*["']{folder}/?["']""", block.code):
        return True
    for line in reversed(TEXT[block.page].splitlines()[: block.line - 1]):
        if not line.startswith("explain-export "):
            continue
        words = shlex.split(line.rstrip("\\"), comments=True)
        if "--out" in words[:-1] and words[words.index("--out") + 1].rstrip("/") == folder:
            flags = list(MADE.get(folder, ("(not made by the fixture)",)))
            return any(words[i : i + len(flags)] == flags for i in range(len(words)))
    return False


def test_a_block_reads_what_its_page_made_before_it():
    reads = {str(b): READS.findall(b.code) for b in RUN}
    assert {"explainer", "top3"} <= {f for found in reads.values() for f in found}
    late = [f"{b} reads {f}/" for b in RUN for f in READS.findall(b.code) if not _made_before(b, f)]
    assert not late, f"no `explain-export ... --out FOLDER` with the flags of MADE before: {late}"
    moved = Block(1, 'load("top3/explainer.onnx")\n', None, "docs/methods.md")
    assert not _made_before(moved, "top3")  # the first line of a page has nothing before it


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the exports the pages' commands make before their Python blocks."""
    from explain_export.builder.explainer import build_explainer
    from explain_export.builder.export.export import export_explainer

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
@pytest.mark.parametrize("block", RUN, ids=[str(b) for b in RUN])
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
    assert proc.returncode == 0, f"{block}\n{proc.stderr[-3000:]}"


SHELL = re.compile(r"^(\s*)```(?:bash|sh|shell)\s*$")
CLI = {  # a command -> its module in explain_export.cli
    "explain-export": "export",
    "explain-run": "run",
    "explain-serve": "serve",
    "explain-bench": "bench",
    "explain-eval": "eval",
}


def unknown_flags(code: str) -> list[str]:
    """``prog --flag`` for each flag a command line of a shell block gives that its parser lacks
    (continued lines joined, comments dropped; other programs are left alone)."""
    import importlib

    found = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        prog = os.path.basename(words[0]) if words else ""
        if prog not in CLI:
            continue
        parser = importlib.import_module(f"explain_export.cli.{CLI[prog]}").build_parser()
        for word in words[1:]:
            flag = word.split("=")[0]
            if flag.startswith("--") and flag not in parser._option_string_actions:
                found.append(f"{prog} {flag}")
    return found


def test_every_flag_in_a_shell_block_exists():
    assert unknown_flags("explain-run --modle x \\\n  --sheet  # --nothing\nls --all\n") == [
        "explain-run --modle"
    ]
    shell = [b for page, text in TEXT.items() for b in blocks(text, page, SHELL)]
    assert len(shell) >= 10
    unknown = {str(b): unknown_flags(b.code) for b in shell if unknown_flags(b.code)}
    assert not unknown, f"flags no command has: {unknown}"


def readme_printout() -> list[str]:
    """The lines of the README's block that shows what ``make export`` prints."""
    lines = TEXT["README.md"].splitlines()
    start = next(i for i, line in enumerate(lines) if "`make export` prints" in line)
    opening = next(i for i in range(start, len(lines)) if lines[i].strip() == "```")
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].strip() == "```")
    return lines[opening + 1 : closing]


# What varies from run to run: a time (``in   4.3s``) and a max |diff| (``6.68e-06``, kept as
# wide as it is, so the columns still count).
TIME = re.compile(r"\bin +\d+\.\d+s\b")
DIFF = re.compile(r"\b\d\.\d+e[-+]\d+\b")


def normal(line: str) -> str:
    return DIFF.sub(lambda m: "#" * len(m.group()), TIME.sub("in <time>", line.rstrip()))


def interleaving_error(shown: list[str], stdout: list[str], stderr: list[str]) -> str | None:
    """Why ``shown`` is not ``stdout`` and ``stderr`` interleaved, each in its own order (as a
    terminal shows them), every line compared after ``normal``; None where it is."""
    out, err = [normal(s) for s in stdout], [normal(s) for s in stderr]
    i = j = 0
    for number, line in enumerate(map(normal, shown), 1):
        if i < len(out) and line == out[i]:
            i += 1
        elif j < len(err) and line == err[j]:
            j += 1
        else:
            expected = out[i : i + 1] + err[j : j + 1]
            return f"line {number} of the block: {line!r}; the command printed next {expected}"
    if i < len(out) or j < len(err):
        return f"the block stops; the command printed more: {out[i:] + err[j:]}"
    return None


def test_the_readme_printout_is_what_explain_export_prints(default_export):
    stdout = (default_export.parent / "console.stdout").read_text()
    stderr = (default_export.parent / "console.stderr").read_text()
    stdout = stdout.replace(f"{default_export}{os.sep}", "explainer/")  # `make export`'s --out
    shown = readme_printout()
    assert len(shown) >= 10 and "parity vs eager" in "\n".join(shown)
    error = interleaving_error(shown, stdout.splitlines(), stderr.splitlines())
    assert error is None, f"README.md's `make export` printout: {error}"
    drifted = [*shown[:3], shown[3].replace("feeds", "reads"), *shown[4:]]
    assert interleaving_error(drifted, stdout.splitlines(), stderr.splitlines())
    assert interleaving_error(shown[:-1], stdout.splitlines(), stderr.splitlines())

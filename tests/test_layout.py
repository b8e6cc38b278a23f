"""The package's layout, read from its source with ``ast`` (issue 17).

- no import cycles between the package's modules, function-level (lazy) imports included;
- the artifact side (``explain_export.artifact``) never imports the builder side, the CLI or the
  benchmark, at any level, and imports without torch;
- no module over :data:`MAX_LINES` lines;
- reference implementations and test-only helpers live in ``tests/``, not in the package.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "explain_export"
TOP = PACKAGE.name
ARTIFACT = f"{TOP}.artifact"
# What the artifact side must never import: the build side (torch, export time) and what sits on
# top of both sides.
NOT_FROM_ARTIFACT = (f"{TOP}.builder", f"{TOP}.cli", f"{TOP}.bench")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def sources() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return sources()[name].name == "__init__.py"


@cache
def lazy_api() -> dict[str, str]:
    """The top package's lazy public API: name -> module (``_API`` in ``__init__.py``)."""
    tree = ast.parse(sources()[TOP].read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["_API"]
            and isinstance(node.value, ast.Dict)
        ):
            return {k: f"{TOP}.{v}" for k, v in ast.literal_eval(node.value).items()}
    return {}


def _module_of(name: str) -> str | None:
    """``name`` if it is one of the package's modules, else its longest such prefix."""
    while name:
        if name in sources():
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The package's modules that one import statement of module ``name`` imports.

    ``from . import x`` imports the submodule ``x`` if there is one, else a name of the package's
    ``__init__``; ``from .mod import y`` imports ``mod`` (or its submodule ``y``); importing a
    package imports its ``__init__``. A submodule's import does not count as importing its
    parent packages' ``__init__`` (Python runs them first, but an ``__init__`` that imports its
    own submodules would then be a cycle with each of them).

    The top package's ``__init__`` is the lazy public API: it imports nothing at import time
    (``importlib.import_module`` with a string, on first attribute access), so it has no edges of
    its own. A name imported from it counts as importing the module that ``_API`` maps it to
    (``from explain_export import load`` imports ``artifact.runtime``), and any other name
    (``from .. import __version__``) as importing the ``__init__`` itself: no cycle goes through
    it unless a module imports a lazy name, and then the edge is the real one.
    """
    if isinstance(node, ast.Import):
        for alias in node.names:
            found = _module_of(alias.name)
            if found:
                yield found
        return
    if node.level:
        package = name if is_package(name) else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if not (base == TOP or base.startswith(f"{TOP}.")):
        return
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in sources():
            yield sub
        elif base == TOP and alias.name in lazy_api():
            yield lazy_api()[alias.name]
        else:
            found = _module_of(base)
            if found:
                yield found


@cache
def imports() -> dict[str, dict[str, int]]:
    """module -> {module it imports: the line of the first such import}, at any level (module,
    function, ``if TYPE_CHECKING``)."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in sources().items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(name, node):
                    if target != name:
                        edges.setdefault(target, node.lineno)
        graph[name] = dict(sorted(edges.items()))
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside one component (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in graph[v]:
                if w not in within:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    return []


def cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """Each cycle as ``a -> b -> a`` (the shortest through each module of each component), with
    where each import is."""

    def short(name: str) -> str:
        return name.removeprefix(f"{TOP}.")

    lines = []
    for component in strongly_connected(graph):
        seen: set[tuple[str, ...]] = set()
        for start in component:
            path = shortest_cycle(graph, start, set(component))
            i = path.index(min(path[:-1]))
            key = tuple(path[i:-1] + path[:i])  # the same cycle from another module
            if key in seen:
                continue
            seen.add(key)
            where = ", ".join(
                f"{sources()[a].relative_to(ROOT)}:{graph[a][b]} imports {short(b)}"
                for a, b in itertools.pairwise(path)
            )
            lines.append(f"{' -> '.join(short(m) for m in path)}  ({where})")
    return lines


def test_the_import_graph_sees_relative_lazy_and_package_imports():
    graph = imports()
    runtime = f"{ARTIFACT}.runtime"
    assert f"{ARTIFACT}.contract" in graph[runtime]  # from .contract import ...
    assert f"{TOP}.errors" in graph[runtime]  # from ..errors import ...
    assert f"{ARTIFACT}.runtime" in graph[f"{ARTIFACT}.ray_run"]  # also inside a function
    assert f"{ARTIFACT}.images" in graph[f"{ARTIFACT}.pipeline"]  # from . import images
    assert graph[TOP] == {}  # the lazy API imports by string, on first access


# The build side's folders, one per stage (issue 27); the assembly (plan, explainer) sits above.
BUILDER = f"{TOP}.builder"
STAGES = ("model", "inspect", "maths", "lower", "export")


def test_the_builder_is_grouped_by_stage_and_its_stage_packages_import_nothing():
    """Each stage is a package whose ``__init__`` imports nothing: importing it must not import
    its modules (an ``__init__`` that re-exports them makes a cycle with each)."""
    stages = {f"{BUILDER}.{s}" for s in STAGES}
    assert all(s in sources() and is_package(s) for s in stages), sorted(stages - set(sources()))
    packages = {n for n in sources() if n.startswith(f"{BUILDER}.") and is_package(n)}
    bad = [
        f"{sources()[name].relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for name in sorted(packages)
        for node in ast.walk(ast.parse(sources()[name].read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom) and node_is_not_future(node)
    ]
    assert not bad, "a builder stage package imports at import time:\n" + "\n".join(bad)


def node_is_not_future(node: ast.Import | ast.ImportFrom) -> bool:
    return not (isinstance(node, ast.ImportFrom) and node.module == "__future__")


def test_there_are_no_import_cycles():
    found = cycles(imports())
    assert not found, "import cycles (module -> module it imports):\n" + "\n".join(found)


def test_the_artifact_side_never_imports_the_builder_side():
    bad = [
        f"{sources()[name].relative_to(ROOT)}:{line} imports {target}"
        for name, edges in imports().items()
        if name == ARTIFACT or name.startswith(f"{ARTIFACT}.")
        for target, line in edges.items()
        if any(target == p or target.startswith(f"{p}.") for p in NOT_FROM_ARTIFACT)
    ]
    assert not bad, "the artifact side imports the build side:\n" + "\n".join(bad)


# Run in a fresh interpreter: torch (and anything under it) cannot be imported; every artifact
# module and the top package are imported. A module whose optional dependency is missing is
# skipped; an attempt to import torch from inside the package is recorded even where the module
# catches the ImportError.
_NO_TORCH = textwrap.dedent(
    """
    import importlib, json, sys, traceback

    PACKAGE_DIR = sys.argv[1]
    OPTIONAL = {"ray", "starlette", "pyarrow", "tritonclient"}
    attempts = []

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in ("torch", "torchvision"):
                return None
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(PACKAGE_DIR)]
            if frames:
                attempts.append(f"{frames[-1].filename}:{frames[-1].lineno} imports {name}")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

    sys.meta_path.insert(0, NoTorch())
    failed, skipped = {}, {}
    for name in json.loads(sys.argv[2]):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL:
                skipped[name] = exc.name
            else:
                failed[name] = traceback.format_exc(limit=-3)
        except Exception:
            failed[name] = traceback.format_exc(limit=-3)
    print(json.dumps({"failed": failed, "skipped": skipped, "attempts": sorted(set(attempts))}))
    """
)


def test_the_artifact_side_imports_without_torch():
    names = [n for n in sources() if n == ARTIFACT or n.startswith(f"{ARTIFACT}.")]
    names += [TOP, f"{TOP}.errors"]
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(PACKAGE), json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=ROOT,  # python -c puts the working directory first on sys.path
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}, "\n".join(f"{k}:\n{v}" for k, v in result["failed"].items())
    assert result["attempts"] == [], "torch imported at import time:\n" + "\n".join(
        result["attempts"]
    )
    assert len(result["skipped"]) < len(names)  # something was checked


def test_no_module_is_over_the_line_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{p} ({n} lines)" for p, n in sorted(long.items())
    )


# Words in a package docstring that say "this exists for the tests": such code belongs in tests/.
_TEST_ONLY = ("test-only", "tests only", "only for tests", "only for the tests", "reference impl")
# The tests' own helper modules, which the package must not import.
_TEST_MODULES = {"tests", "conftest", "models", "reference"}


def test_reference_implementations_live_in_tests():
    bad = []
    for path in sources().values():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                roots = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                bad += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {r}"
                    for r in roots
                    if r.split(".")[0] in _TEST_MODULES
                ]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = (ast.get_docstring(node) or "").lower()
                bad += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: '{w}' (move it to tests/)"
                    for w in _TEST_ONLY
                    if w in doc
                ]
    assert not bad, "\n".join(bad)

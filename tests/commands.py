"""The commands as a user runs them: ``python -m MODULE ARGS`` in a child process; a folder of
the sample photos to run them on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_module(
    module: str, *args: str, cwd: str | Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m module args``, its output captured as text. This checkout's package comes
    first, and the tests' folder is importable (``--arch models:TinyResNet``); no
    PYTHONWARNINGS, so stderr holds only what the command itself prints."""
    path = [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def photo_folder(folder: Path, names: Iterable[str]) -> Path:
    """``folder`` (made if missing) holding copies of the sample photos ``names``."""
    from explain_export.artifact import samples

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(samples.photo_path(name), folder / name)
    return folder


# A Ray run goes in a child process. Ray's native threads are not safe across several starts and
# stops in one process, and a CI run that did that here ended in a segmentation fault at exit,
# after every test had passed.
RAY_CHILD = """
import importlib, sys
code = importlib.import_module(sys.argv[1]).main(sys.argv[2:])
import ray
if ray.is_initialized():
    print("the command left its Ray instance running", file=sys.stderr)
    sys.exit(3)
sys.exit(code)
"""


def ray_child(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``module.main(args)`` (a command's module, ``explain_export.cli.run``) in a child
    process, its output captured as text; exit code 3 where it left Ray running."""
    return subprocess.run(
        [sys.executable, "-c", RAY_CHILD, module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )

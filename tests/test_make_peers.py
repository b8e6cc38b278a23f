"""``make peers``: the second venv for benchmarks/, read from ``make -n`` (nothing installed).

It must take the pinned torch/torchvision pair first, pin every other package, keep ultralytics
(AGPL-3.0, optional) and this package out of pip's resolver (``--no-deps``) so that nothing
replaces the pair, stay out of git, and leave ``make setup`` as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from commands import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*args: str) -> list[str]:
    """The commands ``make -n`` would run, one per line (continuations joined). Under ``make
    test`` the outer make's variables are dropped, so this make is a top-level one that prints
    no ``make[1]: Entering directory`` lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return [line for line in out.replace("\\\n", "").splitlines() if line.strip()]


def pip_installs(lines: list[str]) -> list[list[str]]:
    return [line.split()[2:] for line in lines if re.search(r"/bin/pip install ", line)]


def test_peers_installs_the_pinned_pair_first_and_pins_the_rest():
    lines = dry_run("peers", "PEERS=/tmp/no-such-peers")
    assert lines[0].endswith("-m venv /tmp/no-such-peers")
    installs = pip_installs(lines)
    assert [a for a in installs[0] if not a.startswith("-")] == [
        "torch==2.14.1",
        "torchvision==0.29.1",
    ]
    rest = [a for args in installs[1:] for a in args if not a.startswith("-") and a != "."]
    assert "torch==2.14.1" in rest and "torchvision==0.29.1" in rest  # kept in every resolve
    names = {a.split("==")[0] for a in rest}
    for package in ("timm", "grad-cam", "captum", "scikit-learn", "onnxruntime", "ultralytics"):
        assert package in names
    assert "opencv-python-headless" in names and "opencv-python" not in names
    assert [a for a in rest if "==" not in a] == []  # every version pinned
    no_deps = [args for args in installs if "--no-deps" in args]
    assert ["--quiet", "--no-deps", "ultralytics==8.4.190"] in no_deps
    assert ["--quiet", "--no-deps", "-e", "."] in no_deps
    with_deps = [args for args in installs if "--no-deps" not in args]
    assert not any(a.startswith("ultralytics==") for args in with_deps for a in args)


def test_peers_takes_the_cpu_index_when_asked():
    lines = dry_run("peers", "PEERS=/tmp/no-such-peers", "PEERS_INDEX=https://example.invalid/cpu")
    first = pip_installs(lines)[0]
    assert first[-2:] == ["--index-url", "https://example.invalid/cpu"]


def test_setup_is_unchanged_and_the_venv_is_ignored():
    setup = " ".join(dry_run("setup", "VENV=/tmp/no-such-venv"))
    assert "torch==2.13.0" in setup and "2.14.1" not in setup and "peers" not in setup
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".peers/bin/python"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0

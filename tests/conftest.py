from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def default_model():
    """The embedded EfficientNet-Lite0 (loaded once per session)."""
    from explain_export.builder.model.zoo import load_default

    return load_default()


@pytest.fixture(scope="session")
def default_export(tmp_path_factory):
    """The default model exported once with the CLI's defaults (both formats). What the command
    printed is kept beside the folder, in ``console.stdout`` and ``console.stderr``."""
    from explain_export.cli.export import main

    out = tmp_path_factory.mktemp("default_export")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--out", str(out)])
    assert code == 0, stderr.getvalue()
    (out.parent / "console.stdout").write_text(stdout.getvalue())
    (out.parent / "console.stderr").write_text(stderr.getvalue())
    return out


def pytest_collection_modifyitems(items):
    """A test that starts a live server is slow too."""
    for item in items:
        if item.get_closest_marker("serve"):
            item.add_marker(pytest.mark.slow)


# Thread names Ray's core worker gives its native threads. They outlive ray.shutdown() and can
# crash the process at exit (a CI run ended in a segmentation fault after every test passed), so
# a test runs Ray in a child process (tests/commands.py's ``ray_child``), never in this one.
RAY_THREADS = frozenset({"gcs_client_io_s", "worker.io"})


def pytest_sessionfinish(session, exitstatus):
    """Fail the run where Ray was started in the pytest process (Linux: thread names)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return
    names = set()
    for task in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, task, "comm")) as f:
                names.add(f.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    if names & RAY_THREADS:
        sys.stderr.write(
            "\nRay was started in the pytest process (its threads "
            f"{sorted(names & RAY_THREADS)} are running); run it in a child process\n"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

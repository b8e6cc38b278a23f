"""The goals from the project's issues, and whether a run meets them.

The goals are data, not code: ``explain_export/data/bench_targets.json``, shipped with the
package (:data:`TARGETS_FILE`), ``{"format": ..., "targets": [...]}`` with one object per
target, the fields of :class:`Target` (``path`` a list of strings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ExplainExportError

__all__ = ["TARGETS_FILE", "TARGETS_FORMAT", "Target", "check_targets", "load_targets"]

TARGETS_FILE = "data/bench_targets.json"  # in the explain_export package
TARGETS_FORMAT = "explain-bench-targets/1"


@dataclass(frozen=True)
class Target:
    """A goal from the issue, read off :func:`.stats.ratios` (``ratio[kind][variant][batch]``),
    or off ``best_exported`` / ``head_profile`` (``[kind][batch]``), at ``key``, vs ``bound``.

    ``unit`` says how the value reads (×, %, ms, images/s); a target with a ``device`` is checked
    on runs on that device only.
    """

    text: str
    path: tuple[str, ...]  # keys into the ratios, the batch last
    bound: float
    at_most: bool = False
    key: str = "value"
    unit: str = "×"
    device: str | None = None


_FIELDS = {f.name for f in dataclasses.fields(Target)}


def _target(entry: Any) -> Target:
    """One entry of the file as a :class:`Target`; ValueError where it is not one."""
    if not isinstance(entry, dict):
        raise ValueError(f"a target must be an object, got {entry!r}")
    missing = sorted({"text", "path", "bound"} - set(entry))
    if missing:
        raise ValueError(f"target {entry.get('text')!r}: missing {', '.join(missing)}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        what = "field" if len(unknown) == 1 else "fields"
        raise ValueError(f"target {entry['text']!r}: unknown {what} {', '.join(unknown)}")
    path = entry["path"]
    if not isinstance(path, list) or not path or not all(isinstance(k, str) for k in path):
        raise ValueError(f"target {entry['text']!r}: path must be a list of strings")
    bound = entry["bound"]
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise ValueError(f"target {entry['text']!r}: bound must be a number")
    for name, ok in (("at_most", (bool,)), ("key", (str,)), ("unit", (str,))):
        if name in entry and not isinstance(entry[name], ok):
            raise ValueError(f"target {entry['text']!r}: {name} must be {ok[0].__name__}")
    if entry.get("device") not in (None, "cpu", "cuda"):
        raise ValueError(f"target {entry['text']!r}: device must be null, cpu or cuda")
    return Target(**{**entry, "path": tuple(path), "bound": float(bound)})


@functools.cache
def load_targets(path: str | None = None) -> tuple[Target, ...]:
    """The targets in the JSON file at ``path`` (default: :data:`TARGETS_FILE`, shipped with the
    package), in file order. A missing or unreadable file is an
    :class:`~.errors.ExplainExportError` in one line."""
    source: Any = Path(path) if path else resources.files("explain_export") / TARGETS_FILE
    try:
        with source.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ExplainExportError(
            f"the bench targets file is missing: {source} (it ships in the explain_export "
            f"package as {TARGETS_FILE})"
        ) from None
    except (OSError, ValueError) as exc:
        raise ExplainExportError(f"cannot read the bench targets file {source}: {exc}") from None
    try:
        if not isinstance(data, dict) or data.get("format") != TARGETS_FORMAT:
            raise ValueError(f'want an object with "format": "{TARGETS_FORMAT}"')
        if not isinstance(data.get("targets"), list):
            raise ValueError('want a list of targets under "targets"')
        return tuple(_target(entry) for entry in data["targets"])
    except ValueError as exc:
        raise ExplainExportError(f"bad bench targets file {source}: {exc}") from None


def check_targets(
    found: dict[str, Any],
    device: str | None = None,
    targets: tuple[Target, ...] | None = None,
    busy: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Each target whose value was measured, with the value and whether it is met. ``found``:
    the ratios, plus ``best_exported`` and ``head_profile`` where known. Targets for a device
    other than ``device`` are left out silently. ``targets``: default :func:`load_targets`.
    A target at a batch size in ``busy`` (the machine was busy while it was timed) is reported
    with ``judged`` false: its value is shown, not held against the bound."""
    rows = []
    for t in load_targets() if targets is None else targets:
        if t.device is not None and t.device != device:
            continue
        node: Any = found
        for key in t.path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        # a ratio from an older bench.json has only its value (the ratio of the two medians)
        key = t.key if t.key in node or t.key != "paired_median" else "value"
        value = node.get(key)
        if value is None:
            continue
        met = value <= t.bound if t.at_most else value >= t.bound
        rows.append(
            {
                "target": t.text,
                "kind": t.path[0],
                "value": value,
                "bound": t.bound,
                "unit": t.unit,
                "key": key,
                "met": bool(met),
                "judged": t.path[-1] not in busy,
            }
        )
    return rows

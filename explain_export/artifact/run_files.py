"""explain-run's files: each input's output ``NAME``, each map's stem, and the rows that
``--resume`` reads (:data:`PREDICTIONS`, and the :class:`Journal` of a run not yet finished).

Plain names and JSON lines, no images: :mod:`.runner` writes the files and decides what a
resumed run keeps.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable
from typing import Any, Protocol

from ..errors import OptionError
from . import images

__all__ = [
    "JOURNAL",
    "PREDICTIONS",
    "SHEET",
    "Journal",
    "collect",
    "detection_stem",
    "earlier_rows",
    "map_stem",
    "output_stems",
    "row_maps",
]

PREDICTIONS = "predictions.jsonl"
SHEET = "sheet.png"
JOURNAL = "predictions.partial.jsonl"  # the rows of a run not yet finished; --resume reads it
_REGION = {"class", "label", "pixel_share"}  # what a segmentation export's row has instead
_PATTERN = re.compile(r"[*?[]")  # a path with these is also tried as a glob pattern


class Row(Protocol):
    """One image's row of ``predictions.jsonl`` (a :class:`.runner.ImageResult`)."""

    def to_json(self) -> dict[str, Any]: ...


def collect(paths: Iterable[str]) -> tuple[list[str], int, list[str]]:
    """Files named directly, plus the image files of named folders and their subfolders; the
    non-images skipped; and each file's output ``NAME`` (:func:`output_stems`): the stem of a
    file named directly, the path below its folder (``a/x`` for ``FOLDER/a/x.png``) otherwise,
    so ``a/x.png`` and ``b/x.png`` do not collide.

    A pattern that the shell left alone (quoted, or on a shell that does not expand ``*``,
    ``?`` and ``[...]``; ``**`` matches subfolders) is expanded here, in sorted order. A path
    that does not exist, or a pattern that matches nothing, is an :class:`.OptionError` (a
    mistyped path, not an image that failed), raised before any work; a file that exists but
    cannot be read fails alone, later."""
    found: list[str] = []
    stems: list[str] = []
    skipped = 0
    for p in _expand(list(paths)):
        if os.path.isdir(p):
            imgs, others = images.list_images(p)
            found += imgs
            stems += [os.path.splitext(os.path.relpath(f, p))[0] for f in imgs]
            skipped += others
        else:
            found.append(p)  # tried as given; a missing or bad file fails alone, later
            stems.append(os.path.splitext(os.path.basename(p))[0])
    return found, skipped, output_stems(found, stems)


def _expand(paths: list[str]) -> list[str]:
    """``paths`` with each pattern that names no file replaced by its matches; the paths that
    do not exist named in one :class:`.OptionError`."""
    out: list[str] = []
    missing: list[str] = []
    for p in paths:
        if os.path.lexists(p):
            out.append(p)
        elif _PATTERN.search(p) and (matches := sorted(glob.glob(p, recursive=True))):
            out += matches
        else:
            missing.append(p)
    if not missing:
        return out
    if len(missing) > 1:
        what = "do not exist (or match no file)"
    else:
        what = "matches no file" if _PATTERN.search(missing[0]) else "does not exist"
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    shown = ", ".join(f"'{m}'" for m in missing[:3]) + more
    raise OptionError("images", "{name} {shown} {what}; check the path", shown=shown, what=what)


def output_stems(paths: list[str], stems: list[str] | None = None) -> list[str]:
    """``NAME`` per input: its stem (by default the file's name without extension; may hold
    subfolders, ``a/x``), or ``stem_ext`` where two inputs share a stem."""
    if stems is None:
        stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = []
    for p, stem in zip(paths, stems, strict=True):
        ext = os.path.splitext(p)[1].lstrip(".").lower()
        names.append(f"{stem}_{ext}" if stems.count(stem) > 1 and ext else stem)
    seen: dict[str, int] = {}
    unique = []
    for n in names:  # the same file given twice, or a.png + a_png.png
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return unique


def map_stem(name: str, rank: int) -> str:
    """The stem of map ``rank``'s files (from 1, best first): ``NAME``, then ``NAME.topJ``."""
    return name if rank == 1 else f"{name}.top{rank}"


def detection_stem(name: str, j: int) -> str:
    """The stem of detection ``j``'s files (from 0, its index in the row's ``detections``,
    ``--per-detection``): ``NAME.detJ``."""
    return f"{name}.det{j}"


def earlier_rows(out_dir: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Finished rows of earlier runs by ``(file, first output)``; unreadable lines ignored (a
    journal line cut short when its run was killed)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name in (PREDICTIONS, JOURNAL):
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    key = (row["file"], row["outputs"][0])
                    # a top-k, a region, or a detection export's list
                    if row.get("topk") or row.keys() >= _REGION or "detections" in row:
                        rows[key] = row
                except (ValueError, KeyError, IndexError, TypeError):
                    continue
    return rows


class Journal:
    """The rows of a run as its batches finish, appended to :data:`JOURNAL` in ``out_dir``:
    what ``--resume`` reads when the run is stopped before :func:`.runner.finish` writes
    ``predictions.jsonl`` (which removes the journal). A run without ``resume`` starts it anew.
    ``opts``: the run's :class:`.runner.RunOptions` (``out_dir``, ``resume``)."""

    def __init__(self, opts: Any) -> None:
        self.path = os.path.join(opts.out_dir, JOURNAL)
        self._file = open(self.path, "a" if opts.resume else "w", encoding="utf-8")  # noqa: SIM115

    def add(self, results: Iterable[Row]) -> None:
        self._file.write("".join(json.dumps(r.to_json()) + "\n" for r in results))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def row_maps(row: dict[str, Any]) -> int | None:
    """How many maps an earlier row lists in ``explained`` (a top-k export's), None where it
    has no such list (any other export), -1 where the list cannot be read."""
    maps = row.get("explained")
    if maps is None:
        return None
    keys = {"class", "label", "score"}
    ok = isinstance(maps, list) and all(isinstance(m, dict) and keys <= m.keys() for m in maps)
    return len(maps) if ok else -1

"""One image's findings in words, for the console and the contact sheet (ASCII and the labels'
characters only: the sheet's font draws ASCII)."""

from __future__ import annotations

from typing import Any

__all__ = ["summary"]


def _named(entry: dict[str, Any]) -> str:
    """``label (score)``: two decimals, two digits where it is under 0.005, ``<1e-06`` where it
    rounded to 0 (scores are kept to 1e-6)."""
    s = float(entry["score"])
    shown = f"{s:.2f}" if s >= 0.005 else f"{s:.1e}" if s > 0 else "<1e-06"
    return f"{entry['label']} ({shown})"


def _adcc(maps: list[dict[str, Any]]) -> str:
    """``; ADCC 0.61`` (``0.61, 0.55`` for several maps) where the maps have faithfulness
    scores (an export with ``--faithfulness``), else nothing."""
    scored = [m["faithfulness"]["adcc"] for m in maps if "faithfulness" in m]
    return f"; ADCC {', '.join(f'{a:.2f}' for a in scored)}" if scored else ""


def summary(topk: list[dict[str, Any]], maps: list[dict[str, Any]] | None) -> str:
    """The classes of one image's maps (``maps``, :func:`.pipeline.explained`'s) and its top-1:
    ``map: Egyptian cat (0.78), the top-1`` where the map is the top-1's, ``map: espresso
    (1.2e-03); top-1 Egyptian cat (0.78)`` where it is another class's; a top-k export's
    ``maps: A (0.78), B (0.10)``; a map of no class (``maps`` None) ``top-1 Egyptian cat (0.78);
    the map explains no class``. Maps with faithfulness scores add their ADCC
    (``...; ADCC 0.61``)."""
    top = topk[0]
    if not maps:
        return f"top-1 {_named(top)}; the map explains no class"
    if len(maps) > 1:
        return "maps: " + ", ".join(_named(m) for m in maps) + _adcc(maps)
    if maps[0]["class"] == top["class"]:
        return f"map: {_named(maps[0])}, the top-1" + _adcc(maps)
    return f"map: {_named(maps[0])}; top-1 {_named(top)}" + _adcc(maps)

"""The report of ``isdm data check``: pairs, image sizes, per-class pixel share and image counts,
and the geometry advice of :mod:`isdm.data.advice`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from isdm.data.advice import Advice
from isdm.data.validate import DatasetReport

__all__ = ["CLASSES_FILE", "class_names", "report_to_dict", "format_report"]

CLASSES_FILE = "classes.json"


def class_names(root: str | Path, mode: str, num_classes: int) -> list[str]:
    """Class names from ``<root>/classes.json`` (a JSON list) when it fits, else defaults.

    Defaults: ``background``, ``defect`` for binary data; ``background``, ``class 1``, ... otherwise.
    """
    path = Path(root) / CLASSES_FILE
    if path.is_file():
        try:
            names = json.loads(path.read_text())
        except ValueError:
            names = None
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
        if isinstance(names, list) and mode == "binary" and len(names) > 2:
            return [str(names[0]), "defect (any)"]
    if mode == "binary":
        return ["background", "defect"]
    return ["background"] + [f"class {c}" for c in range(1, num_classes)]


def report_to_dict(report: DatasetReport, names: Optional[list[str]] = None,
                   advice: Optional[Advice] = None) -> dict[str, Any]:
    """A JSON-ready form of the report (used by ``--json``)."""
    names = names or class_names(report.root, report.mode, report.num_classes)
    splits = {}
    for name, s in report.splits.items():
        splits[name] = {
            "pairs": s.num_pairs,
            "min_size": list(s.min_size),
            "max_size": list(s.max_size),
            "class_pixels": s.class_pixels,
            "class_share": [round(x, 6) for x in s.class_share()],
            "class_images": s.class_images,
            "ignore_pixels": s.ignore_pixels,
            "raw_mask_values": s.raw_values,
        }
        if s.placed_pixels:
            splits[name].update(placed_pixels=s.placed_pixels, placed_images=s.placed_images,
                                placed_area=s.placed_area)
    return {
        "root": str(report.root),
        "ok": report.ok,
        "mode": report.mode,
        "num_classes": report.num_classes,
        "ignore_index": report.ignore_index,
        "class_names": names,
        "splits": splits,
        "problems": report.problems,
        "hints": report.hints,
        "warnings": report.warnings,
        "advice": None if advice is None else {"lines": advice.lines,
                                               "suggested": advice.suggested},
    }


def _size(s: tuple[int, int]) -> str:
    return f"{s[0]}x{s[1]}"


def format_report(report: DatasetReport, names: Optional[list[str]] = None,
                  advice: Optional[Advice] = None) -> str:
    """Human-readable report: one table of splits, one of classes, the advice, then problems
    (if any)."""
    names = names or class_names(report.root, report.mode, report.num_classes)
    ignore = f", ignore_index {report.ignore_index}" if report.mode != "binary" else ""
    lines = [f"dataset {report.root} ({report.mode}, {report.num_classes} classes{ignore})", ""]
    splits = list(report.splits.values())
    lines.append(f"{'split':<8}{'pairs':>7}  {'image sizes':<22}{'stored mask values'}")
    for s in splits:
        sizes = _size(s.min_size) if s.min_size == s.max_size else f"{_size(s.min_size)}..{_size(s.max_size)}"
        values = ",".join(map(str, s.raw_values)) + ("..." if len(s.raw_values) >= 32 else "")
        # sizes are recorded for pairs whose mask decodes: none -> "-", not "0x0"
        sized = s.num_pairs and s.max_size != (0, 0)
        lines.append(f"{s.split:<8}{s.num_pairs:>7}  {sizes if sized else '-':<22}{values}")
    lines.append("")
    head = f"{'class':<22}" + "".join(f"{s.split + ' pixels':>16}{s.split + ' images':>15}" for s in splits)
    lines.append(head)
    for c, name in enumerate(names):
        row = f"{c:>2} {name:<19}"
        for s in splits:
            share = s.class_share()[c] if s.class_pixels else 0.0
            row += f"{share * 100:>15.3f}%{s.class_images[c] if s.class_images else 0:>15}"
        lines.append(row)
    if any(s.ignore_pixels for s in splits):
        lines.append(f"   {'ignored pixels':<19}" + "".join(f"{s.ignore_pixels:>16}{'':>15}" for s in splits))
    lines.append("")
    lines += [f"warning: {w}" for w in report.warnings]
    if advice is not None and advice.lines:
        lines += ["advice (train split):"] + [f"  {a}" for a in advice.lines] + [""]
    if report.ok:
        total = sum(s.num_pairs for s in splits)
        lines.append(f"OK: {total} pairs, no problems")
    else:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  - {p}" for p in report.problems]
        lines += [f"  fix: {h}" for h in report.hints]
    return "\n".join(lines)

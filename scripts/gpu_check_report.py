"""The GPU check's results: stage_times.json, summary.md and results.tar.gz, refreshed after
every phase, so that a run stopped from outside still leaves what it had measured.

The result folder holds at most 8 files (what the device tool brings back from ``$OUT``):
stage_times.json, summary.md, gpu_bench.json, report.md, grid.png, results.tar.gz. Everything
else stays in the work folder and its small files go into results.tar.gz. Standard library only.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORD = "stage_times.json"
# work-folder file -> its name in the result folder
COPIES = {"gpu_bench.json": "gpu_bench.json", "pipeline/evaluate/report.md": "report.md",
          "pipeline/synthetic/grid.png": "grid.png"}
# every file the check writes into the result folder, and into the work folder
OUT_FILES = (RECORD, "summary.md", "results.tar.gz", *COPIES.values())
WORK_FILES = (RECORD, "logs", "pipeline", "env.json", "gpu_tests.xml", "gpu_bench.json",
              "params.yaml")
# what results.tar.gz holds (globs in the work folder): no checkpoints, no image folders
PACKED = ("logs/*.log", "env.json", "params.yaml", "gpu_tests.xml", "gpu_bench.json", RECORD,
          "pipeline/models/*/metrics.json", "pipeline/models/*/config.json",
          "pipeline/models/*/loss.csv", "pipeline/models/*/loss.png",
          "pipeline/synthetic/*.json", "pipeline/synthetic/grid.png", "pipeline/curated/*.json",
          "pipeline/curated/*.md", "pipeline/curated/*.png", "pipeline/evaluate/*")


def _utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return (out.stdout.strip() + (" + local changes" if dirty else "")) if out.returncode == 0 \
        else "unknown (no .git in this copy)"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def start_record(work: Path, mode: str, args: Any) -> dict[str, Any]:
    """A new record, or (with ``--only``) the work folder's earlier one to add the rerun to."""
    earlier = _read_json(work / RECORD) if args.only else None
    if earlier and earlier.get("mode") == mode:
        earlier.setdefault("reruns", []).append({"started_utc": _utc(), "only": args.only})
        return earlier
    return {"mode": mode, "started_utc": _utc(), "commit": _commit(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "budget_s": args.budget_s,
            "bench_budget_s": args.bench_budget_s, "recipe": "configs/gpu.yaml",
            "params": args.params, "extra_sets": args.set, "phases": {}}


# ----------------------------------------------------------------------------- headline numbers
def _tests(work: Path) -> dict[str, Any] | None:
    """Counts of the junit XML of ``pytest -m gpu`` and the names of failed tests."""
    try:
        root = ET.parse(work / "gpu_tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    cases = list(root.iter("testcase"))
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in cases
              if c.find("failure") is not None or c.find("error") is not None]
    skipped = sum(c.find("skipped") is not None for c in cases)
    return {"passed": len(cases) - len(failed) - skipped, "failed": len(failed),
            "skipped": skipped, "failed_tests": failed}


def _cells(work: Path, seconds: float | None) -> dict[str, Any] | None:
    """Evaluate's cells and cells per minute (of the stage's wall time), from cells.csv, or,
    for a stage stopped at its cap, from the progress counter in its log."""
    path = work / "pipeline" / "evaluate" / "cells.csv"
    if path.exists():
        rows = list(csv.DictReader(path.open()))
        train_s = [float(r["train_seconds"]) for r in rows if r.get("train_seconds")]
        done, total = len(rows), len(rows)
        mean = sum(train_s) / len(train_s) if train_s else None
    else:
        log = work / "logs" / "pipeline.evaluate.log"
        found = re.findall(r"(\d+)/(\d+) \[", log.read_text(errors="replace")) \
            if log.exists() else []
        if not found:
            return None
        done, total, mean = int(found[-1][0]), int(found[-1][1]), None
    per_min = done / seconds * 60 if seconds else None
    return {"cells_done": done, "cells_total": total, "cells_per_min": per_min,
            "mean_train_seconds_per_cell": mean}


def headline(record: dict[str, Any], work: Path) -> dict[str, Any]:
    """The numbers the README asks for, from the files the phases wrote."""
    p, phases = work / "pipeline", record["phases"]
    h: dict[str, Any] = {"env": _read_json(work / "env.json"), "gpu_tests": _tests(work),
                         "bench_gpu": _read_json(work / "gpu_bench.json")}
    for name in ("sdm", "sdm_ft"):
        h[f"pipeline_{name}"] = _read_json(p / "models" / name / "metrics.json")
    summary = _read_json(p / "synthetic" / "summary.json") or {}
    h["pipeline_sample"] = summary.get("this_run")
    h["pipeline_evaluate"] = _cells(work, phases.get("pipeline.evaluate", {}).get("seconds"))
    h["pipeline_headline"] = _read_json(p / "evaluate" / "metrics.json")
    return h


# ----------------------------------------------------------------------------- summary.md
def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) else "-" if x is None else str(x)


def _env_line(env: dict[str, Any] | None) -> str:
    if not env:
        return "**Environment**: unknown (the env phase wrote no env.json)"
    v = env.get("versions", {})
    gpu = (f"{env.get('gpu')} ({env.get('memory_gib')} GiB, capability {env.get('capability')})"
           if env.get("cuda_available") else "no CUDA device")
    pins = "; ".join(f"{k} {w}" for k, w in env.get("pins_differ", {}).items())
    return (f"**GPU**: {gpu}; torch {v.get('torch')} (CUDA {env.get('torch_cuda')}), Python "
            f"{env.get('python')}, {env.get('cpus')} CPUs" + (f"; differs from the pins: {pins}"
                                                               if pins else ""))


def _bench_lines(bench: dict[str, Any] | None) -> list[str]:
    if not bench:
        return ["no gpu_bench.json (see the bench_gpu phase)"]
    lines = [f"{bench['device']}, {bench['preset']} preset ({bench['params_M']:.0f} M params), "
             f"{bench['image_size']} px, {bench['seconds']:.0f} s", "",
             "| what | precision | batch | images/s | s/image |", "|---|---|---|---|---|"]
    for r in bench["table"]:
        lines.append(f"| {r['what']} | {r['precision']} | {_fmt(r.get('batch'))} | "
                     f"{_fmt(r.get('images_per_s'))} | "
                     f"{_fmt(r.get('s_per_image', r.get('skipped')))} |")
    return lines


def _pipeline_lines(record: dict[str, Any], h: dict[str, Any]) -> list[str]:
    what = {"pipeline.train": h.get("pipeline_sdm"), "pipeline.finetune": h.get("pipeline_sdm_ft")}
    lines = ["| stage | status | seconds (wall, process start included) | measured by the stage |",
             "|---|---|---|---|"]
    for name, e in record["phases"].items():
        if not name.startswith("pipeline."):
            continue
        m, extra = what.get(name), ""
        if m:
            extra = f"{m.get('steps')} steps, {_fmt(m.get('images_per_s'))} img/s"
        elif name == "pipeline.sample" and h.get("pipeline_sample"):
            s = h["pipeline_sample"]
            extra = f"{s.get('generated')} images, {_fmt(s.get('seconds_per_image'))} s/image"
        elif name == "pipeline.evaluate" and h.get("pipeline_evaluate"):
            c = h["pipeline_evaluate"]
            extra = (f"{c['cells_done']}/{c['cells_total']} cells, "
                     f"{_fmt(c['cells_per_min'])} cells/min, "
                     f"{_fmt(c['mean_train_seconds_per_cell'])} s training per cell")
        lines.append(f"| {name[9:]} | {e['status']} | {e['seconds']:.1f} | {extra} |")
    return lines


def summary_md(record: dict[str, Any]) -> str:
    h = record.get("headline", {})
    bad = [n for n, e in record["phases"].items() if e["status"] != "ok"]
    lines = [f"# isdm GPU check ({record['mode']}), {record['started_utc']}", "",
             _env_line(h.get("env")), "",
             f"**Commit** {record['commit']}; recipe {record['recipe']} over {record['params']}",
             "", "**Verdict**: " + ("every phase ran ok" if not bad else
                                    f"not ok: {', '.join(bad)} (see results.tar.gz logs/)")
             + (f"; interrupted ({record['interrupted']})" if "interrupted" in record else ""),
             "", "| phase | status | rc | seconds | CPU s | cap s | note |",
             "|---|---|---|---|---|---|---|"]
    for name, e in record["phases"].items():
        lines.append(f"| {name} | {e['status']} | {_fmt(e['rc'])} | {e['seconds']:.1f} | "
                     f"{_fmt(e.get('cpu_s'))} | {e['cap_s']} | {e.get('note', '')} |")
    t = h.get("gpu_tests")
    lines += ["", "## CUDA tests (pytest -m gpu)", "", "no junit XML" if not t else
              f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"
              + (": " + ", ".join(t["failed_tests"]) if t["failed_tests"] else "")]
    lines += ["", "## make bench-gpu", "", *_bench_lines(h.get("bench_gpu"))]
    lines += ["", "## The embedded pipeline (configs/gpu.yaml)", "", *_pipeline_lines(record, h)]
    if h.get("pipeline_headline"):
        lines += ["", "Headline: " + ", ".join(f"{k} {_fmt(v, 4)}"
                                              for k, v in h["pipeline_headline"].items())]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the folder
def pack(work: Path, out: Path) -> None:
    """results.tar.gz of the work folder's small files (:data:`PACKED`)."""
    tmp = out / ".results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for pattern in PACKED:
            for path in sorted(work.glob(pattern)):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(work)))
    os.replace(tmp, out / "results.tar.gz")


def refresh(record: dict[str, Any], work: Path, out: Path) -> None:
    """Rewrite the record, summary.md, the copies and the archive (after every phase)."""
    record["updated_utc"] = _utc()
    record["headline"] = headline(record, work)
    data = (json.dumps(record, indent=2) + "\n").encode()
    _write_atomic(work / RECORD, data)
    if out != work:
        _write_atomic(out / RECORD, data)
    for src, name in COPIES.items():
        if (work / src).exists():
            shutil.copyfile(work / src, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)
    _write_atomic(out / "summary.md", summary_md(record).encode())
    pack(work, out)


def finish(record: dict[str, Any], work: Path, out: Path) -> int:
    """Final refresh; print summary.md; 0 when every phase ran and was ok."""
    record["finished_utc"] = _utc()
    record["seconds"] = round(sum(e["seconds"] for e in record["phases"].values()), 1)
    refresh(record, work, out)
    print("\n" + summary_md(record), flush=True)
    print(f"gpu-check: results in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    ok = all(e["status"] == "ok" for e in record["phases"].values())
    return 0 if ok and "interrupted" not in record else 1

"""``python -m isdm.bench`` (``make bench``): run the benchmarks, print tables, write JSON.

Each benchmark module exposes ``run(quick: bool = False) -> dict`` whose ``"table"`` entry is a
list of flat row dicts (the eval and plateau benchmarks also take ``data_root``: the CrackForest
folder of ``--crackforest`` or ``$ISDM_CRACKFOREST``; plateau writes its curves beside
``--out``; tune measures the tuning objective's noise against its spread on the embedded
pipeline; cells measures the segmenter's GFLOP per step and its share of the machine's fp32
matmul rate, bare and as whole cells on the pool). Every benchmark but the long ``plateau`` runs
by default; ``--only`` picks some.
Results of one invocation are measured in one run, so ratios between rows are meaningful;
absolute times on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

BENCHES = {
    "train": "isdm.bench.train_bench",
    "sample": "isdm.bench.sample_bench",
    "eval": "isdm.bench.eval_bench",
    "cells": "isdm.bench.cell_bench",
    "plateau": "isdm.bench.plateau",
    "scale": "isdm.bench.scale_bench",
    "tune": "isdm.bench.tune_bench",
}
OPT_IN = ("plateau",)  # long (several seeds x architectures x steps): only with --only


def markdown_table(rows: list[dict]) -> str:
    """Rows of flat dicts -> a markdown table (floats to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isdm.bench", description=__doc__)
    parser.add_argument("--out", default="bench/results.json")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute each)")
    parser.add_argument("--crackforest", metavar="DIR", default=os.environ.get("ISDM_CRACKFOREST"),
                        help="CrackForest folder (train/, test/) for the eval benchmark "
                             "(default $ISDM_CRACKFOREST; skipped when neither is given)")
    args = parser.parse_args(argv)
    options = {"eval": {"data_root": args.crackforest},
               "plateau": {"data_root": args.crackforest, "out_dir": Path(args.out).parent}}

    import torch

    from isdm.utils.io import atomic_write_text

    results: dict = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "quick": args.quick,
        }
    }
    failed = False
    for name in args.only or [n for n in BENCHES if n not in OPT_IN]:
        print(f"\n## {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = importlib.import_module(BENCHES[name]).run(quick=args.quick,
                                                             **options.get(name, {}))
        except Exception:  # a broken benchmark must not hide the others' numbers
            traceback.print_exc()
            results[name] = {"error": traceback.format_exc()}
            failed = True
            continue
        res["wall_s"] = time.perf_counter() - t0
        results[name] = res
        print(markdown_table(res.get("table", [])), flush=True)
        for line in res.get("notes", []):
            print(f"- {line}")
    headline = [row for name in BENCHES for row in results.get(name, {}).get("headline", [])]
    summary = ("## like for like: the original code (quoted) vs isdm (measured now)\n\n"
               + markdown_table(headline) + "\n")
    print("\n" + summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), summary + "".join(
        f"\n## {name}\n\n{markdown_table(res.get('table', []))}\n"
        for name, res in results.items() if isinstance(res, dict) and "table" in res))
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

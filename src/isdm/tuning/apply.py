"""``isdm tune --apply``: write the best knobs into a params.yaml, keeping its comments.

The edit is :func:`isdm.config.edit.apply_values`, the code of ``isdm config apply`` too (keys the
file lacks are added to their section; the result must mean the file plus the knobs, or nothing
is written). ``best_params.yaml`` holds dotted keys (``sample.s: 2.1``), so it is also an overlay:
``isdm config show -c params.yaml -c reports/tune/best_params.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from isdm.errors import ConfigError, TuningError

__all__ = ["apply_params", "read_best_params", "check_evidence"]


def read_best_params(path: str | Path) -> dict[str, Any]:
    """The dotted keys of a ``best_params.yaml``.

    Raises:
        TuningError: the file is missing or holds no mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise TuningError(f"{path} does not exist: run `isdm tune` with this --out first (it "
                          "writes best_params.yaml once a trial completed)")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict) or not params:
        raise TuningError(f"{path}: expected `section.key: value` lines, found {params!r}")
    return params


def check_evidence(out_dir: str | Path) -> None:
    """Refuse to apply a best trial the study cannot tell from the others.

    Raises:
        TuningError: (1) another complete trial of ``trials.csv`` has exactly the best gain
            (the winner was picked from a tie: e.g. every segmenter predicted only
            background, so every gain is 0); or (2) ``final_check.json`` is missing, was run
            for another trial than ``summary.json``'s best, or does not say the tuned knobs are
            significantly better on the test split. ``--force`` skips the check.
    """
    import csv
    import json

    out = Path(out_dir)
    problems = []
    try:
        summary = json.loads((out / "summary.json").read_text())
        rows = list(csv.DictReader((out / "trials.csv").open()))
    except (OSError, ValueError):
        summary, rows = {}, []
    best, gain = summary.get("best_trial"), summary.get("best_gain")
    if best is None or gain is None:
        problems.append(f"{out} has no summary.json / trials.csv naming the best trial")
    else:
        ties = [r["number"] for r in rows if r.get("state") == "COMPLETE" and r.get("gain")
                and int(r["number"]) != int(best) and abs(float(r["gain"]) - gain) <= 1e-12]
        if ties:
            problems.append(f"best trial {best} ties the field: trial(s) {', '.join(ties)} have "
                            f"the same gain {gain:+.4f}, so the study did not pick it (are "
                            "all gains 0? then the segmenters predict only background)")
    try:
        check = json.loads((out / "final_check.json").read_text())
    except (OSError, ValueError):
        check = {}
    verdict = check.get("tuned_vs_current", {}).get("verdict")
    if str(check.get("verdict", "")).startswith("same knobs"):
        pass  # applying changes nothing
    elif check.get("best_trial") != best or verdict is None:
        problems.append(f"no test-split check of the best trial in {out}/final_check.json "
                        "(tune.final_check: true runs it)")
    elif verdict != "gain":
        problems.append(f"the test-split check says: {check['verdict']} "
                        f"({check['tuned_vs_current']['gain']:+.4f})")
    if problems:
        raise TuningError("--apply refused, params.yaml is unchanged: " + "; ".join(problems)
                          + ". Run a larger study (more tune.repeats / trials), or apply "
                          "anyway with --force.")


def apply_params(params_file: str | Path, params: Mapping[str, Any],
                 source: str = "best_params.yaml") -> list[str]:
    """Write ``params`` into ``params_file``; returns ``["sample.s: 1.5 -> 2.1", ...]``.

    Raises:
        TuningError: a key it cannot place, or a result that does not reload with the new values.
    """
    from isdm.config.edit import apply_values

    try:
        return apply_values(params_file, params, source)
    except ConfigError as e:
        raise TuningError(str(e)) from None

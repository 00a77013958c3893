"""What a study leaves in ``--out``: ``best_params.yaml``, ``trials.csv`` and ``summary.json``
(plots: :mod:`.plots`).

The best trial (:func:`best_trial`): the complete trial of the highest paired gain; with
``tune.objectives: [gain, cost]``, the Pareto-front trial of the highest gain (the front is
in ``summary.json`` and ``pareto_front.png``). ``best_params.yaml`` holds its knobs as
params.yaml dotted keys; ``synthetic_ratio`` becomes ``sample.num_samples`` = ratio x the real
training images per cell (the study's user attribute :data:`N_REAL_ATTR`), the count the trial
sampled, so ``RALLFALL`` of the pipeline trains on the same ratio.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from isdm.tuning.objective import PROTOCOL, RATIO, synthetic_count

__all__ = ["N_REAL_ATTR", "best_trial", "best_params", "best_params_yaml", "write_trials_csv",
           "summary"]

N_REAL_ATTR = "isdm.n_real"


def _complete(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]


def _front(study: Any) -> list[Any]:
    """The Pareto front (multi-objective) or [] (single objective)."""
    return list(study.best_trials) if len(study.directions) > 1 and _complete(study) else []


def best_trial(study: Any) -> Optional[Any]:
    """The complete trial of the highest gain (on the Pareto front when there is one; ties:
    the lower cost, then the lower number); None before one completed."""
    candidates = _front(study) or _complete(study)
    if not candidates:
        return None
    return max(candidates, key=lambda t: (t.values[0], -(t.values[1] if len(t.values) > 1 else 0),
                                          -t.number))


def best_params(study: Any) -> dict[str, Any]:
    """The best trial's knobs as params.yaml dotted keys (``synthetic_ratio`` ->
    ``sample.num_samples``, ``protocol`` -> ``evaluate.protocol`` and its share or split)."""
    trial = best_trial(study)
    from isdm.evaluation.protocols import protocol_keys

    out = {k: v for k, v in trial.params.items() if k not in (RATIO, PROTOCOL)}
    if RATIO in trial.params:
        out["sample.num_samples"] = synthetic_count(trial.params[RATIO],
                                                    int(study.user_attrs[N_REAL_ATTR]))
    if PROTOCOL in trial.params:
        out.update(protocol_keys(trial.params[PROTOCOL]))
    return out


def best_params_yaml(study: Any, out_dir: str | Path = "OUT") -> str:
    """:func:`best_params` with a header: the trial, its gain, how to apply it (``out_dir``:
    the study folder the file is written to)."""
    trial = best_trial(study)
    params = best_params(study)
    a = trial.user_attrs
    se = "n/a" if a.get("gain_se") is None else f"{a['gain_se']:.4f}"
    sets = " ".join(f"-S {k}={v}" for k, v in params.items())
    lines = [f"# Best trial {trial.number} of Optuna study {study.study_name!r}: paired validation "
             f"mIoU gain {a['gain']:+.4f} ± {se} over {len(a['gain_repeats'])} repeats.",
             f"# Apply to params.yaml:  isdm tune -c params.yaml --out {out_dir} --apply",
             f"# or to the pipeline:  dvc exp run {sets}"]
    if RATIO in trial.params:
        lines.append(f"# sample.num_samples = synthetic_ratio {trial.params[RATIO]:g} x "
                     f"{study.user_attrs[N_REAL_ATTR]} real training images per cell.")
    lines += [f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def _repeat_columns(trials: list[Any]) -> list[str]:
    n = max((len(t.user_attrs.get("gain_repeats", [])) for t in trials), default=0)
    return ["repeats", *(f"{name}_r{r}" for name in ("gain", "val_miou", "baseline_val_miou")
                         for r in range(n))]


def write_trials_csv(study: Any, path: Path) -> None:
    """One row per trial: number, state, gain, its standard error and every repeat's gain,
    validation mIoU and baseline, the synthetic set (pairs, kept fraction, seconds per image),
    ``on_front`` (multi-objective), the knobs and the duration in seconds."""
    from isdm.utils.io import atomic_path

    trials = study.get_trials(deepcopy=False)
    knobs = sorted({k for t in trials for k in t.params})
    repeats = _repeat_columns(trials)
    front = {t.number for t in _front(study)}
    header = ["number", "state", "gain", "gain_se", *repeats, "n_synthetic", "kept_fraction",
              "seconds_per_image", *(["on_front"] if len(study.directions) > 1 else []),
              *knobs, "seconds"]
    rows = []
    for t in trials:
        a = t.user_attrs
        per_repeat = {f"{name}_r{r}": v for name, key in (("gain", "gain_repeats"),
                                                          ("val_miou", "val_miou"),
                                                          ("baseline_val_miou", "baseline_val_miou"))
                      for r, v in enumerate(a.get(key, []))}
        row = {"number": t.number, "state": t.state.name, **per_repeat,
               "repeats": len(a.get("gain_repeats", [])) or None,
               **{k: a.get(k) for k in ("gain", "gain_se", "n_synthetic", "kept_fraction",
                                        "seconds_per_image")},
               "on_front": int(t.number in front), **t.params,
               "seconds": None if t.duration is None else round(t.duration.total_seconds(), 2)}
        rows.append(["" if row.get(c) is None else row[c] for c in header])
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def summary(study: Any, storage: str, repeats: Optional[int] = None) -> dict[str, Any]:
    """Counts of trials per state, the objectives, the real-only baseline, the segmenter cells
    and steps the study used (``segmenter_cells``: trials, baseline, total, and ``fixed_total``
    what ``repeats`` fixed repeats per trial would have used; ``segmenter_steps`` = total x
    the steps of a cell) and, once one completed, the best trial (and the Pareto front's trial
    numbers)."""
    from isdm.tuning.repeats import segmenter_cells

    import optuna

    from isdm.tuning.paired import BASELINE_ATTR

    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    baseline = study.user_attrs.get(BASELINE_ATTR)
    out: dict[str, Any] = {"study_name": study.study_name, "storage": storage,
                           "objectives": ["gain", "cost"][:len(study.directions)],
                           "n_trials": len(states), "complete": count["complete"],
                           "pruned": count["pruned"], "failed": count["fail"],
                           "baseline_val_miou": baseline["val_miou"] if baseline else None}
    if baseline and repeats is not None:
        trials = study.get_trials(deepcopy=False)
        cells = segmenter_cells(trials, len(baseline["val_miou"]), repeats)
        steps = baseline.get("steps")
        out.update(eval_steps=steps, segmenter_cells=cells,
                   segmenter_steps=None if steps is None else cells["total"] * int(steps))
    best = best_trial(study)
    if best is not None:
        out.update(best_trial=best.number, best_gain=best.user_attrs["gain"],
                   best_gain_se=best.user_attrs.get("gain_se"),
                   best_repeats=len(best.user_attrs.get("gain_repeats", [])),
                   best_params=best_params(study))
        if len(study.directions) > 1:
            out["pareto_front"] = sorted(t.number for t in _front(study))
    return out

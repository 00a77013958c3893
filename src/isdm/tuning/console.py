"""What ``isdm tune`` prints while it runs: a progress bar over this worker's trials and one
line per finished trial::

    trial   3  s=2.10 drop=0.2 dpmpp2m 20 steps ratio=1 fidelity>=0.2 pixels>2x  gain +0.0123 ± 0.0045 (3 repeats)  0.41 s/image  COMPLETE  312 s

(``gain ± se`` over the repeats run so far; a PRUNED trial shows its repeats before the stop,
a FAIL shows ``gain n/a``.)
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

__all__ = ["knobs_text", "trial_line", "Console"]


def knobs_text(params: Mapping[str, Any]) -> str:
    """A trial's knobs in a few words (missing keys are left out)."""
    p = params
    parts = []
    if "sample.s" in p:
        parts.append(f"s={p['sample.s']:.2f}")
    if "finetune.drop_rate" in p:
        parts.append(f"drop={p['finetune.drop_rate']:g}")
    if "sample.sampler" in p:
        parts.append(f"{p['sample.sampler']} {p.get('sample.steps', '?')} steps")
    if "synthetic_ratio" in p:
        parts.append(f"ratio={p['synthetic_ratio']:g}")
    if "curate.min_fidelity" in p:
        parts.append(f"fidelity>={p['curate.min_fidelity']:g}")
    if "curate.pixel_threshold" in p:
        parts.append(f"pixels>{p['curate.pixel_threshold']:g}x")
    if "protocol" in p:
        parts.append(str(p["protocol"]))
    if "sample.mask_source" in p:
        parts.append(f"{p['sample.mask_source']} masks")
    return " ".join(parts)


def trial_line(trial: Any) -> str:
    """The console line of a finished ``optuna.trial.FrozenTrial``."""
    a = trial.user_attrs
    if "gain" in a:
        se = "n/a" if a.get("gain_se") is None else f"{a['gain_se']:.4f}"
        gain = f"gain {a['gain']:+.4f} ± {se} ({len(a['gain_repeats'])} repeats)"
    else:
        gain = "gain n/a"
    cost = f"  {a['seconds_per_image']:.2f} s/image" if "seconds_per_image" in a else ""
    seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
    return (f"trial {trial.number:>3}  {knobs_text(trial.params)}  {gain}{cost}  "
            f"{trial.state.name}  {seconds:.0f} s")


class Console:
    """An Optuna callback: prints :func:`trial_line` and advances a bar over ``n_trials``."""

    def __init__(self, n_trials: int, progress: bool) -> None:
        from isdm.utils import progress as bars

        self.bar = bars.bar(total=n_trials, desc="tune", unit="trial", enabled=progress)

    def __call__(self, study: Any, trial: Any) -> None:
        from isdm.utils import progress as bars

        bars.note(trial_line(trial), stream=sys.stdout)  # the study's record: stdout
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

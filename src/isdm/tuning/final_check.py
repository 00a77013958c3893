"""Does the tuned setting beat the config's own on data the search never saw? (the TEST split)

The search selects on validation mIoU, so the best trial's gain is biased upwards (the
maximum of noisy estimates). This check, run once at the end of ``isdm tune``:

1. builds two synthetic sets with the study's finetune budget and sample seed
   (:func:`isdm.tuning.objective.generator_config`): ``tuned`` from the best trial's knobs
   (:func:`isdm.tuning.results.best_trial`) and ``current`` from the config's own
   (``sample.s / steps / sampler / num_samples``, ``finetune.drop_rate``, ``curate.*``, and
   where searched ``sample.mask_source`` and the training protocol), each finetuned (cached),
   sampled and, with a curation filter on, curated;
2. runs :func:`isdm.evaluation.run_evaluation` on them: every architecture of
   ``evaluate.architectures`` (the pipeline's headline is their mean, so this is what
   ``--apply`` would change) x ``tune.final_seeds`` x the rows ``RALLF000``,
   ``RALLFALL[current]``, ``RALLFALL[tuned]`` (each set trained with its own protocol:
   ``RALLFALL[tuned] pretrain 0.5``), with the evaluate recipe (``evaluate.steps``), tested on
   the real TEST split;
3. reads the paired bootstrap of ``RALLFALL[tuned]`` against ``RALLFALL[current]`` (same seeds,
   same test images; mean over architectures, and per architecture) and writes
   ``final_check.json`` and ``final_check.md`` (gain, 95 % CI, verdict; both sets' gains over
   the real-only baseline for context).

The result is keyed by everything it depends on (both generators, the recipe, the seeds, the
checkpoint, the data); a later ``isdm tune`` on the same study reuses it while the best trial
stays the same. Identical knobs are reported without training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from isdm.config import Config, to_dict
from isdm.evaluation.mixes import mix_label
from isdm.tuning.objective import PROTOCOL, RATIO, dotted_params

__all__ = ["current_params", "run_final_check", "final_markdown"]

_KNOB_SECTIONS = ("finetune", "sample", "curate")


def current_params(cfg: Config, n_real: int) -> dict[str, Any]:
    """The config's own knobs in the trials' parameter names (the protocol and the mask
    source where the study searches them)."""
    t = cfg.tune
    out = {"sample.s": cfg.sample.s, "finetune.drop_rate": cfg.finetune.drop_rate,
           "sample.steps": cfg.sample.steps, "sample.sampler": cfg.sample.sampler,
           RATIO: cfg.sample.num_samples / n_real,
           "curate.min_fidelity": cfg.curate.min_fidelity,
           "curate.pixel_threshold": cfg.curate.pixel_threshold}
    if t.protocols:
        out[PROTOCOL] = _protocol(cfg)
    if t.mask_sources:
        out["sample.mask_source"] = cfg.sample.mask_source
    return out


def _protocol(gcfg: Config) -> str:
    from isdm.evaluation.protocols import protocol_of

    return protocol_of(gcfg.evaluate).code


def _build_set(gcfg: Config, data_root: Path, checkpoint: Path, out_dir: Path, folder: Path,
               curator: Any) -> Path:
    """Finetune (cached in ``out_dir``), sample into ``folder/synthetic``, curate; the folder
    to evaluate."""
    from isdm.sampling import run_sampling
    from isdm.tuning.cache import finetuned_checkpoint

    ckpt = finetuned_checkpoint(gcfg, data_root, checkpoint, out_dir)
    run_sampling(gcfg, data_root, ckpt, folder / "synthetic", overwrite=True)
    return curator(gcfg, folder / "synthetic", folder / "curated")[0]


def _stats(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("gain", "gain_lo", "gain_hi", "verdict", "gain_nobg",
                              "gain_nobg_lo", "gain_nobg_hi", "verdict_nobg")}


def run_final_check(cfg: Config, data_root: str | Path, checkpoint: str | Path,
                    out_dir: str | Path, study: Any, *, progress: Optional[bool] = None,
                    cell_cache: Optional[str | Path] = None) -> Optional[dict[str, Any]]:
    """Run (or reuse) the check for the study's best trial; None before a trial completed.
    Writes ``<out_dir>/final_check.json`` / ``.md``; the sets and the evaluation's files go to
    ``<out_dir>/final_check/``; its cells go through the cell store ``cell_cache``."""
    import json

    from isdm.data.digest import dataset_digest
    from isdm.evaluation import run_evaluation
    from isdm.training.checkpoint import checkpoint_hash
    from isdm.tuning import results
    from isdm.tuning.cache import digest, lock
    from isdm.tuning.objective import Curator, generator_config
    from isdm.utils.io import atomic_write_json, atomic_write_text

    best = results.best_trial(study)
    if best is None:
        return None
    data_root, checkpoint, out = Path(data_root), Path(checkpoint), Path(out_dir)
    n_real = int(study.user_attrs[results.N_REAL_ATTR])
    sets = {"current": generator_config(cfg, current_params(cfg, n_real), n_real),
            "tuned": generator_config(cfg, dict(best.params), n_real)}
    e = dataclasses.replace(cfg.evaluate, mixes=("RALLFALL",), seeds=cfg.tune.final_seeds)
    protocols = {name: _protocol(g) for name, g in sets.items()}
    knobs = {name: {**{s: to_dict(getattr(g, s)) for s in _KNOB_SECTIONS},
                    "protocol": protocols[name]} for name, g in sets.items()}
    key = digest({"sets": knobs, "evaluate": to_dict(e), "data": to_dict(cfg.data),
                  "checkpoint": checkpoint_hash(checkpoint),
                  "dataset": [dataset_digest(data_root, s) for s in ("train", "test")]})
    path = out / "final_check.json"
    with lock(out / "final_check.lock", what="the final check of another worker"):
        if path.exists() and json.loads(path.read_text()).get("key") == key:
            return json.loads(path.read_text())
        check: dict[str, Any] = {
            "key": key, "best_trial": best.number, "validation_gain": best.user_attrs["gain"],
            "knobs": {"current": _dotted(current_params(cfg, n_real), sets["current"]),
                      "tuned": _dotted(dict(best.params), sets["tuned"])},
            "architectures": list(e.architectures), "seeds": list(e.seeds), "steps": e.steps}
        if knobs["tuned"] == knobs["current"]:
            check["verdict"] = "same knobs: the best trial's knobs are the config's own"
        else:
            curator = Curator(cfg, data_root, cell_cache)
            folders = {name: _build_set(g, data_root, checkpoint, out, out / "final_check" / name,
                                        curator) for name, g in sets.items()}
            res = run_evaluation(cfg.replace(evaluate=e), data_root, folders,
                                 out / "final_check" / "evaluate", progress=progress,
                                 cell_cache=cell_cache, set_protocols=protocols)
            check.update(_read(res["summary"], protocols))
            budget = res["summary"].get("budget", {})
            check["steps"] = budget.get("steps_per_architecture", e.steps)  # auto: resolved
        atomic_write_json(path, check)
        atomic_write_text(out / "final_check.md", final_markdown(check))
    return check


def _dotted(params: dict[str, Any], gcfg: Config) -> dict[str, Any]:
    """Trial parameters as params.yaml keys (``synthetic_ratio`` -> ``sample.num_samples``,
    ``protocol`` -> ``evaluate.protocol`` and its share or split)."""
    return dotted_params(params, gcfg)


def _read(summary: dict[str, Any], protocols: dict[str, str]) -> dict[str, Any]:
    """tuned vs current (mean over architectures and per architecture), both vs real-only;
    ``protocols``: each set's training protocol (its row's label)."""
    overall = summary["overall"]
    rows = {name: overall[mix_label("RALLFALL", name, protocols[name])]
            for name in ("current", "tuned")}
    comps = {c["arch"]: _stats(c) for c in summary["comparisons"] if c["set"] == "tuned"}
    mean = comps.pop("mean")
    verdict = {"gain": "the tuned knobs are significantly better than the current ones",
               "loss": "the tuned knobs are significantly worse than the current ones"}.get(
        mean["verdict"], "no significant difference between the tuned and the current knobs")
    return {"tuned_vs_current": mean, "per_architecture": comps,
            "miou": {"real_only": overall["RALLF000"]["miou_mean"],
                     **{name: r["miou_mean"] for name, r in rows.items()}},
            "vs_real_only": {name: _stats(r) for name, r in rows.items()},
            "verdict": verdict}


def final_markdown(check: dict[str, Any]) -> str:
    """``final_check.md``: what was compared and the verdict."""
    lines = [f"# Final check of the best trial ({check['best_trial']}) on the TEST split", "",
             f"Validation gain of the best trial (selected, so biased upwards): "
             f"{check['validation_gain']:+.4f}", "",
             "| knob | current | tuned |", "|---|---|---|"]
    cur, tun = check["knobs"]["current"], check["knobs"]["tuned"]
    lines += [f"| {k} | {cur.get(k, '')} | {tun.get(k, '')} |" for k in dict.fromkeys([*cur, *tun])]
    lines += ["", f"**Verdict: {check['verdict']}.**"]
    if "tuned_vs_current" in check:
        t = check["tuned_vs_current"]
        steps = check["steps"]
        steps = ", ".join(f"{a} {n}" for a, n in steps.items()) if isinstance(steps, dict) \
            else steps
        lines += ["", f"{', '.join(check['architectures'])} x seeds {check['seeds']} x "
                  f"{steps} steps, paired bootstrap over seeds and test images (95 % CI):",
                  "", "| comparison | architecture | gain mIoU [95 % CI] | verdict |", "|---|---|---|---|",
                  _row("tuned vs current", "mean", t)]
        lines += [_row("tuned vs current", a, s) for a, s in check["per_architecture"].items()]
        lines += [_row(f"{n} vs real-only", "mean", s) for n, s in check["vs_real_only"].items()]
        m = check["miou"]
        lines += ["", f"Test mIoU (mean over architectures and seeds): real-only {m['real_only']:.4f}, "
                  f"current {m['current']:.4f}, tuned {m['tuned']:.4f}."]
    return "\n".join(lines) + "\n"


def _row(what: str, arch: str, s: dict[str, Any]) -> str:
    return (f"| {what} | {arch} | {s['gain']:+.4f} [{s['gain_lo']:+.4f}, {s['gain_hi']:+.4f}] | "
            f"{s['verdict']} |")

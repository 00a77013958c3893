"""One Optuna trial: draw the knobs, finetune (cached), sample, curate, measure the paired gain.

1. :func:`suggest` draws ``sample.s`` in ``[tune.s_low, tune.s_high]``, categorical
   ``finetune.drop_rate``, ``sample.steps``, ``sample.sampler``, ``synthetic_ratio``
   (``tune.ratios``) and, when their lists are not empty, ``curate.min_fidelity`` and
   ``curate.pixel_threshold`` (:func:`pixel_thresholds`: only 0 where labels cannot hold an
   ignore value), the training protocol of the trial's cells (``protocol``: a code of
   ``tune.protocols``, ``mix``, ``share 0.25``, ``pretrain 0.5``) and ``sample.mask_source``.
   Parameter names are params.yaml's dotted keys, but ``synthetic_ratio``, which
   :func:`generator_config` turns into ``sample.num_samples`` = :func:`synthetic_count`, and
   ``protocol``, which it turns into ``evaluate.protocol`` and its ``evaluate.synthetic_share``
   or ``evaluate.pretrain_split`` (:func:`isdm.evaluation.protocols.protocol_keys`);
2. :func:`isdm.tuning.cache.finetuned_checkpoint` finetunes the ``--checkpoint`` with the
   trial's drop rate for ``tune.finetune_epochs`` epochs, once per (checkpoint, finetune
   config, data): cached in ``<out>/finetunes/<key>/`` and shared by the workers of ``--out``;
3. sampling writes the pairs into ``<out>/trials/<number>/synthetic`` (seed ``tune.seed``);
   its seconds per image is the trial's cost;
4. with a curation filter on, :func:`isdm.curation.curate_folder` writes the kept pairs into
   ``<out>/trials/<number>/curated`` (the scorer is evaluate's cell from the cell store,
   trained at most once, and loaded once per worker);
5. :func:`isdm.tuning.paired.measure` trains the trial's cell per repeat seed, rung by rung,
   the repeats of a rung side by side on the study's pool
   (:class:`isdm.tuning.cells.StudyCells`, into the cell store), and pairs it with the study's
   real-only cells; after each repeat (in repeat order) the running mean gain is reported to
   Optuna as an intermediate value (step = repeat index, single objective only); between
   rungs the adaptive rule (:mod:`isdm.tuning.repeats`) prunes the trial, runs its next rung,
   extends a leader or completes it.

Recorded per trial (Optuna user attributes, MLflow metrics of the trial run, ``trials.csv``):
``gain``, ``gain_se``, per repeat ``gain_repeats``, ``val_miou`` and ``baseline_val_miou``,
``repeats_planned`` and the rule's ``repeat_decisions``, ``n_synthetic``, ``kept_fraction`` and
``seconds_per_image``. The test split is never read.
MLflow: each trial is a child run of the study run; its finetune and sample runs are children
of the trial run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from isdm.config import Config
from isdm.tuning import paired, repeats
from isdm.tuning.cache import finetuned_checkpoint

__all__ = ["suggest", "protocol_codes", "dotted_params", "pixel_thresholds", "synthetic_count",
           "generator_config", "trial_config", "load_real_train", "load_synthetic_set",
           "make_objective", "Curator", "RATIO", "PROTOCOL"]

RATIO = "synthetic_ratio"
PROTOCOL = "protocol"


def pixel_thresholds(cfg: Config) -> list[float]:
    """``tune.curate_pixel_thresholds`` without the values > 0 that curate refuses on these
    labels (binary masks, or no ``data.ignore_index``); ``[0.0]`` if none is left."""
    d = cfg.data
    usable = d.dataset_mode != "binary" and d.ignore_index is not None
    return [float(v) for v in cfg.tune.curate_pixel_thresholds if usable or v == 0] or [0.0]


def suggest(trial: Any, cfg: Config) -> dict[str, Any]:
    """The trial's draw (see the module docstring)."""
    t = cfg.tune
    params = {
        "sample.s": trial.suggest_float("sample.s", t.s_low, t.s_high),
        "finetune.drop_rate": trial.suggest_categorical("finetune.drop_rate", list(t.drop_rates)),
        "sample.steps": trial.suggest_categorical("sample.steps", list(t.steps)),
        "sample.sampler": trial.suggest_categorical("sample.sampler", list(t.samplers)),
        RATIO: trial.suggest_categorical(RATIO, list(t.ratios)),
    }
    if t.curate_min_fidelity:
        params["curate.min_fidelity"] = trial.suggest_categorical(
            "curate.min_fidelity", list(t.curate_min_fidelity))
    if t.curate_pixel_thresholds:
        params["curate.pixel_threshold"] = trial.suggest_categorical(
            "curate.pixel_threshold", pixel_thresholds(cfg))
    if t.protocols:
        params[PROTOCOL] = trial.suggest_categorical(PROTOCOL, protocol_codes(cfg))
    if t.mask_sources:
        params["sample.mask_source"] = trial.suggest_categorical("sample.mask_source",
                                                                 list(t.mask_sources))
    return params


def protocol_codes(cfg: Config) -> list[str]:
    """``tune.protocols`` as canonical codes (``share .250`` -> ``share 0.25``), once each."""
    from isdm.evaluation.protocols import parse_protocol

    return list(dict.fromkeys(parse_protocol(p).code for p in cfg.tune.protocols))


def dotted_params(params: dict[str, Any], gcfg: Config) -> dict[str, Any]:
    """A trial's parameters as params.yaml dotted keys: ``synthetic_ratio`` ->
    ``sample.num_samples`` (the count ``gcfg``, its generator config, sampled), ``protocol``
    -> ``evaluate.protocol`` and its share or split."""
    from isdm.evaluation.protocols import protocol_keys

    out = {k: v for k, v in params.items() if k not in (RATIO, PROTOCOL)}
    if RATIO in params:
        out["sample.num_samples"] = gcfg.sample.num_samples
    if PROTOCOL in params:
        out.update(protocol_keys(params[PROTOCOL]))
    return out


def synthetic_count(ratio: float, n_real: int) -> int:
    """Synthetic pairs for ``ratio`` per real training image: ``max(1, round(ratio * n_real))``."""
    return max(1, round(ratio * n_real))


def generator_config(cfg: Config, params: dict[str, Any], n_real: int) -> Config:
    """``cfg`` with the knobs of ``params`` (the protocol keys into ``evaluate``, where the
    trial's cells read them: :func:`isdm.evaluation.cell.plan_cell`) and the tune section's
    finetune budget and sample seed (``n_real``: real training images per cell,
    :func:`isdm.tuning.paired.real_pool_size`)."""
    t = cfg.tune
    curate, evaluate = cfg.curate, cfg.evaluate
    if PROTOCOL in params:
        from isdm.evaluation.protocols import protocol_keys

        evaluate = dataclasses.replace(evaluate, **{k.split(".", 1)[1]: v for k, v in
                                                    protocol_keys(params[PROTOCOL]).items()})
    if "curate.min_fidelity" in params:
        curate = dataclasses.replace(curate, min_fidelity=float(params["curate.min_fidelity"]))
    if "curate.pixel_threshold" in params:
        curate = dataclasses.replace(curate, pixel_threshold=float(params["curate.pixel_threshold"]))
    return cfg.replace(
        finetune=dataclasses.replace(cfg.finetune, drop_rate=float(params["finetune.drop_rate"]),
                                     max_epochs=t.finetune_epochs),
        sample=dataclasses.replace(cfg.sample, s=float(params["sample.s"]),
                                   steps=int(params["sample.steps"]),
                                   sampler=params["sample.sampler"], seed=t.seed,
                                   num_samples=synthetic_count(params[RATIO], n_real),
                                   mask_source=params.get("sample.mask_source",
                                                          cfg.sample.mask_source)),
        curate=curate,
        evaluate=evaluate,
    )


def trial_config(cfg: Config, params: dict[str, Any], n_real: int) -> Config:
    """:func:`generator_config` at the trial budget (``evaluate.steps = tune.eval_steps``, a
    number: :func:`isdm.tuning.paired.resolve_budget`)."""
    return paired.budget_config(generator_config(cfg, params, n_real))


def load_real_train(cfg: Config, data_root: str | Path) -> Any:
    """The real train images at ``evaluate.image_size`` (whole with ``data.crop``), loaded once
    per worker."""
    from isdm.evaluation.loading import load_split

    return load_split(cfg, data_root, "train")


def load_synthetic_set(cfg: Config, folder: str | Path) -> Any:
    """A sampling (or curation) output folder's pairs at ``evaluate.image_size``."""
    from isdm.evaluation.loading import eval_data_config, load_synthetic

    return load_synthetic(folder, eval_data_config(cfg.data, cfg.evaluate.image_size))


def _trial_name(number: int, params: dict[str, Any]) -> str:
    from isdm.tuning.console import knobs_text

    return f"trial {number}: {knobs_text(params)}"


class Curator:
    """Curates a trial's folder with the scorer of ``base`` (loaded on first use, once per
    worker; its cell is trained at most once per cell store, under the cell's lock)."""

    def __init__(self, base: Config, data_root: Path, cell_cache: Optional[str | Path] = None,
                 ) -> None:
        self.base, self.data_root, self.cell_cache = base, data_root, cell_cache
        self.scorer: Any = None

    def __call__(self, tcfg: Config, synthetic: Path, out: Path) -> tuple[Path, float]:
        """(folder to train on, kept fraction of the pairs)."""
        from isdm.curation import curate_folder, load_scorer

        c = tcfg.curate
        if c.min_fidelity == 0 and c.pixel_threshold == 0:  # no filter: the set as sampled
            return synthetic, 1.0
        if self.scorer is None:
            self.scorer = load_scorer(self.base, self.data_root, cell_cache=self.cell_cache)
        card = curate_folder(tcfg, synthetic, out, self.scorer, figures=False)
        return out, card["counts"]["kept"] / card["counts"]["pairs"]


def make_objective(cfg: Config, data_root: Path, checkpoint: Path, out_dir: Path, real: Any,
                   baseline: Sequence[float] | Callable[[int], Sequence[float]],
                   study_run_id: Optional[str], cells: Any) -> Callable[[Any], Any]:
    """The function ``study.optimize`` calls once per trial (see the module docstring);
    ``cells``: the study's :class:`isdm.tuning.cells.StudyCells`; ``baseline``: the real-only
    values per repeat, or :class:`isdm.tuning.paired.StudyBaseline`."""
    import optuna

    from isdm import tracking
    from isdm.sampling import run_sampling

    n_real = paired.real_pool_size(cfg, real.keys)
    curate = Curator(cfg, data_root, cells.store.root)
    single = cfg.tune.objectives == ("gain",)
    rule = repeats.RepeatRule.from_config(cfg.tune)

    def objective(trial: optuna.Trial) -> Any:
        params = suggest(trial, cfg)
        tcfg = trial_config(cfg, params, n_real)
        folder = out_dir / "trials" / f"{trial.number:04d}"
        with tracking.start_run(cfg.tracking, name=_trial_name(trial.number, params),
                                action="trial", dataset=str(data_root), params=params,
                                tags={"optuna.trial": trial.number},
                                parent_run_id=study_run_id) as run:
            ckpt = finetuned_checkpoint(tcfg, data_root, checkpoint, out_dir)
            summary = run_sampling(tcfg, data_root, ckpt, folder / "synthetic", overwrite=True)
            cost = float(summary["this_run"]["seconds_per_image"])
            synthetic, kept = curate(tcfg, folder / "synthetic", folder / "curated")
            synth = load_synthetic_set(tcfg, synthetic)
            facts = {"n_synthetic": len(synth), "kept_fraction": kept, "seconds_per_image": cost}
            for key, value in facts.items():
                trial.set_user_attr(key, value)
            run.log_metrics(facts)

            def on_repeat(r: int, gain: paired.Gain) -> None:
                _record(trial, gain)
                run.log_metrics({"val_miou": gain.values[r], "gain_repeat": gain.diffs[r]}, step=r)
                if single:
                    trial.report(gain.mean, r)

            plan = _Planner(trial, rule, out_dir, baseline)
            try:
                gain = paired.measure(tcfg, real, synth, baseline, on_repeat, folder=synthetic,
                                      cells=cells, plan=plan)
            except optuna.TrialPruned as pruned:
                run.set_tags({"optuna.state": "PRUNED"})
                stopped: Optional[optuna.TrialPruned] = pruned  # the run stays FINISHED
            else:
                stopped = None
                run.log_metrics({"gain": gain.mean, "repeats": len(gain.diffs),
                                 **({} if gain.se is None else {"gain_se": gain.se})})
                run.set_tags({"optuna.state": "COMPLETE"})
        if stopped is not None:
            raise stopped
        return gain.mean if single else (gain.mean, cost)

    return objective


class _Planner:
    """The repeats of a trial's next rung (:func:`isdm.tuning.repeats.decide`, under the
    study's repeats lock so that two workers never spend one credit); raises
    ``optuna.TrialPruned`` for a pruned trial. Records ``repeats_planned`` and
    ``repeat_decisions`` on the trial."""

    def __init__(self, trial: Any, rule: repeats.RepeatRule, out_dir: Path, baseline: Any) -> None:
        self.trial, self.rule, self.out_dir, self.baseline = trial, rule, out_dir, baseline
        self.reasons: list[str] = []

    def __call__(self, gain: Optional[paired.Gain]) -> int:
        import optuna

        from isdm.tuning.cache import lock

        if gain is None:  # no decision possible yet (startup trials): one rung of R repeats
            target, action = self.rule.first, "more"
            if self.rule.adaptive and target < self.rule.repeats:
                state = repeats.study_state(self.trial.study.get_trials(deepcopy=False),
                                            self.trial.number, self.rule, [], 0)
                if state.best is None or state.sigma is None:
                    target = self.rule.repeats
            self.trial.set_user_attr(repeats.PLANNED_ATTR, target)
        else:
            with lock(self.out_dir / "repeats.lock", what="the study's repeat plan"):
                # a plain list of baseline values has a `count` method too: ask the type
                count = (self.baseline.count if isinstance(self.baseline, paired.StudyBaseline)
                         else len(gain.baseline))
                state = repeats.study_state(self.trial.study.get_trials(deepcopy=False),
                                            self.trial.number, self.rule, gain.diffs, count)
                decision = repeats.decide(self.rule, gain.diffs, state)
                self.trial.set_user_attr(repeats.PLANNED_ATTR, decision.target)
            target, action = decision.target, decision.action
            self.reasons.append(f"{len(gain.diffs)}: {decision.action} ({decision.reason})")
            self.trial.set_user_attr("repeat_decisions", list(self.reasons))
        if action == "prune":
            raise optuna.TrialPruned(self.reasons[-1])
        return target


def _record(trial: Any, gain: paired.Gain) -> None:
    trial.set_user_attr("gain", gain.mean)
    trial.set_user_attr("gain_se", gain.se)
    trial.set_user_attr("gain_repeats", list(gain.diffs))
    trial.set_user_attr("val_miou", list(gain.values))
    trial.set_user_attr("baseline_val_miou", list(gain.baseline))

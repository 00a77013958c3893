"""``isdm tune``: an Optuna study of the generator's knobs against the paired validation gain;
``--apply`` writes the best knobs into params.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from isdm.cli.cells import cell_options, with_pool_flags
from isdm.cli.common import (DEFAULT_PARAMS, check_tracking, config_options, load_cli_config,
                             runtime_options)


@click.command()
@config_options
@runtime_options
@click.option("--data", "data_root", default=None, type=click.Path(file_okay=False, exists=True),
              help="Dataset root with train/ (trials validate on a split of it; only the final "
                   "check reads test/).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Checkpoint of `isdm train` to finetune per drop rate (models/sdm/best.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Study folder: best_params.yaml, trials.csv, plots, final_check.*, caches.")
@click.option("--n-trials", type=click.IntRange(min=0), default=None,
              help="Trials to run in THIS process (default tune.n_trials; 0 = only create or "
                   "join the study and write its results).")
@click.option("--storage", default=None,
              help="Optuna storage shared by workers: sqlite:///study.db, postgresql://..., or a "
                   "journal file path. Default tune.storage, else OUT/study.journal.")
@click.option("--study-name", default=None, help="Default tune.study_name.")
@cell_options
@click.option("--apply", "apply_best", is_flag=True,
              help="Write OUT/best_params.yaml's knobs into the first -c file (default "
                   "./params.yaml), keeping its comments; without --data/--checkpoint no trial "
                   "runs. Refused when the best trial ties another or the test-split check does not "
                   "find it significantly better (--force).")
@click.option("--force", is_flag=True,
              help="--apply even when the best trial ties another one or the test-split "
                   "check does not say it is significantly better.")
def tune(config_paths: tuple[str, ...], overrides: tuple[str, ...], data_root: Optional[str],
         checkpoint: Optional[str], out_dir: str, n_trials: Optional[int], storage: Optional[str],
         study_name: Optional[str], cell_cache: Optional[str],
         workers: Optional[int], threads: Optional[int], apply_best: bool, force: bool) -> None:
    """Search sample.s, finetune.drop_rate, sample.steps, sample.sampler, the synthetic:real
    ratio and the curation gate against the paired validation-mIoU gain of real + synthetic over
    real only (at tune.eval_steps, auto = calibrated; adaptive repeats: pruned trials, more for
    the leaders); end with the best knobs against the config's on the TEST split; write
    OUT/best_params.yaml (dotted params.yaml keys).

    \b
    isdm tune -c params.yaml --data data/synth --checkpoint models/sdm/best.pt --out reports/tune
    isdm tune -c params.yaml --out reports/tune --apply     # best knobs -> params.yaml
    # more workers on one study (each runs --n-trials trials; they may start together, and the
    # trial of a killed worker is failed and rerun by the others):
    isdm tune ... --storage sqlite:///reports/tune/study.db --n-trials 5 &
    isdm tune ... --storage sqlite:///reports/tune/study.db --n-trials 5 &
    """
    if (data_root is None) != (checkpoint is None) or (data_root is None and not apply_best):
        raise click.UsageError("give --data and --checkpoint to run trials, --apply to write the "
                               "best knobs into params.yaml, or both")
    if data_root is None and overrides:
        raise click.UsageError("--apply alone runs no trial and writes only the best knobs into "
                               "the -c file: leave out --set")
    if data_root is not None:
        cfg = with_pool_flags(load_cli_config(config_paths, overrides), workers, threads)
        check_tracking(cfg)
        from isdm.tuning import run_study

        summary = run_study(cfg, data_root, checkpoint, out_dir, n_trials=n_trials,
                            storage=storage or None, study_name=study_name,
                            cell_cache=cell_cache)
        click.echo(json.dumps(summary, indent=2, default=str))
        if summary.get("complete"):
            click.echo(f"best parameters: {out_dir}/best_params.yaml")
        if "final_check" in summary:
            click.echo(f"final check on the test split: {summary['final_check']['verdict']} "
                       f"({out_dir}/final_check.md)")
    if apply_best:
        from isdm.tuning.apply import apply_params, check_evidence, read_best_params

        target = Path(config_paths[0] if config_paths else DEFAULT_PARAMS)
        best = read_best_params(Path(out_dir) / "best_params.yaml")
        if not force:
            check_evidence(out_dir)
        for line in apply_params(target, best):
            click.echo(f"{target}: {line}")

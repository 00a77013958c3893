"""``isdm tune``: an Optuna study of guidance scale, drop rate, sampler and steps."""

from __future__ import annotations

import json
from typing import Optional

import click

from isdm.cli.common import config_options, load_cli_config


@click.command()
@config_options
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, exists=True),
              help="Dataset root with train/ (validation is carved from train; test is never read).")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Checkpoint of `isdm train` to finetune per drop rate (models/sdm/best.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Study folder: finetune_dr<rate>/, trials/, best_params.yaml, trials.csv, plots.")
@click.option("--n-trials", type=click.IntRange(min=0), default=None,
              help="Trials to run in THIS process (default tune.n_trials; 0 = only create the study).")
@click.option("--storage", default=None,
              help="Optuna storage shared by workers: sqlite:///study.db, postgresql://..., or a "
                   "journal file path. Default tune.storage, else OUT/study.journal.")
@click.option("--study-name", default=None, help="Default tune.study_name.")
def tune(config_path: Optional[str], overrides: tuple[str, ...], data_root: str, checkpoint: str,
         out_dir: str, n_trials: Optional[int], storage: Optional[str],
         study_name: Optional[str]) -> None:
    """Search sample.s, finetune.drop_rate, sample.steps and sample.sampler against the validation
    mIoU of a short downstream run; write OUT/best_params.yaml (dotted params.yaml keys).

    \b
    isdm tune -c params.yaml --data data/synth --checkpoint models/sdm/best.pt --out reports/tune
    # more workers on one study (each runs --n-trials trials; they may start together, and the
    # trial of a killed worker is failed and rerun by the others):
    isdm tune ... --storage sqlite:///reports/tune/study.db --n-trials 5 &
    isdm tune ... --storage sqlite:///reports/tune/study.db --n-trials 5 &
    """
    cfg = load_cli_config(config_path, overrides)
    from isdm.tuning import run_study

    summary = run_study(cfg, data_root, checkpoint, out_dir, n_trials=n_trials,
                        storage=storage or None, study_name=study_name)
    click.echo(json.dumps(summary, indent=2, default=str))
    if summary.get("complete"):
        click.echo(f"best parameters: {out_dir}/best_params.yaml")

"""``isdm train`` and ``isdm finetune``: parse, load the config, call :func:`isdm.training.train`.

Both run under ``torchrun --nproc_per_node N`` unchanged (DDP; only rank 0 writes).
"""

from __future__ import annotations

import json
from typing import Optional

import click

from isdm.cli.common import config_options, load_cli_config


def _data_option(f):
    return click.option("--data", "data", type=click.Path(file_okay=False), default=None,
                        help="Dataset root holding train/{images,masks}. Default: data.root "
                             "of the config.")(f)


def _common(f):
    f = click.option("--no-progress", is_flag=True, help="No progress bars.")(f)
    f = click.option("--resume", type=click.Path(dir_okay=False), default=None,
                     help="Continue a run from its best.pt / last.pt (restores everything).")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Output folder: best.pt, last.pt, metrics.json, loss.csv/png, config.json.")(f)
    return _data_option(config_options(f))


def _run(action: str, config_path: Optional[str], overrides: tuple[str, ...], data: Optional[str],
         out: str, init: Optional[str], resume: Optional[str], no_progress: bool) -> None:
    cfg = load_cli_config(config_path, overrides, action=action)
    from isdm.training import train as run_training

    result = run_training(cfg, data or cfg.data.root, out, action=action, init_from=init,
                          resume=resume, progress=not no_progress)
    if result is not None:
        click.echo(json.dumps({"out": out, "best": result.best_path, **result.metrics()}, indent=2))


@click.command()
@_common
def train(config_path: Optional[str], overrides: tuple[str, ...], data: Optional[str], out: str,
          resume: Optional[str], no_progress: bool) -> None:
    """Train an SDM from scratch on DATA/train (config section `train`).

    \b
    isdm train -c params.yaml --data data/synth --out models/sdm
    isdm train -c params.yaml --data data/synth --out models/sdm --resume models/sdm/last.pt
    torchrun --nproc_per_node 2 $(which isdm) train -c params.yaml --data data/synth --out models/sdm
    """
    _run("train", config_path, overrides, data, out, None, resume, no_progress)


@click.command()
@_common
@click.option("--init", "init", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of `isdm train` to start from (model + EMA weights; the network "
                   "sizes come from it). Required unless --resume is given.")
def finetune(config_path: Optional[str], overrides: tuple[str, ...], data: Optional[str], out: str,
             resume: Optional[str], no_progress: bool, init: Optional[str]) -> None:
    """Finetune a trained SDM with mask dropout (config section `finetune`, drop_rate > 0) so
    that it also models the unconditional case needed for classifier-free guidance.

    \b
    isdm finetune -c params.yaml --data data/synth --init models/sdm/best.pt --out models/sdm_ft
    isdm finetune -c configs/config_finetune.json --init models/sdm/best.pt --out models/sdm_ft
    """
    if init is None and resume is None:
        raise click.UsageError("finetune needs --init CKPT (a checkpoint of `isdm train`) or --resume")
    _run("finetune", config_path, overrides, data, out, init, resume, no_progress)

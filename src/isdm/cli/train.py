"""``isdm train`` and ``isdm finetune``: parse, load the config, call :func:`isdm.training.train`.

Both run under ``torchrun --nproc_per_node N`` unchanged (DDP; only rank 0 writes).

An original ISDM config (``-c config_train.json`` / ``config_finetune.json``) may name a
``resume_checkpoint``; :func:`isdm.original.commands.start_checkpoints` says how it is honoured.
"""

from __future__ import annotations

import json
from typing import Optional

import click

from isdm.cli.common import check_tracking, config_options, load_cli_config, runtime_options
from isdm.original.commands import start_checkpoints


def _data_option(f):
    return click.option("--data", "data", type=click.Path(file_okay=False), default=None,
                        help="Dataset root holding train/{images,masks}. Default: data.root "
                             "of the config.")(f)


def _common(f):
    f = click.option("--overwrite", is_flag=True,
                     help="Start over in an --out folder holding an earlier run: deletes its "
                          "best.pt, last.pt, metrics.json, loss.csv/png, config.json first.")(f)
    f = click.option("--resume", type=click.Path(dir_okay=False), default=None,
                     help="Continue a run from its best.pt / last.pt (restores everything).")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Output folder: best.pt, last.pt, metrics.json, loss.csv/png, config.json.")(f)
    return _data_option(config_options(runtime_options(f)))


def _run(action: str, config_paths: tuple[str, ...], overrides: tuple[str, ...],
         data: Optional[str], out: str, init: Optional[str], resume: Optional[str], overwrite: bool) -> None:
    cfg = load_cli_config(config_paths, overrides, action=action)
    check_tracking(cfg)
    init, resume, note = start_checkpoints(action, config_paths, init, resume)
    if note:
        click.echo(note, err=True)
    if action == "finetune" and init is None and resume is None:
        raise click.UsageError("finetune needs --init CKPT (a checkpoint of `isdm train`), "
                               "--resume, or an original config with resume_checkpoint")
    if resume is not None and overwrite:
        raise click.UsageError("--resume continues the run in --out, --overwrite starts over: "
                               "give one of them")
    from isdm.training import train as run_training

    result = run_training(cfg, data or cfg.data.root, out, action=action, init_from=init,
                          resume=resume, overwrite=overwrite)
    if result is not None:
        click.echo(json.dumps({"out": out, "best": result.best_path, **result.metrics()}, indent=2))


@click.command()
@_common
def train(config_paths: tuple[str, ...], overrides: tuple[str, ...], data: Optional[str], out: str,
          resume: Optional[str], overwrite: bool) -> None:
    """Train an SDM from scratch on DATA/train (config section `train`).

    An --out folder holding an earlier run is refused unless --resume or --overwrite.

    \b
    isdm train -c params.yaml --data data/synth --out models/sdm
    isdm train -c params.yaml --data data/synth --out models/sdm --resume models/sdm/last.pt
    torchrun --nproc_per_node 2 $(which isdm) train -c params.yaml --data data/synth --out models/sdm

    Before the first step it prints its budget (steps, images per step, epochs on this dataset)
    and after step 3 its estimated duration.
    """
    _run("train", config_paths, overrides, data, out, None, resume, overwrite)


@click.command()
@_common
@click.option("--init", "init", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of `isdm train` to start from (model + EMA weights; the network "
                   "sizes come from it). Required unless --resume is given or the original "
                   "config names a resume_checkpoint.")
def finetune(config_paths: tuple[str, ...], overrides: tuple[str, ...], data: Optional[str],
             out: str, resume: Optional[str], overwrite: bool, init: Optional[str]) -> None:
    """Finetune a trained SDM with mask dropout (config section `finetune`, drop_rate > 0) so
    that it also models the unconditional case needed for classifier-free guidance.

    \b
    isdm finetune -c params.yaml --data data/synth --init models/sdm/best.pt --out models/sdm_ft
    isdm finetune -c configs/config_finetune.json --init models/sdm/best.pt --out models/sdm_ft
    """
    _run("finetune", config_paths, overrides, data, out, init, resume, overwrite)

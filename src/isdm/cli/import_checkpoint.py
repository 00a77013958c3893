"""``isdm import-checkpoint``: use a checkpoint of the original ISDM tool."""

from __future__ import annotations

from typing import Optional

import click


@click.command("import-checkpoint")
@click.argument("weights", metavar="ORIGINAL.pt", type=click.Path(dir_okay=False))
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="The original's JSON config the weights were trained with (config_train.json).")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="The isdm checkpoint to write, e.g. models/imported/best.pt.")
@click.option("--ema/--raw", "ema", default=None,
              help="The file holds EMA / raw weights. Default: by its name (ema_<rate>_<step>.pt "
                   "= EMA, model<step>.pt = raw).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one mapped config value (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def import_checkpoint(weights: str, config_path: str, out: str, ema: Optional[bool],
                      overrides: tuple[str, ...], overwrite: bool) -> None:
    """Convert the original tool's model*.pt / ema_*.pt (a bare guided-diffusion state dict)
    into an isdm checkpoint for `isdm sample --checkpoint` and `isdm finetune --init`."""
    from isdm.original.checkpoint import import_original

    r = import_original(weights, config_path, out, ema=ema, overrides=overrides,
                        overwrite=overwrite)
    click.echo(f"{r['out']}: {r['tensors']} tensors ({r['num_params'] / 1e6:.5f} M parameters, "
               f"{r['weights']} weights, step {r['step']}) imported from {weights}")

"""``isdm curate``: score the synthetic pairs with a segmenter trained on real data, filter them
into a new folder and write the dataset card."""

from __future__ import annotations

from typing import Optional

import click

from isdm.cli.common import check_tracking, config_options, load_cli_config, runtime_options
from isdm.cli.cells import calm_parent


@click.command()
@config_options
@runtime_options
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, exists=True),
              help="Real dataset root; the scorer trains on its train split.")
@click.option("--synthetic", "synthetic_dir", required=True,
              type=click.Path(file_okay=False, exists=True),
              help="Sampling output folder (samples/ + labels/ + manifest.jsonl); only read.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The curated folder (same layout; an earlier `isdm curate` output there is "
                   "replaced, any other content refused).")
@click.option("--cell-cache", default=None, type=click.Path(file_okay=False),
              help="The cell store the scorer (evaluate's real-only cell of curate.architecture "
                   "and curate.seed) comes from or goes to (default $ISDM_CELL_CACHE, else "
                   "./.isdm/cells).")
def curate(config_paths: tuple[str, ...], overrides: tuple[str, ...], data_root: str,
           synthetic_dir: str, out_dir: str, cell_cache: Optional[str]) -> None:
    """Keep the synthetic pairs whose image shows its mask: drop pairs with fidelity below
    curate.min_fidelity, ignore pixels whose loss is above curate.pixel_threshold x their class's
    mean loss, weight masks by hardness, check for near-copies of real images, and write the card
    (card.md, card.json, best_worst.png, closest_pairs.png, fidelity_hist.png)."""
    from isdm.curation import run_curation

    cfg = load_cli_config(config_paths, overrides)
    check_tracking(cfg)
    calm_parent(cfg)  # the calibration's cells may run in worker processes
    card = run_curation(cfg, data_root, synthetic_dir, out_dir, cell_cache=cell_cache)
    c, mem = card["counts"], card["memorisation"]
    click.echo(f"{out_dir}: kept {c['kept']} of {c['pairs']} pairs (dropped {c['dropped']} with "
               f"fidelity < {card['policy']['min_fidelity']}), {c['pixels_ignored']} pixels "
               f"ignored; near-copies of real images: {mem['near_copies']}; scorer "
               f"{'from the cell store' if card['scorer_reused'] else 'trained'} "
               f"(validation mIoU {card['scorer']['best_val_miou']})")
    if not c["kept"]:
        click.echo("warning: no pair was kept; lower curate.min_fidelity", err=True)
    click.echo(f"wrote {out_dir}/card.md")

"""``isdm evaluate``: downstream mIoU of real vs synthetic training mixes."""

from __future__ import annotations

import click

from isdm.cli.common import config_options, load_cli_config


@click.command()
@config_options
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, exists=True),
              help="Real dataset root with train/ and test/ (images/ + masks/).")
@click.option("--synthetic", "synthetic", multiple=True, metavar="[NAME=]DIR",
              help="A synthetic set: a sampling (or curation) output folder with samples/ + "
                   "labels/. Repeatable, e.g. --synthetic synthetic=data/synthetic --synthetic "
                   "curated=data/curated: every mix with F>0 runs once per set (rows "
                   "RALLFALL[curated]) and each further set is compared with the first. A bare "
                   "DIR is named 'synthetic'. Needed by mixes with F>0 and for label fidelity.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where metrics.json (headline), report.json, report.md, miou.png, cells.csv "
                   "and counts.npz go.")
@click.option("--device", default=None,
              help="auto, cpu, cuda, cuda:1 ... Default: runtime.device of the config.")
@click.option("--fidelity-only", is_flag=True,
              help="Train only the real-only baseline (first seed) and report label fidelity.")
def evaluate(config_paths: tuple[str, ...], overrides: tuple[str, ...], data_root: str,
             synthetic: tuple[str, ...], out_dir: str, device: str | None,
             fidelity_only: bool) -> None:
    """Train smp segmenters on R<a>F<b> mixes (several seeds, the same optimiser steps for every
    mix), test once on the real test split, and report mean ± std mIoU, the paired-bootstrap
    gain over RALLF000 (per architecture and for their mean), synthetic sets compared with the
    first, and label fidelity."""
    from isdm.evaluation import run_evaluation
    from isdm.evaluation.markdown import fidelity_table, overall_table

    cfg = load_cli_config(config_paths, overrides)
    result = run_evaluation(cfg, data_root, list(synthetic) or None, out_dir, device=device,
                            fidelity_only=fidelity_only)
    summary = result["summary"]
    click.echo("")
    click.echo(result["table"])
    click.echo("\nMean over architectures:")
    click.echo(overall_table(summary))
    if any(summary["fidelity"].values()):
        click.echo("\nLabel fidelity (real-only model on the synthetic samples):")
        click.echo(fidelity_table(summary["fidelity"]))
    click.echo(f"\nwrote {out_dir}/metrics.json (headline: "
               f"{', '.join(f'{k} {v:.4f}' for k, v in result['headline'].items())}), "
               "report.json, report.md, miou.png, cells.csv, counts.npz")

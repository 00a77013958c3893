"""``isdm evaluate``: downstream mIoU of real vs synthetic training mixes."""

from __future__ import annotations

import click

from isdm.cli.common import config_options, load_cli_config


@click.command()
@config_options
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, exists=True),
              help="Real dataset root with train/ and test/ (images/ + masks/).")
@click.option("--synthetic", "synthetic_dir", default=None, type=click.Path(file_okay=False),
              help="Sampling output folder (samples/ + labels/). Needed by mixes with F>0 and "
                   "for label fidelity.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where metrics.json, report.md, miou.png and cells.csv go.")
@click.option("--device", default=None,
              help="auto, cpu, cuda, cuda:1 ... Default: runtime.device of the config.")
@click.option("--fidelity-only", is_flag=True,
              help="Train only the real-only baseline (first seed) and report label fidelity.")
def evaluate(config_path: str | None, overrides: tuple[str, ...], data_root: str,
             synthetic_dir: str | None, out_dir: str, device: str | None,
             fidelity_only: bool) -> None:
    """Train smp segmenters on R<a>F<b> mixes (several seeds), test once on the real test split,
    and report mean ± std mIoU, the paired-bootstrap gain over RALLF000 and label fidelity."""
    from isdm.evaluation import run_evaluation

    cfg = load_cli_config(config_path, overrides)
    result = run_evaluation(cfg, data_root, synthetic_dir, out_dir, device=device,
                            fidelity_only=fidelity_only)
    click.echo("")
    click.echo(result["table"])
    if result["fidelity"]:
        from isdm.evaluation.report import fidelity_table

        click.echo("\nLabel fidelity (real-only model on the synthetic samples):")
        click.echo(fidelity_table(result["fidelity"]))
    click.echo(f"\nwrote {out_dir}/metrics.json, report.md, miou.png, cells.csv")

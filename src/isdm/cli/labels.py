"""``isdm labels POINTS --out OUT``: the label-efficiency curve from its points' reports."""

from __future__ import annotations

import click

from isdm.cli.common import config_options, load_cli_config


@click.command()
@config_options
@click.argument("points", metavar="POINTS", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where metrics.json, summary.json, curve.csv, curve.png and report.md go.")
def labels(config_paths: tuple[str, ...], overrides: tuple[str, ...], points: str,
           out_dir: str) -> None:
    """Read POINTS/<fraction>/ (an `isdm evaluate` output for every labels.fractions and for
    1.0, the whole train split), draw the real-only and real + synthetic mIoU against the number
    of labelled images, and say how many real images the synthetic data is worth, with its
    bootstrap interval (docs/guide/protocols.md)."""
    from isdm.evaluation.labels_report import run_labels

    from isdm.utils import ownership

    cfg = load_cli_config(config_paths, overrides)
    with ownership.exclusive(out_dir, "labels"):  # one writer per --out
        result = run_labels(cfg, points, out_dir)
    for line in result["summary"]["reading"]:
        click.echo(f"- {line}")
    click.echo(f"wrote {out_dir}/metrics.json, summary.json, curve.csv, curve.png, report.md")

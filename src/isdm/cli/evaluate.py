"""``isdm evaluate``: downstream mIoU of real vs synthetic training mixes."""

from __future__ import annotations

import click

from isdm.cli.cells import calm_parent, cell_options, parse_shard, shard_message, with_pool_flags
from isdm.cli.common import check_tracking, config_options, load_cli_config, runtime_options


@click.command()
@config_options
@runtime_options
@click.option("--data", "data_root", required=True, type=click.Path(file_okay=False, exists=True),
              help="Real dataset root with train/ and test/ (images/ + masks/).")
@click.option("--synthetic", "synthetic", multiple=True, metavar="[NAME=]DIR",
              help="A synthetic set: a sampling (or curation) output folder with samples/ + "
                   "labels/. Repeatable, e.g. --synthetic synthetic=data/synthetic --synthetic "
                   "curated=data/curated: every mix with F>0 runs once per set (rows "
                   "RALLFALL[curated]) and each further set is compared with the first. A bare "
                   "DIR is named 'synthetic'. Needed by mixes with F>0 and for label fidelity.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where metrics.json (headline), report.json, report.md, miou.png, cells.csv, "
                   "counts.npz, calibration.json and calibration.png go.")
@click.option("--fidelity-only", is_flag=True,
              help="Train only the real-only baseline (first seed) and report label fidelity.")
@cell_options
@click.option("--shard", default=None, metavar="I/N", callback=parse_shard,
              help="Train only cells I, I+N, I+2N, ... into the cell store and write no report "
                   "(several machines or GPUs into one shared --cell-cache); a run without "
                   "--shard then finds every cell there and only writes the report.")
def evaluate(config_paths: tuple[str, ...], overrides: tuple[str, ...], data_root: str,
             synthetic: tuple[str, ...], out_dir: str,
             fidelity_only: bool, cell_cache: str | None, workers: int | None,
             threads: int | None, shard: tuple[int, int] | None) -> None:
    """Train smp segmenters on R<a>F<b> mixes (several seeds, the same optimiser steps for every
    mix), test once on the real test split, and report mean ± std mIoU, the paired-bootstrap
    gain over RALLF000 (per architecture and for their mean), synthetic sets compared with the
    first, and label fidelity. Every finished cell goes into the cell store as it finishes: a
    re-run (after a kill, or with only a new synthetic set) trains only the missing cells."""
    from isdm.evaluation import run_evaluation
    from isdm.evaluation.markdown import fidelity_table, overall_table, verdict
    from isdm.evaluation.report import claim_out
    from isdm.utils import ownership

    cfg = with_pool_flags(load_cli_config(config_paths, overrides), workers, threads)
    check_tracking(cfg)
    calm_parent(cfg)
    if shard is not None:  # shards fill the cell store side by side and write no report
        result = run_evaluation(cfg, data_root, list(synthetic) or None, out_dir,
                                fidelity_only=fidelity_only, cell_cache=cell_cache, shard=shard)
        click.echo(shard_message(result))
        return
    claim_out(out_dir, write=False)  # refuse before the folder is created for its lock
    with ownership.exclusive(out_dir, "evaluate"):  # one evaluation per --out at a time
        result = run_evaluation(cfg, data_root, list(synthetic) or None, out_dir,
                                fidelity_only=fidelity_only, cell_cache=cell_cache)
    summary = result["summary"]
    click.echo("")
    for arch, a in summary["calibration"]["architectures"].items():
        click.echo(f"steps {arch}: {a['steps']} ({a['reason']}: {a['evidence']})")
    click.echo(result["table"])
    click.echo("\nMean over architectures:")
    click.echo(overall_table(summary))
    if any(summary["fidelity"].values()):
        click.echo("\nLabel fidelity (real-only model on the synthetic samples):")
        click.echo(fidelity_table(summary["fidelity"]))
    if verdict(summary):
        click.echo("\n" + verdict(summary).replace("**", ""), err=True)
    click.echo(f"\nwrote {out_dir}/metrics.json (headline: "
               f"{', '.join(f'{k} {v:.4f}' for k, v in result['headline'].items())}), "
               "report.json, report.md, miou.png, cells.csv, counts.npz, calibration.json, "
               "calibration.png")
    click.echo(f"cells: {result['trained']} trained, {result['from_store']} from the cell store")


"""``isdm sample``: generate synthetic image/mask pairs from a trained checkpoint."""

from __future__ import annotations

import logging
from typing import Optional

import click

from isdm.cli.common import check_tracking, config_options, load_cli_config, runtime_options
from isdm.original.commands import sample_checkpoint


@click.command()
@config_options
@runtime_options
@click.option("--data", "data_root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder with train/images and train/masks "
                   "(default: data.root of the config).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="best.pt of `isdm train`/`isdm finetune`, or a registered version: "
                   "models:/isdm-sdm/<version>, models:/isdm-sdm/latest, models:/isdm-sdm@<alias> "
                   "(default: model_path of an original ISDM sample config).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output folder (images/ labels/ colored_labels/ samples/ manifest.jsonl ...).")
@click.option("--shard", default="0/1", show_default=True,
              help="Generate only samples with index % N == i (i/N), for parallel workers.")
@click.option("--overwrite", is_flag=True,
              help="Delete the files isdm recorded writing in --out (a run of another config or "
                   "checkpoint) and start afresh; refused, before anything is deleted, when "
                   "images/ labels/ colored_labels/ samples/ hold any other file.")
@click.option("--max-new", type=click.IntRange(min=0), default=None,
              help="Stop after this many new samples (a later run resumes).")
def sample(config_paths: tuple[str, ...], overrides: tuple[str, ...], data_root: Optional[str],
           checkpoint: Optional[str], out_dir: str, shard: str, overwrite: bool,
           max_new: Optional[int]) -> None:
    """Generate exactly sample.num_samples synthetic image/mask pairs into --out.

    Reruns resume: a sample whose four files match the sizes and digests of its manifest record
    is skipped, any other is (re)generated; sample i is always generated from the same mask and
    seed, so shards and resumed runs give the bytes of one full run.
    """
    from isdm.sampling.job import parse_shard

    cfg = load_cli_config(config_paths, overrides, action="sample")
    check_tracking(cfg)
    checkpoint = checkpoint or sample_checkpoint(config_paths)
    if not checkpoint:
        raise click.UsageError("--checkpoint is required (or an original config with model_path)")
    try:
        shard_t = parse_shard(shard)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard") from None
    log = logging.getLogger("isdm")
    if not log.handlers:  # the class distribution before / after goes to stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    from isdm.sampling import run_sampling

    summary = run_sampling(cfg, data_root or cfg.data.root, checkpoint, out_dir, shard=shard_t,
                           overwrite=overwrite, max_new=max_new)
    this = summary["this_run"]
    click.echo(f"{out_dir}: {summary['complete']}/{summary['num_samples']} samples complete; "
               f"generated {this['generated']}, skipped {this['skipped_existing']}"
               + (f", {this['seconds_per_image']:.3f} s/image" if this["seconds_per_image"] else ""))

"""``isdm data check DIR``, ``isdm data synth OUT_DIR`` and ``isdm data subset SRC OUT``."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Optional

import click

from isdm.cli.common import config_options, load_cli_config, progress_option


@click.group()
def data() -> None:
    """Check a dataset, write the embedded synthetic one, or a nested subset of one."""


@data.command("check")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@config_options
@progress_option
@click.option("--mode", type=click.Choice(["binary", "multi-class", "lemon-binary", "lemon-multi-class"]),
              default=None, help="Override data.dataset_mode (binary implies --num-classes 2).")
@click.option("--num-classes", type=int, default=None, help="Override data.num_classes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(directory: str, config_paths: tuple[str, ...], overrides: tuple[str, ...],
          mode: Optional[str], num_classes: Optional[int], as_json: bool) -> None:
    """Validate DIR/{train,test}/{images,masks} and print per-class pixel and image counts,
    each defect class's pixels per image after data.image_size / resize / crop, the images'
    aspect-ratio spread and a suggested data setting.

    Exits with status 1 and the full list of problems when the dataset is invalid.
    """
    from isdm.config import canonical_dataset_mode
    from isdm.data.advice import advise, step_of
    from isdm.data.check import class_names, format_report, report_to_dict
    from isdm.data.validate import scan_dataset

    extra = list(overrides)
    if mode is not None:
        extra.append(f"data.dataset_mode={mode}")
        if num_classes is None and canonical_dataset_mode(mode) == "binary":
            num_classes = 2
    if num_classes is not None:
        extra.append(f"data.num_classes={num_classes}")
    cfg = load_cli_config(config_paths, extra)
    report = scan_dataset(directory, cfg.data, progress=cfg.runtime.progress and not as_json,
                          placed=True)
    names = class_names(report.root, report.mode, report.num_classes)
    advice = (advise(report.splits["train"], names, cfg.data, step_of(len(cfg.channel_mult())))
              if report.ok and "train" in report.splits else None)
    if as_json:
        click.echo(json.dumps(report_to_dict(report, names, advice), indent=2))
    else:
        click.echo(format_report(report, names, advice))
    if not report.ok:
        sys.exit(1)


@data.command("synth")
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False))
@config_options
@progress_option
@click.option("--binary", is_flag=True, help="Write 0/255 masks of 'any defect' (synth.binary=true).")
def synth(out_dir: str, config_paths: tuple[str, ...], overrides: tuple[str, ...],
          binary: bool) -> None:
    """Write the embedded procedural dataset (textured surfaces with defects) to OUT_DIR."""
    import time

    from isdm.data.synth import CLASS_NAMES, write_synthetic_dataset

    cfg = load_cli_config(config_paths, overrides)
    scfg = dataclasses.replace(cfg.synth, binary=True) if binary else cfg.synth
    start = time.perf_counter()
    write_synthetic_dataset(out_dir, scfg, progress=cfg.runtime.progress)
    kind = "binary (0/255, any defect)" if scfg.binary else f"multi-class ({', '.join(CLASS_NAMES)})"
    click.echo(f"wrote {scfg.num_train} train + {scfg.num_test} test {scfg.image_size}px pairs, "
               f"{kind}, seed {scfg.seed}, to {out_dir} in {time.perf_counter() - start:.1f} s")


@data.command("subset")
@click.argument("src", metavar="SRC", type=click.Path(file_okay=False, exists=True))
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--fraction", type=float, required=True,
              help="Share of SRC's train pairs to keep, in (0, 1] (round(fraction x N), >= 2).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The subsets' seed: for one seed the subsets of every fraction are nested.")
def subset(src: str, out: str, fraction: float, seed: int) -> None:
    """Write OUT/train with a seeded, nested subset of SRC's train pairs and OUT/test with all
    of SRC's test pairs (a point of the label-efficiency curve: docs/guide/protocols.md)."""
    from isdm.data.subset import write_subset
    from isdm.utils import ownership

    with ownership.exclusive(out, "data subset", option="OUT"):  # one writer per OUT
        m = write_subset(src, out, fraction, seed)
    click.echo(f"wrote {m['n']} of {m['n_source']} train pairs (fraction {fraction:g}, seed "
               f"{seed}) and all {m['n_test']} test pairs to {out}")

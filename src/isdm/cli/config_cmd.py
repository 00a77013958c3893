"""``isdm config show``: the resolved config and where each value came from;
``isdm config apply``: write an overlay's values into params.yaml (for ``dvc exp run``)."""

from __future__ import annotations

import json
from typing import Any, Mapping

import click

from isdm.cli.common import DEFAULT_PARAMS, config_options, resolve_cli_config


@click.group()
def config() -> None:
    """Inspect configs and apply overlays."""


def _commented_yaml(tree: Mapping[str, Any], sources: Mapping[str, str], prefix: str = "",
                    indent: int = 0) -> list[str]:
    """``key: value  # source`` lines of the nested ``tree`` (values in YAML flow style)."""
    import yaml

    lines = []
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        pad = " " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines += _commented_yaml(value, sources, dotted, indent + 2)
            continue
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).splitlines()[0]
        lines.append(f"{pad}{key}: {text.removesuffix(' ...')}".ljust(44)
                     + f"  # {sources[dotted]}")
    return lines


@config.command("show")
@config_options
@click.option("--action", type=click.Choice(["train", "finetune", "sample"]), default=None,
              help="For original ISDM flat configs: which action the file is for "
                   "(inferred when omitted).")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              help="yaml: every key with a comment saying where its value came from; json: "
                   "the plain tree (what a run writes to config.json).")
def show(config_paths: tuple[str, ...], overrides: tuple[str, ...], action: str | None,
         fmt: str) -> None:
    """Print the config after the defaults, the -c files (in order), the ISDM_* environment
    variables and --set overrides are merged. Each line says where its value came from:
    `default`, a file, `env ISDM_...`, `--set`, `preset <name>` (model keys) or
    `<file> (train.<key>)` (a finetune key inherited from train).

    \b
    isdm config show                                   # ./params.yaml
    isdm config show -c params.yaml -c configs/crackforest.yaml

    Every invalid value is an error; an original ISDM config's keys that isdm does not reproduce
    are printed as warnings on stderr (stdout holds only the config)."""
    from isdm.config import to_dict

    resolved = resolve_cli_config(config_paths, overrides, action=action)
    tree = to_dict(resolved.config)
    if fmt == "json":
        click.echo(json.dumps(tree, indent=2))
    else:
        click.echo("\n".join(_commented_yaml(tree, resolved.sources)))


@config.command("apply")
@click.argument("overlays", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True),
                metavar="OVERLAY...")
@click.option("--to", "target", default=DEFAULT_PARAMS, show_default=True,
              type=click.Path(dir_okay=False, exists=True),
              help="The params file to write into.")
def apply(overlays: tuple[str, ...], target: str) -> None:
    """Write each OVERLAY's keys into params.yaml (comments kept, missing keys added to their
    section), so that `dvc exp run` runs the experiment the overlay describes: the result must
    mean exactly `-c params.yaml -c OVERLAY`, or the file is left unchanged. OVERLAY is a
    params.yaml-style file (nested or dotted keys, e.g. a tune study's best_params.yaml).

    \b
    isdm config apply configs/crackforest.yaml && dvc exp run -n crackforest
    git checkout params.yaml                           # back to the embedded pipeline
    """
    from isdm.config.edit import apply_values
    from isdm.config.layers import file_layer, leaves
    from isdm.original.configs import config_tree

    for overlay in overlays:
        layer = file_layer(overlay, flat=config_tree)
        if not layer.tree:
            raise click.UsageError(f"{overlay} sets no key")
        for line in apply_values(target, leaves(layer.tree), overlay):
            click.echo(f"{target}: {line}")

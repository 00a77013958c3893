"""``isdm config show``: print the resolved config."""

from __future__ import annotations

import json

import click

from isdm.cli.common import config_options, load_cli_config


@click.group()
def config() -> None:
    """Inspect configs."""


@config.command("show")
@config_options
@click.option("--action", type=click.Choice(["train", "finetune", "sample"]), default=None,
              help="For original ISDM flat configs: which action the file is for "
                   "(inferred when omitted).")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
def show(config_path: str | None, overrides: tuple[str, ...], action: str | None, fmt: str) -> None:
    """Print the config after defaults, the file and --set overrides are merged.

    Every invalid value is an error; an original ISDM config's keys that isdm does not reproduce
    are printed as warnings on stderr (stdout holds only the config)."""
    from isdm.config import to_dict

    cfg = load_cli_config(config_path, overrides, action=action)
    tree = to_dict(cfg)
    if fmt == "json":
        click.echo(json.dumps(tree, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(tree, sort_keys=False).rstrip())

"""Options and helpers shared by the sub-commands (config loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from isdm.config import Config, load_config

DEFAULT_PARAMS = "params.yaml"


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config FILE`` and repeatable ``--set section.key=value``."""
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one config value (repeatable), e.g. --set train.lr=1e-4.")(f)
    f = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                     default=None,
                     help="params.yaml-style YAML/JSON or an original ISDM JSON config. "
                          "Default: ./params.yaml if present, else built-in defaults.")(f)
    return f


def load_cli_config(config_path: Optional[str], overrides: Sequence[str],
                    action: Optional[str] = None) -> Config:
    """Load the config for a command (``./params.yaml`` when ``-c`` is not given and it exists)."""
    if config_path is None and Path(DEFAULT_PARAMS).exists():
        config_path = DEFAULT_PARAMS
    return load_config(config_path, overrides, action=action)

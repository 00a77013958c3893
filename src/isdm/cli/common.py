"""Options and helpers shared by the sub-commands (config loading, error reporting)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from isdm.config import Config, ConfigError, load_config

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
    """Load the config for a command, turning :class:`ConfigError` into a clean CLI error."""
    if config_path is None and Path(DEFAULT_PARAMS).exists():
        config_path = DEFAULT_PARAMS
    try:
        return load_config(config_path, overrides, action=action)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def friendly_errors(*exc_types: type[BaseException]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Report the given exception types as one clean message with exit code 1 (no traceback)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except (ConfigError, *exc_types) as e:  # type: ignore[misc]
                click.echo(f"Error: {e}", err=True)
                sys.exit(1)

        return wrapper

    return deco

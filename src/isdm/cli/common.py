"""Options and helpers shared by the sub-commands (config loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from isdm.config import Config, load_config

DEFAULT_PARAMS = "params.yaml"
_IF_GIVEN = "isdm.overrides_if_given"  # click context meta key of --set-if-given


def _keep_given(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    """``--set-if-given KEY=`` (empty value) is dropped; anything else is a ``--set``."""
    ctx.meta[_IF_GIVEN] = [v for v in values if not (v.count("=") == 1 and v.endswith("="))]


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config FILE``, repeatable ``--set section.key=value`` and ``--set-if-given``."""
    f = click.option("--set-if-given", multiple=True, metavar="SECTION.KEY=VALUE",
                     expose_value=False, callback=_keep_given,
                     help="As --set, but an empty VALUE keeps the config's value (MLproject "
                          "parameters that default to params.yaml). --set wins.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one config value (repeatable), e.g. --set train.lr=1e-4.")(f)
    f = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                     default=None,
                     help="params.yaml-style YAML/JSON or an original ISDM JSON config. "
                          "Default: ./params.yaml if present, else built-in defaults.")(f)
    return f


def load_cli_config(config_path: Optional[str], overrides: Sequence[str],
                    action: Optional[str] = None) -> Config:
    """Load the config for a command (``./params.yaml`` when ``-c`` is not given and it exists),
    with the command's ``--set-if-given`` values first, then ``overrides``."""
    if config_path is None and Path(DEFAULT_PARAMS).exists():
        config_path = DEFAULT_PARAMS
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_IF_GIVEN, []) if ctx is not None else []
    return load_config(config_path, [*given, *overrides], action=action)

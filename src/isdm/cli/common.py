"""Options and helpers shared by the sub-commands (config loading)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from isdm.config import Config, Resolved, resolve
from isdm.original.configs import config_tree

DEFAULT_PARAMS = "params.yaml"
_MORE = "isdm.more_overrides"  # click context meta key of --overrides


def _split_overrides(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> None:
    try:
        ctx.meta[_MORE] = shlex.split(value or "")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Repeatable ``-c/--config FILE`` (base, then overlays), repeatable ``--set
    section.key=value`` and ``--overrides "K=V K=V"`` (one string: MLproject's parameter)."""
    f = click.option("--overrides", "overrides_text", default=None, metavar='"K=V ..."',
                     callback=_split_overrides, expose_value=False,
                     help="Several --set values in one shell-quoted string (MLproject passes "
                          "-P overrides=... this way); --set wins.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one config value (repeatable), e.g. --set train.lr=1e-4.")(f)
    f = click.option("-c", "--config", "config_paths", type=click.Path(dir_okay=False),
                     multiple=True,
                     help="Config file, repeatable: a params.yaml-style base, then overlays "
                          "deep-merged in order (e.g. -c params.yaml -c configs/crackforest.yaml), "
                          "or an original ISDM JSON config. Default: ./params.yaml if present, "
                          "else the built-in defaults.")(f)
    return f


def config_files(config_paths: Sequence[str]) -> list[str]:
    """The ``-c`` files, or ``./params.yaml`` when none is given and it exists."""
    if not config_paths and Path(DEFAULT_PARAMS).exists():
        return [DEFAULT_PARAMS]
    return list(config_paths)


def resolve_cli_config(config_paths: Sequence[str], overrides: Sequence[str],
                       action: Optional[str] = None) -> Resolved:
    """:func:`isdm.config.resolve` for a command: its ``-c`` files (:func:`config_files`), the
    ``ISDM_*`` environment variables (:data:`isdm.config.ENV_VARS`), then its ``--overrides``
    and ``--set`` values."""
    ctx = click.get_current_context(silent=True)
    more = ctx.meta.get(_MORE, []) if ctx is not None else []
    return resolve(config_files(config_paths), [*more, *overrides], action=action, env=os.environ,
                   flat=config_tree)  # -c also takes the original ISDM tool's flat JSON configs


def load_cli_config(config_paths: Sequence[str], overrides: Sequence[str],
                    action: Optional[str] = None) -> Config:
    """The resolved config of a command (see :func:`resolve_cli_config`)."""
    return resolve_cli_config(config_paths, overrides, action).config


def check_tracking(cfg: Config) -> None:
    """Check the local MLflow store before a command starts its work (a corrupt, read-only or
    locked ``mlflow.db`` fails at once, not after training): :mod:`isdm.tracking.local_store`."""
    if cfg.tracking.enabled:
        from isdm.tracking import resolve_tracking_uri
        from isdm.tracking.local_store import prepare

        prepare(resolve_tracking_uri(cfg.tracking.tracking_uri))

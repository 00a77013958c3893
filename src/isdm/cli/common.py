"""Options and helpers shared by the sub-commands: config loading (:func:`config_options`) and
how a command runs here (:func:`runtime_options`: ``--device``, ``--no-progress``)."""

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
_RUNTIME = "isdm.runtime_flags"  # click context meta key of --device / --no-progress


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


def _runtime_flag(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            text = "false" if key == "runtime.progress" else value
            ctx.meta.setdefault(_RUNTIME, {})[key] = f"{key}={text}"
    return store


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-progress`` alone, for the commands that show progress but run no network
    (``data check``, ``data synth``): sets ``runtime.progress=false``."""
    return click.option("--no-progress", is_flag=True, expose_value=False,
                        callback=_runtime_flag("runtime.progress"),
                        help="No progress bars or progress lines (runtime.progress=false; "
                             "default: $ISDM_PROGRESS, else on).")(f)


def runtime_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` and ``--no-progress``: THE options of every command that computes (a test
    walks the command tree). They set ``runtime.device`` / ``runtime.progress`` of the
    config the command loads with :func:`load_cli_config`, after ``--set``."""
    f = progress_option(f)
    return click.option("--device", default=None, expose_value=False,
                        callback=_runtime_flag("runtime.device"),
                        help="auto, cpu, cuda, cuda:1, mps (runtime.device; default: "
                             "$ISDM_DEVICE, else auto = CUDA when available).")(f)


def config_files(config_paths: Sequence[str]) -> list[str]:
    """The ``-c`` files, or ``./params.yaml`` when none is given and it exists."""
    if not config_paths and Path(DEFAULT_PARAMS).exists():
        return [DEFAULT_PARAMS]
    return list(config_paths)


def resolve_cli_config(config_paths: Sequence[str], overrides: Sequence[str],
                       action: Optional[str] = None) -> Resolved:
    """:func:`isdm.config.resolve` for a command: its ``-c`` files (:func:`config_files`), the
    ``ISDM_*`` environment variables (:data:`isdm.config.ENV_VARS`), then its ``--overrides``
    and ``--set`` values, then ``--device`` / ``--no-progress`` (:func:`runtime_options`)."""
    ctx = click.get_current_context(silent=True)
    more = ctx.meta.get(_MORE, []) if ctx is not None else []
    flags = list(ctx.meta.get(_RUNTIME, {}).values()) if ctx is not None else []
    return resolve(config_files(config_paths), [*more, *overrides, *flags], action=action,
                   env=os.environ, flat=config_tree)  # -c also takes the original flat JSON


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

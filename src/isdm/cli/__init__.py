"""The ``isdm`` command line: a thin click group.

Each sub-command lives in its own module and is imported only when invoked, so ``isdm --help``
stays instant (no torch / mlflow / smp import at start-up). A command parses its options, loads
the config (:func:`isdm.cli.common.load_cli_config`) and calls ONE library function.

Errors: ONE handler (:meth:`LazyGroup.invoke`) prints any :class:`isdm.errors.IsdmError` as
``Error: <message>`` with exit status 1 and no traceback; commands do not catch errors themselves.
"""

from __future__ import annotations

import importlib

import click

# command name -> (module, attribute, one-line help shown by `isdm --help`)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("isdm.cli.data", "data", "Check a dataset, write the embedded one, or a subset."),
    "config": ("isdm.cli.config_cmd", "config", "Show the resolved config; apply an overlay."),
    "train": ("isdm.cli.train", "train", "Train a Semantic Diffusion Model."),
    "finetune": ("isdm.cli.train", "finetune", "Finetune with mask dropout for guidance."),
    "sample": ("isdm.cli.sample", "sample", "Generate synthetic image/mask pairs."),
    "curate": ("isdm.cli.curate", "curate", "Score synthetic pairs, drop the misleading ones."),
    "evaluate": ("isdm.cli.evaluate", "evaluate", "Downstream mIoU of real vs synthetic mixes."),
    "tune": ("isdm.cli.tune", "tune", "Optuna search of the generator's knobs; --apply."),
    "labels": ("isdm.cli.labels", "labels", "Label efficiency: synthetic data in real images."),
    "import-checkpoint": ("isdm.cli.import_checkpoint", "import_checkpoint",
                          "Use a model*.pt / ema_*.pt of the original ISDM tool."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str):  # type: ignore[override]
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from isdm.errors import IsdmError

        try:
            return super().invoke(ctx)
        except IsdmError as e:
            raise click.ClickException(str(e)) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, _, h) in _COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="isdm")
def cli() -> None:
    """isdm: enlarge small segmentation datasets with a Semantic Diffusion Model, and measure
    whether the synthetic data raises a downstream model's mIoU."""


def main() -> None:
    cli(prog_name="isdm")

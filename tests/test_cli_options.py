"""The CLI's shared options: every command that computes takes ``--device`` and
``--no-progress`` (one decorator, :func:`isdm.cli.common.runtime_options`), and both reach the
config the command loads."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from isdm.cli import cli
from isdm.cli.common import load_cli_config, runtime_options

#: commands without one of the two flags, and why (a new command must be added here or get both)
NO_DEVICE = {
    "config show": "prints the config; computes nothing",
    "config apply": "edits params.yaml; computes nothing",
    "data check": "reads files with PIL; no torch",
    "data synth": "draws images with numpy; no torch",
    "data subset": "copies files",
    "labels": "reads evaluate reports; bootstrap in numpy",
    "import-checkpoint": "converts a state dict on the CPU",
}
NO_PROGRESS = {
    "config show": NO_DEVICE["config show"],
    "config apply": NO_DEVICE["config apply"],
    "data subset": NO_DEVICE["data subset"],
    "labels": NO_DEVICE["labels"],
    "import-checkpoint": NO_DEVICE["import-checkpoint"],
}


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    ctx = click.Context(group)
    out: dict[str, click.Command] = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out.update(_commands(cmd, path + " "))
        else:
            out[path] = cmd
    return out


def _flags(cmd: click.Command) -> set[str]:
    return {opt for p in cmd.params for opt in getattr(p, "opts", [])}


def test_every_computing_command_has_device_and_no_progress():
    commands = _commands(cli)
    assert {"train", "finetune", "sample", "curate", "evaluate", "tune"} <= set(commands)
    assert set(NO_DEVICE) <= set(commands) and set(NO_PROGRESS) <= set(commands)
    for path, cmd in commands.items():
        flags = _flags(cmd)
        assert ("--device" in flags) != (path in NO_DEVICE), path
        assert ("--no-progress" in flags) != (path in NO_PROGRESS), path


def test_flags_set_the_runtime_section_after_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults
    seen = {}

    @click.command()
    @runtime_options
    def probe() -> None:
        seen["cfg"] = load_cli_config((), ("runtime.device=cuda",))

    assert CliRunner().invoke(probe, ["--device", "cpu", "--no-progress"]).exit_code == 0
    assert (seen["cfg"].runtime.device, seen["cfg"].runtime.progress) == ("cpu", False)
    assert CliRunner().invoke(probe, []).exit_code == 0
    assert (seen["cfg"].runtime.device, seen["cfg"].runtime.progress) == ("cuda", True)


@pytest.mark.parametrize("command", ["sample", "curate", "evaluate"])
def test_new_flags_are_accepted(command):
    result = CliRunner().invoke(cli, [command, "--device", "cpu", "--no-progress", "--help"])
    assert result.exit_code == 0, result.output

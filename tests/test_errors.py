"""One error base class and one CLI handler: user errors print a message, bugs keep a traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import isdm.errors as errors
from isdm.cli import LazyGroup


def test_every_error_class_derives_from_the_base() -> None:
    names = [n for n in errors.__all__ if n != "IsdmError"]
    assert names
    for name in names:
        assert issubclass(getattr(errors, name), errors.IsdmError), name


def _group(exc: BaseException) -> click.Group:
    @click.group(cls=LazyGroup)
    def root() -> None: ...

    @root.command()
    def boom() -> None:
        raise exc

    # LazyGroup lists only isdm's commands; register this one directly
    root.get_command = lambda ctx, name: boom if name == "boom" else None  # type: ignore[method-assign]
    return root


def test_cli_prints_an_isdm_error_without_traceback() -> None:
    result = CliRunner().invoke(_group(errors.ConfigError("train.lr=-1: must be > 0")), ["boom"])
    assert result.exit_code == 1
    assert result.output == "Error: train.lr=-1: must be > 0\n"


def test_cli_keeps_the_traceback_of_a_bug() -> None:
    result = CliRunner().invoke(_group(KeyError("bug")), ["boom"])
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)


@pytest.mark.parametrize("cls", [errors.ConfigError, errors.DatasetError, errors.CheckpointError,
                                 errors.EvaluationError])
def test_value_errors_stay_value_errors(cls) -> None:
    assert issubclass(cls, ValueError)

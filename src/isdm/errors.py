"""The errors isdm raises for a user to fix, under ONE base class.

Every message names the file or key, the offending value and the fix. The command line prints
an :class:`IsdmError` as ``Error: <message>`` with exit status 1 and no traceback (one handler in
:mod:`isdm.cli`); anything else is a bug and keeps its traceback.

The classes also derive from the built-in exception a caller would expect (``ValueError`` for a
bad value, ``OSError`` for a failed write), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["IsdmError", "ConfigError", "DatasetError", "MaskValueError", "CheckpointError",
           "OutputExistsError", "EvaluationError", "CurationError", "WriteError", "TuningError",
           "BusyError", "NumericalError", "TrackingError"]


class IsdmError(Exception):
    """Base of every error a user can fix; the CLI prints it without a traceback."""


class ConfigError(IsdmError, ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


class DatasetError(IsdmError, ValueError):
    """A dataset has problems; ``problems`` lists every one of them (file paths included),
    ``hints`` the fixes that apply to several of them."""

    def __init__(self, problems: Iterable[str], root: str | Path | None = None,
                 hints: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        self.root = root
        self.hints = list(hints)
        where = f" in {root}" if root is not None else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        fixes = "".join(f"\n  fix: {h}" for h in self.hints)
        super().__init__(f"{len(self.problems)} dataset problem(s){where}:\n{lines}{fixes}")


class MaskValueError(IsdmError, ValueError):
    """A mask holds values outside the valid set; ``values`` lists them (sorted)."""

    def __init__(self, message: str, values: list[int]) -> None:
        super().__init__(message)
        self.values = values


class CheckpointError(IsdmError, ValueError):
    """A checkpoint file is missing, unreadable, corrupt, or does not fit the requested use."""


class OutputExistsError(IsdmError, RuntimeError):
    """An output folder holds results that this run must not silently replace."""


class EvaluationError(IsdmError, ValueError):
    """A downstream evaluation cannot run: a bad mix, segmenter, or synthetic folder."""


class CurationError(IsdmError, ValueError):
    """A synthetic set cannot be curated as configured: the message names the key and the fix."""


class WriteError(IsdmError, OSError):
    """Writing an output failed (disk full, permissions); the message names the file, the
    free space and which earlier outputs are intact."""


class TuningError(IsdmError, RuntimeError):
    """An Optuna study cannot be opened or shared: the message names the storage and the fix."""


class BusyError(IsdmError, RuntimeError):
    """Another process is writing the same output (its lock is held); the message names it."""


class NumericalError(IsdmError, ArithmeticError):
    """A loss or weights became non-finite or exploded; the message names the step, the likely
    cause (learning rate, precision) and which checkpoint on disk is the last finite one."""


class TrackingError(IsdmError, RuntimeError):
    """The MLflow tracking store cannot be reached, opened or written, or stopped answering (a
    server down; a local store corrupt, read-only or locked): the message names the URI, the
    reason and the fix."""

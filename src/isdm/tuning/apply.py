"""``isdm tune --apply``: write the best knobs into a params.yaml, keeping its comments.

The edit is :func:`isdm.config.edit.apply_values`, the code of ``isdm config apply`` too (keys the
file lacks are added to their section; the result must mean the file plus the knobs, or nothing
is written). ``best_params.yaml`` holds dotted keys (``sample.s: 2.1``), so it is also an overlay:
``isdm config show -c params.yaml -c reports/tune/best_params.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from isdm.errors import ConfigError, TuningError

__all__ = ["apply_params", "read_best_params"]


def read_best_params(path: str | Path) -> dict[str, Any]:
    """The dotted keys of a ``best_params.yaml``.

    Raises:
        TuningError: the file is missing or holds no mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise TuningError(f"{path} does not exist: run `isdm tune` with this --out first (it "
                          "writes best_params.yaml once a trial completed)")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict) or not params:
        raise TuningError(f"{path}: expected `section.key: value` lines, found {params!r}")
    return params


def apply_params(params_file: str | Path, params: Mapping[str, Any],
                 source: str = "best_params.yaml") -> list[str]:
    """Write ``params`` into ``params_file``; returns ``["sample.s: 1.5 -> 2.1", ...]``.

    Raises:
        TuningError: a key it cannot place, or a result that does not reload with the new values.
    """
    from isdm.config.edit import apply_values

    try:
        return apply_values(params_file, params, source)
    except ConfigError as e:
        raise TuningError(str(e)) from None

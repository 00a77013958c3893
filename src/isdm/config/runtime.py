"""The ``runtime`` section: how a command runs on this machine, not what it computes."""

from __future__ import annotations

from dataclasses import dataclass

from isdm.config.checks import DEVICE, Section, at_least

__all__ = ["RuntimeConfig"]


@dataclass(frozen=True)
class RuntimeConfig(Section):
    """How a command runs on this machine, for every command; not in ``params.yaml`` and listed
    by no ``dvc.yaml`` stage, so changing it re-runs nothing (as ``tracking``). Set it with the
    environment variables ``ISDM_DEVICE``, ``ISDM_NUM_WORKERS``, ``ISDM_PROGRESS``
    (:data:`isdm.config.layers.ENV_VARS`), a command's flags or ``--set runtime.<key>=...``.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:<i>`` or ``mps``; a
    command's ``--device`` overrides it; under torchrun each training process takes its
    LOCAL_RANK GPU. ``num_workers``: DataLoader worker processes of training. ``progress``:
    progress bars (``--no-progress`` turns them off for one command). Device and worker count
    can change the bits of a result (GPU arithmetic; with workers the random flips come from
    per-worker generators), not what it estimates: a stage's outputs stay valid; the resolved
    config written beside every output records the values used.
    """

    SECTION = "runtime"
    RULES = {"device": (DEVICE,), "num_workers": (at_least(0),)}

    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

"""A journal-file Optuna storage with the heartbeat that only ``RDBStorage`` has in Optuna 5.

Optuna's heartbeat contract (:class:`optuna.storages._heartbeat.BaseHeartbeat`): while a trial
runs, a thread of its worker calls :meth:`record_heartbeat` every ``heartbeat_interval`` seconds;
before each trial (``Study.optimize``) and in :func:`optuna.storages.fail_stale_trials`, RUNNING
trials listed by :meth:`_get_stale_trial_ids` are set to FAIL and handed to the stale-trial
callback (e.g. ``RetryHeartbeatStaleTrialCallback``, which re-enqueues their parameters).

Here the heartbeat is the trial system attribute :data:`HEARTBEAT_ATTR`: the worker's
``time.time()``, appended to the journal like any other write. A RUNNING trial is stale when its
last heartbeat is more than ``grace_period`` seconds older than the reader's clock (workers on
several machines need clocks that agree to well within ``grace_period - heartbeat_interval``).
A trial that has not recorded its first heartbeat yet is never stale, as in ``RDBStorage``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

__all__ = ["HeartbeatJournalStorage", "HEARTBEAT_ATTR"]

HEARTBEAT_ATTR = "isdm:heartbeat"


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """``JournalStorage(JournalFileBackend(path))`` whose running trials send heartbeats."""

    def __init__(self, path: str, heartbeat_interval: float, grace_period: float,
                 stale_trial_callback: Optional[Callable[[Any, Any], None]] = None) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:  # another worker already failed it as stale
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running
                if now - t.system_attrs.get(HEARTBEAT_ATTR, now) > self.grace_period]

    def get_heartbeat_interval(self) -> float:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Optional[Callable[[Any, Any], None]]:
        return self.stale_trial_callback

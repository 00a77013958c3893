"""Where a study lives, and how workers share it safely.

Storage spec: ``''`` = a journal file ``<out>/study.journal``; a URL with ``://``
(``sqlite:///...``, ``postgresql://...``) = an RDB; any other string = a journal file path.

Killed workers: every running trial sends a heartbeat every :data:`HEARTBEAT_INTERVAL` seconds
(Optuna's own heartbeat for an RDB, :class:`isdm.tuning.journal.HeartbeatJournalStorage` for a
journal file). A RUNNING trial whose heartbeat is older than :data:`GRACE_PERIOD` seconds (its
worker was killed) is set to FAIL by the next worker, when it starts (:func:`fail_stale_trials`)
and before each of its trials, and ``RetryHeartbeatStaleTrialCallback`` re-enqueues its
parameters as a WAITING trial (at most :data:`MAX_RETRY` times per original trial), which the
next free worker runs first.

Concurrent starts: Optuna's schema set-up of a fresh RDB races between processes (e.g.
``IntegrityError`` on ``alembic_version``); opening the storage and creating the study are
retried with a jittered exponential backoff, and only a persistent failure becomes a
:class:`isdm.errors.TuningError`.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

from isdm.errors import TuningError

__all__ = ["resolve_storage", "open_storage", "fail_stale_trials", "retry_storage",
           "HEARTBEAT_INTERVAL", "GRACE_PERIOD", "MAX_RETRY"]

HEARTBEAT_INTERVAL = 30  # seconds between two heartbeats of a running trial
GRACE_PERIOD = 120  # seconds without a heartbeat after which a RUNNING trial is stale
MAX_RETRY = 3  # re-runs of the parameters of a trial whose worker died
_ATTEMPTS = 8  # tries to open a storage / create a study while other workers do the same

T = TypeVar("T")


def resolve_storage(storage: str, out_dir: str | Path) -> str:
    """``''`` -> ``<out_dir>/study.journal``; URLs are returned as given; paths made absolute."""
    if not storage:
        return str((Path(out_dir) / "study.journal").resolve())
    if "://" in storage:
        return storage
    return str(Path(storage).resolve())


def retry_storage(fn: Callable[[], T], spec: str) -> T:
    """``fn()``, retried with a jittered exponential backoff while the storage reports a
    database error (another worker is setting up or writing the same database).

    Raises:
        TuningError: the error persists after :data:`_ATTEMPTS` tries.
    """
    import optuna
    import sqlalchemy.exc

    transient = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
    jitter = random.Random()  # its own generator: the global random stream stays untouched
    delay = 0.05
    for _ in range(_ATTEMPTS - 1):
        try:
            return fn()
        except transient:
            time.sleep(delay * (1.0 + jitter.random()))
            delay = min(2 * delay, 2.0)
    try:
        return fn()
    except transient as e:
        raise TuningError(
            f"Optuna storage {spec}: still failing after {_ATTEMPTS} attempts "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); check the URL and that the "
            "database is reachable and writable") from None


def open_storage(spec: str) -> Any:
    """The Optuna storage of a resolved ``spec``, with heartbeats and stale-trial retries."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        if "://" in spec:
            return retry_storage(lambda: optuna.storages.RDBStorage(
                spec, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=retry), spec)
        from isdm.tuning.journal import HeartbeatJournalStorage

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(spec, HEARTBEAT_INTERVAL, GRACE_PERIOD, retry)


def fail_stale_trials(study: Any, spec: str) -> None:
    """FAIL (and re-enqueue) the study's trials whose worker stopped sending heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_storage(lambda: optuna.storages.fail_stale_trials(study), spec)

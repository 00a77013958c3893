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

Heartbeat settings: ``tune.heartbeat_interval`` / ``tune.heartbeat_grace`` (a study's workers
should agree on them); the module constants below are the same defaults for callers without a
config.

Database servers (``postgresql://...``, ``mysql://...``): before anything else the storage is
checked once: the driver package must be installed (the error names it,
:func:`isdm.utils.dburl.missing_driver`) and the server must accept a connection within
:data:`isdm.utils.dburl.CONNECT_TIMEOUT` seconds (the error names the URL, its password hidden,
and the driver's reason). A server that stops answering later is a :class:`TuningError` too
(:func:`storage_errors`).

Concurrent starts: Optuna's schema set-up of a fresh RDB races between processes (e.g.
``IntegrityError`` on ``alembic_version``); opening the storage and creating the study are
retried with a jittered exponential backoff, and only a persistent failure becomes a
:class:`isdm.errors.TuningError`.
"""

from __future__ import annotations

import random
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from isdm.config import TuneConfig
from isdm.errors import TuningError
from isdm.utils import dburl

__all__ = ["resolve_storage", "open_storage", "fail_stale_trials", "retry_storage",
           "check_server", "storage_errors", "HEARTBEAT_INTERVAL", "GRACE_PERIOD", "MAX_RETRY"]

HEARTBEAT_INTERVAL = TuneConfig.heartbeat_interval  # seconds between two heartbeats of a trial
GRACE_PERIOD = TuneConfig.heartbeat_grace  # seconds without a heartbeat: the trial is stale
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
            f"Optuna storage {dburl.safe_url(spec)}: still failing after {_ATTEMPTS} attempts "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); check the URL and that the "
            "database is reachable and writable") from None


def check_server(spec: str) -> None:
    """For a database server URL: its driver is installed and it accepts a connection.

    Raises:
        TuningError: naming the URL (password hidden), the package to install or the reason
            it does not answer, and the fix.
    """
    if not dburl.is_server_url(spec):
        return
    found = dburl.problem(spec)
    if found is not None:
        raise TuningError(f"--storage {dburl.safe_url(spec)}: {found}; or keep the study "
                          "without a server: --storage sqlite:///reports/tune/study.db (one "
                          "machine) or a journal file on a shared file system")


def open_storage(spec: str, heartbeat_interval: Optional[float] = None,
                 grace_period: Optional[float] = None) -> Any:
    """The Optuna storage of a resolved ``spec``, with heartbeats (defaults
    :data:`HEARTBEAT_INTERVAL` / :data:`GRACE_PERIOD`) and stale-trial retries."""
    import optuna

    interval = HEARTBEAT_INTERVAL if heartbeat_interval is None else heartbeat_interval
    grace = GRACE_PERIOD if grace_period is None else grace_period
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        if "://" in spec:
            check_server(spec)
            return retry_storage(lambda: optuna.storages.RDBStorage(
                spec, engine_kwargs=dburl.engine_kwargs(spec), heartbeat_interval=interval,
                grace_period=grace, heartbeat_stale_trial_callback=retry), spec)
        from isdm.tuning.journal import HeartbeatJournalStorage

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(spec, interval, grace, retry)


def fail_stale_trials(study: Any, spec: str) -> None:
    """FAIL (and re-enqueue) the study's trials whose worker stopped sending heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_storage(lambda: optuna.storages.fail_stale_trials(study), spec)


@contextmanager
def storage_errors(spec: str) -> Iterator[None]:
    """Turn a database server that stops answering during a study into a :class:`TuningError`
    (the trials it finished are in the storage; a trial cut short is failed and retried by the
    next worker). A database error while the server still accepts connections, and every error
    of a file storage, passes unchanged."""
    import optuna
    import sqlalchemy.exc

    if not dburl.is_server_url(spec):
        yield
        return
    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            optuna.exceptions.StorageInternalError):
        reason = dburl.probe(spec)
        if reason is None:  # the server answers: not an outage, keep the original error
            raise
        raise TuningError(
            f"the study database {dburl.safe_url(spec)} stopped answering ({reason}); the "
            "trials it recorded are kept: start it again and rerun this worker (a trial that "
            "was running is failed after tune.heartbeat_grace seconds and its parameters are "
            "retried)") from None

"""A tracking store behind a network: bounded waits and one clear error instead of a hang.

MLflow's HTTP client retries a failed request 7 times with an exponential backoff (2 s up to
120 s) and waits up to 120 s for each answer, so a command pointed at a tracking server that is
down sat ~4.5 minutes without a word before a traceback. For an ``http(s)://`` tracking URI,
:func:`prepare` (called by :func:`isdm.tracking.start_run` and by ``models:/`` checkpoint
downloads) now

1. sets shorter defaults for MLflow's own HTTP settings, :data:`HTTP_DEFAULTS` (a value already
   in the environment wins): 3 retries after 2, 4 and 8 s (a server restart of ~15 s is ridden
   out), 30 s per request;
2. asks the server's ``/health`` once per process, for at most :data:`HEALTH_TIMEOUT` seconds:
   no answer, a refused Host header (403) or a server error is a :class:`TrackingError` naming
   the URI, the reason and the fixes.

For a database tracking URI (``postgresql://...``) it checks the driver package and that the
server accepts a connection (:mod:`isdm.utils.dburl`). A request that still fails later (the
server stopped mid-run) becomes a :class:`TrackingError` in :func:`connection_errors`; what the
command wrote so far stays on disk, and its run, left RUNNING, is marked KILLED by the next isdm
run of that experiment on this host (:mod:`isdm.tracking.liveness`).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

from isdm.errors import TrackingError
from isdm.utils import dburl

__all__ = ["prepare", "connection_errors", "one_try", "is_http", "is_network_failure",
           "HTTP_DEFAULTS", "HEALTH_TIMEOUT"]

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
HEALTH_TIMEOUT = 10  # seconds the first request to a tracking server may take
_checked: set[str] = set()  # URIs this process found reachable
_FIXES = ("start the server (`mlflow server --backend-store-uri sqlite:///mlflow.db --host "
          "127.0.0.1 --port 5000 --workers 1`), correct the URI (tracking.tracking_uri, else "
          "$MLFLOW_TRACKING_URI), or run without MLflow: --set tracking.enabled=false")


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def prepare(uri: str) -> None:
    """Bounded MLflow HTTP waits, and the store at ``uri`` answers (once per process).

    Raises:
        TrackingError: the server cannot be reached, or a database URI's driver is missing.
    """
    if dburl.is_server_url(uri) and not is_http(uri):
        _check_database(uri)
        return
    if not is_http(uri):
        return
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if uri not in _checked:
        _check_health(uri)
        _checked.add(uri)


def _check_health(uri: str) -> None:
    import requests

    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT)
    except requests.RequestException as e:
        raise TrackingError(f"MLflow tracking server {uri} cannot be reached ({_reason(e)}); "
                            f"{_FIXES}") from None
    if answer.status_code == 403:
        raise TrackingError(
            f"MLflow tracking server {uri} refused this client (403 Forbidden): an MLflow "
            "server answers only the Host names it allows; start it with --allowed-hosts "
            f"naming the host and port clients use (e.g. --allowed-hosts '{_host(uri)}'), or "
            "run without MLflow: --set tracking.enabled=false")
    if answer.status_code >= 500:
        raise TrackingError(f"MLflow tracking server {uri} answers with an error "
                            f"({answer.status_code} {answer.reason}): see the server's log "
                            "(its backend store may be down); or run without MLflow: --set "
                            "tracking.enabled=false")


def _check_database(uri: str) -> None:
    found = dburl.problem(uri)
    if found is not None:
        raise TrackingError(f"MLflow tracking URI {dburl.safe_url(uri)}: {found}; or use a "
                            "tracking server (http://...) or the local store (empty "
                            "tracking.tracking_uri), or run without MLflow: --set "
                            "tracking.enabled=false")


def _host(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def _reason(e: BaseException) -> str:
    """The useful part of a requests / urllib3 error: ``[Errno 111] Connection refused``."""
    import requests

    if isinstance(e, requests.Timeout):
        return "no answer within the timeout"
    text = str(e)
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return found.group(0).strip()
    if "too many" in text and "error responses" in text:
        return "it answered with server errors (5xx) after every retry"
    return text.splitlines()[0][:200] if text else type(e).__name__


def _network_cause(e: BaseException) -> BaseException | None:
    """The requests error behind an MlflowException, if a network failure caused it."""
    import requests

    seen = e
    for _ in range(5):
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            return None
        if isinstance(seen, requests.RequestException):
            return seen
    return None


def is_network_failure(e: BaseException) -> bool:
    """An MlflowException raised because the server did not answer (not a refusal it sent)."""
    return _network_cause(e) is not None or str(e).startswith("API request to")


@contextmanager
def connection_errors(uri: str) -> Iterator[None]:
    """Turn an MLflow request that failed because the server stopped answering into a
    :class:`TrackingError`; every other error passes unchanged."""
    if not is_http(uri):
        yield
        return
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        if not is_network_failure(e):
            raise
        cause = _network_cause(e)
        reason = _reason(cause) if cause is not None else str(e).splitlines()[0][:200]
        raise TrackingError(
            f"MLflow tracking server {uri} stopped answering during this command ({reason}). "
            "The files the command wrote so far are kept; its MLflow run stays RUNNING until "
            "the next isdm run on this host marks it KILLED. Start the server again and rerun "
            "the command (train: --resume <out>/last.pt continues from its last checkpoint), or "
            "rerun with --set tracking.enabled=false (MLflow's waits: "
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT)") from None


@contextmanager
def one_try() -> Iterator[None]:
    """MLflow requests inside the block make one attempt of at most 5 s: for the last words to a
    server that just stopped answering (ending the run), which are not worth a second wait."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

"""Network stores that fail: one clear paragraph, exit 1, no traceback, a bounded wait.

A tracking server that refuses connections, never answers or refuses the client's Host header;
a study database without its driver, refusing connections, never answering, or stopping in the
middle of a study. Waits are shortened here (HEALTH_TIMEOUT, CONNECT_TIMEOUT: 1 s) to keep the
tests fast; the defaults are 10 s.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator

import pytest
from click.testing import CliRunner
from servers import TINY, free_port

from isdm.cli import cli
from isdm.config import TrackingConfig
from isdm.errors import TrackingError, TuningError
from isdm.tracking import remote, start_run
from isdm.tuning import storage as tune_storage
from isdm.utils import dburl


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def short_waits(monkeypatch):
    monkeypatch.setattr(remote, "HEALTH_TIMEOUT", 1)
    monkeypatch.setattr(dburl, "CONNECT_TIMEOUT", 1)
    monkeypatch.setattr(remote, "_checked", set())


def _invoke(*args: str) -> tuple[int, str, float]:
    start = time.monotonic()
    result = CliRunner().invoke(cli, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                     SystemExit), result.exc_info
    return result.exit_code, result.output, time.monotonic() - start


def test_an_unreachable_tracking_server_is_one_clear_error_at_once(tmp_path, synth_dir,
                                                                   monkeypatch, short_waits):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, output, seconds = _invoke(
        "sample", "-c", str(TINY), "--data", str(synth_dir), "--checkpoint",
        "models:/isdm-sdm/1", "--out", str(tmp_path / "syn"))
    assert code == 1 and seconds < 60, output  # before: ~270 s of silent retries (imports: ~10 s)
    assert f"MLflow tracking server {uri} cannot be reached (" in output
    assert "Connection refused" in output and "tracking.enabled=false" in output
    assert "mlflow server" in output and "Traceback" not in output


def test_a_tracking_server_that_never_answers_is_an_error_after_the_health_timeout(
        silent_port, short_waits):
    start = time.monotonic()
    with pytest.raises(TrackingError, match="cannot be reached .no answer within the timeout"):
        with start_run(TrackingConfig(tracking_uri=f"http://127.0.0.1:{silent_port}"),
                       name="x", action="train"):
            pass
    assert time.monotonic() - start < 5


def test_a_refused_host_header_names_allowed_hosts(short_waits):
    class Forbidden(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError, match="--allowed-hosts '127.0.0.1:"):
            remote.prepare(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


def test_mlflow_waits_are_bounded_for_a_server_unless_the_user_chose_them(monkeypatch):
    for name in remote.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    monkeypatch.setattr(remote, "_checked", {"http://h:5000"})  # skip the health request
    remote.prepare("http://h:5000")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's value wins


def _tune(tmp_path, synth_dir, storage: str) -> tuple[int, str, float]:
    ckpt = tmp_path / "sdm.pt"
    ckpt.write_bytes(b"")
    return _invoke("tune", "-c", str(TINY), "--data", str(synth_dir), "--checkpoint", str(ckpt),
                   "--out", str(tmp_path / "tune"), "--storage", storage, "--set",
                   "tracking.enabled=false")


def test_postgres_storage_without_its_driver_names_the_package(tmp_path, synth_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    code, output, _ = _tune(tmp_path, synth_dir, "postgresql://me:secret@db-host/optuna")
    assert code == 1 and 'pip install "psycopg[binary]"' in output, output
    assert "postgresql://me:***@db-host/optuna" in output and "secret" not in output
    assert "Traceback" not in output


def test_an_unreachable_study_database_is_a_clear_error_with_the_password_hidden(
        tmp_path, synth_dir, short_waits):
    url = f"postgresql://me:secret@127.0.0.1:{free_port()}/optuna"
    code, output, seconds = _tune(tmp_path, synth_dir, url)
    assert code == 1 and seconds < 60, output
    assert "Connection refused" in output and "me:***@127.0.0.1" in output
    assert "secret" not in output and "Traceback" not in output


def test_a_study_database_that_never_answers_fails_after_the_connect_timeout(silent_port,
                                                                              short_waits):
    start = time.monotonic()
    with pytest.raises(TuningError, match=r"cannot connect within 1 s \(.*timeout expired"):
        tune_storage.check_server(f"postgresql://me@127.0.0.1:{silent_port}/optuna")
    assert time.monotonic() - start < 5


@pytest.mark.slow  # starts the session's PostgreSQL when no other test did
def test_a_study_database_lost_mid_study_is_a_tuning_error_other_errors_pass(postgres,
                                                                             short_waits):
    import sqlalchemy.exc

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the "
                                                                     "connection unexpectedly"))
    gone = f"postgresql://me:secret@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(TuningError, match=r"stopped answering .*Connection refused.*are kept"):
        with tune_storage.storage_errors(gone):
            raise lost
    with pytest.raises(sqlalchemy.exc.OperationalError):  # the server answers: not an outage
        with tune_storage.storage_errors(postgres.database("answering")):
            raise lost


def test_database_urls_hide_their_password():
    assert dburl.safe_url("postgresql://me:s3cret@db:5432/optuna") == (
        "postgresql://me:***@db:5432/optuna")
    assert dburl.safe_url("sqlite:///reports/tune/study.db") == "sqlite:///reports/tune/study.db"
    assert dburl.problem("postgres://me@db/optuna").startswith("SQLAlchemy calls PostgreSQL "
                                                               "postgresql://")

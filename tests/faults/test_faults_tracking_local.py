"""Faults of the local MLflow store (``sqlite:///.../mlflow.db``), one test per failure mode
(issue 22): corrupt or foreign, read-only, locked, created by two commands at once, a URI
without a file. Each is refused before the command does any work, with the fix. (An MLflow
tracking server over HTTP and remote study storages: the services' own tests.)"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from faultkit import REPO, TINY, isdm, no_traceback

from isdm.errors import TrackingError
from isdm.tracking import local_store


@pytest.fixture(autouse=True)
def _fresh_checks(monkeypatch):
    monkeypatch.setattr(local_store, "_prepared", set())  # every test checks its store again


def _train(synth_dir: Path, tmp_path: Path, uri: str):
    return isdm("train", "-c", TINY, "--data", synth_dir, "--out", tmp_path / "sdm",
                "--no-progress", "--set", f"tracking.tracking_uri={uri}",
                "--set", "train.max_steps=1")


def test_a_corrupt_or_foreign_store_is_refused_before_any_work(synth_dir, tmp_path,
                                                               _mlflow_template):
    """Random bytes under the store's name, a damaged SQLite file, or another program's SQLite
    database were tracebacks (the last: MLflow wrote its tables into it)."""
    noise = tmp_path / "noise.db"
    noise.write_bytes(bytes(range(256)) * 40)
    damaged = tmp_path / "damaged.db"
    data = bytearray(_mlflow_template.read_bytes())
    data[100:4096] = bytes(3996)  # page 1 after the header: the schema
    damaged.write_bytes(bytes(data))
    foreign = tmp_path / "optuna.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE studies (study_id INTEGER)")
    for path, message in ((noise, "is not an SQLite database"), (damaged, "is damaged"),
                          (foreign, "is an SQLite database of something else")):
        before = path.read_bytes()
        r = _train(synth_dir, tmp_path, f"sqlite:///{path}")
        assert no_traceback(r) and f"MLflow store {path} {message}" in r.output, r.output
        assert "tracking.enabled=false" in r.output and not (tmp_path / "sdm").exists()
        assert path.read_bytes() == before


def test_a_read_only_store_is_refused(tmp_path, _mlflow_template, monkeypatch):
    """A store on a read-only file system (or without write permission) was a traceback once
    MLflow first wrote to it."""
    store = tmp_path / "ro" / "mlflow.db"
    store.parent.mkdir()
    store.write_bytes(_mlflow_template.read_bytes())
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == store.parent
                        else real_access(p, mode))
    with pytest.raises(TrackingError, match=f"{store} cannot be written .*its folder is not "
                                            "writable.*read-only file system"):
        local_store.prepare(f"sqlite:///{store}")
    monkeypatch.setattr(os, "access", real_access)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(local_store, "open", read_only, raising=False)
    with pytest.raises(TrackingError, match=f"{store} cannot be written \\(Read-only file sys"):
        local_store.prepare(f"sqlite:///{store}")


def test_a_locked_store_is_refused_naming_the_lock(tmp_path, _mlflow_template, monkeypatch):
    """Another program's long write transaction made MLflow fail with 'database is locked'."""
    store = tmp_path / "mlflow.db"
    store.write_bytes(_mlflow_template.read_bytes())
    monkeypatch.setattr(local_store, "LOCK_WAIT", 0.3)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        con = sqlite3.connect(store)
        con.execute("BEGIN EXCLUSIVE")
        held.set()
        release.wait(30)
        con.rollback()
        con.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        with pytest.raises(TrackingError, match="is locked: another program has held a write"):
            local_store.prepare(f"sqlite:///{store}")
    finally:
        release.set()
        holder.join()
    local_store.prepare(f"sqlite:///{store}")  # free again: accepted


def test_a_store_uri_without_a_file_is_refused(synth_dir, tmp_path):
    """``sqlite:///`` names no file: SQLite would use a temporary database and lose the runs."""
    for uri in ("sqlite:///", "sqlite://"):
        r = _train(synth_dir, tmp_path, uri)
        assert no_traceback(r) and "names no file" in r.output, r.output
    with pytest.raises(TrackingError, match="names no file"):
        local_store.sqlite_path("sqlite:///:memory:")


@pytest.mark.slow
def test_two_commands_creating_a_new_store_at_once_both_succeed(tmp_path):
    """Two commands creating a new store together raced in MLflow's migrations and one died
    with a traceback; now one creates it under a lock while the other waits."""
    store = tmp_path / "new" / "mlflow.db"
    go = tmp_path / "go"
    script = (
        "import sys, time\nfrom pathlib import Path\n"
        "from isdm.config import TrackingConfig\nfrom isdm.tracking import start_run\n"
        "while not Path(sys.argv[2]).exists():\n    time.sleep(0.01)\n"
        "with start_run(TrackingConfig(tracking_uri=sys.argv[1]), name='r', action='test') as r:\n"
        "    r.log_metrics({'x': 1.0})\nprint('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{store}", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=tmp_path) for _ in range(2)]
    go.touch()
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2

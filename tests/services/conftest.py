"""Session fixtures of tests/services: a real PostgreSQL server, an MLflow server whose backend
store is in it, and a tiny SDM checkpoint (helpers in :mod:`servers`)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import pytest

# tests/ on the path: test_services_mlflow runs tests/test_lineage.py's checks on the server
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import TINY, MlflowServer, Postgres  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for the session (stopped and deleted at the end)."""
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="isdm-pg-"))  # short: the socket path must fit 107 bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR on a bare machine
        server = pgserver.get_server(root / "data", cleanup_mode="delete")
    try:
        yield Postgres(server)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """An ``mlflow server`` whose backend store is a PostgreSQL database (``.url`` waits until it
    answers: request this fixture before slow set-up that does not need it yet)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(postgres.database("mlflow"), root / "artifacts", root / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_sdm(tmp_path_factory, synth_dir) -> Path:
    """A tiny trained SDM checkpoint (2 steps, no tracking) for the tune workers."""
    from isdm.config import load_config
    from isdm.training import train

    out = tmp_path_factory.mktemp("sdm")
    cfg = load_config(TINY, ["train.max_steps=2", "train.max_epochs=1", "tracking.enabled=false",
                             "runtime.progress=false"])
    train(cfg, synth_dir, out, progress=False)
    return out / "best.pt"

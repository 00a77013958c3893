"""Shared fixtures: offline environment, a session-wide synthetic dataset, CrackForest, MLflow,
a tiny trained SDM, a faked sampling engine (plain helpers: ``helpers.py``, ``rects.py``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import FakeEngine
from rects import RECT_HW, write_rect_pairs  # noqa: F401  (shared with test modules)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

REPO = Path(__file__).resolve().parents[1]
CRACKFOREST = (REPO.parent / "shared" / "data" / "crackforest").resolve()


@pytest.fixture(autouse=True)
def cell_store(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty cell store ($ISDM_CELL_CACHE), never the repository's."""
    root = tmp_path_factory.mktemp("cells")
    monkeypatch.setenv("ISDM_CELL_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def crackforest_dir() -> Path:
    """The read-only CrackForest dataset beside the checkout; skips when absent."""
    if not (CRACKFOREST / "train" / "images").is_dir():
        pytest.skip(f"CrackForest not found at {CRACKFOREST}")
    return CRACKFOREST


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small multi-class embedded dataset (32 px, 8 train / 4 test), written once per session."""
    from isdm.config import SynthConfig
    from isdm.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, SynthConfig(seed=0, num_train=8, num_test=4, image_size=32))
    return out


@pytest.fixture(scope="session")
def rect_dir(tmp_path_factory) -> Path:
    """3 classes, 8 train / 3 test pairs of 48x72 (H x W)."""
    root = tmp_path_factory.mktemp("rect")
    write_rect_pairs(root, "train", 8, 0)
    write_rect_pairs(root, "test", 3, 1)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synth_dir) -> Path:
    """A real tiny SDM (configs/tiny.yaml, 2 steps on ``synth_dir``, tracking off), trained once
    per session: its ``best.pt``."""
    from isdm.config import load_config
    from isdm.training import train

    out = tmp_path_factory.mktemp("tiny-sdm")
    cfg = load_config(REPO / "configs" / "tiny.yaml",
                      ["train.max_steps=2", "train.max_epochs=1", "tracking.enabled=false"])
    train(cfg, synth_dir, out, progress=False)
    return out / "best.pt"


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """One migrated sqlite store per session; copying it costs milliseconds."""
    import mlflow

    d = tmp_path_factory.mktemp("mlflow-template")
    db = d / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path, _mlflow_template, monkeypatch) -> str:
    """A fresh, isolated MLflow store for one test; also exported as MLFLOW_TRACKING_URI."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land in tmp_path/mlruns
    return uri


@pytest.fixture
def fake_engine(monkeypatch) -> type[FakeEngine]:
    """Fake the checkpoint loader of the sampling job with :class:`helpers.FakeEngine`; returns
    the class, whose ``calls`` / ``loads`` start empty."""
    from isdm.sampling import engine

    FakeEngine.calls, FakeEngine.loads = [], []

    def load(cfg, checkpoint, device):
        FakeEngine.loads.append(str(checkpoint))
        return FakeEngine(cfg), cfg, {"weights": "fake"}

    monkeypatch.setattr(engine, "load_engine", load)
    return FakeEngine


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A file standing for a checkpoint where the engine (or the whole step) is faked."""
    p = tmp_path / "fake.pt"
    p.write_bytes(b"not a real checkpoint; the engine is faked")
    return p

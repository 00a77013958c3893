"""Fixtures of the fault suite (plain helpers: ``faultkit.py``).

The suite is grouped by the unit a fault exercises (config, data, training, checkpoints,
sampling, curation, evaluation, tuning, tracking-local, ownership), one test per failure mode;
a test's docstring names the issue (and case) it first came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import FakeEngine


@pytest.fixture
def engine_loads(monkeypatch) -> list[str]:
    """Fake the checkpoint loader; the list records every load."""
    from isdm.sampling import engine

    loads: list[str] = []

    def load(cfg, checkpoint, device):
        loads.append(str(checkpoint))
        return FakeEngine(), cfg, {"weights": "fake"}

    monkeypatch.setattr(engine, "load_engine", load)
    return loads


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A file standing for a checkpoint where the engine is faked."""
    p = tmp_path / "fake.pt"
    p.write_bytes(b"not a real checkpoint; the engine is faked")
    return p

"""Fixtures of the fault suite (plain helpers: ``faultkit.py``).

The suite is grouped by the unit a fault exercises (config, data, training, checkpoints,
sampling, curation, evaluation, tuning, tracking-local, ownership), one test per failure mode;
a test's docstring names the issue (and case) it first came from."""

from __future__ import annotations

# the faked sampling engine (``fake_engine``) and the stand-in checkpoint file (``ckpt``) are
# fixtures of tests/conftest.py

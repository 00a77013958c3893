"""isdm.original's rules for the checkpoint paths an original config names, and the boundary
between isdm.config (trees only) and isdm.original (flat configs). End to end through the CLI:
tests/faults/test_faults_training.py (resume_checkpoint), tests/test_sampling_e2e.py
(model_path); the key mapping: tests/faults/test_faults_config.py, tests/test_config.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isdm.config import ConfigError, load_config
from isdm.original import load_original_config
from isdm.original.commands import find_config, sample_checkpoint, start_checkpoints

FLAT = {"num_classes": 5, "image_size": 32, "batch_size": 4}


def _write(tmp_path: Path, name: str, tree: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(tree))
    return str(path)


def test_resume_checkpoint_resumes_train_and_initialises_finetune(tmp_path):
    params = _write(tmp_path, "params.json", {"train": {"lr": 0.1}})
    flat = _write(tmp_path, "c.json", {**FLAT, "resume_checkpoint": "a.pt"})
    assert find_config([params, flat]) == flat and find_config([params]) is None
    init, resume, note = start_checkpoints("train", [params, flat], None, None)
    assert (init, resume) == (None, "a.pt") and note == (
        f"[isdm] note: resume_checkpoint of {flat}: resuming the run of a.pt (as --resume a.pt)")
    init, resume, note = start_checkpoints("finetune", [flat], None, None)
    assert (init, resume) == ("a.pt", None) and "(as --init a.pt)" in note
    # the command line wins, with a note
    assert start_checkpoints("finetune", [flat], "b.pt", None) == (
        "b.pt", None, f"[isdm] note: --init b.pt given: resume_checkpoint a.pt of {flat} is "
        "not used")
    assert start_checkpoints("train", [params], None, "c.pt") == (None, "c.pt", None)


def test_model_path_is_the_default_checkpoint_of_sample(tmp_path):
    flat = _write(tmp_path, "s.json", {**FLAT, "model_path": "m.pt", "num_samples": 2})
    assert sample_checkpoint([flat]) == "m.pt"
    assert sample_checkpoint([_write(tmp_path, "t.json", FLAT)]) is None
    assert sample_checkpoint([]) is None


def test_isdm_config_reads_a_flat_config_only_through_isdm_original(tmp_path):
    flat = _write(tmp_path, "c.json", FLAT)
    with pytest.raises(ConfigError, match="original ISDM flat JSON config"):
        load_config(flat)
    assert load_original_config(flat, action="train").train.batch_size == 4
    assert load_original_config(flat, action="sample").sample.batch_size == 4

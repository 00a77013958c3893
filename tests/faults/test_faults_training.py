"""Faults of training runs, one test per failure mode: a full disk, temps of killed writers, an
original config's resume_checkpoint (issue 10), a diverging loss and a finetune that would not
train the null label (issue 22). Output folders: ``test_faults_ownership.py``; checkpoint files:
``test_faults_checkpoints.py``."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from faultkit import REPO, TINY, isdm, no_traceback, random_checkpoint, train_tiny

from isdm.config import TrainConfig

def test_a_full_disk_names_the_file_the_space_and_what_is_intact(synth_dir, tmp_path,
                                                                         monkeypatch):
    """Issue 10 case 10."""
    # (1) ENOSPC while `isdm train` writes best.pt, after the first epoch's files exist
    out = tmp_path / "sdm"
    real_save = torch.save
    saves = []

    def full_disk(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 3:  # epoch 2's best.pt
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr("isdm.training.loop._Trainer.run_epoch", lambda self, run: {
        "epoch": self.epoch + 1, "train_loss": 1.0 / (self.epoch + 1), "images": 4,
        "seconds": 1.0, "images_per_s": 4.0, "step": self.step})  # improves every epoch
    res = isdm("train", "-c", TINY, "--data", str(synth_dir), "--out", str(out), "--no-progress",
               "--set", "tracking.enabled=false", "--set", "train.max_epochs=2")
    assert res.exit_code == 1
    msg = " ".join(res.output.split())
    assert f"cannot write {out / 'best.pt'}: No space left on device" in msg
    assert "free on its file system" in msg
    assert "the previous best.pt is intact" in msg
    assert "every file written before it is intact" in msg
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()

    # (2) what torch and Python really raise when the file system refuses to grow a file
    # (RLIMIT_FSIZE: EFBIG, like "File too large" on a full quota), through torch.save's own
    # C++ writer (a RuntimeError without errno) and through checkpoint.save's file object
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from isdm.errors import WriteError
        from isdm.training import checkpoint
        from isdm.utils.io import atomic_path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        big = {{"model": {{"w": torch.zeros(100000)}}, "config": {{}}, "meta": {{}}}}
        for name, write in [("a.pt", lambda tmp: torch.save(big, tmp)),
                            ("b.pt", None)]:
            try:
                if write:
                    with atomic_path({str(tmp_path)!r} + "/" + name) as tmp:
                        write(tmp)
                else:
                    checkpoint.save(big, {str(tmp_path)!r} + "/" + name)
            except WriteError as e:
                print("WriteError", e)
            except Exception as e:
                print("other", type(e).__name__, e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert lines[0].startswith(f"WriteError cannot write {tmp_path / 'a.pt'}: the write failed")
    assert lines[1].startswith(f"WriteError cannot write {tmp_path / 'b.pt'}: File too large")
    assert all("there was no earlier" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".tmp")) == []

def test_temps_of_killed_writers_are_removed_by_the_next_run(synth_dir, tmp_path):
    """Issue 10 case 12."""
    out = tmp_path / "sdm"
    out.mkdir()
    writer = ("import sys, time\nfrom isdm.utils.io import atomic_path\n"
              "cm = atomic_path(sys.argv[1]); tmp = cm.__enter__()\n"
              "tmp.write_bytes(b'x' * 1000); print(tmp, flush=True); time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(out / "best.pt")],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    killed, alive = procs
    try:
        temps = [Path(p.stdout.readline().strip()) for p in procs]
        killed.kill()  # kill -9 in the middle of writing best.pt
        killed.wait()
        assert all(t.exists() for t in temps)
        assert train_tiny(synth_dir, out).exit_code == 0
        assert not temps[0].exists()  # the dead writer's temp is gone
        assert temps[1].exists()  # a live writer's is not touched
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.slow
def test_the_resume_checkpoint_of_an_original_config_is_honoured(synth_dir, tmp_path):
    """Issue 10 case 16."""
    flat = {"dataset_mode": "lemon-multi-class", "num_classes": 5, "image_size": 32,
            "num_channels": 32, "num_res_blocks": 1, "attention_resolutions": "",
            "channel_mult": "1,2", "num_head_channels": 32, "batch_size": 4, "learn_sigma": True}
    train_json = tmp_path / "config_train.json"
    train_json.write_text(json.dumps(flat))
    run = tmp_path / "run"
    args = ("--data", str(synth_dir), "--no-progress", "--set", "tracking.enabled=false")
    first = isdm("train", "-c", str(train_json), "--out", str(run), *args,
                 "--set", "train.max_steps=1")
    assert first.exit_code == 0, first.output

    # train: resume_checkpoint continues that run (the original resumed too)
    train_json.write_text(json.dumps({**flat, "resume_checkpoint": str(run / "last.pt")}))
    again = isdm("train", "-c", str(train_json), "--out", str(run), *args,
                 "--set", "train.max_steps=2")
    assert again.exit_code == 0, again.output
    assert f"resuming the run of {run / 'last.pt'}" in again.output
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2

    # finetune: resume_checkpoint is the network to start from (the original's README way)
    ft_json = tmp_path / "config_finetune.json"
    ft_json.write_text(json.dumps({**flat, "drop_rate": 0.2,
                                   "resume_checkpoint": str(run / "best.pt")}))
    ft = isdm("finetune", "-c", str(ft_json), "--out", str(tmp_path / "ft"), *args,
              "--set", "finetune.max_steps=1")
    assert ft.exit_code == 0, ft.output
    state = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)
    assert state["meta"]["init_from"] == str(run / "best.pt") and state["step"] == 1

    # an original-tool checkpoint (bare guided-diffusion weights) is refused with the command
    bare = tmp_path / "model100000.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1)}, bare)
    ft_json.write_text(json.dumps({**flat, "drop_rate": 0.2, "resume_checkpoint": str(bare)}))
    refused = isdm("finetune", "-c", str(ft_json), "--out", str(tmp_path / "ft2"), *args)
    assert refused.exit_code == 1 and "isdm import-checkpoint" in refused.output
    assert str(bare) in refused.output

def _finite(path) -> bool:
    state = torch.load(path, weights_only=True)
    weights = [*state["model"].values(), *(t for s in state["ema"].get("shadows", {}).values()
                                          for t in s.values())]
    return all(bool(torch.isfinite(t).all()) for t in weights)


@pytest.mark.slow
def test_a_diverging_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(synth_dir, tmp_path):
    """Issue 22: `train --set train.lr=1e8` diverged to NaN, ended rc 0 and left an all-NaN
    last.pt (and sampling from it wrote black images)."""
    fresh = tmp_path / "fresh"
    r = train_tiny(synth_dir, fresh, "--set", "train.lr=1e8", "--set", "train.max_steps=4")
    assert no_traceback(r) and r.exit_code == 1, r.output
    msg = " ".join(r.output.split())
    assert "train stopped at step 2 (epoch 1): the loss exploded" in msg
    assert "train.lr=1e+08 is the likely cause" in msg
    assert f"--set train.lr={TrainConfig().lr:g} (the default" in msg
    assert "No checkpoint with these weights was written" in msg
    assert not any(fresh.glob("*.pt"))
    # a resumed run that diverges keeps the checkpoints it started from, byte for byte
    out = tmp_path / "sdm"
    assert train_tiny(synth_dir, out).exit_code == 0
    r = train_tiny(synth_dir, out, "--resume", out / "last.pt", "--set", "train.lr=1e8",
                   "--set", "train.max_steps=5", "--set", "train.max_loss_ratio=0")
    assert no_traceback(r) and "the loss is nan (not a finite number)" in r.output, r.output
    assert f"the last finite checkpoints are {out / 'last.pt'}" in " ".join(r.output.split())
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    assert all(_finite(p) for p in out.glob("*.pt"))  # never a NaN weight on disk


def test_a_finetune_without_label_dropout_is_refused(synth_dir, tmp_path):
    """Issue 22: `finetune.drop_rate: 0` finetuned without ever training the null label, so
    guided sampling from the result was meaningless."""
    init = random_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "ft"
    r = isdm("finetune", "-c", TINY, "--data", synth_dir, "--init", init, "--out", out,
             "--no-progress", "--set", "tracking.enabled=false", "--set", "finetune.drop_rate=0")
    assert no_traceback(r) and "finetune.drop_rate=0:" in r.output
    assert "--set finetune.drop_rate=0.2" in r.output and not out.exists()

"""Faults of issue 10 in training, checkpoints and file writing: each test reproduces one case
(it fails on bd16bfb) and checks the general rule that fixes it."""

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
from click.testing import CliRunner

from isdm.cli import cli
from isdm.training import checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")
QUICK = ("--no-progress", "--set", "tracking.enabled=false", "--set", "train.max_steps=1",
         "--set", "finetune.max_steps=1")


def isdm(*args: str):
    return CliRunner().invoke(cli, list(args))


def train_tiny(synth_dir: Path, out: Path, *extra: str):
    return isdm("train", "-c", TINY, "--data", str(synth_dir), "--out", str(out), *QUICK, *extra)


def test_case_02_an_earlier_runs_folder_is_not_replaced_silently(synth_dir, tmp_path):
    out = tmp_path / "sdm"
    assert train_tiny(synth_dir, out).exit_code == 0
    before = (out / "best.pt").read_bytes()

    again = train_tiny(synth_dir, out)
    assert again.exit_code == 1
    msg = again.output
    assert f"{out} already holds the outputs of an earlier training run" in msg
    assert "best.pt (epoch 1, step 1)" in msg and "last.pt (epoch 1, step 1)" in msg
    assert "metrics.json" in msg and "loss.csv" in msg and "config.json" in msg
    assert f"--resume {out / 'last.pt'}" in msg and "--overwrite" in msg
    assert (out / "best.pt").read_bytes() == before

    ft = isdm("finetune", "-c", TINY, "--data", str(synth_dir), "--out", str(out),
              "--init", str(out / "best.pt"), *QUICK)
    assert ft.exit_code == 1 and f"`isdm train ... --resume {out / 'last.pt'}`" in ft.output
    assert (out / "best.pt").read_bytes() == before

    # a file isdm did not write is refused, even with --overwrite, and nothing is deleted
    (out / "notes.txt").write_text("mine")
    mixed = train_tiny(synth_dir, out, "--overwrite")
    assert mixed.exit_code == 1 and "notes.txt" in mixed.output and "no record" in mixed.output
    assert (out / "best.pt").read_bytes() == before
    (out / "notes.txt").unlink()

    # --overwrite starts over, replacing isdm's files only; a stale last.pt does not survive
    fresh = train_tiny(synth_dir, out, "--overwrite", "--set", "train.save_last=false")
    assert fresh.exit_code == 0, fresh.output
    assert (out / "best.pt").read_bytes() != before
    assert not (out / "last.pt").exists()
    resumed = train_tiny(synth_dir, out, "--resume", str(out / "best.pt"),
                         "--set", "train.max_steps=2")
    assert resumed.exit_code == 0, resumed.output


def test_case_04_a_checkpoint_with_flipped_bytes_is_refused(synth_dir, tmp_path):
    out = tmp_path / "sdm"
    assert train_tiny(synth_dir, out).exit_code == 0
    best = out / "best.pt"
    state = torch.load(best, weights_only=True)
    data = bytearray(best.read_bytes())

    def stored(t: torch.Tensor) -> bytes:
        return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy().tobytes()

    # the largest weight whose stored bytes occur once (an untrained one equals its EMA copy)
    weights = sorted(state["model"].values(), key=lambda t: -t.numel())
    raw = next(stored(t) for t in weights if data.count(stored(t)) == 1)
    at = data.find(raw)
    assert len(raw) > 200
    for i in range(at + 100, at + 164):  # 64 bytes in the middle of the storage
        data[i] ^= 0xFF
    best.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(best)
    assert str(best) in str(e.value) and "is corrupt" in str(e.value)


def test_case_10_a_full_disk_names_the_file_the_space_and_what_is_intact(synth_dir, tmp_path,
                                                                         monkeypatch):
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


def test_case_12_temps_of_killed_writers_are_removed_by_the_next_run(synth_dir, tmp_path):
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


def test_case_13_refusing_an_unsafe_checkpoint_gives_no_unsafe_advice(tmp_path):
    import argparse

    path = tmp_path / "pickled.pt"
    torch.save({"model": {}, "config": {}, "meta": {}, "args": argparse.Namespace(lr=1)}, path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (path, garbage):
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.load(bad)
        msg = str(e.value)
        assert str(bad) in msg
        for advice in ("weights_only", "safe_globals", "trust", "can still be loaded"):
            assert advice not in msg, (advice, msg)
    with pytest.raises(checkpoint.CheckpointError, match=r"argparse\.Namespace"):
        checkpoint.load(path)


def test_case_16_resume_checkpoint_of_an_original_config_is_honoured(synth_dir, tmp_path):
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

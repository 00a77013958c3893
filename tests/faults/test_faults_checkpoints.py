"""Faults of checkpoint files, one test per failure mode: damaged bytes anywhere a resume reads,
objects that are not tensors (issue 10), non-finite weights, and checkpoints written before the
full-state digest (issue 22). Original-tool checkpoints: ``test_faults_checkpoints_import.py``."""

from __future__ import annotations

import pytest
import torch
from faultkit import TINY, TINY_CKPT, isdm, no_traceback, random_checkpoint, train_tiny

from isdm.errors import CheckpointError, NumericalError
from isdm.training import checkpoint


def _flip(path, tensor: torch.Tensor, n: int = 64) -> None:
    """Invert ``n`` bytes in the middle of ``tensor``'s stored bytes inside the file."""
    data = bytearray(path.read_bytes())
    raw = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tobytes()
    assert data.count(raw) == 1 and len(raw) > 2 * n
    at = data.find(raw) + len(raw) // 2
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))

def test_flipped_weight_bytes_are_refused(synth_dir, tmp_path):
    """Issue 10 case 4."""
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

def test_flipped_optimiser_bytes_are_refused_before_a_resume(synth_dir, tmp_path):
    """Issue 22: the digest covered the weights only: 64 flipped bytes in the optimiser state
    loaded silently on --resume and the run went NaN."""
    path = random_checkpoint(tmp_path / "sdm" / "last.pt")
    state = torch.load(path, weights_only=True)
    moments = [s["exp_avg_sq"] for s in state["optimizer"]["state"].values()]
    _flip(path, max(moments, key=lambda t: t.numel()))
    with pytest.raises(CheckpointError, match="is corrupt: its contents"):
        checkpoint.load(path)
    r = isdm("train", "-c", TINY, "--data", synth_dir, "--out", tmp_path / "sdm", "--resume", path,
             "--no-progress", "--set", "tracking.enabled=false",
             *(f"--set={o}" for o in TINY_CKPT))
    assert no_traceback(r) and "is corrupt" in r.output, r.output

def test_refusing_an_unsafe_checkpoint_gives_no_unsafe_advice(tmp_path):
    """Issue 10 case 13."""
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

def test_non_finite_weights_are_never_written_nor_accepted(synth_dir, tmp_path):
    """Issue 22: a diverged run saved NaN weights, and sample / finetune --init took them."""
    good = torch.load(random_checkpoint(tmp_path / "good.pt"), weights_only=True)
    name = next(iter(good["model"]))
    bad = {**good, "model": {**good["model"], name: torch.full_like(good["model"][name], torch.inf)}}
    with pytest.raises(NumericalError, match=f"refusing to write .*NaN or inf \\(model.{name}"):
        checkpoint.save(bad, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    poisoned = random_checkpoint(tmp_path / "poisoned.pt", poison=True)
    with pytest.raises(CheckpointError, match="holds non-finite weights"):
        checkpoint.load(poisoned)
    common = ("--data", synth_dir, "--set", "tracking.enabled=false")
    for args in (("sample", "--checkpoint", poisoned, "--out", tmp_path / "s"),
                 ("finetune", "--init", poisoned, "--out", tmp_path / "ft", "--no-progress")):
        r = isdm(*args, "-c", TINY, *common)
        assert no_traceback(r) and "holds non-finite weights" in r.output, r.output
        assert not (tmp_path / args[-1 if args[0] == "sample" else -2]).exists()


def test_a_checkpoint_from_before_the_full_digest_still_loads_where_safe(tmp_path):
    """Issue 22: checkpoints with the weights-only digest sample, finetune and resume; a resume
    also checks that their optimiser state is finite."""
    from isdm.config import load_config
    from isdm.training.start import resolve_start

    cfg = load_config(TINY, list(TINY_CKPT))
    path = random_checkpoint(tmp_path / "old.pt")
    state = torch.load(path, weights_only=True)
    del state["meta"]["state_sha256"]
    torch.save(state, path)
    assert checkpoint.load(path)["step"] == 1
    assert resolve_start(cfg, "train", resume=path).mode == "resume"
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"].fill_(float("nan"))
    torch.save(state, path)
    assert checkpoint.load(path)["step"] == 1  # its weights are fine: it still samples
    with pytest.raises(CheckpointError, match="cannot resume: its optimiser state holds NaN"):
        resolve_start(cfg, "train", resume=path)
    state["meta"]["weights_sha256"] = "0" * 64  # damaged weights are still refused
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="is corrupt: its weights"):
        checkpoint.load(path)

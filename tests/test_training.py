"""Training loop: EMA closed form, exact resume, checkpoint-on-best / patience rule, atomic
checkpoints, config/checkpoint mismatch, load_model, small-data batching, precision."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch

from isdm.config import load_config
from isdm.errors import WriteError
from isdm.training import checkpoint, train
from isdm.training.ema import EMA
from isdm.training.loop import _Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def tiny_cfg(*overrides: str):
    return load_config(TINY, ["tracking.enabled=false", "train.patience=0", *overrides])


# ------------------------------------------------------------------------------------------ EMA
def test_ema_follows_closed_form_with_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, [0.5, 0.9])
    expected = {0.5: 0.0, 0.9: 0.0}
    for n, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
        for rate in expected:
            d = min(rate, (1 + n) / (10 + n))  # 0.1, 0.1818, 0.25, 0.3077: the warm-up decides
            expected[rate] = d * expected[rate] + (1 - d) * w
    for rate, value in expected.items():
        assert ema.state(rate)["weight"].item() == pytest.approx(value, abs=1e-6)
    assert ema.num_updates == 4


def test_ema_without_warmup_uses_the_rate():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, [0.75], warmup=False)
    with torch.no_grad():
        model.weight.fill_(8.0)
    ema.update(model)
    assert ema.state()["weight"].item() == pytest.approx(0.25 * 8.0)


# ------------------------------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.parametrize("data", [(), ("data.crop=true", "data.image_size=[16, 24]")],
                         ids=["whole", "crops"])
def test_resume_equals_uninterrupted(synth_dir, tmp_path, data):
    """2 epochs in one go == 1 epoch, stop, resume from last.pt to 2 epochs: identical bits
    (also with random crops: they are drawn per (seed, epoch, item))."""
    full = train(tiny_cfg("train.max_epochs=2", *data), synth_dir, tmp_path / "full",
                 progress=False)
    train(tiny_cfg("train.max_epochs=1", *data), synth_dir, tmp_path / "part", progress=False)
    resumed = train(tiny_cfg("train.max_epochs=2", *data), synth_dir, tmp_path / "part",
                    progress=False, resume=tmp_path / "part" / "last.pt")
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == full.steps == resumed.steps == 2 * 2  # 8 images / batch 4
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for rate, shadow in a["ema"]["shadows"].items():
        for k in shadow:
            assert torch.equal(shadow[k], b["ema"]["shadows"][rate][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert a["best_loss"] == b["best_loss"] and a["bad_epochs"] == b["bad_epochs"]
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    # the weights moved: the test would be vacuous for a model that never trains
    from isdm.models import build_model

    cfg = tiny_cfg(*data)
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes).state_dict()
    assert any(not torch.equal(init[k], a["model"][k]) for k in init)


# ---------------------------------------------------------------------- best/patience rule
def _fake_epochs(monkeypatch, losses):
    """Replace the epoch body by prescribed epoch losses; the selection rule runs for real."""
    it = iter(losses)

    def run_epoch(self, run):
        self.step += 1
        return {"epoch": self.epoch + 1, "train_loss": next(it), "images": 4, "seconds": 1.0,
                "images_per_s": 4.0, "step": self.step}

    monkeypatch.setattr(_Trainer, "run_epoch", run_epoch)


def test_patience_stops_and_best_is_the_best_epoch(synth_dir, tmp_path, monkeypatch):
    _fake_epochs(monkeypatch, [1.0, 0.9, 0.95, 0.97, 0.5])
    res = train(tiny_cfg("train.max_epochs=10", "train.patience=2"), synth_dir, tmp_path, progress=False)
    assert res.epochs == 4 and "patience=2" in res.stop_reason
    assert res.best_loss == 0.9
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (best["epoch"], best["best_loss"], best["bad_epochs"]) == (2, 0.9, 0)
    assert (last["epoch"], last["bad_epochs"]) == (4, 2)
    assert [r["improved"] for r in res.history] == [True, True, False, False]
    csv = (tmp_path / "loss.csv").read_text().splitlines()
    assert csv[0] == "epoch,train_loss" and csv[2] == "2,0.9" and len(csv) == 5
    # resuming a run that already ran out of patience trains no further epoch
    again = train(tiny_cfg("train.max_epochs=10", "train.patience=2"), synth_dir, tmp_path,
                  resume=tmp_path / "last.pt", progress=False)
    assert again.epochs == 4 and "patience" in again.stop_reason


def test_checkpoints_are_written_first_then_at_most_every_interval_and_at_the_end(
        synth_dir, tmp_path, monkeypatch):
    """Between two writes an improved epoch waits in memory: best.pt is still the best epoch's
    state (epoch 2 here), and only the first and the last epoch write files."""
    from isdm.training import saves

    _fake_epochs(monkeypatch, [1.0, 0.5, 0.7, 0.9])
    written = []
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda state, *paths: (
        written.append((state["epoch"], sorted(p.name for p in paths))), real(state, *paths)))
    monkeypatch.setattr(saves, "CHECKPOINT_EVERY_S", 1e9)
    res = train(tiny_cfg("train.max_epochs=4"), synth_dir, tmp_path, progress=False)
    assert res.best_loss == 0.5
    assert written == [(1, ["best.pt", "last.pt"]), (2, ["best.pt"]), (4, ["last.pt"])]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (best["epoch"], best["best_loss"], best["bad_epochs"]) == (2, 0.5, 0)
    assert (last["epoch"], last["bad_epochs"]) == (4, 2)
    assert [r["epoch"] for r in best["history"]] == [1, 2]  # the copy did not grow later
    written.clear()
    monkeypatch.setattr(saves, "CHECKPOINT_EVERY_S", 0.0)  # every epoch, as due
    _fake_epochs(monkeypatch, [1.0, 0.5, 0.7])
    train(tiny_cfg("train.max_epochs=3"), synth_dir, tmp_path / "each", progress=False)
    assert written == [(1, ["best.pt", "last.pt"]), (2, ["best.pt", "last.pt"]), (3, ["last.pt"])]


def test_max_epochs_without_patience(synth_dir, tmp_path, monkeypatch):
    _fake_epochs(monkeypatch, [3.0, 4.0, 5.0])
    res = train(tiny_cfg("train.max_epochs=3"), synth_dir, tmp_path, progress=False)
    assert res.epochs == 3 and res.best_loss == 3.0 and "max_epochs" in res.stop_reason


# -------------------------------------------------------------------------- atomic writes
def test_failed_save_keeps_previous_best_and_leaves_no_temp_file(synth_dir, tmp_path, monkeypatch):
    _fake_epochs(monkeypatch, [1.0, 0.5])
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's best.pt: half a file, then a crash
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(WriteError, match="No space left on device"):
        train(tiny_cfg("train.max_epochs=2"), synth_dir, tmp_path, progress=False)
    from isdm.utils.ownership import NEUTRAL

    assert sorted(p.name for p in tmp_path.iterdir()  # no temp file (the record and lock stay)
                  if p.name.startswith(".") and p.name not in NEUTRAL) == []
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["best_loss"] == 1.0


# ------------------------------------------------------------------ checkpoint <-> config
@pytest.fixture(scope="module")
def tiny_ckpt(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_ckpt")
    train(tiny_cfg("train.max_epochs=1", "train.max_steps=1"), synth_dir, out, progress=False)
    return out / "best.pt"


def test_checkpoint_holds_exactly_these_keys(tiny_ckpt):
    state = torch.load(tiny_ckpt, weights_only=True)
    assert set(state) == {"model", "ema", "optimizer", "scaler", "step", "epoch", "best_loss",
                          "bad_epochs", "rng", "history", "config", "meta"}
    assert set(state["ema"]) == {"rates", "num_updates", "warmup", "shadows"}
    assert state["ema"]["rates"] == [0.999] and state["ema"]["num_updates"] == 1
    assert list(state["ema"]["shadows"]) == ["0.999"]
    assert set(state["ema"]["shadows"]["0.999"]) == set(state["model"])
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert set(state["meta"]) == {"image_size", "num_classes", "num_params", "dataset", "action",
                                  "world_size", "precision", "torch", "weights_sha256",
                                  "state_sha256"}
    assert state["meta"]["image_size"] == 32 and state["meta"]["num_classes"] == 5
    assert state["meta"]["num_params"] == sum(v.numel() for v in state["model"].values())
    assert state["meta"]["weights_sha256"] == checkpoint.weights_digest(state)
    assert (state["step"], state["epoch"], state["scaler"]) == (1, 1, None)
    assert state["config"]["model"]["num_channels"] == 32


def test_weights_digest_covers_values_not_layout(tiny_ckpt):
    state = torch.load(tiny_ckpt, weights_only=True)
    digest = checkpoint.weights_digest(state)
    name = next(k for k, v in state["model"].items() if v.dim() == 4)
    assert not state["model"][name].is_contiguous()  # stored channels-last, as trained on CPU
    as_nchw = {**state, "model": {**state["model"], name: state["model"][name].contiguous()}}
    assert checkpoint.weights_digest(as_nchw) == digest  # channels-last or not: same values
    shadow = dict(state["ema"]["shadows"]["0.999"])
    shadow[name] = shadow[name].clone()
    shadow[name][0, 0, 0, 0] += 1e-3
    changed = {**state, "ema": {**state["ema"], "shadows": {"0.999": shadow}}}
    assert checkpoint.weights_digest(changed) != digest  # the EMA weights are covered


def test_checkpoint_without_digest_still_loads(tiny_ckpt, tmp_path):
    """Files written before the digest existed load unchecked."""
    state = torch.load(tiny_ckpt, weights_only=True)
    del state["meta"]["weights_sha256"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert checkpoint.load(old)["step"] == 1


def test_resume_with_other_sizes_names_every_mismatch(tiny_ckpt, synth_dir, tmp_path):
    cfg = tiny_cfg("model.preset=''", "model.num_channels=64", "data.image_size=64")
    with pytest.raises(checkpoint.CheckpointError) as e:
        train(cfg, synth_dir, tmp_path, resume=tiny_ckpt, progress=False)
    msg = str(e.value)
    assert "model.num_channels: checkpoint 32, config 64" in msg
    assert "data.image_size: checkpoint 32, config 64" in msg
    assert "--set model.num_channels=32" in msg and "--set data.image_size=32" in msg


def test_finetune_adopts_the_checkpoint_sizes(tiny_ckpt, synth_dir, tmp_path, capsys):
    cfg = tiny_cfg("model.preset=''", "model.num_channels=64", "finetune.max_steps=1",
                   "finetune.max_epochs=1")
    res = train(cfg, synth_dir, tmp_path, action="finetune", init_from=tiny_ckpt, progress=False)
    assert "model.num_channels: checkpoint 32, config 64" in capsys.readouterr().err
    state = torch.load(res.best_path, weights_only=True)
    assert state["config"]["model"]["num_channels"] == 32
    assert state["meta"]["action"] == "finetune" and state["meta"]["init_from"] == str(tiny_ckpt)
    assert state["meta"]["init_sha256"] == checkpoint.checkpoint_hash(tiny_ckpt)


def test_load_model_rebuilds_from_its_own_config(tiny_ckpt):
    state = torch.load(tiny_ckpt, weights_only=True)
    model, cfg, meta = checkpoint.load_model(tiny_ckpt)
    assert cfg.model.num_channels == 32 and meta["weights"] == "ema 0.999" and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["ema"]["shadows"]["0.999"][k])
    raw, _, meta = checkpoint.load_model(tiny_ckpt, ema_rate="raw")
    assert meta["weights"] == "raw"
    assert all(torch.equal(v, state["model"][k]) for k, v in raw.state_dict().items())
    assert any(not torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    with pytest.raises(checkpoint.CheckpointError, match="no EMA rate 0.5"):
        checkpoint.load_model(tiny_ckpt, ema_rate=0.5)


def test_missing_and_corrupt_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_model(bad)
    bare = tmp_path / "model000100.pt"  # the original tool's bare state_dict
    torch.save({"w": torch.zeros(1)}, bare)
    with pytest.raises(checkpoint.CheckpointError, match="lacks model, config, meta"):
        checkpoint.load(bare)


def test_checkpoint_hash_is_sha256_of_the_bytes(tiny_ckpt):
    import hashlib

    assert checkpoint.checkpoint_hash(tiny_ckpt) == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()


# --------------------------------------------------------------------- batching, precision
def test_batch_larger_than_dataset_still_trains(synth_dir, tmp_path):
    """The original's drop_last with batch 32 gave zero batches on small data."""
    res = train(tiny_cfg("train.batch_size=32", "train.max_epochs=1"), synth_dir, tmp_path, progress=False)
    assert res.steps == 1 and res.history[0]["images"] == 8 and math.isfinite(res.best_loss)


def test_val_loss_selection_uses_a_held_out_split(synth_dir, tmp_path):
    cfg = tiny_cfg("train.max_epochs=1", "train.select_on=val_loss", "train.val_fraction=0.25",
                   "train.batch_size=2")
    res = train(cfg, synth_dir, tmp_path, progress=False)
    row = res.history[0]
    assert row["images"] == 6  # 8 pairs, 2 held out
    assert res.best_loss == row["val_loss"] != row["train_loss"]
    assert (tmp_path / "loss.csv").read_text().splitlines()[0] == "epoch,train_loss,val_loss"


@pytest.mark.slow
def test_bf16_autocast_step_on_cpu(synth_dir, tmp_path):
    # batch 1: CPUs without native bf16 (AVX2 only) emulate it slowly
    res = train(tiny_cfg("train.precision=bf16", "train.max_steps=1", "train.batch_size=1"),
                synth_dir, tmp_path, progress=False)
    assert res.steps == 1 and math.isfinite(res.best_loss)


def test_fp16_on_cpu_falls_back_to_fp32(synth_dir, tmp_path):
    res = train(tiny_cfg("train.precision=fp16", "train.max_steps=1"), synth_dir, tmp_path, progress=False)
    state = torch.load(res.best_path, weights_only=True)
    assert state["meta"]["precision"] == "fp32" and state["scaler"] is None

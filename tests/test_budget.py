"""Training budgets: the line every run prints before its first step, the duration estimate after
step 3 (fake clock), and a step budget that trains exactly the bits of the epoch budget it
replaces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from isdm.config import TrainConfig, load_config
from isdm.errors import ConfigError
from isdm.training import train
from isdm.training.budget import StepTimer, duration, plan

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
EMBEDDED = TrainConfig(lr=1e-3, max_epochs=0, max_steps=1000, patience=0)  # params.yaml's train


def test_embedded_budget_line():
    b = plan(EMBEDDED, "train", num_images=40, steps_per_epoch=5, world_size=1)
    assert b.line() == ("train budget: 1000 steps (train.max_steps=1000) of 8 images (batch_size "
                        "8 x 1 process): 200 epochs of the 40 training images at 5 steps per epoch")
    assert (b.steps, b.images_per_step, b.epochs, b.last_epoch) == (1000, 8, 200.0, 200)
    assert b.tags() == {"isdm.budget.steps": 1000, "isdm.budget.source": "train.max_steps=1000",
                        "isdm.budget.images_per_step": 8, "isdm.budget.steps_per_epoch": 5,
                        "isdm.budget.epochs": 200.0}


def test_a_step_budget_is_the_same_work_on_a_larger_dataset():
    """226 images at batch 8: 28 steps per epoch (drop_last); 1000 steps stay 1000 steps, where
    the former 200-epoch budget meant 5600."""
    b = plan(EMBEDDED, "train", num_images=226, steps_per_epoch=28, world_size=1)
    assert b.line().startswith("train budget: 1000 steps (train.max_steps=1000) of 8 images")
    assert b.line().endswith("35.7 epochs of the 226 training images at 28 steps per epoch")
    old = plan(TrainConfig(max_epochs=200, max_steps=0), "train", num_images=226,
               steps_per_epoch=28, world_size=1)
    assert old.steps == 5600
    assert old.source == "train.max_epochs=200 x 28 steps per epoch"


@pytest.mark.parametrize("max_steps, max_epochs, steps, source", [
    (1000, 30, 840, "finetune.max_epochs=30 x 28 steps per epoch, before finetune.max_steps=1000"),
    (500, 30, 500, "finetune.max_steps=500, before finetune.max_epochs=30 x 28 steps per epoch"),
])
def test_the_first_cap_reached_decides(max_steps, max_epochs, steps, source):
    tcfg = TrainConfig(max_steps=max_steps, max_epochs=max_epochs, patience=0)
    b = plan(tcfg, "finetune", num_images=226, steps_per_epoch=28, world_size=1)
    assert (b.steps, b.source) == (steps, source)


def test_budget_of_a_resumed_ddp_run_with_patience():
    tcfg = TrainConfig(max_steps=1000, max_epochs=0, patience=5, batch_size=4)
    b = plan(tcfg, "train", num_images=40, steps_per_epoch=5, world_size=2, step=400, epoch=80)
    assert b.line() == (
        "train budget: 600 steps (train.max_steps=1000; resumed at step 400; train.patience=5 may "
        "stop it earlier) of 8 images (batch_size 4 x 2 processes): 120 epochs of the 40 training "
        "images at 5 steps per epoch")
    assert b.last_epoch == 200


def test_no_budget_at_all_is_refused():
    with pytest.raises(ConfigError, match=r"train\.max_steps=0: max_steps=0 and max_epochs=0 set "
                                          r"no budget"):
        load_config(None, ["train.max_steps=0", "train.max_epochs=0"])


def test_estimate_from_steps_2_to_3_with_a_fake_clock():
    """Step 1 (5 s: warm-up) is not a sample; steps 2 and 3 take 1 s each: 7 s so far plus 997
    steps of 1 s."""
    times = iter([0.0, 5.0, 7.0])
    timer = StepTimer(plan(EMBEDDED, "train", num_images=40, steps_per_epoch=5, world_size=1),
                      clock=lambda: next(times))
    assert timer.tick() is None and timer.tick() is None
    assert timer.tick() == ("train: 1 s per step (steps 2-3): the 1000 steps take about 16.7 min "
                            "(without epoch-end checkpoints)")
    assert timer.tags() == {"isdm.budget.seconds_per_step": 1.0, "isdm.budget.estimated_s": 1004.0}
    assert timer.tick() is None  # once


def test_duration_units():
    assert [duration(s) for s in (44.6, 89.0, 600.0, 5399.0, 9000.0)] == [
        "45 s", "89 s", "10.0 min", "90.0 min", "2.5 h"]


@pytest.mark.slow
def test_a_run_prints_its_budget_and_estimate(synth_dir, tmp_path, capsys):
    """8 tiny images at batch 4: 2 steps per epoch, 2 epochs; the estimate after step 3."""
    cfg = load_config(TINY, ["tracking.enabled=false", "train.max_epochs=2"])
    train(cfg, synth_dir, tmp_path, progress=False)
    err = capsys.readouterr().err
    assert ("[isdm] train budget: 4 steps (train.max_epochs=2 x 2 steps per epoch; "
            "train.patience=2 may stop it earlier) of 4 images (batch_size 4 x 1 process): 2 "
            "epochs of the 8 training images at 2 steps per epoch\n") in err
    assert re.search(r"\[isdm\] train: \S+ s per step \(steps 2-3\): the 4 steps take about "
                     r"[\d.]+ (s|min|h) \(without epoch-end checkpoints\)\n", err), err
    assert err.index("train budget") < err.index("epoch 1:")


@pytest.mark.slow
def test_a_step_budget_trains_the_bits_of_the_epoch_budget(synth_dir, tmp_path):
    """params.yaml's max_steps=1000 with no epoch cap replaced max_epochs=200 (5-step epochs):
    a step budget ending on an epoch boundary is the same run, bit for bit."""
    base = ["tracking.enabled=false", "train.patience=0"]
    by_epochs = train(load_config(TINY, [*base, "train.max_epochs=2"]), synth_dir,
                      tmp_path / "epochs", progress=False)
    by_steps = train(load_config(TINY, [*base, "train.max_epochs=0", "train.max_steps=4"]),
                     synth_dir, tmp_path / "steps", progress=False)
    assert (by_epochs.steps, by_epochs.epochs) == (by_steps.steps, by_steps.epochs) == (4, 2)
    a = torch.load(tmp_path / "epochs" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "steps" / "last.pt", weights_only=True)
    for part in ("model", "ema", "optimizer"):
        assert _same(a[part], b[part]), part
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def _same(a, b) -> bool:
    """Equal nested state: tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b

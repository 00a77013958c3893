"""The CUDA paths of a downstream cell (marked ``gpu``; skipped without CUDA): the mix on the
device, pinned non-blocking copies, augmentation on the device with the CPU generator's draws,
bf16 autocast next to fp32, cuDNN autotuning in the pool, one worker per GPU, a resumable run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from isdm.config import load_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
CUDA = torch.device("cuda")


def _cfg(*overrides: str):
    return load_config(TINY, ["tracking.enabled=false", "evaluate.batch_size=4",
                              "evaluate.val_every=2", "evaluate.steps=4", *overrides])


def _run(cfg, data_root: Path, device=CUDA):
    from isdm.evaluation.cell import CellRun, plan_cell
    from isdm.evaluation.loading import empty_set, load_split

    real = load_split(cfg, data_root, "train")
    cell = plan_cell(cfg, "FPN", "RALLF000", 0, real.keys, [])
    return CellRun(cfg, cell, real, empty_set(cfg), device=device), real


def test_augmentation_on_the_device_draws_what_the_cpu_draws():
    from isdm.evaluation.segmenter import augment_batch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, 3, (6, 8, 8), generator=g)
    cx, cy = augment_batch(x, y, torch.Generator().manual_seed(1))
    gx, gy = augment_batch(x.to(CUDA), y.to(CUDA), torch.Generator().manual_seed(1))
    assert torch.equal(gy.cpu(), cy)  # the same flips
    assert torch.allclose(gx.cpu(), cx, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cell_trains_and_tests_on_cuda(synth_dir, precision):
    cfg = _cfg(f"evaluate.precision={precision}")
    run, real = _run(cfg, synth_dir)
    assert run.loop.train.images.device.type == "cuda"  # the mix lives on the device
    run.advance(4)
    result = run.finish(real)
    assert result.fit.steps == 4 and result.counts.shape[0] == len(real)
    assert all(v.device.type == "cpu" for v in result.fit.state_dict.values())
    assert torch.isfinite(torch.tensor([h["train_loss"] for h in result.fit.history])).all()


def test_bf16_autocast_tracks_fp32_on_the_first_steps(synth_dir):
    losses = {}
    for precision in ("fp32", "bf16"):
        run, _ = _run(_cfg(f"evaluate.precision={precision}", "evaluate.augment=false"),
                      synth_dir)
        run.advance(2)
        losses[precision] = run.finish().fit.history[0]["train_loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_a_cuda_run_saves_and_resumes(synth_dir):
    cfg = _cfg()
    run, _ = _run(cfg, synth_dir)
    run.advance(2)
    buf = io.BytesIO()
    torch.save(run.state_dict(), buf)
    buf.seek(0)
    again, _ = _run(cfg, synth_dir)
    again.load_state_dict(torch.load(buf, weights_only=True))
    again.advance(4)
    assert again.finish().fit.steps == 4 and "cuda" in again.state_dict()["rng"]


def test_the_pool_puts_one_worker_on_each_gpu_and_records_it(synth_dir, tmp_path):
    from isdm.evaluation import run_evaluation
    from isdm.evaluation.pool import plan_workers
    from isdm.evaluation.store import CellStore

    workers, _, devices = plan_workers(0, 0, CUDA, 99)
    assert workers == torch.cuda.device_count() and devices[0] == "cuda:0"
    cfg = _cfg("evaluate.mixes=[RALLF000]", "evaluate.seeds=[0,1]", "evaluate.bootstrap=10")
    res = run_evaluation(cfg, synth_dir, None, tmp_path / "out", device="cuda",
                         cell_cache=tmp_path / "cells", progress=False)
    assert res["trained"] == 2
    records = [CellStore(tmp_path / "cells").get(p.name) for p in (tmp_path / "cells").iterdir()
               if not p.name.startswith(".")]
    assert {r.spec["device"] for r in records} == {"cuda"}
    assert all(r.run["device"].startswith("cuda") for r in records)

"""Every CUDA path, run where CUDA is present (marked ``gpu``; skipped without it): fp16 autocast
with GradScaler, bf16, channels-last, batched guidance, SDPA attention, NCCL DDP, the sampling
engine, and ``make bench-gpu``'s script."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isdm.config import MODEL_PRESETS, DiffusionConfig, ModelConfig
from isdm.models import build_model, place

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TINY = ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])
CUDA = torch.device("cuda")


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls without TF32 while the test runs. cuDNN convolutions use TF32
    (10-bit mantissa) by default on Ampere and later GPUs, so two fp32 paths that agree to float
    rounding (NCHW vs channels-last, one batched pass vs two) could differ by ~1e-3 there; the
    tests compare the paths, not TF32."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def _inputs(batch: int = 2, size: int = 32, classes: int = 3, device=CUDA):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    segmap = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    return x.to(device), t.to(device), segmap.to(device)


def _model(seed: int = 0, classes: int = 3) -> torch.nn.Module:
    from isdm.bench.solver_accuracy import randomize_zero_init

    torch.manual_seed(seed)
    return randomize_zero_init(build_model(TINY, 32, classes), seed)


def _train_steps(precision: str, steps: int = 3) -> tuple[list[float], float, float]:
    """Losses of ``steps`` optimisation steps of the tiny network on CUDA, the largest weight
    change and the GradScaler's final scale (1 when it is off)."""
    from isdm.data.masks import one_hot
    from isdm.diffusion import build_diffusion
    from isdm.training.ema import EMA
    from isdm.training.step import optimisation_step

    model = place(_model(), CUDA).train()
    before = [p.detach().clone() for p in model.parameters()]
    diffusion = build_diffusion(DiffusionConfig(prediction="eps"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    ema = EMA(model, [0.99])
    g = torch.Generator(CUDA).manual_seed(0)
    losses = []
    for _ in range(steps):
        x0 = torch.rand(2, 3, 32, 32, generator=g, device=CUDA) * 2 - 1
        segmap = one_hot(torch.randint(0, 3, (2, 32, 32), generator=g, device=CUDA), 3, None)
        t = torch.randint(0, 1000, (2,), generator=g, device=CUDA)
        noise = torch.randn(x0.shape, generator=g, device=CUDA)
        losses.append(float(optimisation_step(model, model, diffusion, opt, scaler, ema, x0,
                                              segmap, t, noise, precision=precision,
                                              grad_clip=1.0)))
    assert all(torch.isfinite(p).all() and p.is_cuda for p in model.parameters())
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    return losses, moved, scaler.get_scale() if scaler.is_enabled() else 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_training_step_on_cuda(precision):
    losses, moved, scale = _train_steps(precision)
    assert all(0 < x < 10 for x in losses) and moved > 0
    assert scale > 1 if precision == "fp16" else scale == 1.0  # loss scaling only in fp16


def test_fp16_grad_scaler_skips_an_overflowing_step():
    """An inf gradient under fp16 makes GradScaler skip the step and halve the scale."""
    model = place(_model(), CUDA).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    x, t, segmap = _inputs()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x, t, segmap).float().mean() * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_forward_agrees_with_fp32(dtype, exact_fp32):
    from isdm.utils.precision import autocast

    model = place(_model(), CUDA).eval()
    x, t, segmap = _inputs()
    with torch.no_grad():
        ref = model(x, t, segmap)
        with autocast("fp16" if dtype == torch.float16 else "bf16", CUDA):
            out = model(x, t, segmap)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() < (0.02 if dtype == torch.float16 else 0.1)


def test_channels_last_on_cuda_gives_the_same_outputs(exact_fp32):
    nchw = place(_model(), CUDA)
    nhwc = place(copy.deepcopy(nchw), CUDA, channels_last=True)
    assert nhwc.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x, t, segmap = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x, t, segmap), nchw(x, t, segmap), rtol=1e-3, atol=1e-4)


def test_batched_guidance_equals_two_passes_on_cuda(exact_fp32):
    from isdm.sampling.guidance import GuidedModel

    model = place(_model(), CUDA).eval()
    x, t, segmap = _inputs()
    with torch.no_grad():
        cond = model.precompute_condition(segmap)
        null = model.precompute_condition(torch.zeros_like(segmap[:1]))
        auto = GuidedModel(model, cond, null, 1.5)
        separate = GuidedModel(model, cond, null, 1.5, batch_passes=False)
        out_auto, out_sep = auto(x, t), separate(x, t)
    assert auto.forwards == 1 and separate.forwards == 2  # auto = batched on CUDA
    torch.testing.assert_close(out_auto, out_sep, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sdpa_attention_matches_the_softmax_formula(dtype, exact_fp32):
    from isdm.models.blocks import AttentionBlock

    block = AttentionBlock(64, 32).to(CUDA)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 64, 16, 16, device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = block(x)
        b, c, h, w = x.shape
        qkv = block.qkv(block.norm(x)).reshape(b, 3, block.heads, c // block.heads, h * w)
        q, k, v = qkv.float().transpose(-1, -2).unbind(1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / (c // block.heads) ** 0.5, dim=-1) @ v
        ref = x + block.proj(attn.transpose(-1, -2).reshape(b, c, h, w).to(qkv.dtype)).float()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_sampling_engine_on_cuda_is_deterministic():
    import numpy as np

    from isdm.config import Config, SampleConfig
    from isdm.diffusion import build_diffusion
    from isdm.sampling.engine import SampleEngine

    model = place(_model(classes=5), CUDA).eval()
    cfg = Config().replace(sample=SampleConfig(steps=4, precision="bf16"))
    diffusion = build_diffusion(DiffusionConfig(prediction="eps"))
    engine = SampleEngine(model, diffusion, cfg, CUDA, batch_size=2)
    labels = np.zeros((2, 32, 32), dtype=np.uint8)
    labels[:, 8:16] = 1
    a, b = engine(labels, [1, 2]), engine(labels, [1, 2])
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs")
def test_ddp_nccl_training(synth_dir, tmp_path):
    """torchrun with one process per GPU on 2 GPUs: NCCL process group, only rank 0 writes."""
    nproc = 2
    isdm = Path(sys.executable).with_name("isdm")
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", "--no-python", str(isdm), "train", "-c", tiny, "--data",
           str(synth_dir), "--out", str(out), "--no-progress", "--set", "train.max_epochs=1",
           "--set", "train.batch_size=2", "--set", "runtime.device=cuda",
           "--set", "tracking.enabled=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["meta"]["world_size"] == nproc
    # 8 images over 2 ranks of batch 2: 2 steps per epoch on each rank
    assert state["step"] == 2 and [row["images"] for row in state["history"]] == [8]


def test_bench_gpu_script_runs_tiny(tmp_path):
    from isdm.bench import gpu_bench

    out = tmp_path / "gpu.json"
    assert gpu_bench.main(["--tiny", "--budget-s", "60", "--max-batch", "4",
                           "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["table"]
    assert {r["precision"] for r in rows} == {"fp16", "bf16"}
    assert all(r.get("images_per_s", r.get("s_per_image", 0)) > 0 for r in rows)

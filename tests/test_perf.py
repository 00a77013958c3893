"""The speed-ups and their contracts: fp32 group norm unchanged bit for bit, the bf16 training
path more exact than PyTorch's bf16 kernel, checkpointing that only trades time, CPU detection,
the OpenMP wait policy and the benchmarks' bookkeeping."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from isdm.config import MODEL_PRESETS, DiffusionConfig, ModelConfig
from isdm.models import build_model, place
from isdm.models.fused import GroupNorm, group_norm
from isdm.utils import cpu

TINY = ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])


def _x(channels_last: bool, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_fp32_group_norm_is_pytorchs_bit_for_bit(channels_last, affine):
    ref, ours = torch.nn.GroupNorm(32, 64, affine=affine), GroupNorm(32, 64, affine=affine)
    if affine:
        torch.nn.init.normal_(ref.weight)
        torch.nn.init.normal_(ref.bias)
        ours.load_state_dict(ref.state_dict())
    xa, xb = _x(channels_last).requires_grad_(), _x(channels_last).requires_grad_()
    grad = torch.randn(2, 64, 8, 8)
    out_a, out_b = ref(xa), ours(xb)
    out_a.backward(grad)
    out_b.backward(grad)
    assert torch.equal(out_a, out_b) and torch.equal(xa.grad, xb.grad)
    if affine:
        assert torch.equal(ref.weight.grad, ours.weight.grad)
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_training_group_norm_is_float32_math(channels_last):
    """Output and gradient of a bf16 input are the float32 kernels' on its float32 value (so
    closer to the exact values than PyTorch's bf16 kernel), the gradient in the input's dtype
    and layout."""
    weight = torch.randn(64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    x = _x(channels_last, torch.bfloat16).requires_grad_()
    grad = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(2))
    out = group_norm(x, 32, weight)
    out.backward(grad)
    assert out.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert x.grad.is_contiguous(memory_format=torch.channels_last) == channels_last
    x32 = x.detach().float().requires_grad_()
    w32 = weight.detach().clone().requires_grad_()
    ref = F.group_norm(x32, 32, w32)
    ref.backward(grad)
    assert torch.equal(out, ref) and torch.equal(x.grad, x32.grad.to(torch.bfloat16))
    assert torch.equal(weight.grad, w32.grad)
    # PyTorch's own bf16 kernel on the same input is further from the exact gradient
    xp = x.detach().clone().requires_grad_()
    F.group_norm(xp, 32, weight.detach().bfloat16()).float().backward(grad)
    exact = x32.grad.double()
    assert (x.grad.double() - exact).abs().max() < (xp.grad.double() - exact).abs().max()


def test_no_grad_and_fp32_calls_take_pytorchs_kernel():
    x = _x(True, torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(group_norm(x.requires_grad_(), 32), F.group_norm(x, 32))
    assert group_norm(_x(True), 32).dtype == torch.float32


def _train(cfg: ModelConfig, precision: str, steps: int = 3) -> torch.Tensor:
    from isdm.data.masks import one_hot
    from isdm.diffusion import build_diffusion
    from isdm.training.ema import EMA
    from isdm.training.step import optimisation_step

    torch.manual_seed(0)
    model = place(build_model(cfg, 32, 3), "cpu").train()
    diffusion = build_diffusion(DiffusionConfig(prediction="eps"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ema = EMA(model, [0.99])
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        segmap = one_hot(torch.randint(0, 3, (2, 32, 32), generator=g), 3, None)
        t = torch.randint(0, 1000, (2,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        optimisation_step(model, model, diffusion, opt, scaler, ema, x0, segmap, t, noise,
                          precision=precision, grad_clip=1.0)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_use_checkpoint_gives_the_same_weights(precision):
    """Gradient checkpointing recomputes the forward in backward: the same bits, only slower
    (what the training note on CPU says)."""
    cfg = dataclasses.replace(TINY, dropout=0.1)
    plain = _train(cfg, precision)
    checkpointed = _train(dataclasses.replace(cfg, use_checkpoint=True), precision)
    assert torch.equal(plain, checkpointed)
    assert torch.isfinite(plain).all()


def test_native_bf16_reads_the_cpu(tmp_path, monkeypatch):
    assert cpu.native_bf16("cpu") in (True, False)
    if not torch.cuda.is_available():
        assert cpu.native_bf16("cuda") is False
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16\n")
    assert {"avx512f", "avx512_bf16"} <= cpu._cpuinfo_flags(str(info))
    assert cpu._cpuinfo_flags(str(tmp_path / "missing")) == set()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: {"avx2"})
    assert cpu.native_bf16("cpu") is False
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: {"avx2", "amx_bf16"})
    assert cpu.native_bf16("cpu") is True


def test_busy_cpus_from_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 150 1000 0 0 0 0 0 0\n"])
    monkeypatch.setattr(cpu.time, "sleep", lambda s: stat.write_text(next(samples)))
    stat.write_text(next(samples))
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    # 200 busy of 400 jiffies on 2 CPUs: one CPU's worth
    assert cpu.busy_cpus(0.0, str(stat)) == pytest.approx(1.0)
    monkeypatch.setattr(cpu.time, "sleep", lambda s: None)
    assert cpu.busy_cpus(0.0, str(tmp_path / "missing")) is None


def test_wait_policy_spins_only_on_an_idle_machine():
    assert cpu.wait_policy(0.1, 2) == "ACTIVE"
    assert cpu.wait_policy(0.6, 2) == "PASSIVE"  # 30 % of the machine taken by others
    assert cpu.wait_policy(3.0, 2) == "PASSIVE"
    assert cpu.wait_policy(3.0, 16) == "ACTIVE" and cpu.wait_policy(4.0, 16) == "PASSIVE"
    assert cpu.wait_policy(None, 2) == "PASSIVE"
    assert [cpu.free_cpus(b, 2) for b in (0.2, 0.6, 1.4, 3.0, None)] == [2, 1, 1, 1, 2]
    assert cpu.free_cpus(5.2, 16) == 11


def test_wait_policy_command_keeps_a_users_choice():
    from isdm.utils.cpu import MALLOC_TUNABLES

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "OMP_WAIT_POLICY": "ACTIVE"}
    out = subprocess.run([sys.executable, "-m", "isdm.utils.cpu", "--explain"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OMP_WAIT_POLICY=ACTIVE", f"GLIBC_TUNABLES={MALLOC_TUNABLES}"]
    assert "(set in the environment)" in out.stderr
    env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=2"  # the user's tunables win
    out = subprocess.run([sys.executable, "-m", "isdm.utils.cpu"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == "GLIBC_TUNABLES=glibc.malloc.arena_max=2"
    del env["GLIBC_TUNABLES"]
    del env["OMP_WAIT_POLICY"]
    out = subprocess.run([sys.executable, "-m", "isdm.utils.cpu"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] in ("OMP_WAIT_POLICY=ACTIVE", "OMP_WAIT_POLICY=PASSIVE")


@pytest.mark.parametrize("busy, policy", [(0.1, "ACTIVE"), (1.5, "PASSIVE")])
def test_the_environment_of_makes_jobs_never_sets_the_thread_count(monkeypatch, capsys, busy,
                                                                   policy):
    """``python -m isdm.utils.cpu`` prints the environment make's jobs run with (the Makefile's
    ``env $(...)``): NAME=VALUE lines, the wait policy chosen now and the allocator tunables;
    the thread count, which changes a result's last bits, is suggested on stderr, never set."""
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu, "busy_cpus", lambda: busy)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sys, "argv", ["isdm.utils.cpu", "--explain"])
    assert cpu.main() == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"OMP_WAIT_POLICY={policy}",
                                f"GLIBC_TUNABLES={cpu.MALLOC_TUNABLES}"]
    assert ("OMP_NUM_THREADS=1 would run faster now" in err) == (policy == "PASSIVE")


def test_recipe_is_the_fewest_steps_at_the_threshold():
    from isdm.bench.sample_bench import pick_recipe

    assert pick_recipe({"dpmpp2m": 20, "dpmpp3m": 12, "unipc": 10}) == ("unipc", 10)
    tie = {"dpmpp2m": 15, "dpmpp3m": 11, "unipc": 11}
    rmse = {("dpmpp3m", 11, "fp32"): 0.0129, ("unipc", 11, "fp32"): 0.0102}
    assert pick_recipe(tie, rmse) == ("unipc", 11)
    assert pick_recipe({"dpmpp2m": None}) == ("dpmpp2m", 20)


def test_training_rows_compare_the_original_config_like_for_like():
    from isdm.bench import train_bench
    from isdm.original import reference as original

    rows = train_bench.training_rows(bf16=True)
    exact, fp32, bf16 = rows[:3]
    assert exact[1] == original.ORIGINAL_CPU and exact[1].use_checkpoint and exact[5] == "fp32"
    assert fp32[1] == dataclasses.replace(original.ORIGINAL_CPU, use_checkpoint=False)
    assert (fp32[4], bf16[4], bf16[5]) == (original.BATCH, original.BATCH, "bf16")
    assert [r[5] for r in train_bench.training_rows(bf16=False)] == ["fp32"] * 3


def test_isdm_child_reports_time_and_peak_memory(tmp_path):
    from isdm.bench.scale_bench import isdm_child, write_big_dataset

    parent = torch.ones(50_000_000)  # 200 MB in this process: not the child's
    res = isdm_child(["--help"])
    assert res["seconds"] > 0 and 1 < res["peak_MiB"] < 150
    del parent
    with pytest.raises(RuntimeError, match="no-such-command"):
        isdm_child(["no-such-command"])
    write_big_dataset(tmp_path / "big", 3, 48)
    assert len(list((tmp_path / "big" / "train" / "images").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "big" / "test" / "masks").glob("*.png"))) == 2


@pytest.mark.parametrize("use_checkpoint", [True, False])
def test_training_on_cpu_says_what_use_checkpoint_costs(synth_dir, tmp_path, capsys,
                                                        use_checkpoint):
    from pathlib import Path

    from isdm.config import load_config
    from isdm.training import train

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_config(tiny, ["tracking.enabled=false", "train.max_steps=1",
                             f"model.use_checkpoint={str(use_checkpoint).lower()}"])
    train(cfg, synth_dir, tmp_path, progress=False)  # device auto: CPU without CUDA
    said = "model.use_checkpoint=true recomputes" in capsys.readouterr().err
    assert said == (use_checkpoint and not torch.cuda.is_available())


@pytest.mark.slow
def test_gpu_bench_script_smoke_runs_on_cpu(tmp_path):
    """``make bench-gpu``'s script at --tiny sizes on CPU (fp16 falls back to fp32 there)."""
    import json

    from isdm.bench import gpu_bench

    out = tmp_path / "gpu.json"
    assert gpu_bench.main(["--tiny", "--budget-s", "30", "--max-batch", "2",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["image_size"] == 32
    expected = {"fp16", "bf16"} if torch.cuda.is_available() else {"fp32", "bf16"}
    assert {r["precision"] for r in result["table"]} == expected
    assert [r["what"].split(",")[0] for r in result["table"]] == ["training", "sampling"] * 2
    assert all(r["batch"] in (1, 2) for r in result["table"])


def test_largest_batch_stops_at_the_first_out_of_memory():
    import time

    from isdm.bench.gpu_bench import largest_batch

    tried = []

    def make_step(batch):
        def step():
            tried.append(batch)
            if batch > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step

    far = time.perf_counter() + 60
    batch, step = largest_batch(make_step, torch.device("cpu"), far, max_batch=64)
    assert batch == 4 and tried == [1, 1, 2, 4, 8] and step is not None  # 1: warm-up + timed
    assert largest_batch(make_step, torch.device("cpu"), far, max_batch=2)[0] == 2
    assert largest_batch(make_step, torch.device("cpu"), time.perf_counter() - 1, 64) == (None, None)

    def broken(batch):
        def step():
            raise RuntimeError("a real bug")
        return step

    with pytest.raises(RuntimeError, match="a real bug"):
        largest_batch(broken, torch.device("cpu"), far, max_batch=8)


@pytest.mark.slow
def test_solver_accuracy_stops_at_the_first_step_count_under_the_threshold(monkeypatch):
    from isdm.bench import solver_accuracy

    monkeypatch.setattr(solver_accuracy, "THRESHOLD", 1.0)  # any step count passes
    rows, picks, _ = solver_accuracy.accuracy(quick=True, reference_steps=10,
                                              candidates={"unipc": (3, 5)})
    assert picks == {"unipc": 3}
    assert [(r["accuracy"], r["precision"]) for r in rows] == [
        ("unipc 3", "fp32"), ("dpmpp2m 20", "fp32"), ("unipc 3", "bf16"), ("dpmpp2m 20", "bf16")]
    assert all(0 < r["rmse_vs_reference"] < 1 for r in rows)
    monkeypatch.setattr(solver_accuracy, "THRESHOLD", 0.0)  # none passes
    _, picks, _ = solver_accuracy.accuracy(quick=True, reference_steps=10,
                                           candidates={"unipc": (3, 5)}, bf16=False)
    assert picks == {"unipc": None}

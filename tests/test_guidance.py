"""Classifier-free guidance wrapper: pass counts, batched == separate, the guidance formula by
hand, variance from the conditional pass, SPADE caching bit-identical, precision (the one autocast
helper); the sampling engine's schedule."""

from __future__ import annotations

import pytest
import torch

from isdm.diffusion import GaussianDiffusion, get_betas
from isdm.sampling.guidance import GuidedModel
from isdm.solvers import get_sampler, make_schedule

B, C, H = 2, 3, 8


class FakeNet:
    """``model(x, t, cond)``: eps = x/2 + mean_c(cond) + t/1000, variance = 2 cond[:, :1] - 1
    (so conditional and null passes differ in both halves); records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, cond):
        self.calls.append((x.clone(), t.clone(), cond.clone()))
        eps = x / 2 + cond.mean(1, keepdim=True) + t.view(-1, 1, 1, 1) / 1000
        var = (2 * cond[:, :1] - 1).expand(-1, 3, -1, -1)
        return torch.cat([eps, var], dim=1)


def inputs():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (B, H, H), generator=g)
    segmap = torch.nn.functional.one_hot(labels, C).permute(0, 3, 1, 2).float()
    x = torch.randn((B, 3, H, H), generator=g)
    t = torch.tensor([999, 999])
    return segmap, torch.zeros_like(segmap), x, t


def test_s1_runs_only_the_conditional_forward():
    segmap, _, x, t = inputs()
    net = FakeNet()
    out = GuidedModel(net, segmap, None, s=1.0)(x, t)
    assert len(net.calls) == 1 and torch.equal(net.calls[0][2], segmap)
    assert torch.equal(out, net(x, t, segmap))


def test_s0_runs_only_the_unconditional_forward():
    segmap, null, x, t = inputs()
    net = FakeNet()
    out = GuidedModel(net, segmap, null, s=0.0, batch_passes=True)(x, t)
    assert len(net.calls) == 1 and torch.equal(net.calls[0][2], null)
    assert torch.equal(out, net(x, t, null))


@pytest.mark.parametrize("s", [1.5, 3.0, -0.5])
def test_guidance_formula_batched_equals_separate(s):
    segmap, null, x, t = inputs()
    batched_net, separate_net = FakeNet(), FakeNet()
    batched = GuidedModel(batched_net, segmap, null, s, batch_passes=True)(x, t)
    separate = GuidedModel(separate_net, segmap, null, s, batch_passes=False)(x, t)
    # one forward of 2B rows vs two forwards of B rows
    assert len(batched_net.calls) == 1 and batched_net.calls[0][0].shape[0] == 2 * B
    assert torch.equal(batched_net.calls[0][1], torch.cat([t, t]))
    assert len(separate_net.calls) == 2
    torch.testing.assert_close(batched, separate)
    # by hand: eps_c = x/2 + 1/3 + 0.999 (one-hot rows average to 1/C), eps_u = x/2 + 0.999
    eps_c, eps_u = x / 2 + 1 / C + 0.999, x / 2 + 0.999
    torch.testing.assert_close(batched[:, :3], eps_u + s * (eps_c - eps_u))
    # variance from the conditional pass, unguided
    torch.testing.assert_close(batched[:, 3:], (2 * segmap[:, :1] - 1).expand(-1, 3, -1, -1))
    assert batched.dtype == torch.float32


def test_auto_batching_is_separate_on_cpu_and_null_broadcasts():
    segmap, null, x, t = inputs()
    net = FakeNet()
    out = GuidedModel(net, segmap, null[:1], 2.0, batch_passes="auto")(x, t)
    assert len(net.calls) == 2 and net.calls[1][2].shape == segmap.shape
    torch.testing.assert_close(out, GuidedModel(FakeNet(), segmap, null, 2.0)(x, t))


def test_wrapper_errors_say_what_to_pass():
    segmap, null, x, t = inputs()
    with pytest.raises(ValueError, match="needs null_cond"):
        GuidedModel(FakeNet(), segmap, None, s=1.5)
    with pytest.raises(ValueError, match="batch"):
        GuidedModel(FakeNet(), segmap, null, s=1.5)(torch.cat([x, x]), torch.cat([t, t]))
    with pytest.raises(ValueError, match="precision"):
        GuidedModel(FakeNet(), segmap, null, s=1.5, precision="int8")


@pytest.fixture(scope="module")
def tiny_net():
    from isdm.config import MODEL_PRESETS, ModelConfig
    from isdm.models import build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(**MODEL_PRESETS["tiny"]), image_size=16, num_classes=3).eval()
    with torch.no_grad():  # random init zeroes the output convs: give them real weights
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def tiny_inputs():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    segmap = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    return segmap, torch.zeros_like(segmap), torch.randn((2, 3, 16, 16), generator=g)


@pytest.mark.parametrize("s,batch_passes", [(1.5, True), (1.5, False), (1.0, True),
                                            (0.0, False)])
def test_cached_spade_sampling_is_bit_identical_to_uncached(tiny_net, s, batch_passes):
    segmap, null, x_T = tiny_inputs()
    schedule = make_schedule(GaussianDiffusion(get_betas("linear", 100)), 3, "logsnr")
    sample = get_sampler("dpmpp2m")
    with torch.no_grad():
        cached = GuidedModel(tiny_net, tiny_net.precompute_condition(segmap),
                             tiny_net.precompute_condition(null), s, batch_passes=batch_passes)
        uncached = GuidedModel(tiny_net, segmap, null, s, batch_passes=batch_passes)
        a = sample(cached, x_T, schedule, generator=torch.Generator())
        b = sample(uncached, x_T, schedule, generator=torch.Generator())
    assert torch.equal(a, b) and a.std() > 0.1
    assert cached.forwards == (6 if s not in (0, 1) and not batch_passes else 3)


def test_bf16_autocast_is_close_to_fp32_and_returns_float32(tiny_net):
    segmap, _, x = tiny_inputs()
    segmap, x, t = segmap[:1], x[:1], torch.tensor([500])
    with torch.no_grad():
        cond = tiny_net.precompute_condition(segmap)
        fp32 = GuidedModel(tiny_net, cond, None, 1.0, precision="fp32")(x, t)
        bf16 = GuidedModel(tiny_net, cond, None, 1.0, precision="bf16")(x, t)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()


@pytest.mark.parametrize("batch_passes", [False, True])
def test_shared_encoder_matches_two_full_forwards(tiny_net, batch_passes):
    """The encoder never sees the mask: one encoder pass serves both guidance passes."""
    segmap, null, x_T = tiny_inputs()
    schedule = make_schedule(GaussianDiffusion(get_betas("linear", 100)), 3, "logsnr")
    sample = get_sampler("dpmpp2m")
    with torch.no_grad():
        cond, null_cond = tiny_net.precompute_condition(segmap), tiny_net.precompute_condition(null)
        shared = GuidedModel(tiny_net, cond, null_cond, 2.0, batch_passes=batch_passes)
        full = GuidedModel(tiny_net, cond, null_cond, 2.0, batch_passes=False,
                           share_encoder=False)
        a = sample(shared, x_T, schedule, generator=torch.Generator())
        b = sample(full, x_T, schedule, generator=torch.Generator())
    if batch_passes:  # a 2B-row decode may pick other kernels than two B-row decodes
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)
    else:
        assert torch.equal(a, b)
    assert a.std() > 0.1
    assert (shared.encoder_passes, shared.forwards) == (3, 3 if batch_passes else 6)
    assert (full.encoder_passes, full.forwards) == (6, 6)


def test_models_without_encode_decode_get_full_forwards():
    segmap, null, x, t = inputs()
    net = FakeNet()
    model = GuidedModel(net, segmap, null, 2.0, batch_passes=False)
    model(x, t)
    assert not model.share_encoder and len(net.calls) == 2 and model.encoder_passes == 2


class PrecisionNet(FakeNet):
    """FakeNet whose output goes through a matmul, so it comes out in the autocast dtype; records
    that dtype per call."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __call__(self, x, t, cond):
        out = super().__call__(x, t, cond) @ torch.eye(x.shape[-1])
        self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize("precision, inside", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_and_guided_sampling_run_the_network_in_one_precision(precision, inside):
    """The network runs under ``precision`` in a training step and in guided sampling alike,
    and both hand float32 to the diffusion math: the same output for the same inputs."""
    from isdm.training.step import make_model_fn

    segmap, null, x, t = inputs()
    train_net, sample_net = PrecisionNet(), PrecisionNet()
    trained = make_model_fn(train_net, segmap, precision)(x, t)
    guided = GuidedModel(sample_net, segmap, null, 1.0, precision=precision)
    sampled = guided(x, t)
    assert train_net.dtypes == sample_net.dtypes == [inside]
    assert trained.dtype == sampled.dtype == torch.float32
    assert torch.equal(trained, sampled)
    with pytest.raises(ValueError, match="precision='int8'"):
        make_model_fn(train_net, segmap, "int8")(x, t)


class RecordingSDM(FakeNet):
    """FakeNet with the SDM's ``precompute_condition`` (here the segmap itself)."""

    def precompute_condition(self, segmap):
        return segmap


@pytest.mark.parametrize("sampler,spacing,placed_by", [
    ("ddim", "auto", "uniform"), ("ddim", "logsnr", "logsnr"),
    ("dpmpp2m", "auto", "logsnr"), ("dpmpp2m", "uniform", "uniform")])
def test_engine_builds_the_schedule_from_sample_spacing(sampler, spacing, placed_by):
    from isdm.config import Config, from_dict
    from isdm.sampling.engine import SampleEngine

    chain = GaussianDiffusion(get_betas("linear", 100))
    cfg = from_dict(Config, {"data": {"num_classes": C}, "sample": {
        "sampler": sampler, "steps": 6, "spacing": spacing, "s": 1.0}})
    net = RecordingSDM()
    engine = SampleEngine(net, chain, cfg, torch.device("cpu"), batch_size=2)
    out = engine(torch.randint(0, C, (2, H, H), generator=torch.Generator()).byte().numpy(), [1, 2])
    assert out.shape == (2, H, H, 3)
    want = make_schedule(chain, 6, placed_by).timestep_map.tolist()[::-1]
    assert [int(t[0]) for _, t, _ in net.calls] == want
    other = make_schedule(chain, 6, "logsnr" if placed_by == "uniform" else "uniform")
    assert want != other.timestep_map.tolist()[::-1]

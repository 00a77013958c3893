"""SDM UNet: shapes, SPADE caching (bit-identical), batching of conditions, determinism,
parameter count by formula, gradient checkpointing, FLOPs and construction errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from isdm.config import MODEL_PRESETS, ModelConfig
from isdm.models import (SDMUNet, SpadeCondition, build_model, count_parameters, forward_flops)
from isdm.models.blocks import timestep_embedding

TINY = ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (a fresh model's zero-initialised output convs would make
    every output exactly 0 and every comparison trivially equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _inputs(b: int, size: int, classes: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (b, size, size), generator=g)
    segmap = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    t = torch.randint(0, 1000, (b,), generator=g)
    return x, t, segmap


@pytest.fixture(scope="module")
def tiny() -> SDMUNet:
    return _randomize(build_model(TINY, 16, 4)).eval()


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("changes, size, classes, expected", [
    ({}, 16, 4, (2, 6, 16, 16)),
    ({"learn_sigma": False}, 16, 4, (2, 3, 16, 16)),
    ({"resblock_updown": False, "use_scale_shift_norm": False}, 16, 2, (2, 6, 16, 16)),
    ({"channel_mult": (1, 2, 2), "attention_resolutions": (16, 8), "num_res_blocks": 2}, 32, 3,
     (2, 6, 32, 32)),
    ({"channel_mult": (), "num_head_channels": 64, "attention_resolutions": (8,)}, 32, 5,
     (2, 6, 32, 32)),  # empty channel_mult -> (1, 2, 2) at 32 px
])
def test_output_shapes(changes, size, classes, expected):
    model = build_model(dataclasses.replace(TINY, preset="", **changes), size, classes)
    x, t, segmap = _inputs(2, size, classes)
    with torch.no_grad():
        out = model(x, t, segmap)
    assert tuple(out.shape) == expected
    # zero-initialised head: a fresh network predicts exactly 0
    assert torch.equal(out, torch.zeros(expected))


def test_default_channel_mult_by_image_size():
    model = build_model(dataclasses.replace(TINY, preset="", channel_mult=()), 64, 2)
    # 64 px -> (1, 2, 3, 4): 4 levels, 3 down-samplings in the encoder
    downs = [b for b in model.input_blocks if getattr(b[0], "down", False)]
    assert len(downs) == 3 and model.out[2].in_channels == 32


def test_scalar_and_float_timesteps(tiny):
    x, _, segmap = _inputs(2, 16, 4)
    with torch.no_grad():
        a = tiny(x, torch.tensor([250, 250]), segmap)
        b = tiny(x, 250, segmap)
        c = tiny(x, torch.tensor([250.0, 250.0]), segmap)
        d = tiny(x, torch.tensor([250.5, 250.5]), segmap)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))


# ----------------------------------------------------------------------------- SPADE caching
def test_precomputed_condition_is_bit_identical(tiny):
    x, t, segmap = _inputs(3, 16, 4)
    with torch.no_grad():
        cond = tiny.precompute_condition(segmap)
        direct, cached = tiny(x, t, segmap), tiny(x, t, cond)
    assert isinstance(cond, SpadeCondition) and len(cond) == 3
    assert len(cond.maps) == sum(1 for m in tiny.modules() if type(m).__name__ == "SPADEGroupNorm")
    assert torch.equal(direct, cached)
    assert direct.abs().mean() > 0  # a non-trivial output


def test_encode_decode_halves_make_the_forward(tiny):
    x, t, segmap = _inputs(3, 16, 4)
    with torch.no_grad():
        enc = tiny.encode(x, t)
        assert len(enc) == 3 and len(enc.repeat(2)) == 6
        assert torch.equal(tiny.decode(enc, segmap), tiny(x, t, segmap))
        both = tiny.decode(enc.repeat(2), torch.cat([segmap, torch.zeros_like(segmap)]))
        torch.testing.assert_close(both[:3], tiny(x, t, segmap), rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="batch 6 but x_t has 3"):
            tiny.decode(enc, tiny.precompute_condition(torch.cat([segmap, segmap])))


def test_place_makes_cpu_weights_channels_last_with_the_same_outputs(tiny):
    import copy

    from isdm.models import place

    x, t, segmap = _inputs(2, 16, 4)
    nhwc = place(copy.deepcopy(tiny), "cpu")
    conv = nhwc.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    with torch.no_grad():
        out = nhwc(x, t, nhwc.precompute_condition(segmap))
        torch.testing.assert_close(out, tiny(x, t, segmap), rtol=1e-4, atol=1e-5)
    back = place(nhwc, "cpu", channels_last=False).input_blocks[0][0].weight
    assert back.is_contiguous()


def test_condition_feature_sizes_match_the_layers(tiny):
    _, _, segmap = _inputs(1, 16, 4)
    cond = tiny.precompute_condition(segmap)
    sides = sorted({g.shape[-1] for g, _ in cond.maps.values()})
    assert sides == [8, 16]
    for g, b in cond.maps.values():
        assert g.shape == b.shape


def test_condition_batching_for_guidance(tiny):
    x, t, segmap = _inputs(2, 16, 4)
    null = torch.zeros_like(segmap[:1])
    with torch.no_grad():
        c, u = tiny.precompute_condition(segmap), tiny.precompute_condition(null)
        both = c.cat(u.expand(2))
        assert len(both) == 4
        out = tiny(torch.cat([x, x]), torch.cat([t, t]), both)
        ref_c = tiny(x, t, segmap)
        ref_u = tiny(x, t, torch.zeros_like(segmap))
        torch.testing.assert_close(out[:2], ref_c, rtol=0, atol=1e-5)
        torch.testing.assert_close(out[2:], ref_u, rtol=0, atol=1e-5)
        # selection keeps the batch dimension and matches the selected samples
        assert len(c[1]) == 1 and len(c[-1]) == 1
        torch.testing.assert_close(tiny(x[1:], t[1:], c[1]), ref_c[1:], rtol=0, atol=1e-5)
        idx = torch.tensor([1, 0])
        torch.testing.assert_close(tiny(x[idx], t[idx], c[idx]), ref_c[idx], rtol=0, atol=1e-5)
        # SpadeCondition.concat of several
        assert len(SpadeCondition.concat([c, c, u.expand(2)])) == 6


def test_null_label_gives_nonzero_modulation(tiny):
    cond = tiny.precompute_condition(torch.zeros(1, 4, 16, 16))
    gamma, beta = next(iter(cond.maps.values()))
    assert gamma.abs().max() > 0 and beta.abs().max() > 0  # conv biases, as it should be


def test_mask_changes_the_output(tiny):
    x, t, segmap = _inputs(1, 16, 4)
    with torch.no_grad():
        assert not torch.equal(tiny(x, t, segmap), tiny(x, t, segmap.flip(-1)))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_model_same_output():
    x, t, segmap = _inputs(2, 16, 3)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(TINY, 16, 3)
        _randomize(model, seed=5)
        with torch.no_grad():
            outs.append(model(x, t, segmap))
    assert torch.equal(outs[0], outs[1])


def test_parameter_count_of_tiny_by_formula():
    """tiny: 32 channels at both levels, 1 res block, SPADE hidden 16, attention only in the
    middle, learn_sigma (6 outputs), time embedding 128."""
    C, h, w, e = 4, 16, 32, 128
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    skip = lambda i, o: 0 if i == o else conv(i, o, 1)  # noqa: E731
    enc = lambda i, o: gn(i) + conv(i, o, 3) + lin(e, 2 * o) + gn(o) + conv(o, o, 3) + skip(i, o)  # noqa: E731
    spade = lambda c: conv(C, h, 3) + conv(h, 2 * c, 3)  # noqa: E731
    sdm = lambda i, o: spade(i) + conv(i, o, 3) + lin(e, 2 * o) + spade(o) + conv(o, o, 3) + skip(i, o)  # noqa: E731
    attn = gn(w) + conv(w, 3 * w, 1) + conv(w, w, 1)
    expected = (
        lin(w, e) + lin(e, e)                                   # time embedding
        + conv(3, w, 3) + 3 * enc(w, w)                         # encoder: res, down-res, res
        + 2 * sdm(w, w) + attn                                  # middle
        + 4 * sdm(2 * w, w) + sdm(w, w)                         # decoder: 2 + 2 blocks, 1 up
        + gn(w) + conv(w, 6, 3)                                 # head
    )
    model = build_model(TINY, 32, C)
    assert count_parameters(model) == expected == 516_134


# ----------------------------------------------------------------------------- checkpointing
def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, segmap = _inputs(1, 16, 4)
    grads = []
    for use_checkpoint in (False, True):
        model = _randomize(build_model(TINY, 16, 4)).train()
        model.use_checkpoint = use_checkpoint
        model(x, t, segmap).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))
    assert any(g.abs().max() > 0 for g in grads[1])


def test_checkpointing_flag_reaches_every_block():
    model = build_model(dataclasses.replace(TINY, use_checkpoint=True), 32, 2)
    flags = [m.use_checkpoint for m in model.modules() if hasattr(m, "_forward")]
    assert flags and all(flags)
    model.use_checkpoint = False
    assert not any(m.use_checkpoint for m in model.modules() if hasattr(m, "_forward"))


# ----------------------------------------------------------------------------- FLOPs
def test_forward_flops_split_into_spade_and_the_rest():
    r = forward_flops(TINY, 32, 4)
    assert r["params"] == count_parameters(build_model(TINY, 32, 4))
    assert r["cached_flops"] + r["spade_flops"] == r["flops"]
    assert 0.2 < r["spade_share"] < 0.6
    # one 3x3 conv of the head: 2 * 32 * 6 * 9 * 32 * 32 FLOPs are part of the total
    assert r["flops"] > 2 * 32 * 6 * 9 * 32 * 32


@pytest.mark.slow
def test_original_preset_size_and_cost():
    """The original ISDM 256 px model: ~652 M parameters and ~3.4 TFLOP per forward."""
    cfg = ModelConfig(preset="original", **MODEL_PRESETS["original"])
    r = forward_flops(cfg, 256, 6)
    assert 651e6 < r["params"] < 653.5e6
    assert 3.3e12 < r["flops"] < 3.5e12


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("changes, size, match", [
    ({"channel_mult": (1, 2, 2, 2)}, 36, "not divisible by 2\\*\\*\\(levels-1\\)=8"),
    ({"attention_resolutions": (8,)}, 32, "attention_resolutions contains 8.*\\[32, 16\\]"),
    ({"num_channels": 96, "num_head_channels": 64}, 32, "num_head_channels=64 does not divide"),
    ({"channel_mult": (1, 1.5)}, 32, "multiple of 32"),
    ({"num_res_blocks": 0}, 32, "num_res_blocks"),
])
def test_construction_errors_say_what_to_change(changes, size, match):
    with pytest.raises(ValueError, match=match):
        build_model(dataclasses.replace(TINY, preset="", **changes), size, 3)


def test_forward_errors_name_the_expected_shape(tiny):
    x, t, segmap = _inputs(2, 16, 4)
    with pytest.raises(ValueError, match=r"one-hot \[B, 4, H, W\]"):
        tiny(x, t, segmap[:, :3])
    with pytest.raises(ValueError, match=r"x_t must be \[B, 3, 16, 16\]"):
        tiny(x[..., :8], t, segmap)
    with pytest.raises(ValueError, match="batch"):
        tiny(x, t, tiny.precompute_condition(segmap[:1]))

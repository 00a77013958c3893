"""Faults of checkpoints of the original tool (issue 10 case 19): ``isdm import-checkpoint``
turns its state dicts into isdm checkpoints whose network computes what the original's
computed, and names every mismatch.

The original is not imported: :func:`original_blocks` / :func:`original_state_dict` re-derive
SDM's layout (guided-diffusion key names) and :func:`original_forward` its forward pass as plain
functions over a state dict, written from the SDM paper / guided-diffusion's documented design:
GroupNorm(32) in float32, sinusoidal [cos, sin] timestep embedding, legacy attention head split
(heads before q/k/v), SPADE = affine-free GroupNorm * (1 + gamma) + beta.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from isdm.cli import cli
from isdm.data.masks import one_hot
from isdm.errors import CheckpointError, ConfigError
from isdm.models import count_parameters
from isdm.training.checkpoint import load_model

# the configuration: 3.12263 M parameters in both networks
ORIGINAL = {
    "data_dir": "data/synth", "dataset_mode": "lemon-multi-class", "num_classes": 5,
    "image_size": 32, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
    "attention_resolutions": "16", "num_head_channels": 32, "learn_sigma": True,
    "resblock_updown": True, "use_scale_shift_norm": True, "diffusion_steps": 1000,
    "noise_schedule": "linear", "class_cond": True, "no_instance": True, "use_fp16": False,
}
SPADE_HIDDEN = 128


# ------------------------------------------------------------------ the original, re-derived
def original_blocks(c: dict) -> tuple[list, list, list]:
    """Layers of ``input_blocks``, ``middle_block``, ``output_blocks`` as tuples
    ``("res"|"sdm", c_in, c_out, None|"up"|"down")``, ``("attn", c, heads)``, ``("down"|"up", c)``."""
    base, mult = c["num_channels"], [int(m) for m in c["channel_mult"].split(",")]
    attn_ds = {c["image_size"] // int(r) for r in c["attention_resolutions"].split(",")}
    nhc, updown, nrb = c.get("num_head_channels", -1), c["resblock_updown"], c["num_res_blocks"]

    def heads(width, decoder):
        if nhc != -1:
            return width // nhc
        up = c.get("num_heads_upsample", -1)
        return up if decoder and up != -1 else c.get("num_heads", 4)

    inputs, chans, ch, ds = [[("conv", 3, base)]], [base], base, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            layers, ch = [("res", ch, m * base, None)], m * base
            if ds in attn_ds:
                layers.append(("attn", ch, heads(ch, False)))
            inputs.append(layers)
            chans.append(ch)
        if level < len(mult) - 1:
            inputs.append([("res", ch, ch, "down") if updown else ("down", ch)])
            chans.append(ch)
            ds *= 2
    middle = [("sdm", ch, ch, None), ("attn", ch, heads(ch, False)), ("sdm", ch, ch, None)]
    outputs = []
    for level, m in reversed(list(enumerate(mult))):
        for i in range(nrb + 1):
            layers, ch = [("sdm", ch + chans.pop(), m * base, None)], m * base
            if ds in attn_ds:
                layers.append(("attn", ch, heads(ch, True)))
            if level and i == nrb:
                layers.append(("sdm", ch, ch, "up") if updown else ("up", ch))
                ds //= 2
            outputs.append(layers)
    return inputs, middle, outputs


def _layer_shapes(layer: tuple, c: dict) -> dict[str, tuple]:
    kind, emb = layer[0], 4 * c["num_channels"]
    if kind == "conv":
        return {"weight": (layer[2], layer[1], 3, 3), "bias": (layer[2],)}
    if kind in ("down", "up"):
        name = "op" if kind == "down" else "conv"
        return {f"{name}.weight": (layer[1], layer[1], 3, 3), f"{name}.bias": (layer[1],)}
    if kind == "attn":
        ch = layer[1]
        return {"norm.weight": (ch,), "norm.bias": (ch,), "qkv.weight": (3 * ch, ch, 1),
                "qkv.bias": (3 * ch,), "proj_out.weight": (ch, ch, 1), "proj_out.bias": (ch,)}
    cin, cout = layer[1], layer[2]
    film = 2 * cout if c["use_scale_shift_norm"] else cout
    s = {"emb_layers.1.weight": (film, emb), "emb_layers.1.bias": (film,)}
    if kind == "res":
        s.update({"in_layers.0.weight": (cin,), "in_layers.0.bias": (cin,),
                  "in_layers.2.weight": (cout, cin, 3, 3), "in_layers.2.bias": (cout,),
                  "out_layers.0.weight": (cout,), "out_layers.0.bias": (cout,),
                  "out_layers.3.weight": (cout, cout, 3, 3), "out_layers.3.bias": (cout,)})
    else:
        for norm, ch in (("in_norm", cin), ("out_norm", cout)):
            s.update({f"{norm}.mlp_shared.0.weight": (SPADE_HIDDEN, c["num_classes"], 3, 3),
                      f"{norm}.mlp_shared.0.bias": (SPADE_HIDDEN,)})
            for g in ("mlp_gamma", "mlp_beta"):
                s.update({f"{norm}.{g}.weight": (ch, SPADE_HIDDEN, 3, 3), f"{norm}.{g}.bias": (ch,)})
        s.update({"in_layers.1.weight": (cout, cin, 3, 3), "in_layers.1.bias": (cout,),
                  "out_layers.2.weight": (cout, cout, 3, 3), "out_layers.2.bias": (cout,)})
    if cin != cout:
        s.update({"skip_connection.weight": (cout, cin, 1, 1), "skip_connection.bias": (cout,)})
    return s


def original_shapes(c: dict) -> dict[str, tuple]:
    """Every key of the original's state dict and its shape."""
    base, emb = c["num_channels"], 4 * c["num_channels"]
    shapes = {"time_embed.0.weight": (emb, base), "time_embed.0.bias": (emb,),
              "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,),
              "out.0.weight": (base,), "out.0.bias": (base,),
              "out.2.weight": (6 if c["learn_sigma"] else 3, base, 3, 3),
              "out.2.bias": (6 if c["learn_sigma"] else 3,)}
    inputs, middle, outputs = original_blocks(c)
    for prefix, blocks in (("input_blocks", inputs), ("output_blocks", outputs)):
        for i, layers in enumerate(blocks):
            for j, layer in enumerate(layers):
                shapes.update({f"{prefix}.{i}.{j}.{k}": v for k, v in _layer_shapes(layer, c).items()})
    for j, layer in enumerate(middle):
        shapes.update({f"middle_block.{j}.{k}": v for k, v in _layer_shapes(layer, c).items()})
    return shapes


def original_state_dict(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the original's layout (fan-in scaled; no zero-initialised layer)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in original_shapes(c).items():
        w = torch.randn(shape, generator=g)
        if len(shape) == 1:  # biases and norm affines
            w = 0.1 * w + (1.0 if ".0.weight" in key or "norm.weight" in key else 0.0)
        else:
            w = w / math.sqrt(math.prod(shape[1:]))
        out[key] = w
    return out


def _gn(x, sd, key):  # GroupNorm32: 32 groups, computed in float32
    return F.group_norm(x.float(), 32, sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5).to(x.dtype)


def _conv(x, sd, key, padding=0):
    w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
    return (F.conv1d if w.ndim == 3 else F.conv2d)(x, w, b, padding=padding)


def _spade(x, y, sd, key):
    m = F.interpolate(y, size=x.shape[-2:], mode="nearest")
    a = F.relu(_conv(m, sd, f"{key}.mlp_shared.0", 1))
    gamma, beta = _conv(a, sd, f"{key}.mlp_gamma", 1), _conv(a, sd, f"{key}.mlp_beta", 1)
    return F.group_norm(x, 32, eps=1e-5) * (1 + gamma) + beta


def _resample(x, how):
    if how == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return F.avg_pool2d(x, 2) if how == "down" else x


def _res(x, y, emb, sd, key, layer, c):
    kind, how = layer[0], layer[3]
    h = _gn(x, sd, f"{key}.in_layers.0") if kind == "res" else _spade(x, y, sd, f"{key}.in_norm")
    h, x = _resample(F.silu(h), how), _resample(x, how)
    h = _conv(h, sd, f"{key}.in_layers.{2 if kind == 'res' else 1}", 1)
    e = F.linear(F.silu(emb), sd[f"{key}.emb_layers.1.weight"], sd[f"{key}.emb_layers.1.bias"])
    e = e[:, :, None, None]

    def norm(h):
        return _gn(h, sd, f"{key}.out_layers.0") if kind == "res" else _spade(h, y, sd, f"{key}.out_norm")

    if c["use_scale_shift_norm"]:
        scale, shift = e.chunk(2, dim=1)
        h = norm(h) * (1 + scale) + shift
    else:
        h = norm(h + e)
    h = _conv(F.silu(h), sd, f"{key}.out_layers.{3 if kind == 'res' else 2}", 1)
    return (_conv(x, sd, f"{key}.skip_connection") if layer[1] != layer[2] else x) + h


def _attention(x, sd, key, heads, new_order):
    b, ch, hh, ww = x.shape
    x = x.reshape(b, ch, -1)
    qkv = _conv(_gn(x, sd, f"{key}.norm"), sd, f"{key}.qkv")
    d = ch // heads
    if new_order:  # q, k, v first, then heads
        q, k, v = (t.reshape(b * heads, d, -1) for t in qkv.chunk(3, dim=1))
    else:  # legacy: heads first, then q, k, v
        q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    scale = d ** -0.25
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, ch, -1)
    return (x + _conv(a, sd, f"{key}.proj_out")).reshape(b, ch, hh, ww)


def _apply(layers, h, y, emb, sd, prefix, c):
    for j, layer in enumerate(layers):
        key = f"{prefix}.{j}"
        if layer[0] == "conv":
            h = _conv(h, sd, key, 1)
        elif layer[0] in ("res", "sdm"):
            h = _res(h, y, emb, sd, key, layer, c)
        elif layer[0] == "attn":
            h = _attention(h, sd, key, layer[2], c.get("use_new_attention_order", False))
        elif layer[0] == "down":  # stride-2 conv (resblock_updown false)
            h = F.conv2d(h, sd[f"{key}.op.weight"], sd[f"{key}.op.bias"], stride=2, padding=1)
        else:  # "up": nearest x2, then conv
            h = _conv(_resample(h, "up"), sd, f"{key}.conv", 1)
    return h


def original_forward(sd, c, x, t, y):
    """The original UNetModel.forward(x, timesteps, y) over the state dict ``sd``."""
    half = c["num_channels"] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    inputs, middle, outputs = original_blocks(c)
    hs, h = [], x
    for i, layers in enumerate(inputs):
        h = _apply(layers, h, y, emb, sd, f"input_blocks.{i}", c)
        hs.append(h)
    h = _apply(middle, h, y, emb, sd, "middle_block", c)
    for i, layers in enumerate(outputs):
        h = _apply(layers, torch.cat([h, hs.pop()], dim=1), y, emb, sd, f"output_blocks.{i}", c)
    return _conv(F.silu(_gn(h, sd, "out.0")), sd, "out.2", 1)


# ------------------------------------------------------------------ tests
@pytest.fixture
def run(tmp_path, monkeypatch):
    """The CLI from an empty folder (no ./params.yaml is picked up)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return lambda *args: CliRunner().invoke(cli, [str(a) for a in args])


def _write_original(tmp_path, c, name="model000100.pt"):
    config, weights = tmp_path / "config_train.json", tmp_path / name
    config.write_text(json.dumps(c))
    sd = original_state_dict(c)
    torch.save(sd, weights)
    return config, weights, sd


def _inputs(c, batch=2):
    g = torch.Generator().manual_seed(1)
    size = c["image_size"]
    x_t = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, c["num_classes"], (batch, size, size), generator=g)
    labels[:, :4, :4] = 255  # ignored pixels: all-zero one-hot vectors
    return x_t, torch.tensor([3, 917][:batch]), one_hot(labels, c["num_classes"], 255)


@pytest.mark.parametrize("variant", [
    {},  # legacy head order, 2 heads of 32 channels
    {"num_head_channels": -1, "num_heads": 4, "use_new_attention_order": True},
    # attention at 8 px does not exist in a 2-level 32 px model: the original skipped it
    {"resblock_updown": False, "use_scale_shift_norm": False, "learn_sigma": False,
     "attention_resolutions": "16,8"},
], ids=["issue", "num_heads-new_order", "conv_resample-no_scale_shift-attention_8"])
def test_an_imported_network_gives_the_originals_output(run, tmp_path, variant):
    c = {**ORIGINAL, **variant}
    config, weights, sd = _write_original(tmp_path, c)
    out = tmp_path / "imported" / "best.pt"
    result = run("import-checkpoint", weights, "--config", config, "--out", out)
    assert result.exit_code == 0, result.output
    model, cfg, meta = load_model(out, ema_rate="raw")
    assert meta["weights"] == "raw" and meta["action"] == "import" and meta["imported_weights"] == "raw"
    assert meta["imported_from"] == str(weights) and len(meta["imported_sha256"]) == 64
    assert torch.load(out, weights_only=True)["step"] == 100
    assert count_parameters(model) == sum(t.numel() for t in sd.values())
    if not variant:
        assert count_parameters(model) == 3_122_630  # the 3.12263 M
    x_t, t, segmap = _inputs(c)
    with torch.no_grad():
        expected = original_forward(sd, c, x_t, t, segmap)
        got = model(x_t, t, segmap)
    assert got.shape == expected.shape == (2, 6 if c["learn_sigma"] else 3, 32, 32)
    assert expected.abs().mean() > 0.1  # a non-trivial output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_an_original_ema_file_imports_as_ema_and_samples(run, tmp_path, synth_dir):
    config, weights, sd = _write_original(tmp_path, ORIGINAL, "ema_0.9999_000100.pt")
    out = tmp_path / "best.pt"
    assert run("import-checkpoint", weights, "-c", config, "--out", out).exit_code == 0
    state = torch.load(out, weights_only=True)
    assert list(state["ema"]["shadows"]) == ["0.9999"] and state["ema"]["num_updates"] == 100
    model, cfg, meta = load_model(out)  # sampling's choice: the first EMA rate
    assert meta["weights"] == "ema 0.9999" and cfg.data.num_classes == 5
    x_t, t, segmap = _inputs(ORIGINAL, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, t, segmap), original_forward(sd, ORIGINAL, x_t, t, segmap),
                                   atol=1e-5, rtol=1e-5)
    again = run("import-checkpoint", weights, "-c", config, "--out", out)
    assert again.exit_code == 1 and "--overwrite" in again.output
    result = run("sample", "-c", config, "--data", synth_dir, "--checkpoint", out,
                 "--out", tmp_path / "samples", "--set", "sample.num_samples=1",
                 "--set", "sample.steps=2", "--set", "sample.batch_size=1",
                 "--set", "sample.s=1")  # trained without the null label: no guidance
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "samples" / "images").iterdir())) == 1


def test_an_original_mismatch_lists_keys_and_likely_config(tmp_path):
    from isdm.original.checkpoint import import_original

    config, weights, sd = _write_original(tmp_path, ORIGINAL)
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**ORIGINAL, "num_channels": 64}))
    with pytest.raises(CheckpointError) as e:
        import_original(weights, wider, tmp_path / "a.pt")
    msg = str(e.value)
    assert "shape mismatch" in msg and "time_embed.0.weight: checkpoint [128, 32], isdm [256, 64]" in msg
    assert "model.num_channels: weights 32, config 64" in msg and "model.channel_mult" not in msg
    sd["label_emb.weight"] = torch.zeros(5, 128)
    del sd["out.2.bias"]
    torch.save(sd, weights)
    with pytest.raises(CheckpointError) as e:
        import_original(weights, config, tmp_path / "b.pt")
    msg = str(e.value)
    assert "missing: out.2.bias" in msg and "no place in the network: label_emb.weight" in msg
    assert "likely config mismatch" not in msg and not (tmp_path / "a.pt").exists()
    sampling = tmp_path / "config_sample.json"  # its diffusion_steps is not the trained chain
    sampling.write_text(json.dumps({**ORIGINAL, "diffusion_steps": 300, "model_path": str(weights)}))
    with pytest.raises(ConfigError, match="sampling config"):
        import_original(weights, sampling, tmp_path / "c.pt")


# the digest's ISDM training config (256 px): 652.26 M parameters measured on the original code
ISDM_256 = {**ORIGINAL, "image_size": 256, "num_classes": 6, "num_channels": 256, "channel_mult":
            "1,1,2,2,4,4", "num_res_blocks": 2, "attention_resolutions": "32,16,8",
            "num_head_channels": 64}


@pytest.mark.parametrize("config, expected", [
    ("config_train.json", 12_364_422), ("config_finetune.json", 12_364_422),
    (ISDM_256, 652_256_518),
])
def test_the_parameter_count_of_original_configs(tmp_path, config, expected):
    """The original's layout has exactly the parameters of the isdm network its config maps to."""
    from isdm.original import load_original_config
    from isdm.models import build_model

    if isinstance(config, str):
        path = Path(__file__).parents[2] / "configs" / config
        config = {**ORIGINAL, **json.loads(path.read_text())}
    path = tmp_path / "original.json"
    path.write_text(json.dumps(config))
    cfg = load_original_config(path, action="train")
    with torch.device("meta"):  # sizes only: no memory for 652 M parameters
        isdm = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes)
    original = sum(math.prod(s) for s in original_shapes(config).values())
    assert count_parameters(isdm) == original == expected


def test_original_weights_holding_nan_are_not_imported(run, tmp_path):
    """Issue 22: no checkpoint with non-finite weights is ever written, imports included."""
    config, weights, sd = _write_original(tmp_path, ORIGINAL)
    name = next(k for k, v in sd.items() if v.is_floating_point())
    sd[name] = torch.full_like(sd[name], float("nan"))
    torch.save(sd, weights)
    out = tmp_path / "imported" / "best.pt"
    result = run("import-checkpoint", weights, "--config", config, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "NaN or inf" in result.output and not out.exists()

"""Rectangular image sizes through the UNet, every sampler, the engine, the writer, the sampling
job (also on mask crops) and the data-check advice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from isdm.cli import cli
from isdm.config import (
    MODEL_PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    default_channel_mult,
    from_dict,
)
from isdm.diffusion import GaussianDiffusion, get_betas
from isdm.models import build_model
from isdm.solvers import get_sampler, make_schedule, resolve_spacing

HW = (16, 24)
SHAPE = (2, 3, *HW)


# ------------------------------------------------------------------------------ network
def _attn_model() -> ModelConfig:
    """Two levels, attention at the short side 8 (an 8x12 map of a [16, 24] input)."""
    return ModelConfig(preset="", num_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(8,), num_head_channels=32, spade_hidden=16)


@pytest.mark.parametrize("model_cfg", [ModelConfig(preset="tiny"), _attn_model()])
def test_unet_on_rectangles(model_cfg):
    torch.manual_seed(0)
    net = build_model(model_cfg, HW, 3).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=g)
    segmap = torch.nn.functional.one_hot(torch.randint(0, 3, (2, *HW), generator=g), 3)
    segmap = segmap.permute(0, 3, 1, 2).float()
    with torch.no_grad():
        out = net(x, torch.tensor([3, 700]), segmap)
        cached = net(x, torch.tensor([3, 700]), net.precompute_condition(segmap))
    assert out.shape == (2, 6, *HW) and torch.equal(out, cached)
    with pytest.raises(ValueError, match=r"x_t must be \[B, 3, 16, 24\]"):
        net(x.transpose(2, 3), torch.tensor([3, 700]), segmap.transpose(2, 3))


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_config_rectangle_rule_is_exactly_the_unets(name):
    from isdm.models.unet import _validate

    model = ModelConfig(**MODEL_PRESETS[name])
    accepted = 0
    for h in range(8, 104, 8):
        for w in range(8, 104, 24):
            try:
                Config(data=DataConfig(image_size=(h, w)), model=model)
                config_ok = True
            except ConfigError:
                config_ok = False
            try:
                _validate((h, w), 5, model.num_channels,
                          model.channel_mult or default_channel_mult((h, w)), model.num_res_blocks,
                          model.attention_resolutions, model.num_head_channels, model.spade_hidden)
                unet_ok = True
            except ValueError:
                unet_ok = False
            assert config_ok == unet_ok, (name, h, w)
            accepted += config_ok
    assert 0 < accepted < 12 * 4 or name == "tiny"


# ------------------------------------------------------------------------------ samplers
def _oracle(chain: GaussianDiffusion, x0: torch.Tensor):
    abar_table = torch.as_tensor(chain.alphas_cumprod, dtype=torch.float64)

    def model_fn(x_t, t):
        abar = abar_table[t].view(-1, 1, 1, 1)
        eps = (x_t.double() - abar.sqrt() * x0.double()) / (1 - abar).sqrt()
        return torch.cat([eps, torch.full_like(eps, 0.3)], dim=1).float()

    return model_fn


@pytest.mark.parametrize("name,opts", [("ddim", {"eta": 0.0}), ("dpmpp2m", {}), ("ddpm", {}),
                                       ("ddim", {"eta": 1.0})])
def test_every_sampler_recovers_x0_on_a_rectangle(name, opts):
    """Done-when: rectangular x_T through ddpm / ddim / dpmpp2m with the exact oracle."""
    chain = GaussianDiffusion(get_betas("linear", 1000))
    g = torch.Generator().manual_seed(7)
    x0 = torch.rand(SHAPE, generator=g) * 1.8 - 0.9
    x_T = torch.randn(SHAPE, generator=g)
    schedule = make_schedule(chain, 10, resolve_spacing(name, "auto"))
    out = get_sampler(name)(_oracle(chain, x0), x_T, schedule,
                            generator=torch.Generator().manual_seed(2), **opts)
    assert out.shape == SHAPE
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_engine_generates_rectangles_with_every_sampler(sampler):
    from isdm.sampling.engine import SampleEngine

    cfg = from_dict(Config, {"data": {"image_size": list(HW), "num_classes": 3},
                             "model": {"preset": "tiny"}, "diffusion": {"diffusion_steps": 50},
                             "sample": {"sampler": sampler, "steps": 2, "s": 1.5}})
    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.data.image_size, 3).eval()
    engine = SampleEngine(net, GaussianDiffusion(get_betas("linear", 50)), cfg, "cpu", 3)
    labels = np.zeros((2, *HW), np.uint8)
    labels[:, 4:9, 2:20] = 1
    out = engine(labels, [11, 12])
    assert out.shape == (2, *HW, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1], engine(labels[1:], [12])[0])  # a row does not see its batch


def test_writer_and_grid_on_rectangles(tmp_path):
    from isdm.sampling.writer import OutputDir, sample_name

    out = OutputDir(tmp_path)
    out.prepare({"x": 1}, {}, num_samples=3, overwrite=False)
    names = [sample_name(i, f"k{i}") for i in range(3)]
    for i, name in enumerate(names):
        label = np.full(HW, i, np.uint8)
        out.write_sample(name, None, label, np.full((*HW, 3), 40 * i, np.uint8))
    for folder in ("images", "labels", "colored_labels", "samples"):
        assert Image.open(tmp_path / folder / names[0]).size == (24, 16)  # PIL: (W, H)
    out.write_grid(names, columns=2)
    zoom, pad = 96 // 24, 2
    assert Image.open(tmp_path / "grid.png").size == (2 * (2 * 24 * zoom + 3 * pad),
                                                      2 * (16 * zoom + pad) + pad)


# ------------------------------------------------------------------------------ the job
@pytest.fixture(scope="module")
def rect_ckpt(synth_dir, tmp_path_factory) -> Path:
    from isdm.training import train

    cfg = from_dict(Config, {
        "data": {"image_size": list(HW), "num_classes": 5, "resize": "pad"},
        "model": {"preset": "tiny"}, "diffusion": {"diffusion_steps": 50},
        "train": {"batch_size": 4, "max_epochs": 1, "max_steps": 1, "save_last": False,
                  "drop_rate": 0.2},  # the null label: guided sampling (s = 1.5) may use it
        "tracking": {"enabled": False}})
    out = tmp_path_factory.mktemp("rect")
    train(cfg, synth_dir, out, progress=False)
    return out / "best.pt"


def _sample(tmp_path, synth_dir, ckpt, data: dict) -> Path:
    import yaml

    tmp_path.mkdir(parents=True, exist_ok=True)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"image_size": list(HW), "num_classes": 5, **data},
        "sample": {"num_samples": 5, "batch_size": 2, "steps": 2, "sampler": "dpmpp2m",
                   "seed": 3}, "tracking": {"enabled": False}}))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["sample", "-c", str(params), "--data", str(synth_dir),
                                 "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return out


def test_sample_job_letterboxes_square_masks_into_a_rectangle(tmp_path, synth_dir, rect_ckpt):
    out = _sample(tmp_path, synth_dir, rect_ckpt, {"resize": "pad"})
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 5
    label = np.asarray(Image.open(out / "labels" / records[0]["file"]))
    assert label.shape == HW
    # 32x32 masks in a 16x24 (HxW) letterbox: 16x16 content, 4 padding columns each side
    assert (label[:, :4] == 255).all() and (label[:, -4:] == 255).all()
    assert (label[:, 4:20] != 255).all()
    assert Image.open(out / "samples" / records[0]["file"]).size == (24, 16)
    assert Image.open(out / "grid.png").size[0] > 0


def test_sample_job_conditions_on_seeded_mask_crops(tmp_path, synth_dir, rect_ckpt):
    from isdm.data.transforms import load_mask

    out = _sample(tmp_path, synth_dir, rect_ckpt, {"crop": True, "crop_defect_prob": 1.0})
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    for rec in records:
        op = rec["augmentation"][0]
        top, left = (int(v) for v in op[len("crop("):-1].split(","))
        source = load_mask(synth_dir / "train" / "masks" / f"{rec['source_mask']}.png",
                           "multi-class", 5, 255, None)
        label = np.asarray(Image.open(out / "labels" / rec["file"]))
        assert np.array_equal(label, source[top:top + 16, left:left + 24])
        assert (label > 0).any()  # every crop is centred on a defect pixel (probability 1)
    again = _sample(tmp_path / "again", synth_dir, rect_ckpt, {"crop": True,
                                                                "crop_defect_prob": 1.0})
    assert (again / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()


def test_crop_plan_is_seeded_per_sample(synth_dir):
    """Sample i's crop depends on (seed, i) only: a mask used twice gets two crops, and a
    shorter run plans the same first samples; balancing draws from a pool of crops."""
    from isdm.sampling.mask_sources import load_mask_set
    from isdm.sampling.plan import make_plan, materialize

    def plan(**sample):
        cfg = from_dict(Config, {"data": {"image_size": list(HW), "num_classes": 5, "crop": True},
                                 "sample": {"seed": 3, **sample}})
        masks = load_mask_set(cfg, synth_dir, cfg.data.image_size)
        return cfg, masks, make_plan(cfg, masks)

    cfg, masks, long = plan(num_samples=16)
    ops = [materialize(c, masks, cfg, with_image=False).ops for c in long.choices]
    assert all(len(o) == 1 and o[0].startswith("crop(") for o in ops)
    # the 8 masks cycle: a mask used again is cropped anew (a crop may repeat by chance)
    assert sum(ops[i] != ops[i + 8] for i in range(8)) >= 4
    assert all(long.choices[i].source == long.choices[i + 8].source for i in range(8))
    _, _, short = plan(num_samples=5)
    assert short.choices == long.choices[:5]
    cfg, masks, balanced = plan(num_samples=6, balance={"enabled": True, "augment_variants": 2})
    assert balanced.balanced and all(c.crop_seed is not None for c in balanced.choices)
    assert all(materialize(c, masks, cfg, with_image=False).mask.shape == HW
               for c in balanced.choices)


@pytest.mark.slow
def test_evaluate_on_a_rectangle_with_letterboxed_images(tmp_path, synth_dir):
    """evaluate.image_size [32, 64]: square images letterboxed (pad), padding never scored."""
    import shutil

    import yaml

    from isdm.config import load_config
    from isdm.evaluation.loading import eval_data_config, load_real

    cfg = load_config(None, ["data.resize=pad", "evaluate.image_size=[32, 64]"])
    test = load_real(synth_dir, "test", eval_data_config(cfg.data, cfg.evaluate.image_size))
    assert test.images.shape[1:] == (3, 32, 64) and test.labels.shape[1:] == (32, 64)
    assert (test.labels[:, :, :16] == 255).all() and (test.labels[:, :, 16:48] != 255).all()
    syn = tmp_path / "syn"
    for sub, src in (("samples", "images"), ("labels", "masks")):
        (syn / sub).mkdir(parents=True)
        for p in sorted((synth_dir / "train" / src).iterdir())[:2]:
            shutil.copy(p, syn / sub / p.name)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"resize": "pad"}, "tracking": {"enabled": False},
        "evaluate": {"architectures": ["FPN"], "mixes": ["RALLF000", "RALLF2"], "seeds": [0],
                     "steps": 2, "val_every": 2, "image_size": [32, 64], "batch_size": 4,
                     "bootstrap": 20}}))
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(params), "--data", str(synth_dir),
                                 "--synthetic", str(syn), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["miou_with_synthetic"] <= 1.0


# ------------------------------------------------------------------------------ data check
def _wide_dataset(root: Path, n: int = 4) -> Path:
    for k in range(n):
        ids = np.zeros((64, 96), np.uint8)
        ids[10 + k:14 + k, 30:34] = 1  # a 4x4 defect
        ids[40:56, 8:40] = 2
        for sub, arr in (("images", np.stack([ids * 90] * 3, -1)), ("masks", ids)):
            for split in ("train", "test"):
                p = root / split / sub / f"{k}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(p)
    return root


def test_data_check_advises_pixels_aspect_and_a_setting(tmp_path):
    root = _wide_dataset(tmp_path / "d")
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("model:\n  preset: tiny\n")
    base = ["data", "check", str(root), "-c", str(tiny), "--num-classes", "3"]
    run = lambda *s: CliRunner().invoke(cli, [*base, "--json",
                                              *(x for k in s for x in ("--set", k))])
    r = run("data.image_size=16")
    assert r.exit_code == 0, r.output
    advice = json.loads(r.output)["advice"]
    text = "\n".join(advice["lines"])
    assert ("class 1 (class 1): 1.0 px per image at image_size 16 (resize stretch) (native "
            "16.0 px; in 4 of 4 images): raise image_size or use crops") in text
    # rows 40:56 -> 4 of 16 output rows, columns 8:40 -> the 6 sampled at 6x+3 in 9..39
    assert "class 2 (class 2): 24.0 px per image" in text
    assert "aspect ratio W/H: 1.50 .. 1.50" in text and "distorts the median image by x1.50" in text
    # 16 native px reach 10 only at scale 1 (0.75**2 * 16 = 9)
    assert advice["suggested"] == {"image_size": 16, "crop": True, "scale": 1.0,
                                   "crop_defect_prob": 0.5}
    lines = json.loads(run("data.image_size=8").output)["advice"]["lines"]
    assert "0.8 px per image at image_size 8" in lines[0] and "vanishes from 1 of them" in lines[0]
    r = run("data.image_size=[64, 96]")
    advice = json.loads(r.output)["advice"]
    assert advice["suggested"] is None  # native size, no distortion: nothing to change
    r = run("data.image_size=64")
    assert json.loads(r.output)["advice"]["suggested"] == {"image_size": [64, 96],
                                                           "resize": "stretch", "crop": False}
    human = CliRunner().invoke(cli, [*base, "--set", "data.image_size=16"])
    assert "advice (train split):" in human.output and "suggested: data {image_size: 16, crop: " \
        "true, scale: 1, crop_defect_prob: 0.5}" in human.output

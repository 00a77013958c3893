"""The config tree: strict loading, suggestions, overrides, original ISDM JSON configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from isdm.config import (
    Config,
    ConfigError,
    MODEL_PRESETS,
    TrainConfig,
    config_from_json,
    flatten,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]

# The original tool's config_train.json, as committed upstream (paths aside): note the
# `weights_decay` typo that silently disabled weight decay there.
ORIGINAL_TRAIN = {
    "root_log_dir": "OUTPUT/", "data_dir": "data/synth", "dataset_mode": "lemon-multi-class",
    "lr": 0.0001, "batch_size": 32, "diffusion_steps": 1000, "image_size": 256,
    "learn_sigma": True, "num_classes": 6, "noise_schedule": "linear", "class_cond": True,
    "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
    "attention_resolutions": "32,16,8", "resblock_updown": True, "use_fp16": True,
    "use_scale_shift_norm": True, "use_checkpoint": True, "no_instance": True,
    "weights_decay": 1e-05,
}


def test_defaults_roundtrip_json():
    cfg = Config()
    again = config_from_json(json.dumps(to_dict(cfg)))
    assert again == cfg


def test_unknown_key_suggests_closest(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  weights_decay: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.weights_decay.*did you mean weight_decay\?"):
        load_config(p)


def test_unknown_section_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean sample"):
        load_config(None, ["sampel.s=2"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer, got 'eight'"):
        load_config(None, ["train.batch_size=eight"])
    with pytest.raises(ConfigError, match=r"sample\.sampler: 'euler' is not one of"):
        load_config(None, ["sample.sampler=euler"])


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.lr=3e-4", "evaluate.seeds=[1,2,3]", "data.ignore_index=null"])
    assert cfg.train.lr == 3e-4
    assert cfg.evaluate.seeds == (1, 2, 3)
    assert cfg.data.ignore_index is None


def test_model_preset_then_explicit_keys():
    cfg = load_config(None, ["model.preset=tiny", "model.num_channels=64"])
    assert cfg.model.num_channels == 64
    assert cfg.model.channel_mult == tuple(MODEL_PRESETS["tiny"]["channel_mult"])


def test_dataset_mode_aliases_and_binary_classes():
    cfg = load_config(None, ["data.dataset_mode=lemon-binary", "data.num_classes=2"])
    assert cfg.data.dataset_mode == "binary"
    with pytest.raises(ConfigError, match="needs 2"):
        load_config(None, ["data.dataset_mode=binary", "data.num_classes=5"])


def test_flatten_uses_params_keys():
    flat = flatten(Config())
    assert flat["train.lr"] == Config().train.lr
    assert flat["sample.balance.max_class_dif"] == 0.1
    assert "finetune.drop_rate" in flat


def test_finetune_section_defaults_differ_from_train():
    cfg = load_config(None, ["finetune.lr=5e-5"])
    assert cfg.finetune.drop_rate == 0.2 and cfg.finetune.lr == 5e-5
    assert cfg.train.drop_rate == 0.0


def test_val_loss_selection_needs_split():
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(select_on="val_loss")


def test_original_train_config_rejects_weights_decay(tmp_path):
    p = tmp_path / "config_train.json"
    p.write_text(json.dumps(ORIGINAL_TRAIN))
    with pytest.raises(ConfigError, match=r"'weights_decay'; did you mean weight_decay\?"):
        load_config(p, action="train")


def test_original_train_config_maps_onto_tree(tmp_path):
    fixed = {k: v for k, v in ORIGINAL_TRAIN.items() if k != "weights_decay"}
    fixed["weight_decay"] = 1e-5
    p = tmp_path / "config_train.json"
    p.write_text(json.dumps(fixed))
    cfg = load_config(p, action="train")
    assert cfg.train.weight_decay == 1e-5
    assert cfg.train.batch_size == 32 and cfg.train.precision == "fp16"
    assert cfg.model.attention_resolutions == (32, 16, 8)
    assert cfg.model.num_channels == 256 and cfg.model.use_checkpoint is True
    assert cfg.data.dataset_mode == "multi-class" and cfg.data.num_classes == 6
    assert cfg.channel_mult() == (1, 1, 2, 2, 4, 4)


def test_original_sample_config_means_exact_respacing():
    cfg = load_config(REPO / "configs" / "config_sample.json", action="sample")
    assert cfg.sample.steps == 300 and cfg.sample.sampler == "ddpm"
    assert cfg.diffusion.diffusion_steps == 1000  # the trained chain is untouched
    assert cfg.sample.balance.enabled and cfg.sample.balance.ejection_classes == (0,)


def test_original_finetune_config_routes_to_finetune_section():
    cfg = load_config(REPO / "configs" / "config_finetune.json")  # action inferred
    assert cfg.finetune.drop_rate == 0.2 and cfg.finetune.lr == 1e-4
    assert cfg.train.drop_rate == 0.0


@pytest.mark.parametrize("name", ["config_train.json", "config_finetune.json",
                                  "config_sample.json", "tiny.yaml"])
def test_shipped_configs_load(name):
    load_config(REPO / "configs" / name)


def test_cli_config_show(tmp_path):
    from isdm.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["config", "show", "-c", str(REPO / "configs" / "config_train.json"),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["train"]["weight_decay"] == 1e-5
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(ORIGINAL_TRAIN))
    res = runner.invoke(cli, ["config", "show", "-c", str(p)])
    assert res.exit_code != 0
    assert "did you mean weight_decay?" in res.output

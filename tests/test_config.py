"""The config tree: strict loading, suggestions, overrides, original ISDM JSON configs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import ORIGINAL_TRAIN

from isdm.config import (
    MODEL_PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_from_json,
    default_channel_mult,
    flatten,
    load_config,
    to_dict,
)
from isdm.original import load_original_config

REPO = Path(__file__).resolve().parents[1]


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


def test_preset_contradicted_by_an_explicit_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.num_channels=64: contradicts "
                                          r"model\.preset='tiny', which sets 32: drop the key"):
        load_config(None, ["model.preset=tiny", "model.num_channels=64"])
    # a params file that repeats the preset's values (as params.yaml does) is fine
    p = tmp_path / "p.yaml"
    p.write_text("model:\n  preset: tiny\n  channel_mult: [1, 1]\n  spade_hidden: 16\n")
    assert load_config(p).model == ModelConfig(preset="tiny")
    # no preset: every size may be chosen; the keys not given are the default preset's
    cfg = load_config(None, ["model.preset=''", "model.num_channels=64"])
    assert cfg.model.num_channels == 64 and cfg.model.preset == ""
    assert cfg.model.channel_mult == MODEL_PRESETS["default"]["channel_mult"]


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_model_config_applies_its_preset(name):
    model = ModelConfig(preset=name)
    fields = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "preset"]
    assert sorted(MODEL_PRESETS[name]) == sorted(fields)  # a preset names every key
    assert {k: getattr(model, k) for k in fields} == MODEL_PRESETS[name]
    # the training knobs may differ from the preset: they do not change the weights
    assert ModelConfig(preset=name, dropout=0.1, use_checkpoint=True).dropout == 0.1


def test_model_config_defaults_are_the_default_preset():
    assert ModelConfig() == ModelConfig(preset="default")
    assert ModelConfig().preset == "default" and Config().model.spade_hidden == 16
    # sizes that differ from the default preset do not claim it
    assert ModelConfig(num_channels=64).preset == ""
    assert ModelConfig(spade_hidden=16, num_channels=32).preset == "default"
    with pytest.raises(ConfigError, match="unknown preset; did you mean 'tiny'"):
        ModelConfig(preset="tinny")


def test_stored_config_with_a_contradicting_preset_still_loads():
    """Checkpoints written before presets were enforced may hold such a config."""
    stored = to_dict(Config())
    stored["model"].update(preset="tiny", num_channels=64)
    cfg = config_from_json(json.dumps(stored))
    assert cfg.model.preset == "" and cfg.model.num_channels == 64
    assert cfg.model.spade_hidden == 16


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


def test_original_train_config_maps_onto_tree(tmp_path):
    fixed = {k: v for k, v in ORIGINAL_TRAIN.items() if k != "weights_decay"}
    fixed["weight_decay"] = 1e-5
    p = tmp_path / "config_train.json"
    p.write_text(json.dumps(fixed))
    cfg = load_original_config(p, action="train")
    assert cfg.train.weight_decay == 1e-5
    assert cfg.train.batch_size == 32 and cfg.train.precision == "fp16"
    assert cfg.model.attention_resolutions == (32, 16, 8)
    assert cfg.model.num_channels == 256 and cfg.model.use_checkpoint is True
    assert cfg.data.dataset_mode == "multi-class" and cfg.data.num_classes == 6
    assert cfg.channel_mult() == (1, 1, 2, 2, 4, 4)


def test_original_sample_config_means_exact_respacing():
    cfg = load_original_config(REPO / "configs" / "config_sample.json", action="sample")
    assert cfg.sample.steps == 300 and cfg.sample.sampler == "ddpm"
    assert cfg.diffusion.diffusion_steps == 1000  # the trained chain is untouched
    assert cfg.sample.balance.enabled and cfg.sample.balance.ejection_classes == (0,)


def test_original_finetune_config_routes_to_finetune_section():
    cfg = load_original_config(REPO / "configs" / "config_finetune.json")  # action inferred
    assert cfg.finetune.drop_rate == 0.2 and cfg.finetune.lr == 1e-4
    assert cfg.train.drop_rate == 0.0


@pytest.mark.parametrize("name", ["config_train.json", "config_finetune.json",
                                  "config_sample.json", "tiny.yaml", "gpu.yaml"])
def test_shipped_configs_load(name):
    (load_original_config if name.endswith(".json") else load_config)(REPO / "configs" / name)


def test_cli_config_show(tmp_path):
    from isdm.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["config", "show", "-c", str(REPO / "configs" / "config_train.json"),
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["train"]["weight_decay"] == 1e-5
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({**ORIGINAL_TRAIN, "weight_decy": 0.1}))
    res = runner.invoke(cli, ["config", "show", "-c", str(p)])
    assert res.exit_code == 1
    assert "unknown key 'weight_decy'; did you mean weight_decay?" in res.output


def _numeric_leaves() -> list[tuple[str, object]]:
    """Every number and list-of-numbers key of the tree, with its default."""
    def numeric(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return [(k, v) for k, v in flatten(Config()).items()
            if numeric(v) or isinstance(v, list) and v and all(numeric(x) for x in v)]


@pytest.mark.parametrize("key, default", _numeric_leaves())
def test_every_numeric_key_has_a_range(key, default):
    """-1 (or [-1]) is out of range for every number of the tree, nan for every float."""
    bad = "[-1]" if isinstance(default, list) else "-1"
    with pytest.raises(ConfigError, match=rf"(^|\s){key}=\[?-1(\.0)?\]?: "):
        load_config(None, [f"{key}={bad}"])
    if isinstance(default, float) or isinstance(default, list) and isinstance(default[0], float):
        with pytest.raises(ConfigError, match=rf"{key}=\[?nan\]?: must be a finite number"):
            load_config(None, [f"{key}={'[.nan]' if isinstance(default, list) else '.nan'}"])


def test_all_invalid_values_of_a_file_are_listed_at_once(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  lr: -1\n  batch_size: 0\n"
                 "sample:\n  balance:\n    augment_variants: -2\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: 3 invalid values:\n  train\.lr=-1\.0: must "
                                          r"be > 0\n  train\.batch_size=0: must be >= 1\n  "
                                          r"sample\.balance\.augment_variants=-2: must be >= 0$"):
        load_config(p)


_MODELS = {
    "tiny": dict(preset="tiny"),
    "default": dict(preset="default"),
    "by-size": dict(preset="", channel_mult=(), attention_resolutions=(16, 8),
                    num_head_channels=64),
    "3-levels": dict(preset="", channel_mult=(1, 2, 2), attention_resolutions=(16,)),
    "5-levels": dict(preset="", channel_mult=(1, 1, 2, 2, 4), attention_resolutions=(8,)),
    "heads-64": dict(preset="", num_channels=96, channel_mult=(1, 2), num_head_channels=64,
                     attention_resolutions=()),
    "half": dict(preset="", num_channels=64, channel_mult=(0.5, 1), attention_resolutions=()),
}


@pytest.mark.parametrize("name", list(_MODELS))
def test_config_size_rule_is_exactly_the_unets(name):
    """A model/image-size pair loads iff SDMUNet accepts it (isdm.models.unet._validate)."""
    from isdm.models.unet import _validate

    model = ModelConfig(**_MODELS[name])
    for size in range(8, 264, 8):
        try:
            Config(data=DataConfig(image_size=size), model=model)
            config_ok = True
        except ConfigError:
            config_ok = False
        try:
            mult = model.channel_mult or default_channel_mult(size)
            _validate(size, 5, model.num_channels, mult, model.num_res_blocks,
                      model.attention_resolutions, model.num_head_channels, model.spade_hidden)
            unet_ok = True
        except ValueError:
            unet_ok = False
        assert config_ok == unet_ok, (name, size, config_ok)


def test_mix_rule_is_exactly_parse_mix():
    from isdm.errors import EvaluationError
    from isdm.evaluation.mixes import parse_mix

    for code in ["RALLF000", "RALLFALL", "R20F100", "R000FALL", "R0F0", "R000F000", "R10F",
                 "rallf000", "R1F1x", "RF1", "R-1F2", "R01F0"]:
        try:
            parse_mix(code)
            parsed = True
        except EvaluationError:
            parsed = False
        try:
            load_config(None, [f"evaluate.mixes=[{code}]"])
            loaded = True
        except ConfigError:
            loaded = False
        assert parsed == loaded, code


def test_empty_file_is_the_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing set\n")
    assert load_config(p) == Config()
    assert math.isfinite(load_config(p).sample.s)


# ------------------------------------------------------------------------ runtime section
@pytest.mark.parametrize("old, new", [("data.num_workers=2", "runtime.num_workers"),
                                      ("train.device=cpu", "runtime.device"),
                                      ("finetune.device=cpu", "runtime.device"),
                                      ("evaluate.device=cpu", "runtime.device")])
def test_keys_that_moved_to_runtime_say_where_they_went(old, new):
    key = old.split("=")[0].replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"{key}: is now {new.replace('.', r'[.]')} "):
        load_config(None, [old])


def test_a_checkpoint_config_with_the_moved_keys_still_loads():
    """Checkpoints written before the runtime section store train.device etc.: those keys said
    how that run ran, so they are dropped and the rest is the same config."""
    cfg = load_config(None, ["runtime.device=cpu", "train.lr=0.001"])
    stored = to_dict(cfg)
    del stored["runtime"]
    stored["data"]["num_workers"] = 4
    for section in ("train", "finetune", "evaluate"):
        stored[section]["device"] = "cuda"
    assert config_from_json(json.dumps(stored)) == cfg.replace(runtime=Config().runtime)

"""params.yaml mirrors the config tree: it names every field, in the tree's order, and differs
from the built-in defaults exactly in the embedded pipeline's documented choices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from isdm.config import (
    Config,
    ModelConfig,
    config_from_json,
    flatten,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"

# The keys where the embedded pipeline chooses another value than the built-in default, and why
# (params.yaml's comments): v-prediction learns in a few hundred CPU steps, 5-step epochs are
# too noisy to stop on, the short CPU budget wants larger learning rates and a budget in steps
# (the same work on any dataset; 200 and 30 epochs of the 40 embedded images).
PIPELINE_CHOICES = {
    "diffusion.prediction": "v",
    "train.lr": 0.001,
    "train.max_epochs": 0,
    "train.max_steps": 1000,
    "train.patience": 0,
    "finetune.lr": 0.0005,
    "finetune.max_epochs": 0,
    "finetune.max_steps": 150,
    "finetune.patience": 0,
}


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys |= _leaf_keys(value, dotted) if isinstance(value, dict) else {dotted}
    return keys


def test_params_yaml_names_every_config_field():
    written = _leaf_keys(yaml.safe_load(PARAMS.read_text()))
    expected = set(flatten(Config()))
    assert sorted(expected - written) == [], "config fields missing from params.yaml"
    assert sorted(written - expected) == [], "params.yaml keys that are not config fields"
    sections = [f.name for f in dataclasses.fields(Config)]
    assert list(yaml.safe_load(PARAMS.read_text())) == sections  # same order as the tree


def test_params_yaml_differs_from_the_defaults_only_in_the_pipeline_choices():
    params, defaults = flatten(load_config(PARAMS)), flatten(Config())
    differ = {k: v for k, v in params.items() if v != defaults[k]}
    assert differ == PIPELINE_CHOICES


def test_params_yaml_model_is_the_default_preset():
    """The explicit model keys repeat the preset they name; a diverging key would not load."""
    cfg = load_config(PARAMS)
    assert cfg.model == ModelConfig(preset="default") == ModelConfig()
    assert yaml.safe_load(PARAMS.read_text())["model"]["preset"] == "default"


def test_params_yaml_survives_the_checkpoint_roundtrip():
    """A checkpoint stores to_dict(cfg); rebuilding from it gives the same config."""
    cfg = load_config(PARAMS)
    assert config_from_json(to_dict(cfg)) == cfg


def test_dotted_overrides_reach_params_yaml_keys():
    """`dvc exp run -S sample.s=3.0` edits the same key `--set sample.s=3.0` overrides."""
    cfg = load_config(PARAMS, ["sample.s=3.0", "finetune.drop_rate=0.3"])
    assert cfg.sample.s == 3.0 and cfg.finetune.drop_rate == 0.3
    assert flatten(cfg)["sample.s"] == 3.0

"""params.yaml mirrors the config tree: it loads strictly and names every field explicitly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from isdm.config import Config, flatten, load_config

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys |= _leaf_keys(value, dotted) if isinstance(value, dict) else {dotted}
    return keys


def test_params_yaml_loads_strictly():
    cfg = load_config(PARAMS)
    assert isinstance(cfg, Config)
    # the embedded pipeline: data/synth, 64 px, 5 classes, the default model preset
    assert (cfg.data.root, cfg.data.image_size, cfg.data.num_classes) == ("data/synth", 64, 5)
    assert cfg.synth.image_size == cfg.data.image_size
    assert cfg.model.preset == "default"
    assert cfg.finetune.drop_rate > 0  # guidance needs an unconditional model


def test_params_yaml_names_every_config_field():
    written = _leaf_keys(yaml.safe_load(PARAMS.read_text()))
    expected = set(flatten(Config()))
    assert sorted(expected - written) == [], "config fields missing from params.yaml"
    assert sorted(written - expected) == [], "params.yaml keys that are not config fields"
    sections = [f.name for f in dataclasses.fields(Config)]
    assert list(yaml.safe_load(PARAMS.read_text())) == sections  # same order as the tree


def test_explicit_model_keys_equal_the_default_preset():
    """The explicit model keys must not silently diverge from the preset they claim."""
    from isdm.config import MODEL_PRESETS

    model = yaml.safe_load(PARAMS.read_text())["model"]
    for key, value in MODEL_PRESETS[model["preset"]].items():
        assert list(value) == model[key] if isinstance(value, tuple) else value == model[key], key


def test_dotted_overrides_reach_params_yaml_keys():
    """`dvc exp run -S sample.s=3.0` edits the same key `--set sample.s=3.0` overrides."""
    cfg = load_config(PARAMS, ["sample.s=3.0", "finetune.drop_rate=0.3"])
    assert cfg.sample.s == 3.0 and cfg.finetune.drop_rate == 0.3
    assert flatten(cfg)["sample.s"] == 3.0

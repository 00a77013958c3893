"""Layered configs: defaults, then -c files in order, then ISDM_* variables, then --set; strict in
every layer (errors name the file and key); finetune inherits from train; `isdm config show`
says where each value came from; `isdm config apply` writes an overlay into params.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from isdm.cli import cli
from isdm.config import (
    Config,
    ConfigError,
    config_from_json,
    flatten,
    load_config,
    resolve,
    to_dict,
)
from isdm.original import load_original_config

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    return _write(tmp_path / "base.yaml", "train:\n  lr: 0.002\n  batch_size: 4\n"
                                          "evaluate:\n  seeds: [0, 1, 2]\n  steps: 10\n")


def test_overlays_deep_merge_in_order_and_set_wins(tmp_path, base):
    over = _write(tmp_path / "over.yaml", "train:\n  lr: 0.003\nevaluate:\n  seeds: [7]\n")
    cfg = load_config([base, over], ["train.lr=0.004"])
    assert cfg.train.lr == 0.004 and cfg.train.batch_size == 4  # merged key by key
    assert cfg.evaluate.seeds == (7,) and cfg.evaluate.steps == 10  # a list is replaced
    assert load_config([over, base]).train.lr == 0.002  # the later file wins


def test_a_file_may_write_dotted_keys_but_not_a_key_twice(tmp_path, base):
    dotted = _write(tmp_path / "best_params.yaml", "sample.s: 2.5\nsample.balance.enabled: true\n")
    cfg = load_config([base, dotted])
    assert cfg.sample.s == 2.5 and cfg.sample.balance.enabled
    twice = _write(tmp_path / "twice.yaml", "sample.s: 2.5\nsample:\n  s: 3.0\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: sample\.s is given twice"):
        load_config(twice)


@pytest.mark.parametrize("text, message", [
    ("train:\n  weights_decay: 0.1\n", r"over\.yaml: train\.weights_decay: unknown key "
                                       r"'weights_decay'; did you mean weight_decay\?"),
    ("train:\n  batch_size: eight\n", r"over\.yaml: train\.batch_size: expected an integer"),
    ("sample:\n  s: .nan\n", r"over\.yaml: sample\.s=nan: must be a finite number"),
    ("sample:\n  s: 1\n  s: 2\n", r"over\.yaml, line 3: duplicate key 's'"),
    ("train:\n  lr: -1\n", r"over\.yaml: train\.lr=-1\.0: must be > 0"),
])
def test_every_layer_is_strict_and_its_errors_name_it(tmp_path, base, text, message):
    over = _write(tmp_path / "over.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_config([base, over])


def test_errors_of_several_layers_name_each(tmp_path, base):
    over = _write(tmp_path / "over.yaml", "train:\n  lr: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config([base, over], ["evaluate.steps=0"])
    text = str(e.value)
    assert text.startswith("2 invalid values:")
    assert f"{over}: train.lr=-1.0: must be > 0" in text
    assert "--set: evaluate.steps=0: must be an integer >= 1 or auto" in text


def test_finetune_inherits_from_train_what_it_does_not_set(tmp_path):
    p = _write(tmp_path / "p.yaml", "train:\n  lr: 0.002\n  batch_size: 4\n  seed: 3\n"
                                    "finetune:\n  seed: 5\n")
    resolved = resolve([p])
    ft = resolved.config.finetune
    assert (ft.batch_size, ft.seed) == (4, 5)  # inherited; its own
    assert (ft.lr, ft.max_steps, ft.drop_rate) == (5e-4, 150, 0.2)  # finetune's own defaults
    assert resolved.sources["finetune.batch_size"] == f"{p} (train.batch_size)"
    assert resolved.sources["finetune.lr"] == "default"
    with pytest.raises(ConfigError, match=r"^--set: train\.batch_size=0: must be >= 1$"):
        load_config(p, ["train.batch_size=0"])  # one mistake, reported once


def test_environment_variables_set_runtime_and_tracking_for_the_cli_only(monkeypatch):
    env = {"ISDM_DEVICE": "cpu", "ISDM_NUM_WORKERS": "2", "ISDM_TRACKING": "false"}
    resolved = resolve([], [], env=env)
    assert resolved.config.runtime.device == "cpu" and resolved.config.runtime.num_workers == 2
    assert not resolved.config.tracking.enabled
    assert resolved.sources["runtime.device"] == "env ISDM_DEVICE"
    assert resolve([], ["runtime.device=cuda"], env=env).config.runtime.device == "cuda"
    with pytest.raises(ConfigError, match=r"env ISDM_NUM_WORKERS: runtime\.num_workers: "
                                          r"expected an integer"):
        resolve([], [], env={"ISDM_NUM_WORKERS": "many"})
    monkeypatch.setenv("ISDM_DEVICE", "cpu")
    assert load_config(None).runtime.device == "auto"  # library calls read no environment


def test_a_stored_config_without_a_newer_key_keeps_the_default_of_its_time():
    stored = to_dict(Config())
    stored["train"]["max_epochs"] = 30
    del stored["diffusion"]["prediction"], stored["train"]["max_steps"]
    cfg = config_from_json(json.dumps(stored))
    assert cfg.diffusion.prediction == "eps" and cfg.train.max_steps == 0
    assert config_from_json(json.dumps(to_dict(Config()))) == Config()  # complete: as stored


def test_original_configs_keep_their_meaning():
    """An original JSON config is read on top of configs/original.yaml: eps, epoch budgets."""
    cfg = load_original_config(REPO / "configs" / "config_train.json", action="train")
    assert cfg.diffusion.prediction == "eps"
    assert (cfg.train.max_epochs, cfg.train.patience, cfg.train.max_steps) == (30, 10, 0)
    cfg = load_original_config(REPO / "configs" / "config_finetune.json", action="finetune")
    assert (cfg.finetune.max_epochs, cfg.finetune.patience, cfg.finetune.max_steps) == (10, 5, 0)


def test_config_show_says_where_each_value_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ISDM_DEVICE", "cpu")
    shutil.copy(REPO / "params.yaml", "params.yaml")
    res = CliRunner().invoke(cli, ["config", "show", "-c", "params.yaml", "-c",
                                   str(REPO / "configs" / "crackforest.yaml"),
                                   "--set", "model.preset=tiny"])
    assert res.exit_code == 0, res.output
    lines = {line.split(":")[0].strip(): line for line in res.output.splitlines()}
    assert lines["crop"].split("#")[1].strip() == str(REPO / "configs" / "crackforest.yaml")
    assert lines["num_train"].endswith("# params.yaml")
    assert lines["weight_decay"].endswith("# default")
    assert lines["spade_hidden"].endswith("# preset tiny (--set)")
    assert lines["device"].endswith("# env ISDM_DEVICE")
    plain = CliRunner().invoke(cli, ["config", "show", "--format", "json"])
    assert json.loads(plain.output) == to_dict(load_config(tmp_path / "params.yaml",
                                                           env={"ISDM_DEVICE": "cpu"}))


def test_config_apply_writes_the_overlay_into_params_yaml(tmp_path, monkeypatch):
    """Values replaced in place (comments kept), missing keys added to their (new) section; the
    file then means exactly params.yaml + the overlay."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", "params.yaml")
    original = Path("params.yaml").read_text()
    over = _write(tmp_path / "over.yaml", "sample:\n  s: 2.5\n  balance:\n    enabled: true\n"
                                          "train.weight_decay: 0.01\ntracking:\n  enabled: false\n")
    wanted = to_dict(load_config(["params.yaml", over]))
    res = CliRunner().invoke(cli, ["config", "apply", str(over)])
    assert res.exit_code == 0, res.output
    assert "params.yaml: sample.s: 1.5 -> 2.5" in res.output
    assert to_dict(load_config("params.yaml")) == wanted
    text = Path("params.yaml").read_text()
    old_s = next(line for line in original.splitlines() if line.startswith("  s: "))
    new_s = next(line for line in text.splitlines() if line.startswith("  s: "))
    assert new_s.replace("2.5", "1.5") == old_s  # the comment kept at its column
    assert "  balance:\n    enabled: true\n" in text and "\ntracking:\n  enabled: false\n" in text


def test_config_apply_refuses_an_invalid_overlay_and_leaves_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", "params.yaml")
    before = Path("params.yaml").read_text()
    for text in ("train:\n  lr: -1\n", "trian:\n  lr: 1\n"):
        bad = _write(tmp_path / "bad.yaml", text)
        res = CliRunner().invoke(cli, ["config", "apply", str(bad)])
        assert res.exit_code == 1 and "bad.yaml" in res.output, res.output
    assert Path("params.yaml").read_text() == before


def test_every_command_takes_several_config_files(tmp_path, base):
    """-c is repeatable on every command that reads a config."""
    from isdm.cli import _COMMANDS

    over = _write(tmp_path / "over.yaml", "sample:\n  s: 2.5\n")
    for name in _COMMANDS:
        command = cli.get_command(None, name)
        commands = command.commands.values() if hasattr(command, "commands") else [command]
        for cmd in commands:
            option = next((p for p in cmd.params if "-c" in getattr(p, "opts", [])), None)
            if option is not None and cmd.name != "import-checkpoint":
                assert option.multiple, cmd.name
    res = CliRunner().invoke(cli, ["config", "show", "--format", "json", "-c", str(base),
                                   "-c", str(over)])
    assert json.loads(res.output)["sample"]["s"] == 2.5 and json.loads(res.output)["train"][
        "batch_size"] == 4
    assert flatten(load_config([base, over]))["sample.s"] == 2.5


@pytest.mark.parametrize("base", [["params.yaml"], ["params.yaml", "configs/crackforest.yaml"],
                                  ["params.yaml", "configs/tiny.yaml"],
                                  ["configs/config_train.json"]])
@pytest.mark.parametrize("preset", ["tiny", "default", "original"])
def test_one_override_switches_the_preset(base, preset):
    from isdm.config import resolve
    from isdm.config.model import SIZE_KEYS, ModelConfig
    from isdm.original import config_tree

    resolved = resolve([REPO / p for p in base], [f"model.preset={preset}"], action="train",
                       flat=config_tree)
    model, want = resolved.config.model, ModelConfig(preset=preset)
    assert model.preset == preset
    assert {k: getattr(model, k) for k in SIZE_KEYS} == {k: getattr(want, k) for k in SIZE_KEYS}
    assert all(resolved.sources[f"model.{k}"] == "preset " + preset + " (--set)"
               for k in SIZE_KEYS)


def test_sizes_beside_the_preset_in_one_layer_must_still_agree():
    from isdm.config import resolve

    with pytest.raises(ConfigError, match="contradicts model.preset='tiny'"):
        resolve([], ["model.preset=tiny", "model.num_channels=64"])
    assert resolve([], ["model.preset=tiny", "model.num_channels=32"]).config.model.preset == "tiny"
    sized = resolve([], ["model.num_channels=64", "model.preset=''"])  # '' keeps the sizes
    assert sized.config.model.num_channels == 64

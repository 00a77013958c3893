"""params.yaml holds what users change: a subset of the config tree whose values differ from the
dataclass defaults unless the key is a knob kept in view (USER_KNOBS), at most 50 keys, finetune
stating only what differs from train, model only its preset; the tune pipeline's params file
likewise; `dvc exp show` stays at most ~60 param and metric columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from isdm.config import (
    FORMER_DEFAULTS,
    Config,
    TuneConfig,
    config_from_json,
    flatten,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
TUNE_PARAMS = REPO / "pipelines" / "tune" / "params.yaml"
LABELS_PARAMS = REPO / "pipelines" / "labels" / "params.yaml"
PROTOCOLS_PARAMS = REPO / "pipelines" / "protocols" / "params.yaml"
FULL_PARAMS = REPO / "pipelines" / "full" / "params.yaml"

# The keys params.yaml keeps even where they equal their default: the dataset, the model preset,
# the budgets, guidance and sampler, the evaluation recipe and the curation thresholds, the
# values a user of the pipeline changes. Any other key appears only with a value of its own.
USER_KNOBS = {
    "data.root", "data.dataset_mode", "data.num_classes", "data.image_size",
    "data.resize", "data.crop", "data.scale",
    "synth.num_train", "synth.num_test",
    "model.preset",
    "diffusion.prediction",
    "train.lr", "train.batch_size", "train.max_steps",
    "finetune.lr", "finetune.drop_rate", "finetune.max_steps",
    "sample.num_samples", "sample.sampler", "sample.steps", "sample.s",
    "sample.mask_source",
    "evaluate.architectures", "evaluate.seeds",
    "evaluate.steps", "evaluate.val_every", "evaluate.image_size",
    "curate.min_fidelity", "curate.pixel_threshold", "curate.hardness_power",
    "curate.copy_quantile",
}
# The study's search space and budget (pipelines/tune/params.yaml).
TUNE_KNOBS = {
    "tune.n_trials", "tune.s_low", "tune.s_high", "tune.drop_rates", "tune.steps",
    "tune.samplers", "tune.ratios", "tune.eval_steps", "tune.repeats",
    "tune.curate_min_fidelity", "tune.curate_pixel_thresholds",
}
# Sections no params file of the main pipeline holds: how commands run (flags, ISDM_* variables).
NOT_IN_PARAMS = {"runtime", "tracking", "tune", "labels"}


def _leaves(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        out.update(_leaves(value, dotted) if isinstance(value, dict) else {dotted: value})
    return out


def _written(path: Path) -> dict:
    return _leaves(yaml.safe_load(path.read_text()))


# The label-efficiency curve's points and seed (pipelines/labels/params.yaml).
LABELS_KNOBS = {"labels.fractions", "labels.seed"}


@pytest.mark.parametrize("path, knobs", [(PARAMS, USER_KNOBS), (TUNE_PARAMS, TUNE_KNOBS),
                                         (LABELS_PARAMS, LABELS_KNOBS), (PROTOCOLS_PARAMS, set()),
                                         (FULL_PARAMS, {"evaluate.architectures"})],
                         ids=["params.yaml", "pipelines/tune/params.yaml",
                              "pipelines/labels/params.yaml", "pipelines/protocols/params.yaml",
                              "pipelines/full/params.yaml"])
def test_params_files_state_knobs_or_changes_only(path, knobs):
    """Each key is a config key; a value equal to its default is a listed knob; every listed
    knob is written (the list is not stale)."""
    written = _written(path)
    resolved = flatten(load_config([PARAMS, path] if path != PARAMS else PARAMS))
    defaults = flatten(Config())
    assert sorted(set(written) - set(defaults)) == [], "keys that are not config keys"
    at_default = {k for k in written if resolved[k] == defaults[k]}
    assert sorted(at_default - knobs) == [], "keys equal to their default: drop them or list them"
    assert sorted(knobs - set(written)) == [], "listed knobs missing from the file"


def test_params_yaml_has_at_most_50_keys_and_none_of_the_run_sections():
    written = _written(PARAMS)
    assert len(written) <= 50
    assert not {k.split(".")[0] for k in written} & NOT_IN_PARAMS
    assert set(yaml.safe_load(TUNE_PARAMS.read_text())) == {"tune"}
    assert set(_written(TUNE_PARAMS)) <= {f"tune.{k}" for k in flatten(TuneConfig())}


def test_dvc_exp_show_has_at_most_60_param_and_metric_columns():
    """DVC shows every key of params.yaml, the listed keys of the other params files, and the
    headline metrics of evaluate (metrics.json: HEADLINE_KEYS plus gain, lo, hi of each further
    --synthetic set)."""
    from isdm.evaluation.report import HEADLINE_KEYS

    columns = len(_written(PARAMS))
    for dvc_yaml in (REPO / "dvc.yaml", *sorted((REPO / "pipelines").glob("*/dvc.yaml"))):
        for stage in yaml.safe_load(dvc_yaml.read_text())["stages"].values():
            for entry in stage.get("params", []):
                if isinstance(entry, dict):
                    ((file, keys),) = entry.items()
                    tree = yaml.safe_load((REPO / file).read_text())
                    columns += sum(len(_leaves({k: tree[k]})) for k in keys)
    evaluate = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["cmd"]
    sets = len(re.findall(r"--synthetic ", evaluate))
    columns += len(HEADLINE_KEYS) + 3 * (sets - 1)
    assert columns <= 60


def test_finetune_states_only_what_differs_from_train_and_model_only_its_preset():
    raw = yaml.safe_load(PARAMS.read_text())
    cfg = load_config(PARAMS)
    same = [k for k in raw["finetune"] if getattr(cfg.finetune, k) == getattr(cfg.train, k)]
    assert same == [], "finetune inherits these from train: drop them"
    assert set(raw["model"]) == {"preset"} and raw["model"]["preset"] != ""


def test_the_original_overlay_holds_the_former_defaults():
    """configs/original.yaml = FORMER_DEFAULTS (the original tool's choices, isdm's defaults
    before issue 23): on the built-in defaults it changes exactly those keys."""
    path = REPO / "configs" / "original.yaml"
    assert _leaves(yaml.safe_load(path.read_text())) == _leaves(FORMER_DEFAULTS)
    before, after = flatten(Config()), flatten(load_config(path))
    assert {k: v for k, v in after.items() if before[k] != v} == _leaves(FORMER_DEFAULTS)


def test_params_yaml_survives_the_checkpoint_roundtrip():
    """A checkpoint stores to_dict(cfg); rebuilding from it gives the same config."""
    cfg = load_config(PARAMS)
    assert config_from_json(to_dict(cfg)) == cfg


def test_dotted_overrides_reach_params_yaml_keys():
    """`dvc exp run -S sample.s=3.0` edits the same key `--set sample.s=3.0` overrides."""
    cfg = load_config(PARAMS, ["sample.s=3.0", "finetune.drop_rate=0.3"])
    assert cfg.sample.s == 3.0 and cfg.finetune.drop_rate == 0.3
    assert flatten(cfg)["sample.s"] == 3.0

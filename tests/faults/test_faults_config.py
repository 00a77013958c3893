"""Faults of config files and overrides, one test per failure mode.

The rules are general (every float finite, every mapping free of repeated keys, every field in
its range, the file's format decided by its shape, every result-changing original key applied
or warned about, a file that is not text refused); the cases of issue 10 (failed on bd16bfb)
and issue 22 are examples of them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ORIGINAL_TRAIN

from isdm.config import ConfigError, SampleConfig, TrainConfig, load_config
from isdm.original import checkpoint_paths, load_original_config

REPO = Path(__file__).resolve().parents[2]

ORIGINAL_SAMPLE = json.loads((REPO / "configs" / "config_sample.json").read_text())


def _write(tmp_path: Path, name: str, content: str | dict) -> Path:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "isdm.config" and r.levelno == logging.WARNING]


def test_a_non_finite_value_is_refused_at_load(tmp_path):
    """Issue 10 case 3."""
    for override in ("sample.s=nan", "sample.s=.inf", "sample.s=-.inf", "train.lr=.nan",
                     "train.ema_rates=[.nan]", "model.channel_mult=[1, .inf]"):
        with pytest.raises(ConfigError, match="must be a finite number"):
            load_config(None, [override])
    yaml_file = _write(tmp_path, "p.yaml", "sample:\n  s: .inf\n")
    with pytest.raises(ConfigError, match=r"sample\.s=inf: must be a finite number"):
        load_config(yaml_file)
    json_file = _write(tmp_path, "c.json", json.dumps({**ORIGINAL_SAMPLE, "s": float("nan")}))
    with pytest.raises(ConfigError, match=r"c\.json: s=nan: must be a finite number"):
        load_config(json_file)
    # anywhere: also under a key the original's mapping ignores
    ignored = _write(tmp_path, "i.json", {**ORIGINAL_SAMPLE, "fp16_scale_growth": 1e999})
    with pytest.raises(ConfigError, match=r"fp16_scale_growth=inf: must be a finite number"):
        load_config(ignored)
    with pytest.raises(ConfigError, match="finite"):
        SampleConfig(s=float("inf"))


def test_a_key_given_twice_is_refused(tmp_path):
    """Issue 10 case 7."""
    yaml_file = _write(tmp_path, "p.yaml", "train:\n  lr: 0.1\n  batch_size: 4\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"p\.yaml, line 4: duplicate key 'lr' \(first given "
                                          r"at line 2\)"):
        load_config(yaml_file)
    flow = _write(tmp_path, "flow.yaml", "sample: {s: 1, s: 2}\n")
    with pytest.raises(ConfigError, match="duplicate key 's'"):
        load_config(flow)
    sections = _write(tmp_path, "twice.yaml", "train:\n  lr: 0.1\ntrain:\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_config(sections)
    original = _write(tmp_path, "c.json", '{"lr": 0.1, "batch_size": 2, "lr": 0.2}')
    with pytest.raises(ConfigError, match="c.json, duplicate key 'lr'"):
        load_config(original)
    tree = _write(tmp_path, "t.json", '{"train": {"lr": 0.1, "lr": 0.2}}')
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(tree)
    # a YAML merge key may be overridden: that is what it is for
    merged = _write(tmp_path, "m.yaml", "train: &t\n  lr: 0.1\nfinetune:\n  <<: *t\n  lr: 0.3\n")
    assert load_config(merged).finetune.lr == 0.3


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=-1"], r"train\.lr=-1\.0: must be > 0"),
    (["train.lr=nan"], r"train\.lr=nan: must be a finite number"),
    (["finetune.lr=0"], r"finetune\.lr=0\.0: must be > 0"),
    (["train.weight_decay=-0.1"], r"train\.weight_decay=-0\.1: must be >= 0"),
    (["runtime.num_workers=-1"], r"runtime\.num_workers=-1: must be >= 0"),
    (["train.ema_rates=[]"], r"train\.ema_rates=\[\]: must not be empty"),
    (["data.image_size=24"],  # the default preset's attention at 16 px
     r"model\.attention_resolutions=\[16\]: 16 is not a feature-map size of a 24 px model "
     r"with 4 levels \(those are \[24, 12, 6, 3\]\)"),
    (["data.image_size=40", "model.channel_mult=[1, 1, 2, 2, 4]"],
     r"data\.image_size=40: the 5 levels of model\.channel_mult=\[1\.0, 1\.0, 2\.0, 2\.0, "
     r"4\.0\] halve it 4 times: use a multiple of 16"),
])
def test_a_value_training_would_crash_on_is_refused_at_load(overrides, message):
    """Issue 10 case 8."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_misspelt_section_is_named(tmp_path):
    """Issue 10 case 9."""
    only = _write(tmp_path, "p.yaml", "trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'trian'; did you mean train\?"):
        load_config(only)
    among = _write(tmp_path, "q.yaml", "data:\n  hflip: true\nsampel:\n  s: 2\n")
    with pytest.raises(ConfigError, match=r"unknown section 'sampel'; did you mean sample\?"):
        load_config(among)
    # the original's flat configs are still recognised by their shape
    assert load_original_config(REPO / "configs" / "config_sample.json").sample.steps == 300


def test_an_original_resume_checkpoint_is_not_dropped_silently(tmp_path, caplog):
    """Issue 10 case 16."""
    train = {k: v for k, v in ORIGINAL_TRAIN.items() if k != "weights_decay"}
    path = _write(tmp_path, "c.json", {**train, "resume_checkpoint": "runs/model010000.pt"})
    with caplog.at_level(logging.WARNING, logger="isdm.config"):
        load_original_config(path, action="train")
        load_original_config(path, action="finetune")
    assert _warnings(caplog) == [
        f"warning: {path}: resume_checkpoint='runs/model010000.pt': `isdm train` continues that "
        "run (as `--resume runs/model010000.pt`) unless --resume is given",
        f"warning: {path}: resume_checkpoint='runs/model010000.pt': `isdm finetune` starts from "
        "its weights (as `--init runs/model010000.pt`) unless --init or --resume is given",
    ]
    assert checkpoint_paths({**train, "resume_checkpoint": "a.pt"}) == {
        "resume_checkpoint": "a.pt", "model_path": None}
    # the command line prints it on stderr
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-c", "from isdm.cli import main; main()", "config",
                          "show", "-c", "configs/config_finetune.json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "(as `--init models/sdm/best.pt`)" in res.stderr
    assert res.stderr.count("warning:") == 1 and "warning" not in res.stdout


def test_original_keys_that_change_results_are_applied_or_warned(tmp_path, caplog):
    """Issue 10 case 17."""
    train = {k: v for k, v in ORIGINAL_TRAIN.items() if k != "weights_decay"}
    same = {**train, "random_flip": True, "use_kl": False, "predict_xstart": False,
            "schedule_sampler": "uniform", "lr_anneal_steps": 0, "microbatch": -1,
            "num_heads": 4, "rescale_learned_sigmas": False}
    with caplog.at_level(logging.WARNING, logger="isdm.config"):
        assert load_original_config(_write(tmp_path, "same.json", same), action="train").data.hflip
    assert _warnings(caplog) == []  # values that mean what isdm does: silent
    differ = {**{k: v for k, v in train.items() if k != "num_head_channels"},
              "random_flip": False, "use_kl": True, "predict_xstart": True,
              "schedule_sampler": "loss-second-moment", "lr_anneal_steps": 5000,
              "microbatch": 8, "num_heads": 4, "diffusion_steps": 4000,
              "rescale_learned_sigmas": True}
    with caplog.at_level(logging.WARNING, logger="isdm.config"):
        cfg = load_original_config(_write(tmp_path, "differ.json", differ), action="train")
    assert cfg.data.hflip is False  # implemented
    warned = _warnings(caplog)
    for key, instead in [("use_kl", "hybrid loss"), ("predict_xstart", "predicts eps"),
                         ("schedule_sampler", "uniformly"), ("lr_anneal_steps", "constant"),
                         ("microbatch", "does not split batches"),
                         ("num_heads", "num_head_channels"),
                         ("rescale_learned_sigmas", "diffusion_steps / 1000 = 4")]:
        hits = [w for w in warned if f": {key}=" in w]
        assert len(hits) == 1 and instead in hits[0], (key, warned)
    assert len(warned) == 7


def test_the_original_weights_decay_typo_is_accepted_with_a_warning(tmp_path, caplog):
    """Issue 10 case 18."""
    path = _write(tmp_path, "config_train.json", ORIGINAL_TRAIN)
    with caplog.at_level(logging.WARNING, logger="isdm.config"):
        cfg = load_original_config(path, action="train")
    assert cfg.train.weight_decay == 0.0  # as in the original, which ignored the key
    (warning,) = _warnings(caplog)
    assert "weights_decay=1e-05: the original tool ignored this misspelt key" in warning
    # a sectioned params file stays strict
    strict = _write(tmp_path, "p.yaml", "train:\n  weights_decay: 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean weight_decay\?"):
        load_config(strict)
    assert TrainConfig().weight_decay == 0.0


def test_an_original_s_below_1_warns(tmp_path, caplog):
    """Issue 10 case 20."""
    low = _write(tmp_path, "low.json", {**ORIGINAL_SAMPLE, "s": 0.5})
    with caplog.at_level(logging.WARNING, logger="isdm.config"):
        assert load_original_config(low).sample.s == 0.5  # isdm's definition is kept
    (warning,) = _warnings(caplog)
    assert "s=0.5: the original sampled the conditional model for every s <= 1" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="isdm.config"):
        load_original_config(_write(tmp_path, "one.json", {**ORIGINAL_SAMPLE, "s": 1.0}))
    assert _warnings(caplog) == []


def test_a_config_file_that_is_not_text_is_refused(tmp_path):
    """Issue 22: a binary, compressed or UTF-16 file given to -c was a UnicodeDecodeError."""
    import gzip

    from faultkit import isdm, no_traceback

    files = {"random.yaml": bytes(range(256)) * 4,
             "gzip.yaml": gzip.compress((REPO / "configs" / "tiny.yaml").read_bytes()),
             "utf16.yaml": "train:\n  lr: 0.1\n".encode("utf-16"),
             "nul.json": b'{"a": 1}\x00'}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=f"config file .*{name} (is not UTF-8 text|holds NUL)"):
            load_config(tmp_path / name)
        result = isdm("train", "-c", tmp_path / name, "--out", tmp_path / "out")
        assert no_traceback(result) and ("is not UTF-8" in result.output
                                         or "NUL" in result.output), result.output
        assert not (tmp_path / "out").exists()
    bom = tmp_path / "bom.yaml"  # a UTF-8 byte-order mark is text
    bom.write_bytes("\ufefftrain:\n  lr: 0.1\n".encode("utf-8"))
    assert load_config(bom).train.lr == 0.1

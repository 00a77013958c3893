"""`isdm sample` end to end with the real tiny SDM: a 2-step checkpoint from `train`, 2-3 sampler
steps at 32 px, so every run takes seconds on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from isdm.cli import cli
from isdm.sampling.writer import FOLDERS

pytestmark = pytest.mark.slow

# s = 1 (one forward per step) keeps these runs cheap; guidance (s = 1.5, two passes) runs in
# test_original_config_with_model_path.
SAMPLE = {"num_samples": 10, "batch_size": 5, "steps": 2, "sampler": "ddim", "s": 1.0, "seed": 3}


@pytest.fixture(scope="module")
def checkpoint(synth_dir, tmp_path_factory) -> Path:
    from isdm.config import Config, from_dict
    from isdm.training import train

    cfg = from_dict(Config, {
        "data": {"image_size": 32, "num_classes": 5},
        "model": {"preset": "tiny"},
        "diffusion": {"diffusion_steps": 50},
        "train": {"batch_size": 4, "max_epochs": 1, "max_steps": 2, "save_last": False,
                  "drop_rate": 0.2},  # trained with the null label: guided sampling may use it
        "tracking": {"enabled": False},
    })
    out = tmp_path_factory.mktemp("ckpt")
    train(cfg, synth_dir, out, progress=False)
    return out / "best.pt"


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "params.yaml"
    p.write_text(yaml.safe_dump({"data": {"image_size": 32, "num_classes": 5},
                                 "sample": SAMPLE, "tracking": {"enabled": False}}))
    return p


def sample(params, data, ckpt, out, *extra) -> str:
    r = CliRunner().invoke(cli, ["sample", "-c", str(params), "--data", str(data),
                                 "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu",
                                 *extra])
    assert r.exit_code == 0, r.output
    return r.output


def outputs(out: Path) -> dict[str, bytes]:
    got = {f"{f}/{p.name}": p.read_bytes() for f in FOLDERS for p in sorted((out / f).iterdir())}
    got["manifest.jsonl"] = (out / "manifest.jsonl").read_bytes()
    return got


@pytest.fixture(scope="module")
def full_run(params, synth_dir, checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    sample(params, synth_dir, checkpoint, out)
    return out


def test_exact_count_manifest_and_provenance(full_run, checkpoint):
    from isdm.training.checkpoint import checkpoint_hash

    for folder in FOLDERS:
        assert len(list((full_run / folder).iterdir())) == 10
    recs = [json.loads(x) for x in (full_run / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(10))
    assert {r["checkpoint_sha256"] for r in recs} == {checkpoint_hash(checkpoint)}
    for r in recs:  # each record names its four files with their sizes and digests
        assert {rel: (full_run / rel).stat().st_size for rel in r["files"]} == \
            {f"{f}/{r['file']}": r["files"][f"{f}/{r['file']}"]["size"] for f in FOLDERS}
    assert {(r["sampler"], r["steps"], r["s"], r["precision"]) for r in recs} == \
        {("ddim", 2, 1.0, "fp32")}
    cfg = json.loads((full_run / "config.json").read_text())
    assert cfg["model"]["num_channels"] == 32  # the network comes from the checkpoint
    assert cfg["diffusion"]["diffusion_steps"] == 50
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["complete"] == 10 and summary["this_run"]["seconds_per_image"] > 0


def test_resume_after_kill_generates_only_missing(full_run, params, synth_dir, checkpoint,
                                                  tmp_path):
    out = tmp_path / "resumed"
    # "killed" after 3 samples; 3 and then 7 = 5 + 2 also exercise the padded last batches
    sample(params, synth_dir, checkpoint, out, "--max-new", "3")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    assert len(before) == 3
    text = sample(params, synth_dir, checkpoint, out)
    assert "generated 7, skipped 3" in text
    after = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    assert all(after[n] == t for n, t in before.items())  # finished samples untouched
    assert outputs(out) == outputs(full_run)


def test_shards_and_other_batch_sizes_rerun_identical_bytes(full_run, params, synth_dir,
                                                           checkpoint, tmp_path):
    """A rerun with the same seed, split in two shards with other batch sizes (2 and 3, the
    latter with a padded last batch), reproduces the full run byte for byte."""
    out = tmp_path / "sharded"
    sample(params, synth_dir, checkpoint, out, "--shard", "1/2", "--set", "sample.batch_size=2")
    assert len(list((out / "samples").iterdir())) == 5
    sample(params, synth_dir, checkpoint, out, "--shard", "0/2", "--set", "sample.batch_size=3")
    assert outputs(out) == outputs(full_run)


def test_refuses_folder_of_other_config(full_run, params, synth_dir, checkpoint):
    r = CliRunner().invoke(cli, ["sample", "-c", str(params), "--data", str(synth_dir),
                                 "--checkpoint", str(checkpoint), "--out", str(full_run),
                                 "--set", "sample.steps=3"])
    assert r.exit_code == 1 and "different run" in r.output and "sample.steps" in r.output


def test_original_config_with_model_path(synth_dir, checkpoint, tmp_path, mlflow_uri):
    """An original ISDM sample config: model_path, data_dir and balance_args from the file."""
    raw = json.loads((Path(__file__).parents[1] / "configs" / "config_sample.json").read_text())
    raw.update(data_dir=str(synth_dir), image_size=32, num_samples=4, batch_size=2,
               diffusion_steps=2, model_path=str(checkpoint))
    legacy = tmp_path / "config_sample.json"
    legacy.write_text(json.dumps(raw))
    out = tmp_path / "legacy_out"
    r = CliRunner().invoke(cli, ["sample", "-c", str(legacy), "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] == 4 and summary["balanced"] and summary["sampler"] == "ddpm"
    assert summary["steps"] == 2
    dist = summary["class_distribution"]
    assert dist["after"]["imbalance"] < dist["before"]["imbalance"]
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["tags.mlflow.runName"]) == ["sample ddpm 2 steps s=1.5"]

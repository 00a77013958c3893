"""`isdm train` / `isdm finetune` end to end on the tiny preset (32 px, synth_dir), with MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from isdm.cli import cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory) -> tuple[Path, float]:
    """`isdm train` for 2 epochs (tracking off here; the MLflow test below runs its own)."""
    out = tmp_path_factory.mktemp("sdm")
    start = time.process_time()
    invoke("train", "-c", TINY, "--data", str(synth_dir), "--out", str(out), "--no-progress",
           "--set", "train.max_epochs=2", "--set", "tracking.enabled=false")
    return out, time.process_time() - start


@pytest.mark.slow
def test_train_writes_every_output_in_under_a_minute(trained):
    out, cpu_seconds = trained
    # CPU time, not wall time: the shared test machine may be oversubscribed
    assert cpu_seconds < 60, f"2 tiny epochs took {cpu_seconds:.1f} CPU seconds"
    for name in ("best.pt", "last.pt", "metrics.json", "loss.csv", "loss.png", "config.json"):
        assert (out / name).is_file(), name
    state = torch.load(out / "best.pt", weights_only=True)
    assert set(state) == {"model", "ema", "optimizer", "scaler", "step", "epoch", "best_loss",
                          "bad_epochs", "rng", "history", "config", "meta"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 4 and metrics["images_per_s"] > 0
    assert len((out / "loss.csv").read_text().splitlines()) == 3
    assert json.loads((out / "config.json").read_text())["model"]["preset"] == "tiny"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_train_logs_an_mlflow_run(synth_dir, tmp_path, mlflow_uri):
    import mlflow

    out = tmp_path / "sdm"
    invoke("train", "-c", TINY, "--data", str(synth_dir), "--out", str(out), "--no-progress",
           "--set", "train.max_epochs=1", "--set", "train.log_every=1")
    runs = mlflow.MlflowClient(mlflow_uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(mlflow_uri).search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    from isdm.config import load_config

    lr = load_config(TINY).train.lr  # the tiny config's resolved value, logged as given
    assert run.data.params["train.lr"] == str(lr) and run.data.params["model.preset"] == "tiny"
    assert run.data.tags["isdm.action"] == "train"
    # the budget (1 epoch of 2 steps: no estimate, which needs 3 steps)
    assert {k: v for k, v in run.data.tags.items() if k.startswith("isdm.budget.")} == {
        "isdm.budget.steps": "2", "isdm.budget.images_per_step": "4",
        "isdm.budget.steps_per_epoch": "2", "isdm.budget.epochs": "1.0",
        "isdm.budget.source": "train.max_epochs=1 x 2 steps per epoch; train.patience=2 may "
                              "stop it earlier"}
    from isdm.training.checkpoint import checkpoint_hash

    assert run.data.tags["isdm.checkpoint_sha256"] == checkpoint_hash(out / "best.pt")
    assert {"train/step_loss", "train/epoch_loss", "best_loss", "images_per_s"} <= set(run.data.metrics)
    client = mlflow.MlflowClient(mlflow_uri)
    assert len(client.get_metric_history(run.info.run_id, "train/step_loss")) == 2  # log_every=1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.json", "loss.csv", "loss.png"} <= artifacts


@pytest.mark.slow
def test_finetune_from_the_trained_checkpoint(trained, synth_dir, tmp_path):
    out, _ = trained
    ft = tmp_path / "ft"
    invoke("finetune", "-c", TINY, "--data", str(synth_dir), "--init", str(out / "best.pt"),
           "--out", str(ft), "--no-progress", "--set", "finetune.drop_rate=0.2",
           "--set", "tracking.enabled=false")
    state = torch.load(ft / "best.pt", weights_only=True)
    assert state["meta"]["action"] == "finetune"
    assert state["config"]["finetune"]["drop_rate"] == 0.2
    assert state["meta"]["init_from"] == str(out / "best.pt")


@pytest.mark.slow
def test_finetune_with_the_original_json_config(trained, synth_dir, tmp_path):
    """configs/config_finetune.json (64 px, default sizes) on a tiny 32 px checkpoint: the
    checkpoint's sizes win, with a note naming them."""
    out, _ = trained
    ft = tmp_path / "ft_legacy"
    result = CliRunner().invoke(
        cli, ["finetune", "-c", str(REPO / "configs" / "config_finetune.json"),
              "--data", str(synth_dir), "--init", str(out / "best.pt"), "--out", str(ft),
              "--no-progress", "--set", "finetune.max_steps=1", "--set", "tracking.enabled=false"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "data.image_size: checkpoint 32, config 64" in result.output
    state = torch.load(ft / "best.pt", weights_only=True)
    assert state["config"]["data"]["image_size"] == 32
    assert state["config"]["finetune"]["drop_rate"] == 0.2


@pytest.mark.slow
def test_explicit_init_wins_over_resume_checkpoint_with_a_note(trained, synth_dir, tmp_path):
    out, _ = trained
    flat = json.loads((REPO / "configs" / "config_finetune.json").read_text())
    config = tmp_path / "config_finetune.json"
    config.write_text(json.dumps({**flat, "resume_checkpoint": str(tmp_path / "absent.pt")}))
    result = CliRunner().invoke(
        cli, ["finetune", "-c", str(config), "--data", str(synth_dir), "--init",
              str(out / "best.pt"), "--out", str(tmp_path / "ft"), "--no-progress",
              "--set", "finetune.max_steps=1", "--set", "tracking.enabled=false"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (f"--init {out / 'best.pt'} given: resume_checkpoint {tmp_path / 'absent.pt'} of "
            f"{config} is not used") in result.output


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    result = CliRunner().invoke(cli, ["train", "-c", TINY, "--out", str(tmp_path), "--resume",
                                      str(tmp_path / "last.pt"), "--overwrite"])
    assert result.exit_code == 2 and "give one of them" in result.output


def test_dvc_stages_declare_every_training_output():
    """DVC deletes a stage's declared outputs before running it, so `dvc repro` never meets the
    refusal of a folder holding an earlier run: every file of start.OUTPUTS must be declared
    (outs, metrics or plots, not persistent) by the train and finetune stages."""
    import yaml

    from isdm.training.start import OUTPUTS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, folder in (("train", "models/sdm"), ("finetune", "models/sdm_ft")):
        declared = {}
        for kind in ("outs", "metrics", "plots"):
            for entry in stages[stage].get(kind, []):
                path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                declared[path] = opts
        assert f"--out {folder}" in stages[stage]["cmd"]
        for name in OUTPUTS:
            assert f"{folder}/{name}" in declared, (stage, name)
            assert not declared[f"{folder}/{name}"].get("persist", False), (stage, name)


def test_finetune_without_init_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["finetune", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--init" in result.output


def test_missing_checkpoint_is_a_clean_error(synth_dir, tmp_path):
    result = CliRunner().invoke(cli, ["finetune", "-c", TINY, "--data", str(synth_dir), "--init",
                                      str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o"),
                                      "--set", "tracking.enabled=false"])
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.slow
def test_ddp_two_cpu_processes(synth_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): ranks share the data, only rank 0 writes."""
    out = tmp_path / "ddp"
    isdm = Path(sys.executable).with_name("isdm")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "--no-python", str(isdm), "train", "-c", TINY,
           "--data", str(synth_dir), "--out", str(out), "--no-progress",
           "--set", "train.max_epochs=2", "--set", "train.batch_size=2",
           "--set", "tracking.enabled=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    state = torch.load(out / "best.pt", weights_only=True)
    # 8 images over 2 ranks of batch 2 -> 2 steps per epoch on each rank; every image seen once
    assert state["step"] == 4 and state["meta"]["world_size"] == 2
    assert [row["images"] for row in state["history"]] == [8, 8]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2

"""README "Scaling out", many Optuna workers: one study in a real PostgreSQL, workers logging to a
real MLflow server, and optuna-dashboard showing the study.

One scenario (module fixture), every `isdm tune` a separate process run as the README says:
workers A and B start side by side on a fresh database (`--n-trials 2` each, final check off);
A is killed with SIGKILL in the middle of its first trial; B finishes; a third worker joins the
finished study with `--n-trials 0` and writes the results (and runs the final check). Heartbeats every
second, a trial silent for 4 s is stale (tune.heartbeat_interval / heartbeat_grace).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from servers import BIN, Service, free_port, isdm, isdm_env, write_config

pytestmark = pytest.mark.slow

STUDY = "isdm"
EXPERIMENT = "isdm-services-study"
GRACE = 4.0
PASSWORD = "s3cret-pw"
TUNE = {  # one finetune (one drop rate), one repeat of one segmenter step per trial, no curation
    "n_trials": 2, "drop_rates": [0.2], "steps": [2], "eval_steps": 1, "repeats": 1,
    "curate_min_fidelity": [], "curate_pixel_thresholds": [], "pruning": False,
    "heartbeat_interval": 1.0, "heartbeat_grace": GRACE}


def _worker(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``isdm ARGS`` in the background, its output in ``log`` (a pipe nobody reads could fill)."""
    with open(log, "wb") as out:
        return subprocess.Popen([str(BIN / "isdm"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _trial_runs(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], "tags.`isdm.action` = 'trial'", max_results=100)


def _kill_mid_trial(worker: subprocess.Popen, client, timeout: float = 240) -> str:
    """SIGKILL ``worker`` while its first trial runs; the killed trial's MLflow run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"worker A exited ({worker.returncode})"
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            running = [r for r in _trial_runs(client, experiment.experiment_id)
                       if r.data.tags.get("isdm.pid") == str(worker.pid)
                       and r.info.status == "RUNNING"]
            if running:
                worker.send_signal(signal.SIGKILL)
                worker.wait(30)
                return running[0].info.run_id
        time.sleep(0.2)
    worker.kill()
    pytest.fail("worker A never started a trial")


@pytest.fixture(scope="module")
def study(tmp_path_factory, postgres, mlflow_server, synth_dir, tiny_sdm):
    """Run the scenario once; what the tests look at."""
    import mlflow

    root = tmp_path_factory.mktemp("study")
    # a password in the URL (the server trusts local connections): it must not be written out
    storage = postgres.database("optuna").replace("postgres:@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in storage
    config = write_config(root / "params.yaml", tune=TUNE, tracking={"experiment": EXPERIMENT},
                          finetune={"max_steps": 2, "drop_rate": 0.2},  # final check: cached
                          evaluate={"val_fraction": 0.25, "batch_size": 4})
    out = root / "tune"
    # README: the same command on every worker, the study in the shared database
    args = ["tune", "-c", str(config), "--data", str(synth_dir), "--checkpoint", str(tiny_sdm),
            "--out", str(out), "--storage", storage]
    cells = root / "cells"  # the workers' shared cell store
    env = isdm_env(MLFLOW_TRACKING_URI=mlflow_server.url, ISDM_CELL_CACHE=str(cells))
    client = mlflow.MlflowClient(mlflow_server.url)
    # README: the workers without the final check, a last one with --n-trials 0 runs it once
    worker = [*args, "--n-trials", "2", "--set", "tune.final_check=false"]
    a, b = _worker(worker, env, root / "a.log"), _worker(worker, env, root / "b.log")
    try:
        killed_run = _kill_mid_trial(a, client)
        killed_at = time.monotonic()
        b.wait(timeout=300)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
    b_err = (root / "b.log").read_text(errors="replace")
    assert b.returncode == 0, b_err[-3000:]
    time.sleep(max(0.0, killed_at + GRACE + 1 - time.monotonic()))  # A's heartbeat is stale
    third = isdm(*args, "--n-trials", "0", env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Traceback" not in b_err + third.stderr, b_err + third.stderr
    import optuna

    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return {"storage": storage, "out": out, "cells": cells, "trials": trials, "client": client,
            "experiment_id": experiment_id, "killed_run": client.get_run(killed_run),
            "a_pid": str(a.pid), "third": third}


def test_trials_have_unique_numbers_and_only_the_killed_one_failed(study):
    trials = study["trials"]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    states = [t.state.name for t in trials]
    killed = int(study["killed_run"].data.tags["optuna.trial"])
    assert [t.number for t in trials if t.state.name == "FAIL"] == [killed]  # by the heartbeat
    # B's two trials complete. The killed trial's draw is not lost: B reran it (B's stale check
    # came after the grace period) or it waits, queued, for the next worker
    assert states.count("COMPLETE") == 2 and set(states) <= {"COMPLETE", "FAIL", "WAITING"}
    retry = [t for t in trials if t.number > killed and t.params == trials[killed].params]
    assert len(retry) == 1 and retry[0].state.name in ("COMPLETE", "WAITING")
    assert len(trials) == (3 if retry[0].state.name == "COMPLETE" else 4)


def test_every_trial_logs_under_one_mlflow_study_run_and_the_baseline_was_trained_once(study):
    client, experiment_id = study["client"], study["experiment_id"]
    tune_runs = client.search_runs([experiment_id], "tags.`isdm.action` = 'tune'")
    assert len(tune_runs) == 1
    parent = tune_runs[0].info.run_id
    runs = [r for r in client.search_runs([experiment_id], "tags.`isdm.action` = 'trial'")]
    assert len(runs) == 3 and {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert len({r.data.tags["isdm.pid"] for r in runs}) == 2  # A's killed trial, B's two
    assert len(client.get_metric_history(parent, "baseline_val_miou")) == TUNE["repeats"]
    records = [json.loads(p.read_text()) for p in study["cells"].glob("*/record.json")]
    # the study's real-only cells (validation only, never tested; the final check's are tested)
    baseline = [r["spec"]["seed"] for r in records
                if r["spec"]["mix"] == "RALLF000" and not r["spec"]["test"]]
    assert sorted(baseline) == list(range(TUNE["repeats"]))  # one real-only cell per seed


def test_the_killed_workers_mlflow_run_is_marked_killed(study):
    run = study["client"].get_run(study["killed_run"].info.run_id)
    assert run.info.status == "KILLED"
    assert f"process {study['a_pid']} " in run.data.tags["isdm.ended_by"]


def test_the_joining_worker_writes_the_results_of_the_whole_study(study):
    out, trials = study["out"], study["trials"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == len(trials) and summary["failed"] == 1
    assert summary["complete"] == sum(t.state.name == "COMPLETE" for t in trials)
    assert (out / "best_params.yaml").is_file() and (out / "final_check.md").is_file()
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + len(trials)
    assert "final check on the test split" in study["third"].stdout


def test_the_storage_password_is_written_nowhere(study):
    out = study["out"]
    written = [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()
               and p.suffix in (".json", ".csv", ".yaml", ".md", ".log")]
    assert written and not [w for w in written if PASSWORD in w]
    assert "postgres:***@" in json.loads((out / "summary.json").read_text())["storage"]
    (tune_run,) = study["client"].search_runs([study["experiment_id"]],
                                              "tags.`isdm.action` = 'tune'")
    logged = [*tune_run.data.params.values(), *tune_run.data.tags.values()]
    assert not [v for v in logged if PASSWORD in v]
    assert tune_run.data.tags["optuna.storage"].startswith("postgresql://postgres:***@")
    assert PASSWORD not in study["third"].stdout + study["third"].stderr


def test_optuna_dashboard_serves_the_study(study, tmp_path):
    """README: `optuna-dashboard <storage URL>` shows the study; its JSON API lists the trials."""
    import requests

    port = free_port()
    dashboard = Service([str(BIN / "optuna-dashboard"), study["storage"], "--host", "127.0.0.1",
                         "--port", str(port)], tmp_path / "dashboard.log")
    try:
        base = f"http://127.0.0.1:{port}"
        dashboard.wait_http(base + "/api/meta", timeout=60)
        studies = requests.get(base + "/api/studies", timeout=10).json()["study_summaries"]
        (entry,) = [s for s in studies if s["study_name"] == STUDY]
        detail = requests.get(f"{base}/api/studies/{entry['study_id']}", timeout=10).json()
    finally:
        dashboard.stop()
    states = sorted(t["state"] for t in detail["trials"])
    assert len(detail["trials"]) == len(study["trials"])
    assert states == sorted(t.state.name.capitalize() for t in study["trials"])
    assert [t["number"] for t in detail["best_trials"]] == [
        json.loads((study["out"] / "summary.json").read_text())["best_trial"]]


def test_trials_folder_holds_every_finished_trial(study):
    done = [t.number for t in study["trials"] if t.state.name == "COMPLETE"]
    folders = {int(p.name) for p in (study["out"] / "trials").iterdir()}
    assert set(done) <= folders
    for number in done:
        assert len(list((study["out"] / "trials" / f"{number:04d}" / "synthetic" / "samples")
                        .iterdir())) >= 1

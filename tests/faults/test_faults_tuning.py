"""Faults of `isdm tune`, one test per failure mode: Optuna workers that die or start together
(issue 10 case 15), a study storage without a file, Ctrl-C during the trials, and `--apply` of a
best trial the study cannot tell from the others (issue 22).

The worker tests run real `run_study` worker processes on one storage, with stand-ins for
finetune, sampling and the downstream cell (a trial's value is a function of its parameters),
Optuna heartbeats every second and a 2 s grace period (tune.heartbeat_interval / heartbeat_grace).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SLOW = pytest.mark.slow  # worker processes: 5-15 s per test

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"

_WORKER = '''
import json, os, sys, time
from pathlib import Path

import isdm.sampling
import isdm.tuning.objective as objective
import isdm.tuning.paired as paired
import isdm.tuning.cells as cells_mod
import isdm.tuning.plots as plots
from isdm.config import load_config
from isdm.tuning import run_study


class FakeSet:
    def __init__(self, keys):
        self.keys = list(keys)
    def __len__(self):
        return len(self.keys)
    def subset(self, keys):
        return FakeSet(keys)


def cell_val_miou(cfg, mix, seed, real, synthetic):
    if mix == "RALLF000":
        return 0.5, cfg.evaluate.steps
    if os.environ.get("HANG_FILE"):  # stand for a long trial: the test kills us here
        Path(os.environ["HANG_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)
    return 0.5 + 1.0 - (cfg.sample.s - 2.0) ** 2 / 10, cfg.evaluate.steps


objective.load_real_train = lambda cfg, data_root: FakeSet([f"r{i}" for i in range(10)])
objective.load_synthetic_set = lambda cfg, folder: FakeSet(["s0", "s1"])
objective.finetuned_checkpoint = lambda cfg, data_root, ckpt, out_dir: Path(ckpt)
def repeat_values(cfg, mix, real, synthetic, folder, cells, seeds=None):
    for seed in (paired.repeat_seeds(cfg) if seeds is None else seeds):
        yield cell_val_miou(cfg, mix, seed, real, synthetic)


class NoCells:  # the study's pool of segmenter cells: none needed with the stand-in above
    device = type("Device", (), {"type": "cpu"})()
    store = type("Store", (), {"root": Path("cells")})()

    def __init__(self, *a, **k):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return None


paired.repeat_values = repeat_values
cells_mod.StudyCells = NoCells
isdm.sampling.run_sampling = lambda cfg, data_root, ckpt, out_dir, overwrite=False: {
    "this_run": {"seconds_per_image": 0.1}}
plots.write_plots = lambda study, out_dir: []  # matplotlib costs seconds per process

if os.environ.get("BARRIER"):  # start run_study in every worker at the same moment
    folder, n = os.environ["BARRIER"].rsplit(":", 1)
    Path(folder, str(os.getpid())).touch()
    while len(os.listdir(folder)) < int(n):
        time.sleep(0.01)
cfg = load_config(sys.argv[1], sys.argv[5:])
summary = run_study(cfg, sys.argv[2], sys.argv[3], sys.argv[4], n_trials=1, study_name="s",
                    storage=os.environ["STORAGE"])
print(json.dumps(summary, default=str))
'''


@pytest.fixture
def worker(tmp_path, synth_dir):
    """``start(storage, *overrides, **env) -> Popen`` of one worker running one trial."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    ckpt = tmp_path / "sdm.pt"
    ckpt.write_bytes(b"")

    def start(storage: str, *overrides: str, **env: str) -> subprocess.Popen:
        args = [sys.executable, str(script), str(TINY), str(synth_dir), str(ckpt),
                str(tmp_path / "tune"), "tune.sampler_startup_trials=1", "tune.repeats=1",
                "tune.curate_min_fidelity=[]", "tune.curate_pixel_thresholds=[]",
                "curate.min_fidelity=0", "curate.pixel_threshold=0", "tune.final_check=false",
                "tune.heartbeat_interval=1", "tune.heartbeat_grace=2", *overrides]
        return subprocess.Popen(args, env={**os.environ, "STORAGE": storage, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return start


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return out


def _load(storage: str):
    import optuna

    from isdm.tuning.storage import open_storage

    return optuna.load_study(study_name="s", storage=open_storage(storage))


def _spec(tmp_path: Path, kind: str) -> str:
    return str(tmp_path / "study.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"


@SLOW
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_killed_workers_trial_is_failed_and_its_params_retried(tmp_path, worker, kind):
    """Issue 10 case 15."""
    storage, hang = _spec(tmp_path, kind), tmp_path / "hanging"
    doomed = worker(storage, "tracking.enabled=false", HANG_FILE=str(hang))
    deadline = time.monotonic() + 120
    while not hang.exists():
        assert doomed.poll() is None, doomed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first worker never started its trial"
        time.sleep(0.05)
    time.sleep(1.5)  # its heartbeat thread has written at least one heartbeat
    doomed.kill()  # SIGKILL mid-trial: no chance to tell the storage anything
    doomed.wait()
    time.sleep(2.5)  # past the grace period
    _finish(worker(storage, "tracking.enabled=false"))

    killed, retried = _load(storage).trials
    assert killed.state.name == "FAIL" and retried.state.name == "COMPLETE"
    assert retried.params == killed.params  # the killed trial's draw is the one retried
    assert retried.value == pytest.approx(1.0 - (killed.params["sample.s"] - 2.0) ** 2 / 10)


def _start_together(worker, storage: str, tmp_path: Path, *overrides: str) -> list[str]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [worker(storage, *overrides, BARRIER=f"{barrier}:2") for _ in range(2)]
    return [_finish(p) for p in procs]


@SLOW
def test_two_workers_on_a_fresh_journal_share_one_mlflow_study_run(
        tmp_path, worker, mlflow_uri):
    """Issue 10 case 15."""
    import mlflow

    storage = _spec(tmp_path, "journal")
    _start_together(worker, storage, tmp_path)
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    study_runs = [r for r in runs if r.data.tags.get("isdm.action") == "tune"]
    trial_runs = [r for r in runs if r.data.tags.get("isdm.action") == "trial"]
    assert len(study_runs) == 1 and len(trial_runs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {study_runs[0].info.run_id}
    assert _load(storage).user_attrs["isdm.mlflow_run_id"] == study_runs[0].info.run_id


@SLOW
def test_two_workers_creating_a_fresh_sqlite_study_both_succeed(tmp_path, worker):
    """Issue 10 case 15."""
    storage = _spec(tmp_path, "sqlite")
    _start_together(worker, storage, tmp_path, "tracking.enabled=false")
    trials = _load(storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].params != trials[1].params


def test_a_study_storage_without_a_file_is_refused(synth_dir, ckpt, tmp_path):
    """Issue 22: `--storage sqlite:///` (no path) kept the study in memory: every trial was lost
    when the process ended, silently."""
    from faultkit import isdm, no_traceback

    for spec in ("sqlite:///", "sqlite://", "sqlite:///:memory:"):
        r = isdm("tune", "-c", TINY, "--data", synth_dir, "--checkpoint", ckpt, "--out",
                 tmp_path / "tune", "--storage", spec, "--n-trials", "0",
                 "--set", "tracking.enabled=false")
        assert no_traceback(r) and "names no database file" in r.output, r.output
        assert "lose every trial" in r.output and not (tmp_path / "tune").exists()


def test_ctrl_c_during_the_trials_stops_without_a_traceback(tmp_path, capsys, caplog):
    """Issue 22: Ctrl-C during `tune` printed the traceback of wherever the trial was."""
    import optuna

    from isdm.tuning.study import _interrupt_note

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s")

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with _interrupt_note(study, tmp_path):
            study.optimize(objective, n_trials=3)
    assert "Trial 0 failed" in caplog.text and "Traceback" not in caplog.text, caplog.text
    assert "tune: interrupted; the running trial is marked failed" in capsys.readouterr().err
    assert [t.state.name for t in study.trials] == ["FAIL"]


def _study_folder(out: Path, gains: list[float], verdict: str, best: int = 0) -> None:
    import csv
    import json

    out.mkdir()
    (out / "best_params.yaml").write_text("sample.s: 2.5\n")
    (out / "summary.json").write_text(json.dumps({"best_trial": best, "best_gain": gains[best]}))
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "gain"])
        w.writerows([i, "COMPLETE", g] for i, g in enumerate(gains))
    if verdict:
        (out / "final_check.json").write_text(json.dumps({
            "best_trial": best, "verdict": f"({verdict})",
            "tuned_vs_current": {"verdict": verdict, "gain": 0.01}}))


def test_apply_refuses_a_best_trial_the_study_cannot_tell_from_the_others(tmp_path):
    """Issue 22: `tune --apply` wrote a winner picked from a tie (every gain 0.0000: the
    segmenters predicted only background) or one the test split did not confirm."""
    import shutil

    from faultkit import isdm, no_traceback

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    original = params.read_text()
    cases = [("tie", [0.0, 0.0, 0.0], "gain", "ties the field: trial(s) 1, 2"),
             ("noise", [0.03, 0.01], "no significant difference", "the test-split check says"),
             ("unchecked", [0.03, 0.01], "", "no test-split check of the best trial")]
    for name, gains, verdict, message in cases:
        _study_folder(tmp_path / name, gains, verdict)
        r = isdm("tune", "-c", params, "--out", tmp_path / name, "--apply")
        assert no_traceback(r) and message in r.output and "--force" in r.output, r.output
        assert params.read_text() == original
    _study_folder(tmp_path / "confirmed", [0.03, 0.01], "gain")
    r = isdm("tune", "-c", params, "--out", tmp_path / "confirmed", "--apply")
    assert r.exit_code == 0 and "sample.s: 1.5 -> 2.5" in r.output, r.output
    params.write_text(original)
    r = isdm("tune", "-c", params, "--out", tmp_path / "tie", "--apply", "--force")
    assert r.exit_code == 0 and "sample.s: 1.5 -> 2.5" in r.output, r.output

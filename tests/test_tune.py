"""`isdm tune`: storage resolution, the search space, the per-rate finetune cache and its lock,
best_params.yaml, MLflow nesting, several workers on one study, and one real end-to-end study."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from isdm import tuning
from isdm.config import load_config
from isdm.tuning import objective as tune_objective
from isdm.tuning import storage as tune_storage

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _cfg(*overrides: str):
    return load_config(TINY, ["tune.s_low=0.5", "tune.s_high=3.0", "tune.drop_rates=[0.1,0.3]",
                              "tune.steps=[2,3]", "tune.samplers=[ddim,dpmpp2m]",
                              "tune.sampler_startup_trials=2", *overrides])


def test_resolve_storage(tmp_path):
    assert tuning.resolve_storage("", tmp_path) == str((tmp_path / "study.journal").resolve())
    assert tuning.resolve_storage("sqlite:///x/study.db", tmp_path) == "sqlite:///x/study.db"
    assert tuning.resolve_storage("j.log", tmp_path) == str(Path("j.log").resolve())


def test_storage_errors_are_retried_and_a_persistent_one_is_a_tuning_error(monkeypatch):
    import sqlalchemy.exc

    from isdm.errors import TuningError

    def locked():
        raise sqlalchemy.exc.OperationalError("INSERT ...", {}, Exception("database is locked"))

    calls = []

    def flaky():
        calls.append(1)
        return locked() if len(calls) < 3 else "opened"

    assert tune_storage.retry_storage(flaky, "sqlite:///x.db") == "opened" and len(calls) == 3
    monkeypatch.setattr(tune_storage, "_ATTEMPTS", 2)
    with pytest.raises(TuningError, match=r"sqlite:///x.db: still failing after 2 attempts "
                                          r"\(OperationalError: .*database is locked"):
        tune_storage.retry_storage(locked, "sqlite:///x.db")


def test_journal_heartbeat_fails_a_silent_trial_and_reenqueues_its_params(tmp_path, monkeypatch):
    import optuna

    monkeypatch.setattr(tune_storage, "GRACE_PERIOD", 1.0)
    spec = str(tmp_path / "study.journal")
    study = optuna.create_study(storage=tune_storage.open_storage(spec), direction="maximize")
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # ask() outside optimize()
        trial = study.ask()
    trial.suggest_float("sample.s", 0.0, 5.0)
    study._storage.record_heartbeat(trial._trial_id)
    tune_storage.fail_stale_trials(study, spec)
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # heartbeat still fresh
    time.sleep(1.1)
    tune_storage.fail_stale_trials(study, spec)
    failed, retry = study.trials
    assert (failed.state.name, retry.state.name) == ("FAIL", "WAITING")
    assert retry.params == failed.params and retry.system_attrs["failed_trial"] == 0


def test_suggest_uses_params_yaml_keys_and_trial_config_applies_them():
    import optuna

    cfg = _cfg()
    trial = optuna.trial.FixedTrial({"sample.s": 2.25, "finetune.drop_rate": 0.3,
                                     "sample.steps": 3, "sample.sampler": "ddim"})
    params = tuning.suggest(trial, cfg)
    assert params == {"sample.s": 2.25, "finetune.drop_rate": 0.3, "sample.steps": 3,
                      "sample.sampler": "ddim"}
    t = tuning.trial_config(cfg, params)
    assert (t.sample.s, t.sample.steps, t.sample.sampler) == (2.25, 3, "ddim")
    assert (t.finetune.drop_rate, t.finetune.max_epochs) == (0.3, cfg.tune.finetune_epochs)
    assert (t.sample.num_samples, t.evaluate.steps) == (cfg.tune.num_samples, cfg.tune.eval_steps)
    assert t.train == cfg.train  # the pretrained network is never retrained


def test_best_params_yaml_round_trips_into_overrides(tmp_path):
    import optuna

    study = optuna.create_study(direction="maximize")
    for value, s in ((0.2, 1.0), (0.7, 2.5), (0.4, 0.5)):
        study.enqueue_trial({"sample.s": s, "finetune.drop_rate": 0.1, "sample.steps": 2,
                             "sample.sampler": "ddim"})
        study.optimize(lambda tr, v=value: (tuning.suggest(tr, _cfg()), v)[1], n_trials=1)
    text = tuning.best_params_yaml(study)
    best = yaml.safe_load(text)
    assert best == {"sample.s": 2.5, "finetune.drop_rate": 0.1, "sample.steps": 2,
                    "sample.sampler": "ddim"}
    assert "dvc exp run -S sample.s=2.5 -S finetune.drop_rate=0.1" in text
    cfg = load_config(TINY, [f"{k}={v}" for k, v in best.items()])
    assert (cfg.sample.s, cfg.sample.sampler) == (2.5, "ddim")


def test_file_lock_excludes_and_takes_over_a_dead_owner(tmp_path):
    lock = tmp_path / "x.lock"
    order = []

    def worker(tag: str) -> None:
        with tune_objective.file_lock(lock, poll=0.01):
            order.append(f"{tag}-in")
            time.sleep(0.05)
            order.append(f"{tag}-out")

    threads = [threading.Thread(target=worker, args=(t,)) for t in "ab"]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert order in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock.write_text(dead)  # a crashed worker's lock
    with tune_objective.file_lock(lock, poll=0.01):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_finetuned_checkpoint_is_trained_once_per_rate(tmp_path, monkeypatch):
    import isdm.training

    calls = []

    def fake_train(cfg, data_root, out_dir, *, action, init_from, progress):
        calls.append((action, cfg.finetune.drop_rate, Path(init_from).name))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "best.pt").write_bytes(b"ckpt")

    monkeypatch.setattr(isdm.training, "train", fake_train, raising=False)
    cfg = tuning.trial_config(_cfg(), {"sample.s": 1.0, "finetune.drop_rate": 0.3,
                                       "sample.steps": 2, "sample.sampler": "ddim"})
    a = tuning.finetuned_checkpoint(cfg, tmp_path, tmp_path / "sdm.pt", tmp_path / "tune", 0.3)
    b = tuning.finetuned_checkpoint(cfg, tmp_path, tmp_path / "sdm.pt", tmp_path / "tune", 0.3)
    assert a == b == tmp_path / "tune" / "finetune_dr0.3" / "best.pt"
    assert calls == [("finetune", 0.3, "sdm.pt")]
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == ["finetune_dr0.3"]


@pytest.mark.slow
def test_the_objective_trains_the_same_cell_as_isdm_evaluate(synth_dir, tmp_path):
    """One cell implementation: tune's validation mIoU of (FPN, R4F4, seed 1) equals the best
    validation mIoU that `isdm evaluate` reports for that cell."""
    import shutil

    from isdm.evaluation import run_evaluation

    syn = tmp_path / "syn"
    for sub, src in (("samples", "images"), ("labels", "masks")):
        (syn / sub).mkdir(parents=True)
        for f in sorted((synth_dir / "train" / src).iterdir())[:4]:
            shutil.copy(f, syn / sub / f"syn_{f.name}")
    cfg = load_config(TINY, ["tracking.enabled=false", "evaluate.mixes=[R4F4]", "evaluate.seeds=[1]",
                             "evaluate.batch_size=4", "evaluate.bootstrap=0", "tune.mix=R4F4",
                             "tune.seed=1", "tune.architecture=FPN"])
    cells = run_evaluation(cfg, synth_dir, syn, tmp_path / "out", progress=False)["cells"]
    cell = next(c for c in cells if c["mix"] == "R4F4[synthetic]")
    real = tune_objective.load_real_train(cfg, synth_dir)
    steps = []
    value = tune_objective.validation_miou(cfg, real, syn, lambda step, best: steps.append(step))
    assert value == cell["best_val_miou"] and steps == [1, 2]  # tiny: 2 steps, val_every 1


# ----------------------------------------------------------------------------------------------
# study mechanics with stand-ins for finetune / sample / downstream training
# ----------------------------------------------------------------------------------------------

_STANDINS = '''
import isdm.sampling, isdm.tuning.objective as objective
from pathlib import Path

def finetuned_checkpoint(cfg, data_root, checkpoint, out_dir, drop_rate):
    return Path(checkpoint)

def run_sampling(cfg, data_root, checkpoint, out_dir, overwrite=False):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {}

def validation_miou(cfg, real_train, synthetic_dir, on_validation=None):
    # a smooth objective with its maximum at s = 2: later validations approach the final value
    final = 1.0 - (cfg.sample.s - 2.0) ** 2 / 10 - cfg.finetune.drop_rate / 10
    for step in range(1, cfg.tune.eval_steps + 1):
        if on_validation is not None:
            on_validation(step, final * step / cfg.tune.eval_steps)
    return final

def load_real_train(cfg, data_root):
    return None
'''
_PATCH = '''
objective.load_real_train = load_real_train
objective.finetuned_checkpoint = finetuned_checkpoint
objective.validation_miou = validation_miou
isdm.sampling.run_sampling = run_sampling
'''


@pytest.fixture
def standins(monkeypatch):
    namespace: dict = {}
    exec(_STANDINS, namespace)
    for name in ("finetuned_checkpoint", "validation_miou", "load_real_train"):
        monkeypatch.setattr(tune_objective, name, namespace[name])
    import isdm.sampling

    monkeypatch.setattr(isdm.sampling, "run_sampling", namespace["run_sampling"])


def _trial_runs(uri: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    study = [r for r in runs if r.data.tags.get("isdm.action") == "tune"]
    trials = [r for r in runs if r.data.tags.get("isdm.action") == "trial"]
    return study, trials


def test_study_logs_one_child_run_per_trial_and_writes_best_params(tmp_path, synth_dir,
                                                                    mlflow_uri, standins):
    ckpt = tmp_path / "sdm.pt"
    ckpt.write_bytes(b"")
    out = tmp_path / "tune"
    cfg = _cfg("tune.eval_steps=3", "tune.pruning_startup_trials=1")
    summary = tuning.run_study(cfg, synth_dir, ckpt, out, n_trials=4)
    assert summary["n_trials"] == 4 and summary["complete"] + summary["pruned"] == 4
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert set(best) == {"sample.s", "finetune.drop_rate", "sample.steps", "sample.sampler"}
    assert summary["best_value"] == pytest.approx(1 - (best["sample.s"] - 2) ** 2 / 10
                                                  - best["finetune.drop_rate"] / 10)
    assert (out / "optimization_history.png").stat().st_size > 0
    assert (out / "param_importances.png").exists() == (summary["complete"] >= 2)
    assert len((out / "trials.csv").read_text().splitlines()) == 5

    (study_run,), trials = _trial_runs(mlflow_uri)
    assert len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {study_run.info.run_id}
    assert {t.info.status for t in trials} == {"FINISHED"}  # pruned is not failed
    assert sorted(t.data.tags["optuna.state"] for t in trials).count("COMPLETE") == summary["complete"]
    assert all(t.data.params["sample.s"] and "val_miou" in t.data.metrics for t in trials)
    assert study_run.data.metrics["best_val_miou"] == pytest.approx(summary["best_value"])

    # resuming the study adds trials under the same study run
    summary = tuning.run_study(cfg, synth_dir, ckpt, out, n_trials=1)
    assert summary["n_trials"] == 5
    (study_again,), trials = _trial_runs(mlflow_uri)
    assert study_again.info.run_id == study_run.info.run_id and len(trials) == 5


@pytest.mark.slow
def test_two_worker_processes_share_one_study(tmp_path, synth_dir, mlflow_uri, standins):
    """Two `run_study` processes on one sqlite study (the journal default is covered above)."""
    ckpt = tmp_path / "sdm.pt"
    ckpt.write_bytes(b"")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script = tmp_path / "worker.py"
    script.write_text(_STANDINS + _PATCH + textwrap.dedent(f'''
        import sys
        from isdm.config import load_config
        cfg = load_config({str(TINY)!r}, ["tune.eval_steps=2", "tune.sampler_startup_trials=2"])
        import isdm.tuning.results, isdm.tuning
        isdm.tuning.results.write_plots = lambda study, out_dir: []  # matplotlib costs seconds
        isdm.tuning.run_study(cfg, {str(synth_dir)!r}, {str(ckpt)!r}, {str(tmp_path / 'tune')!r},
                         n_trials=int(sys.argv[1]), storage={storage!r}, study_name="shared")
    '''))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    # create the study and its MLflow run first (concurrent creation of a fresh store races)
    cfg = load_config(TINY, ["tune.eval_steps=2"])
    assert tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=0, storage=storage,
                            study_name="shared")["n_trials"] == 0
    workers = [subprocess.Popen([sys.executable, str(script), "2"], env=env,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=180) == 0, w.stderr.read()[-2000:]
    import optuna

    backend = tune_storage.open_storage(tuning.resolve_storage(storage, tmp_path))
    shared = optuna.load_study(study_name="shared", storage=backend)
    assert len(shared.trials) == 4
    assert all(t.state.is_finished() for t in shared.trials)
    assert len({tuple(sorted(t.params.items())) for t in shared.trials}) == 4  # no repeated draw
    study_runs, trials = _trial_runs(mlflow_uri)
    assert len(study_runs) == 1 and len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {study_runs[0].info.run_id}


# ----------------------------------------------------------------------------------------------
# the real thing: tiny SDM, real finetune, sampling and downstream segmenter
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, synth_dir) -> Path:
    pytest.importorskip("isdm.solvers")
    from isdm.training import train

    out = tmp_path_factory.mktemp("sdm")
    cfg = load_config(TINY, ["train.max_steps=2", "train.max_epochs=1", "tracking.enabled=false"])
    train(cfg, synth_dir, out, progress=False)
    return out / "best.pt"


@pytest.mark.slow
def test_isdm_tune_cli_runs_three_real_trials_and_a_rerun_joins_the_study(
        tmp_path, synth_dir, mlflow_uri, tiny_checkpoint):
    from click.testing import CliRunner

    from isdm.cli import cli

    out = tmp_path / "tune"
    args = ["tune", "-c", str(TINY), "--data", str(synth_dir), "--checkpoint", str(tiny_checkpoint),
            "--out", str(out), "--set", "tune.drop_rates=[0.2]", "--set", "tune.steps=[2]",
            "--set", "tune.num_samples=4", "--set", "tune.eval_steps=1",
            "--set", "tune.finetune_epochs=1", "--set", "finetune.max_steps=2",
            "--set", "evaluate.val_fraction=0.25", "--set", "evaluate.batch_size=4"]
    result = CliRunner().invoke(cli, [*args, "--n-trials", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list((out / "trials").iterdir())) == 3
    assert [p.name for p in out.glob("finetune_dr*")] == ["finetune_dr0.2"]  # trained once
    assert len(list((out / "trials" / "0000" / "synthetic" / "samples").iterdir())) == 4
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["finetune.drop_rate"] == 0.2 and best["sample.steps"] == 2
    # running again joins the same study (default journal storage under --out) and reuses the
    # cached finetune (separate worker processes: test_two_worker_processes_share_one_study)
    result = CliRunner().invoke(cli, [*args, "--n-trials", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert '"n_trials": 4' in result.output
    assert [p.name for p in out.glob("finetune_dr*")] == ["finetune_dr0.2"]
    study_runs, trials = _trial_runs(mlflow_uri)
    assert len(study_runs) == 1 and len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {study_runs[0].info.run_id}
    # the finetune and sample runs of a trial are children of that trial's run
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trial_ids = {t.info.run_id for t in trials}
    samples = [r for r in runs if r.data.tags.get("isdm.action") == "sample"]
    assert len(samples) == 4 and all(r.data.tags["mlflow.parentRunId"] in trial_ids for r in samples)

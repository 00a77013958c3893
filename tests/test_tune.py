"""`isdm tune`: storage, the search space, the paired objective (common random numbers, one
baseline per study), the keyed finetune cache and its lock, results, console lines, the Pareto
front, --apply, the final check, several workers on one study, and one real end-to-end study."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from isdm import tuning
from isdm.config import flatten, load_config
from isdm.tuning import cache as tune_cache
from isdm.tuning import objective as tune_objective
from isdm.tuning import paired
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


# ----------------------------------------------------------------------------------------------
# the search space and the objective's arithmetic
# ----------------------------------------------------------------------------------------------

_DRAW = {"sample.s": 2.25, "finetune.drop_rate": 0.3, "sample.steps": 3, "sample.sampler": "ddim",
         "synthetic_ratio": 0.5, "curate.min_fidelity": 0.4, "curate.pixel_threshold": 2.0}


def test_suggest_uses_params_yaml_keys_and_trial_config_applies_them():
    import optuna

    cfg = _cfg()
    params = tuning.suggest(optuna.trial.FixedTrial(_DRAW), cfg)
    assert params == _DRAW
    t = tuning.trial_config(cfg, params, n_real=7)
    assert (t.sample.s, t.sample.steps, t.sample.sampler, t.sample.seed) == (2.25, 3, "ddim", 0)
    assert t.sample.num_samples == 4  # round(0.5 x 7 real training images)
    assert (t.finetune.drop_rate, t.finetune.max_epochs) == (0.3, cfg.tune.finetune_epochs)
    assert (t.curate.min_fidelity, t.curate.pixel_threshold) == (0.4, 2.0)
    assert t.evaluate.steps == cfg.tune.eval_steps
    assert t.train == cfg.train  # the pretrained network is never retrained
    no_gate = _cfg("tune.curate_min_fidelity=[]", "tune.curate_pixel_thresholds=[]")
    assert set(tuning.suggest(optuna.trial.FixedTrial(_DRAW), no_gate)) == set(_DRAW) - {
        "curate.min_fidelity", "curate.pixel_threshold"}


def test_pixel_thresholds_leave_out_what_curate_refuses():
    assert tune_objective.pixel_thresholds(_cfg()) == [0.0, 2.0]
    assert tune_objective.pixel_thresholds(_cfg("data.dataset_mode=binary", "data.num_classes=2",
                                                 "data.ignore_index=null")) == [0.0]
    assert tune_objective.pixel_thresholds(_cfg("data.ignore_index=null")) == [0.0]
    assert tune_objective.pixel_thresholds(_cfg("data.ignore_index=null",
                                                "tune.curate_pixel_thresholds=[2.0]")) == [0.0]


def test_paired_gain_is_the_mean_difference_with_its_standard_error():
    g = paired.paired_gain([0.6, 0.8], [0.5, 0.5])  # differences 0.1 and 0.3
    assert g.diffs == pytest.approx((0.1, 0.3)) and g.mean == pytest.approx(0.2)
    assert g.se == pytest.approx(0.1)  # std 0.1414 (ddof 1) / sqrt(2)
    assert paired.paired_gain([0.7], [0.5]).se is None


def test_a_gate_that_keeps_no_pair_trains_nothing_and_gains_exactly_zero(monkeypatch):
    """No synthetic pair left: the trial's cell would be the real-only cell itself."""
    def train(*args, **kwargs):
        raise AssertionError("no cell may be trained")

    monkeypatch.setattr(paired, "repeat_values", train)
    seen = []
    gain = paired.measure(_cfg("tune.repeats=2"), real=None, synthetic=[], baseline=[0.4, 0.5],
                          on_repeat=lambda r, g: seen.append((r, g.mean)))
    assert (gain.values, gain.mean, gain.se) == ((0.4, 0.5), 0.0, 0.0) and seen == [(0, 0.0), (1, 0.0)]


# ----------------------------------------------------------------------------------------------
# locks and the finetune cache
# ----------------------------------------------------------------------------------------------


def test_lock_excludes_and_a_killed_holder_releases_it(tmp_path):
    lock = tmp_path / "x.lock"
    order = []

    def worker(tag: str) -> None:
        with tune_cache.lock(lock):
            order.append(f"{tag}-in")
            time.sleep(0.05)
            order.append(f"{tag}-out")

    threads = [threading.Thread(target=worker, args=(t,)) for t in "ab"]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert order in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])
    # a worker killed while holding the lock (no chance to release it)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from isdm.tuning.cache import lock\n"
         f"with lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    t0 = time.monotonic()
    with tune_cache.lock(lock):
        assert time.monotonic() - t0 < 5


def test_finetune_cache_is_keyed_by_checkpoint_and_finetune_config(tmp_path, synth_dir, monkeypatch):
    """A new --checkpoint (or finetune budget) gets a new finetune, not the stale one."""
    import isdm.training

    calls = []

    def fake_train(cfg, data_root, out_dir, *, action, init_from, progress):
        calls.append((action, cfg.finetune.drop_rate, Path(init_from).read_bytes()))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "best.pt").write_bytes(b"finetuned")

    monkeypatch.setattr(isdm.training, "train", fake_train, raising=False)
    cfg = tuning.trial_config(_cfg(), _DRAW, n_real=7)
    ckpt, out = tmp_path / "sdm.pt", tmp_path / "tune"
    ckpt.write_bytes(b"first")
    a = tuning.finetuned_checkpoint(cfg, synth_dir, ckpt, out)
    assert tuning.finetuned_checkpoint(cfg, synth_dir, ckpt, out) == a  # reused
    assert calls == [("finetune", 0.3, b"first")]
    assert yaml.safe_load((a.parent / "identity.json").read_text())["finetune"]["drop_rate"] == 0.3
    ckpt.write_bytes(b"second")  # `isdm train` wrote a new checkpoint at the same path
    b = tuning.finetuned_checkpoint(cfg, synth_dir, ckpt, out)
    assert b != a and calls[-1] == ("finetune", 0.3, b"second")
    longer = tuning.trial_config(_cfg("tune.finetune_epochs=3"), _DRAW, n_real=7)
    c = tuning.finetuned_checkpoint(longer, synth_dir, ckpt, out)
    assert c not in (a, b) and len(calls) == 3
    assert sorted(p.name for p in (out / "finetunes").iterdir() if p.is_dir()) == sorted(
        p.parent.name for p in (a, b, c))


# ----------------------------------------------------------------------------------------------
# the paired cells are the evaluate cells, at equal steps
# ----------------------------------------------------------------------------------------------


def _copy_as_synthetic(synth_dir: Path, dest: Path, n: int = 4) -> Path:
    for sub, src in (("samples", "images"), ("labels", "masks")):
        (dest / sub).mkdir(parents=True)
        for f in sorted((synth_dir / "train" / src).iterdir())[:n]:
            shutil.copy(f, dest / sub / f"syn_{f.name}")
    return dest


@pytest.mark.slow
def test_paired_cells_are_evaluates_cells_at_equal_steps(synth_dir, tmp_path):
    """Both cells of a repeat train tune.eval_steps steps and score what `isdm evaluate`
    reports for (FPN, mix, seed 1) at evaluate.steps = tune.eval_steps."""
    from isdm.evaluation import run_evaluation
    from isdm.tuning.cells import StudyCells

    syn = _copy_as_synthetic(synth_dir, tmp_path / "syn")
    cfg = paired.budget_config(load_config(TINY, [
        "tracking.enabled=false", "evaluate.mixes=[RALLF000,RALLFALL]", "evaluate.seeds=[1]",
        "evaluate.batch_size=4", "evaluate.bootstrap=0", "evaluate.steps=50", "tune.eval_steps=3",
        "tune.architecture=FPN"]))
    cells = run_evaluation(cfg, synth_dir, syn, tmp_path / "out", progress=False)["cells"]
    real = tune_objective.load_real_train(cfg, synth_dir)
    synth = tune_objective.load_synthetic_set(cfg, syn)
    with StudyCells(cfg, synth_dir) as study_cells:
        (base,) = paired.repeat_values(cfg, "RALLF000", real, real.subset([]), None,
                                       study_cells, [1])
        (mixed,) = paired.repeat_values(cfg, "RALLFALL", real, synth, syn, study_cells, [1])
    assert base[1] == mixed[1] == 3 == cfg.tune.eval_steps
    by_mix = {c["mix"]: c for c in cells}
    assert base[0] == by_mix["RALLF000"]["best_val_miou"]
    assert mixed[0] == by_mix["RALLFALL[synthetic]"]["best_val_miou"]
    assert by_mix["RALLF000"]["steps"] == by_mix["RALLFALL[synthetic]"]["steps"] == 3


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_trials_cells_come_from_the_pool_and_the_store(synth_dir, tmp_path, cell_store, workers):
    """measure() runs a trial's repeats on the study's pool (side by side with 2 workers) into
    the cell store (untested cells of the trial's set); the same trial again reads them back."""
    import json

    from isdm.data.digest import dataset_digest, synthetic_digest
    from isdm.tuning.cells import StudyCells

    syn = _copy_as_synthetic(synth_dir, tmp_path / "syn")
    cfg = paired.budget_config(load_config(TINY, [
        "tracking.enabled=false", "evaluate.batch_size=4", "tune.eval_steps=2", "tune.repeats=2",
        "tune.architecture=FPN", f"evaluate.workers={workers}", "evaluate.threads=1"]))
    real = tune_objective.load_real_train(cfg, synth_dir)
    synth = tune_objective.load_synthetic_set(cfg, syn)
    with StudyCells(cfg, synth_dir) as cells:
        assert cells.pool.workers == workers
        first = paired.measure(cfg, real, synth, [0.0, 0.0], folder=syn, cells=cells)
        assert (cells.pool.trained, cells.pool.from_store) == (2, 0)
        again = paired.measure(cfg, real, synth, [0.0, 0.0], folder=syn, cells=cells)
        assert (cells.pool.trained, cells.pool.from_store) == (2, 2)
    assert again == first
    specs = [json.loads((d / "record.json").read_text())["spec"] for d in cell_store.iterdir()
             if (d / "record.json").is_file()]
    assert sorted(s["seed"] for s in specs) == [0, 1]
    assert all(s["mix"] == "RALLFALL" and s["arch"] == "FPN" and s["steps"] == 2
               and s["test"] == "" and s["synthetic"] == synthetic_digest(syn)
               and s["real"] == dataset_digest(synth_dir) for s in specs)
    assert [v for v in first.values] == [
        json.loads((cell_store / d / "record.json").read_text())["fit"]["best_val_miou"]
        for d in sorted((p.name for p in cell_store.iterdir() if not p.name.startswith(".")),
                        key=lambda k: json.loads((cell_store / k / "record.json").read_text())
                        ["spec"]["seed"])]


# ----------------------------------------------------------------------------------------------
# study mechanics with stand-ins for finetune / sample / the downstream cells
# ----------------------------------------------------------------------------------------------

_STANDINS = '''
import json, os
from pathlib import Path
from isdm.evaluation.cell import plan_cell

class FakeSet:
    def __init__(self, keys):
        self.keys = list(keys)
    def __len__(self):
        return len(self.keys)
    def subset(self, keys):
        return FakeSet(keys)

def finetuned_checkpoint(cfg, data_root, checkpoint, out_dir):
    return Path(checkpoint)

def run_sampling(cfg, data_root, checkpoint, out_dir, overwrite=False):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {"this_run": {"seconds_per_image": 0.01 * cfg.sample.steps}}

def load_real_train(cfg, data_root):
    return FakeSet([f"real{i:02d}" for i in range(10)])

def load_synthetic_set(cfg, folder):
    return FakeSet([f"syn{i:02d}" for i in range(cfg.sample.num_samples)])

def cell_val_miou(cfg, mix, seed, real, synthetic):
    """Seed noise shared by both cells of a repeat; the synthetic set adds a smooth function of
    s with its maximum at s = 2 (so the paired gain is exactly that function)."""
    cell = plan_cell(cfg, cfg.tune.architecture, mix, seed, real.keys, synthetic.keys)
    if os.environ.get("CELL_LOG"):
        with open(os.environ["CELL_LOG"], "a") as f:
            f.write(json.dumps({"mix": mix, "seed": seed, "s": cfg.sample.s, "steps": cfg.evaluate.steps,
                                "val": list(cell.plan.val_keys), "real": list(cell.plan.real_keys)}) + "\\n")
    value = 0.5 + 0.03 * seed
    if mix != "RALLF000":
        value += 0.1 * (1.0 - (cfg.sample.s - 2.0) ** 2 / 10)
    return value, cfg.evaluate.steps

def repeat_values(cfg, mix, real, synthetic, folder, cells, seeds=None):
    from isdm.tuning.paired import repeat_seeds
    for seed in (repeat_seeds(cfg) if seeds is None else seeds):
        yield cell_val_miou(cfg, mix, seed, real, synthetic)
'''
_PATCH = '''
import isdm.sampling, isdm.tuning.objective as objective, isdm.tuning.paired as paired
objective.finetuned_checkpoint = finetuned_checkpoint
objective.load_real_train = load_real_train
objective.load_synthetic_set = load_synthetic_set
paired.repeat_values = repeat_values
isdm.sampling.run_sampling = run_sampling
'''
# stand-in studies: no curation gate (its scorer trains a real segmenter), no final check
_NO_GATE = ("tune.curate_min_fidelity=[]", "tune.curate_pixel_thresholds=[]",
            "curate.min_fidelity=0", "curate.pixel_threshold=0", "tune.final_check=false")


def _gain(s: float) -> float:
    return 0.1 * (1.0 - (s - 2.0) ** 2 / 10)


@pytest.fixture
def standins(monkeypatch, tmp_path):
    """Stand-ins in this process; every downstream cell is logged to ``tmp_path/cells.jsonl``."""
    namespace: dict = {}
    exec(_STANDINS, namespace)
    for name in ("finetuned_checkpoint", "load_real_train", "load_synthetic_set"):
        monkeypatch.setattr(tune_objective, name, namespace[name])
    monkeypatch.setattr(paired, "repeat_values", namespace["repeat_values"])
    import isdm.sampling

    monkeypatch.setattr(isdm.sampling, "run_sampling", namespace["run_sampling"])
    monkeypatch.setenv("CELL_LOG", str(tmp_path / "cells.jsonl"))
    return tmp_path / "cells.jsonl"


def _cells(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _trial_runs(uri: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    study = [r for r in runs if r.data.tags.get("isdm.action") == "tune"]
    trials = [r for r in runs if r.data.tags.get("isdm.action") == "trial"]
    return study, trials


@pytest.mark.slow
def test_study_records_paired_gains_and_writes_results(tmp_path, synth_dir, mlflow_uri, standins,
                                                       ckpt, capsys):
    out = tmp_path / "tune"
    cfg = _cfg("tune.repeats=2", "tune.pruning=false", *_NO_GATE)
    summary = tuning.run_study(cfg, synth_dir, ckpt, out, n_trials=4, progress=False)
    assert (summary["n_trials"], summary["complete"]) == (4, 4)
    assert summary["baseline_val_miou"] == [0.5, 0.53]
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert set(best) == {"sample.s", "finetune.drop_rate", "sample.steps", "sample.sampler",
                         "sample.num_samples"}
    assert summary["best_gain"] == pytest.approx(_gain(best["sample.s"]))
    assert summary["best_gain_se"] == pytest.approx(0.0, abs=1e-12)  # the seed noise cancels
    assert (out / "plots" / "optimization_history.png").stat().st_size > 0
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].split(",")[:8] == ["number", "state", "gain", "gain_se", "repeats", "gain_r0",
                                      "gain_r1", "val_miou_r0"]
    # fixed repeats: 4 trials x 2 repeats + 2 real-only cells, each of tune.eval_steps = 2 steps
    assert summary["segmenter_cells"] == {"trials": 8, "baseline": 2, "total": 10,
                                          "fixed_total": 10}
    assert (summary["eval_steps"], summary["segmenter_steps"]) == (2, 20)
    assert len(rows) == 5
    # one console line per finished trial
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("trial ")]
    assert len(lines) == 4

    (study_run,), trials = _trial_runs(mlflow_uri)
    assert len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {study_run.info.run_id}
    assert all(t.data.metrics["gain"] == pytest.approx(_gain(float(t.data.params["sample.s"])))
               for t in trials)
    assert study_run.data.metrics["best_gain"] == pytest.approx(summary["best_gain"])
    assert study_run.data.metrics["segmenter_steps"] == 20.0

    # resuming the study adds trials under the same study run and the same baseline
    summary = tuning.run_study(cfg, synth_dir, ckpt, out, n_trials=1, progress=False)
    assert summary["n_trials"] == 5
    (study_again,), trials = _trial_runs(mlflow_uri)
    assert study_again.info.run_id == study_run.info.run_id and len(trials) == 5


@pytest.mark.slow
def test_repeats_share_seeds_and_splits_across_trials_and_the_baseline_is_trained_once(
        tmp_path, synth_dir, standins, ckpt):
    cfg = _cfg("tune.repeats=3", "tracking.enabled=false", "tune.pruning=false", *_NO_GATE)
    tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=3, progress=False)
    tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=1, progress=False)  # resumed
    cells = _cells(standins)
    baseline = [c for c in cells if c["mix"] == "RALLF000"]
    trials = [c for c in cells if c["mix"] != "RALLF000"]
    assert [c["seed"] for c in baseline] == [0, 1, 2]  # once per study
    assert [c["seed"] for c in trials] == [0, 1, 2] * 4
    assert len({c["s"] for c in trials}) == 4  # four different trials
    for c in trials:  # common random numbers: same split and real images as the baseline's
        ref = baseline[c["seed"]]
        assert (c["val"], c["real"]) == (ref["val"], ref["real"])
    assert {c["steps"] for c in cells} == {cfg.tune.eval_steps}


@pytest.mark.slow
def test_adaptive_repeats_prune_extend_and_never_cost_more_than_fixed_repeats(
        tmp_path, synth_dir, standins, ckpt):
    """Stand-in gains without seed noise: a trial below the best is pruned after its first
    repeat, the others run tune.repeats, a leader runs max_repeats once the pruned trials saved
    enough; every repeat is an intermediate value; the study uses no more cells than fixed
    repeats would."""
    import optuna

    cfg = _cfg("tune.repeats=2", "tune.min_repeats=1", "tune.max_repeats=4",
               "tune.pruning_startup_trials=1",
               "tracking.enabled=false", *_NO_GATE)
    summary = tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=12,
                               progress=False)
    study = optuna.load_study(study_name="isdm", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "tune" / "study.journal"))))
    trials = study.get_trials()
    S = optuna.trial.TrialState
    repeats = {t.number: len(t.user_attrs["gain_repeats"]) for t in trials}
    assert {repeats[t.number] for t in trials if t.state == S.PRUNED} == {1}
    assert {repeats[t.number] for t in trials if t.state == S.COMPLETE} == {2, 4}
    assert all(sorted(t.intermediate_values) == list(range(repeats[t.number])) for t in trials)
    best = max(t.value for t in trials if t.state == S.COMPLETE)
    extended = [t for t in trials if repeats[t.number] == 4]
    assert all(t.value == best or t.user_attrs["repeat_decisions"][-1].startswith("2: more")
               for t in extended)
    cells = summary["segmenter_cells"]
    assert cells["total"] <= cells["fixed_total"] == 12 * 2 + 2
    assert cells["trials"] == sum(repeats.values()) and cells["baseline"] == 4
    baseline = [c["seed"] for c in _cells(standins) if c["mix"] == "RALLF000"]
    assert baseline == [0, 1, 2, 3]  # seeds 2 and 3 once, when the first leader needed them


def test_a_study_measured_against_another_baseline_is_refused(tmp_path, synth_dir, standins, ckpt):
    from isdm.errors import TuningError

    cfg = _cfg("tracking.enabled=false", *_NO_GATE)
    tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=1, progress=False)
    with pytest.raises(TuningError, match="another real-only baseline"):
        tuning.run_study(_cfg("tracking.enabled=false", "tune.eval_steps=5", *_NO_GATE),
                         synth_dir, ckpt, tmp_path / "tune", n_trials=1, progress=False)


def test_console_line_of_a_finished_trial():
    import optuna

    from isdm.tuning.console import trial_line

    study = optuna.create_study(direction="maximize")

    def objective(trial):
        tuning.suggest(trial, _cfg())
        for key, value in (("gain", 0.0123), ("gain_se", 0.0045), ("gain_repeats", [0.01, 0.02, 0.0069]),
                           ("seconds_per_image", 0.41)):
            trial.set_user_attr(key, value)
        return 0.0123

    study.enqueue_trial({**_DRAW, "sample.s": 2.1, "finetune.drop_rate": 0.1})
    study.optimize(objective, n_trials=1)
    assert re.fullmatch(r"trial   0  s=2\.10 drop=0\.1 ddim 3 steps ratio=0\.5 fidelity>=0\.4 "
                        r"pixels>2x  gain \+0\.0123 ± 0\.0045 \(3 repeats\)  0\.41 s/image  "
                        r"COMPLETE  \d+ s", trial_line(study.trials[0])), trial_line(study.trials[0])


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front_and_its_plot(tmp_path, synth_dir, standins, ckpt):
    cfg = _cfg("tune.objectives=[gain,cost]", "tracking.enabled=false", "tune.repeats=1",
               *_NO_GATE)
    summary = tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=5, progress=False)
    assert summary["objectives"] == ["gain", "cost"] and summary["complete"] == 5
    assert summary["pareto_front"] and summary["best_trial"] in summary["pareto_front"]
    assert (tmp_path / "tune" / "plots" / "pareto_front.png").stat().st_size > 0
    assert "on_front" in (tmp_path / "tune" / "trials.csv").read_text().splitlines()[0]


def test_apply_writes_exactly_the_best_knobs_and_keeps_comments(tmp_path):
    from click.testing import CliRunner

    from isdm.cli import cli

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    out = tmp_path / "tune"
    out.mkdir()
    best = {"sample.s": 2.3456, "finetune.drop_rate": 0.3, "sample.steps": 30,
            "sample.sampler": "ddim", "sample.num_samples": 64, "curate.min_fidelity": 0.4,
            "curate.pixel_threshold": 0.0}
    (out / "best_params.yaml").write_text("# header\n" + yaml.safe_dump(best))
    result = CliRunner().invoke(cli, ["tune", "-c", str(params), "--out", str(out), "--apply",
                                      "--force"],  # no study here to check the evidence of
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    before, after = flatten(load_config(REPO / "params.yaml")), flatten(load_config(params))
    assert {k: v for k, v in after.items() if before[k] != v} == {
        k: v for k, v in best.items() if before[k] != v}
    assert all(after[k] == v for k, v in best.items())
    old, new = (REPO / "params.yaml").read_text().splitlines(), params.read_text().splitlines()
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new) if a != b]
    assert len(changed) == sum(before[k] != v for k, v in best.items())
    for a, b in changed:  # the comment survives, at the same column
        assert a.partition("#")[2] == b.partition("#")[2] and a.find("#") == b.find("#")
    assert "sample.s: 1.5 -> 2.3456" in result.output


def test_final_check_compares_tuned_and_current_knobs_once(tmp_path, synth_dir, standins, ckpt,
                                                           monkeypatch):
    import isdm.evaluation
    import isdm.tuning.cache

    monkeypatch.setattr(isdm.tuning.cache, "finetuned_checkpoint",
                        lambda cfg, data_root, checkpoint, out_dir: Path(checkpoint))
    calls = []

    def fake_evaluation(cfg, data_root, synthetic, out_dir, progress=None, cell_cache=None,
                        set_protocols=None):
        assert set_protocols == {"current": "mix", "tuned": "mix"}
        calls.append((sorted(synthetic), cfg.evaluate.seeds, cfg.evaluate.mixes))
        stats = {"gain": 0.02, "gain_lo": 0.01, "gain_hi": 0.03, "verdict": "gain",
                 "gain_nobg": 0.0, "gain_nobg_lo": -0.01, "gain_nobg_hi": 0.01,
                 "verdict_nobg": "no significant difference"}
        return {"summary": {
            "overall": {"RALLF000": {"miou_mean": 0.40},
                        "RALLFALL[current]": {"miou_mean": 0.42, **stats},
                        "RALLFALL[tuned]": {"miou_mean": 0.44, **stats}},
            "comparisons": [{"arch": a, "set": "tuned", **stats} for a in ("FPN", "mean")]}}

    monkeypatch.setattr(isdm.evaluation, "run_evaluation", fake_evaluation)
    cfg = _cfg("tracking.enabled=false", "tune.final_seeds=[0,1]", *_NO_GATE[:-1])
    out = tmp_path / "tune"
    summary = tuning.run_study(cfg, synth_dir, ckpt, out, n_trials=2, progress=False)
    assert calls == [(["current", "tuned"], (0, 1), ("RALLFALL",))]
    check = yaml.safe_load((out / "final_check.json").read_text())
    assert check["tuned_vs_current"]["gain"] == 0.02 and check["seeds"] == [0, 1]
    assert summary["final_check"]["verdict"].startswith("the tuned knobs are significantly better")
    assert check["knobs"]["current"]["sample.num_samples"] == cfg.sample.num_samples
    assert "tuned vs current | mean | +0.0200 [+0.0100, +0.0300] | gain" in (
        out / "final_check.md").read_text()
    tuning.run_study(cfg, synth_dir, ckpt, out, n_trials=0, progress=False)
    assert len(calls) == 1  # same best trial, same settings: reused


@pytest.mark.slow
def test_two_worker_processes_share_one_study_and_one_baseline(tmp_path, synth_dir, mlflow_uri,
                                                                ckpt):
    """Two `run_study` processes started together on one sqlite study."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script = tmp_path / "worker.py"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script.write_text(_STANDINS + _PATCH + textwrap.dedent(f'''
        import sys, time
        from isdm.config import load_config
        cfg = load_config({str(TINY)!r}, ["tune.sampler_startup_trials=2", "tune.pruning=false",
                                          *{list(_NO_GATE)!r}])
        import isdm.tuning.plots, isdm.tuning
        isdm.tuning.plots.write_plots = lambda study, out_dir: []  # matplotlib costs seconds
        Path({str(barrier)!r}, str(os.getpid())).touch()
        while len(os.listdir({str(barrier)!r})) < 2:
            time.sleep(0.01)
        isdm.tuning.run_study(cfg, {str(synth_dir)!r}, {str(ckpt)!r}, {str(tmp_path / 'tune')!r},
                              n_trials=2, storage={storage!r}, study_name="shared")
    '''))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "CELL_LOG": str(tmp_path / "cells.jsonl")}
    # create the study and its MLflow run first (concurrent creation of a fresh store races)
    cfg = load_config(TINY, list(_NO_GATE))
    assert tuning.run_study(cfg, synth_dir, ckpt, tmp_path / "tune", n_trials=0, storage=storage,
                            study_name="shared")["n_trials"] == 0
    workers = [subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=180) == 0, w.stderr.read()[-2000:]
    import optuna

    backend = tune_storage.open_storage(tuning.resolve_storage(storage, tmp_path))
    shared = optuna.load_study(study_name="shared", storage=backend)
    assert len(shared.trials) == 4 and len({t.number for t in shared.trials}) == 4
    assert all(t.state.name == "COMPLETE" for t in shared.trials)
    assert len({tuple(sorted(t.params.items())) for t in shared.trials}) == 4  # no repeated draw
    cells = _cells(tmp_path / "cells.jsonl")
    assert [c["seed"] for c in cells if c["mix"] == "RALLF000"] == [0, 1]  # one baseline
    assert len([c for c in cells if c["mix"] != "RALLF000"]) == 4 * 2
    study_runs, trials = _trial_runs(mlflow_uri)
    assert len(study_runs) == 1 and len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {study_runs[0].info.run_id}


# ----------------------------------------------------------------------------------------------
# the real thing: tiny SDM, real finetune, sampling, curation, downstream cells, final check
# ----------------------------------------------------------------------------------------------


# tiny_checkpoint: tests/conftest.py


@pytest.mark.slow
def test_isdm_tune_cli_runs_real_trials_a_final_check_and_a_rerun_joins_the_study(
        tmp_path, synth_dir, mlflow_uri, tiny_checkpoint):
    from click.testing import CliRunner

    from isdm.cli import cli

    out = tmp_path / "tune"
    args = ["tune", "-c", str(TINY), "--data", str(synth_dir), "--checkpoint", str(tiny_checkpoint),
            "--out", str(out), "--no-progress", "--set", "tune.drop_rates=[0.2]",
            "--set", "tune.steps=[2]", "--set", "tune.eval_steps=1", "--set", "tune.repeats=2",
            "--set", "tune.curate_min_fidelity=[0.1]", "--set", "tune.curate_pixel_thresholds=[0]",
            "--set", "tune.finetune_epochs=1", "--set", "finetune.max_steps=2",
            "--set", "evaluate.val_fraction=0.25", "--set", "evaluate.batch_size=4"]
    result = CliRunner().invoke(cli, [*args, "--n-trials", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list((out / "trials").iterdir())) == 2
    assert len([p for p in (out / "finetunes").iterdir() if p.is_dir()]) == 1  # trained once
    n_real = 6  # 8 train images, 2 held out for validation
    samples = out / "trials" / "0000" / "synthetic" / "samples"
    assert len(list(samples.iterdir())) in {round(r * n_real) for r in (0.5, 1.0)}
    assert (out / "trials" / "0000" / "curated" / "card.json").exists()
    assert len([ln for ln in result.output.splitlines() if ln.startswith("trial ")]) == 2
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["finetune.drop_rate"] == 0.2 and best["sample.steps"] == 2
    check = yaml.safe_load((out / "final_check.json").read_text())
    assert check["verdict"] and "final check on the test split" in result.output
    # running again joins the same study (default journal storage under --out) and reuses the
    # cached finetune and baseline
    result = CliRunner().invoke(cli, [*args, "--n-trials", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert '"n_trials": 3' in result.output
    assert len([p for p in (out / "finetunes").iterdir() if p.is_dir()]) == 1
    study_runs, trials = _trial_runs(mlflow_uri)
    assert len(study_runs) == 1 and len(trials) == 3
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trial_ids = {t.info.run_id for t in trials}
    samples = [r for r in runs if r.data.tags.get("isdm.action") == "sample"
               and r.data.tags.get("mlflow.parentRunId") in trial_ids]
    assert len(samples) == 3


def test_keys_an_earlier_version_had_are_dropped_from_checkpoints_and_explained_in_configs():
    """A checkpoint written before the paired objective (tune.mix, tune.num_samples) or the step
    budget (evaluate.epochs, tune.eval_epochs) still loads its config; a config file with them
    says what replaced them."""
    from isdm.config import config_from_json, to_dict
    from isdm.errors import ConfigError

    stored = to_dict(load_config(TINY))
    stored["tune"].update(mix="RALLFALL", num_samples=16, eval_epochs=5)
    stored["evaluate"]["epochs"] = 10
    assert config_from_json(stored) == load_config(TINY)
    with pytest.raises(ConfigError, match=r"tune\.mix: was replaced by tune\.ratios"):
        load_config(TINY, ["tune.mix=RALLFALL"])

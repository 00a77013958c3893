"""`isdm evaluate` on the cell store and the pool: a re-run after kill -9 trains only the missing
cells and reports the same numbers; workers 2 == workers 1 at one thread per cell; shards plus
a final run equal one run; a new synthetic set trains no real-only cell; curate's scorer and
evaluate's real-only cell are one cell."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from isdm.cli import cli

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, tracking: bool = False, **evaluate) -> Path:
    section = dict(architectures=["FPN"], encoder="resnet18", mixes=["RALLF000", "RALLFALL"],
                   seeds=[0, 1], steps=2, val_every=1, image_size=32, batch_size=4,
                   bootstrap=50, workers=1, threads=1)
    section.update(evaluate)
    path = tmp_path / f"params{len(list(tmp_path.glob('params*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"data": {"image_size": 32}, "evaluate": section,
                                    "curate": {"architecture": "FPN", "seed": 0},
                                    "tracking": {"enabled": tracking}}))
    return path


def _synthetic(dataset: Path, out: Path, first: int, n: int = 4) -> Path:
    """A sampling-shaped folder of train pairs ``first .. first + n - 1``."""
    (out / "samples").mkdir(parents=True)
    (out / "labels").mkdir()
    for img in sorted((dataset / "train" / "images").iterdir())[first:first + n]:
        mask = next((dataset / "train" / "masks").glob(img.stem + ".*"))
        shutil.copy(img, out / "samples" / f"syn_{img.name}")
        shutil.copy(mask, out / "labels" / f"syn_{mask.name}")
    return out


def _evaluate(params: Path, data: Path, syn: Path | None, out: Path, store: Path,
              *extra: str) -> str:
    args = ["evaluate", "-c", str(params), "--data", str(data), "--out", str(out),
            "--cell-cache", str(store), "--device", "cpu", *extra]
    if syn is not None:
        args += ["--synthetic", str(syn)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _numbers(out: Path) -> dict:
    """Everything an evaluation reports, timings and the run's setup aside."""
    report = json.loads((out / "report.json").read_text())
    report.pop("setup")
    report["budget"].pop("train_seconds_total")
    rows = [{k: v for k, v in r.items() if k != "train_seconds"}
            for r in csv.DictReader((out / "cells.csv").open())]
    with np.load(out / "counts.npz") as z:
        counts = {k: z[k].tolist() for k in sorted(z.files)}
    return {"metrics": (out / "metrics.json").read_text(), "report": report, "cells": rows,
            "counts": counts}


def _records(store: Path) -> list[dict]:
    return [json.loads((d / "record.json").read_text()) for d in sorted(store.iterdir())
            if (d / "record.json").is_file()]


@pytest.mark.slow
def test_a_rerun_after_kill_9_trains_only_the_missing_cells_and_reports_the_same(
        synth_dir, tmp_path):
    params = _params(tmp_path, steps=8, val_every=4)
    syn = _synthetic(synth_dir, tmp_path / "syn", 0)
    killed_store = tmp_path / "killed"
    args = ["-c", str(params), "--data", str(synth_dir), "--synthetic", str(syn),
            "--out", str(tmp_path / "killed_out"), "--cell-cache", str(killed_store),
            "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", "from isdm.cli import main; main()",
                             "evaluate", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a loaded machine starves the subprocess
    while len(_records(killed_store)) < 2 if killed_store.exists() else True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    present = len(_records(killed_store))
    assert 2 <= present < 4 and not (tmp_path / "killed_out" / "report.json").exists()

    output = _evaluate(params, synth_dir, syn, tmp_path / "killed_out", killed_store)
    assert f"cells: {4 - present} trained, {present} from the cell store" in output
    _evaluate(params, synth_dir, syn, tmp_path / "clean_out", tmp_path / "clean")
    assert _numbers(tmp_path / "killed_out") == _numbers(tmp_path / "clean_out")
    setup = json.loads((tmp_path / "killed_out" / "report.json").read_text())["setup"]
    assert setup["cells"].startswith(f"4: {4 - present} trained in this run")
    assert f"{present} from the cell store" in setup["cells"]


@pytest.mark.slow
def test_two_workers_give_the_same_numbers_as_one(synth_dir, tmp_path):
    syn = _synthetic(synth_dir, tmp_path / "syn", 0)
    one = _evaluate(_params(tmp_path, workers=1, seeds=[0]), synth_dir, syn, tmp_path / "one",
                    tmp_path / "s1")
    two = _evaluate(_params(tmp_path, workers=2, seeds=[0]), synth_dir, syn, tmp_path / "two",
                    tmp_path / "s2")
    assert "cells: 2 trained" in one and "cells: 2 trained" in two
    assert _numbers(tmp_path / "one") == _numbers(tmp_path / "two")
    setup = json.loads((tmp_path / "two" / "report.json").read_text())["setup"]
    assert "2 workers x 1 thread" in setup["cells"]
    assert {r["run"]["threads"] for r in _records(tmp_path / "s2")} == {1}


@pytest.mark.slow
def test_shards_and_a_final_run_equal_one_run(synth_dir, tmp_path):
    params = _params(tmp_path)
    syn = _synthetic(synth_dir, tmp_path / "syn", 0)
    store, out = tmp_path / "shared", tmp_path / "sharded"
    first = _evaluate(params, synth_dir, syn, out, store, "--shard", "0/2")
    assert "shard 0/2: 2 of 4 cells (2 trained" in first and "2 of 4 cells are in the store" in first
    assert "--shard" not in first.splitlines()[-1] and not out.exists()  # no report
    second = _evaluate(params, synth_dir, syn, out, store, "--shard=1/2")
    assert "4 of 4 cells are in the store" in second and "all cells are there" in second
    final = _evaluate(params, synth_dir, syn, out, store)
    assert "cells: 0 trained, 4 from the cell store" in final
    _evaluate(params, synth_dir, syn, tmp_path / "single", tmp_path / "single_store")
    assert _numbers(out) == _numbers(tmp_path / "single")
    bad = CliRunner().invoke(cli, ["evaluate", "-c", str(params), "--data", str(synth_dir),
                                   "--out", str(out), "--shard", "2/2"])
    assert bad.exit_code == 2 and "0 <= I < N" in bad.output


@pytest.mark.slow
def test_a_new_synthetic_set_trains_no_real_only_cell(synth_dir, tmp_path, mlflow_uri):
    """What `dvc exp run -S sample.s=3.0` does to evaluate: only the set changes."""
    params = _params(tmp_path, tracking=True)
    store = tmp_path / "cells"
    first = _evaluate(params, synth_dir, _synthetic(synth_dir, tmp_path / "a", 0), tmp_path / "A",
                      store)
    assert "cells: 4 trained, 0 from the cell store" in first
    second = _evaluate(params, synth_dir, _synthetic(synth_dir, tmp_path / "b", 2), tmp_path / "B",
                       store)
    assert "cells: 2 trained, 2 from the cell store" in second
    a, b = (json.loads((tmp_path / x / "report.json").read_text()) for x in "AB")
    assert a["architectures"]["FPN"]["RALLF000"] == b["architectures"]["FPN"]["RALLF000"]
    assert a["fidelity"]["synthetic"] != b["fidelity"]["synthetic"]  # the new set, stored model
    mixes = sorted((r["spec"]["mix"], r["spec"]["seed"]) for r in _records(store))
    assert mixes == [("RALLF000", 0), ("RALLF000", 1)] + [("RALLFALL", s) for s in (0, 0, 1, 1)]

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = sorted((r for r in runs if r.data.tags.get("isdm.action") == "evaluate"),
                     key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    stored = {r.data.params["mix"]: r.data.tags["isdm.cell_from_store"] for r in children}
    assert stored == {"RALLF000": "true", "RALLFALL[synthetic]": "false"}
    assert all("val_miou" in r.data.metrics and "test_miou" in r.data.metrics for r in children)


@pytest.mark.slow
def test_curate_and_evaluate_share_the_real_only_cell(synth_dir, tmp_path):
    """curate's scorer is evaluate's (FPN, RALLF000, seed 0) cell: whichever runs first trains
    it, the other reads it."""
    params = _params(tmp_path, mixes=["RALLF000"], seeds=[0])
    syn = _synthetic(synth_dir, tmp_path / "syn", 0)

    def curate(store: Path, out: str) -> str:
        r = CliRunner().invoke(cli, ["curate", "-c", str(params), "--data", str(synth_dir),
                                     "--synthetic", str(syn), "--out", str(tmp_path / out),
                                     "--cell-cache", str(store), "--device", "cpu"],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    assert "scorer trained" in curate(tmp_path / "s1", "c1")
    assert "cells: 0 trained, 1 from the cell store" in _evaluate(
        params, synth_dir, None, tmp_path / "e1", tmp_path / "s1")
    assert "cells: 1 trained" in _evaluate(params, synth_dir, None, tmp_path / "e2",
                                           tmp_path / "s2")
    assert "scorer from the cell store" in curate(tmp_path / "s2", "c2")
    card = json.loads((tmp_path / "c2" / "card.json").read_text())
    (record,) = _records(tmp_path / "s2")
    assert card["scorer"]["cell_key"] == record["key"]
    assert card["scorer"]["best_val_miou"] == pytest.approx(record["fit"]["best_val_miou"], abs=5e-5)


def test_a_cell_asked_for_twice_trains_once_by_the_job_that_keeps_its_weights(tmp_path,
                                                                              monkeypatch):
    """Two rows on synthetic sets of the same content (a curation that kept every pair and
    ignored no pixel) are one cell: one worker trains it, the other row gets its record instead
    of a second worker waiting on its lock."""
    from types import SimpleNamespace

    from isdm.evaluation import pool as pool_mod

    trained = []

    def fake_run_job(job, device):
        trained.append(job.name)
        return SimpleNamespace(name=job.name), True

    monkeypatch.setattr(pool_mod, "run_job", fake_run_job)

    def job(name, key, keep):
        return SimpleNamespace(name=name, store=str(tmp_path), spec=SimpleNamespace(key=key),
                               keep_weights=keep)

    jobs = [job("synthetic", "k1", False), job("real", "k2", False), job("curated", "k1", True)]
    with pool_mod.CellPool(workers=1, threads=1, devices=["cpu"]) as pool:
        out = list(pool.run(jobs))
    assert trained == ["curated", "real"]
    assert {o.job.name: (o.trained, o.record.name) for o in out} == {
        "curated": (True, "curated"), "real": (True, "real"), "synthetic": (False, "curated")}
    assert (pool.trained, pool.from_store) == (2, 1)


def test_progress_lines_count_cells_trained_and_from_the_store(capsys):
    from isdm.evaluation.pool import _Progress

    progress = _Progress(3, "evaluate", True)
    for trained in (False, True, True):
        progress.update(trained)
    err = capsys.readouterr().err  # not a terminal: plain lines, the last one always
    assert err.strip().splitlines()[-1].startswith(
        "evaluate: 3/3 cells (2 trained, 1 from the store)")


def test_workers_and_threads_follow_the_cores_the_gpus_and_the_cells(monkeypatch):
    import torch

    from isdm.evaluation import pool

    monkeypatch.setattr(pool, "available_cpus", lambda: 8)
    cpu = torch.device("cpu")
    assert pool.plan_workers(0, 0, cpu, 32) == (8, 1, ["cpu"] * 8)
    assert pool.plan_workers(0, 0, cpu, 27) == (9, 1, ["cpu"] * 9)  # 3 full rounds, not 4
    assert pool.plan_workers(0, 0, cpu, 3) == (3, 1, ["cpu"] * 3)  # never more than the cells
    assert pool.plan_workers(0, 2, cpu, 27) == (4, 2, ["cpu"] * 4)
    assert pool.plan_workers(3, 0, cpu, 27) == (3, 1, ["cpu"] * 3)  # as asked

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pool.plan_workers(0, 0, torch.device("cuda"), 27) == (2, 4, ["cuda:0", "cuda:1"])
    assert pool.plan_workers(0, 0, torch.device("cuda:1"), 27) == (1, 8, ["cuda:1"])


def test_auto_workers_fill_the_last_round_within_half_the_cores_again():
    from isdm.evaluation.pool import fill_rounds

    assert fill_rounds(2, 3) == 3    # 1 round of 3 on 2 cores, not 2 rounds with a core idle
    assert fill_rounds(2, 6) == 2    # already full rounds
    assert fill_rounds(2, 5) == 2    # 3 workers would leave as many idle slots: fewer wins
    assert fill_rounds(2, 27) == 3
    assert fill_rounds(8, 27) == 9
    assert fill_rounds(8, 13) == 8   # at most 12 workers on 8 cores: 16 slots either way
    assert fill_rounds(1, 3) == 1    # one core: every round already full
    assert fill_rounds(4, 2) == 2    # never more than the cells


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state  # a zombie has exited


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_worker_whose_parent_is_killed_ends_instead_of_waiting_forever(tmp_path):
    parent = ("import subprocess, sys\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import os; from isdm.evaluation."
              "pool import _watch_parent; print(os.getpid(), flush=True); "
              "_watch_parent(os.getppid()); import time; time.sleep(60)'], stdout=subprocess.PIPE, "
              "text=True)\n"
              "print(child.stdout.readline().strip(), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=60)
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)

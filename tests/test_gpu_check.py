"""scripts/gpu_check.sh (issue 27): the GPU check's CPU rehearsal end to end, its phase runner
(a phase over its cap is stopped, a failing phase does not stop the next), its progress-counter
fallback, and the GPU recipe (configs/gpu.yaml) loading strictly over params.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PHASES = ["setup", "env", "gpu_tests", "bench_gpu", "pipeline.config", "pipeline.data",
          "pipeline.train", "pipeline.finetune", "pipeline.sample", "pipeline.curate",
          "pipeline.evaluate"]


@pytest.fixture
def scripts(monkeypatch):
    """The check's modules (scripts/ is no package: they import each other by name)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import gpu_check
    import gpu_check_report
    import gpu_check_venv

    return gpu_check, gpu_check_report, gpu_check_venv


def test_flatten_turns_an_overlay_into_set_strings(scripts):
    flatten = scripts[2].flatten
    assert flatten({"a": {"b": [1, 2], "c": {"d": "x"}}, "e": True, "f": None}) == [
        "a.b=[1, 2]", 'a.c.d="x"', "e=true", "f=null"]


def test_gpu_recipe_loads_strictly_over_params_yaml(scripts):
    from isdm.config import load_config

    cfg = load_config([REPO / "params.yaml", REPO / "configs" / "gpu.yaml"])
    assert cfg.data.image_size == cfg.synth.image_size == cfg.evaluate.image_size == 128
    assert cfg.evaluate.architectures == ("UnetPlusPlus", "FPN", "DeepLabV3Plus")
    assert cfg.train.precision == cfg.finetune.precision == cfg.sample.precision == "bf16"
    assert cfg.evaluate.precision == "bf16" and cfg.runtime.device == "cuda"
    assert (cfg.train.batch_size, cfg.train.max_steps, cfg.synth.num_train) == (32, 1000, 400)
    assert cfg.diffusion.prediction == "v" and cfg.train.lr == 0.001  # params.yaml's, kept


def test_a_phase_over_its_cap_is_stopped_and_the_next_still_runs(scripts, tmp_path):
    gpu_check = scripts[0]
    out = tmp_path / "r"
    check = gpu_check.Check(gpu_check.parse_args(["--tiny", "--out", str(out), "--cap-scale", "1"]))
    check.deadline = time.monotonic() + 60
    sleep = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    assert check.phase("slow", sleep, cap_s=1) == gpu_check.TIMEOUT_RC
    assert check.phase("fails", [sys.executable, "-c", "raise SystemExit(3)"], cap_s=30) == 3
    assert check.phase("fine", [sys.executable, "-c", "print('fine')"], cap_s=30) == 0
    check.deadline = time.monotonic()  # the budget is spent: a phase is skipped, not started
    check.phase("late", sleep, cap_s=30)
    phases = json.loads((out / "stage_times.json").read_text())["phases"]
    assert {n: (e["status"], e["rc"]) for n, e in phases.items()} == {
        "slow": ("timeout", 124), "fails": ("failed", 3), "fine": ("ok", 0),
        "late": ("skipped", None)}
    assert phases["slow"]["seconds"] < 20 and phases["late"]["note"] == "no time left in --budget-s"
    assert (out / "work" / "logs" / "slow.log").read_text().splitlines()[1] == "started"
    assert "not ok: slow, fails, late" in (out / "summary.md").read_text()


def test_cells_per_minute_from_the_progress_counter_of_a_stopped_evaluate(scripts, tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "pipeline.evaluate.log").write_text(
        "evaluate:  30%|###   | 8/27 [01:00<02:20,  7.5s/cell]\r"
        "evaluate:  33%|###   | 9/27 [01:07<02:13,  7.4s/cell]\r")
    assert scripts[1]._cells(tmp_path, 90.0) == {
        "cells_done": 9, "cells_total": 27, "cells_per_min": 6.0,
        "mean_train_seconds_per_cell": None}


@pytest.mark.slow
def test_tiny_rehearsal_writes_every_result_into_one_folder(tmp_path):
    """The whole check at tiny sizes on the CPU: the offline set-up into a fresh venv on this
    interpreter's packages, env, pytest -m gpu (skipped without CUDA), make bench-gpu --tiny, the
    pipeline with params.yaml + configs/gpu.yaml + the tiny sizes."""
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--tiny", "--out", str(out),
                           "--wheels", str(tmp_path / "no_wheels")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_bench.json", "grid.png", "report.md", "results.tar.gz", "stage_times.json",
        "summary.md", "work"]
    record = json.loads((out / "stage_times.json").read_text())
    assert list(record["phases"]) == PHASES
    assert all(e["status"] == "ok" and e["rc"] == 0 and e["seconds"] > 0
               for e in record["phases"].values()), record["phases"]
    h = record["headline"]
    if not torch.cuda.is_available():
        assert h["gpu_tests"]["passed"] == h["gpu_tests"]["failed"] == 0
        assert h["gpu_tests"]["skipped"] > 10
        assert {r["precision"] for r in h["bench_gpu"]["table"]} == {"fp32", "bf16"}
    assert h["bench_gpu"]["preset"] == "tiny" and len(h["bench_gpu"]["table"]) == 4
    assert h["pipeline_sdm"]["steps"] == 2 and h["pipeline_sdm_ft"]["steps"] == 1
    assert h["pipeline_sample"]["generated"] == 4
    assert h["pipeline_evaluate"]["cells_done"] == h["pipeline_evaluate"]["cells_total"] == 3
    assert "| FPN |" in (out / "report.md").read_text()
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "every phase ran ok" in (out / "summary.md").read_text()
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        params = yaml.safe_load(tar.extractfile("params.yaml").read())
    assert {f"logs/{p}.log" for p in PHASES} | {"env.json", "gpu_tests.xml"} <= names
    assert "pipeline/evaluate/cells.csv" in names and not any(n.endswith(".pt") for n in names)
    # params.yaml + configs/gpu.yaml + the tiny sizes and the check's own settings
    assert params["evaluate"]["architectures"] == ["FPN"] and params["runtime"]["device"] == "cpu"
    assert params["tracking"]["enabled"] is False and params["diffusion"]["prediction"] == "v"
    assert params["evaluate"]["val_every"] == 1 and params["train"]["lr"] == 0.001

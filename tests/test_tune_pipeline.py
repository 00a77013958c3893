"""pipelines/tune/dvc.yaml: the study is a DVC stage of its own pipeline, which `dvc repro` of the
main chain never runs and `dvc repro pipelines/tune/dvc.yaml` does (with a stand-in `isdm`); its
knobs live in its own params file, pipelines/tune/params.yaml, an overlay on params.yaml."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_standin import PIPELINE_FILES, standin_project

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "tune" / "dvc.yaml"
MAIN_STAGES = ["data", "train", "finetune", "sample", "curate", "evaluate"]


def _stage() -> dict:
    return yaml.safe_load(PIPELINE.read_text())["stages"]["tune"]


def test_tune_stage_is_a_valid_isdm_tune_call_on_existing_params_and_sources(tmp_path, monkeypatch):
    from isdm.cli import cli

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stage = _stage()
    assert stage["wdir"] == "../.." and yaml.safe_load(PIPELINE.read_text())["vars"] == [
        "../../params.yaml"]
    root = [p for p in stage["params"] if isinstance(p, str)]
    own = [p for p in stage["params"] if isinstance(p, dict)]
    assert set(root) <= set(params) and "tune" not in params
    assert own == [{"pipelines/tune/params.yaml": ["tune"]}]
    assert (REPO / "pipelines" / "tune" / "params.yaml").is_file()
    for dep in stage["deps"]:
        if dep.startswith("src/"):
            assert (REPO / dep).is_dir(), dep
    argv = shlex.split(stage["cmd"].replace("${data.root}", params["data"]["root"]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / params["data"]["root"]).mkdir(parents=True)
    (tmp_path / "models" / "sdm").mkdir(parents=True)
    (tmp_path / "models" / "sdm" / "best.pt").write_bytes(b"")
    ctx = cli.make_context("isdm", argv[1:])
    sub = cli.get_command(ctx, argv[1])
    parsed = sub.make_context(argv[1], argv[2:]).params
    assert parsed["out_dir"] == "reports/tune" and parsed["storage"] == "reports/tune/study.journal"
    assert parsed["config_paths"] == ("params.yaml", "pipelines/tune/params.yaml")
    outs = {o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]}
    assert "plots" not in stage  # `dvc plots show` must not warn where no study ran
    assert {"reports/tune/study.journal", "reports/tune/best_params.yaml",
            "reports/tune/trials.csv", "reports/tune/plots", "reports/tune/final_check.json"} <= outs


_STUB = '''#!{python}
"""Stand-in for `isdm` under DVC: writes the declared outputs of the running stage."""
import os, re, yaml
file, _, name = os.environ["DVC_STAGE"].rpartition(":")
params = yaml.safe_load(open("params.yaml"))
def lookup(m):
    node = params
    for part in m.group(1).split("."):
        node = node[part]
    return str(node)
doc = yaml.safe_load(re.sub(r"\\$\\{{([\\w.]+)\\}}", lookup, open(file or "dvc.yaml").read()))
stage = doc["stages"][name]
for kind in ("outs", "metrics", "plots"):
    for item in stage.get(kind, []):
        path = item if isinstance(item, str) else next(iter(item))
        if "." not in os.path.basename(path):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "x.txt")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("number,gain\\n0,0.1\\n" if path.endswith(".csv") else "{{}}")
with open("ran.log", "a") as f:
    f.write(name + "\\n")
'''


@pytest.mark.slow
def test_dvc_repro_runs_the_study_only_from_its_own_pipeline_file(tmp_path):
    p = standin_project(tmp_path, _STUB, files=(*PIPELINE_FILES, "pipelines/tune/dvc.yaml",
                                                "pipelines/tune/params.yaml"))
    repo = p.repo

    def repro(*args: str) -> list[str]:
        p.dvc("repro", *args)
        return p.ran()

    assert repro() == MAIN_STAGES  # the study is not part of the chain
    assert repro("pipelines/tune/dvc.yaml") == ["tune"]
    assert repro("pipelines/tune/dvc.yaml") == []
    assert (repo / "pipelines" / "tune" / "dvc.lock").exists()
    own = repo / "pipelines" / "tune" / "params.yaml"
    params = yaml.safe_load(own.read_text())
    params["tune"]["n_trials"] = 20
    own.write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro() == []  # tune.* re-runs nothing of the main chain
    assert repro("pipelines/tune/dvc.yaml") == ["tune"]


@pytest.mark.slow
def test_dvc_plots_show_does_not_warn_where_no_study_ran(tmp_path):
    """A checkout whose main chain has run (its plot files present) and whose study has not:
    `dvc plots show` loads every plot of every dvc.yaml without an error."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / ".site")}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True, env=env)
    main = yaml.safe_load((REPO / "dvc.yaml").read_text())
    files = {p for st in main["stages"].values() for p in st.get("plots", [])}
    files = {p if isinstance(p, str) else next(iter(p)) for p in files}
    for entry in main.get("plots", []):
        if isinstance(entry, str):
            files.add(entry)
        else:
            (spec,) = entry.values()
            files |= set(spec.get("y", {})) if isinstance(spec.get("y"), dict) else set()
    for name in files:  # a minimal stand-in of each output the main chain writes
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else
                         b"epoch,train_loss,mix,miou,step,val_miou\n1,0.5,R,0.5,1,0.5\n")
    r = subprocess.run([dvc, "plots", "show", "--json", "-o", str(tmp_path / "out")],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads(r.stdout).get("errors") in (None, []), r.stdout[:2000]
    r = subprocess.run([dvc, "plots", "show", "-o", str(tmp_path / "out")], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    assert "failed to load" not in r.stderr, r.stderr

"""dvc.yaml and MLproject: every command is a valid `isdm` invocation, every params entry exists in
params.yaml, and DVC re-runs exactly the stages a change touches (with a stand-in `isdm`)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from isdm.cli import cli
from isdm.config import flatten, load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["data", "train", "finetune", "sample", "evaluate"]


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def in_fake_tree(tmp_path, monkeypatch):
    """A working directory holding every path the pipeline names (click checks `exists=True`)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for path in ("data/synth", "data/synthetic", "models/sdm", "models/sdm_ft", "reports"):
        (tmp_path / path).mkdir(parents=True, exist_ok=True)
    for path in ("models/sdm/best.pt", "models/sdm_ft/best.pt"):
        (tmp_path / path).write_bytes(b"")
    return tmp_path


def _parse_isdm(argv: list[str]) -> click.Context:
    """Resolve `isdm <cmd> [<sub>] args` to its click command and parse (not run) the args."""
    assert argv[0] == "isdm", argv
    ctx = cli.make_context("isdm", argv[1:])
    command, args = cli, argv[1:]
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"no isdm command {name!r} in {argv}"
        command = sub
    return command.make_context(" ".join(argv[:2]), list(args))


def _flat_outputs(stage: dict) -> list[str]:
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for item in stage.get(kind, []):
            paths.append(item if isinstance(item, str) else next(iter(item)))
    return paths


def test_stages_form_the_documented_chain():
    stages = _dvc_yaml()["stages"]
    assert list(stages) == STAGES
    deps = {name: set(stage.get("deps", [])) for name, stage in stages.items()}
    outs = {name: set(_flat_outputs(stage)) for name, stage in stages.items()}
    assert "data/synth" in outs["data"] and "data/synth" in deps["train"]
    assert "models/sdm/best.pt" in outs["train"] & deps["finetune"]
    assert "models/sdm_ft/best.pt" in outs["finetune"] & deps["sample"]
    assert {"data/synthetic/samples", "data/synthetic/labels"} <= outs["sample"] & deps["evaluate"]
    # outputs live under data/, models/ and reports/
    for paths in outs.values():
        assert all(p.split("/")[0] in ("data", "models", "reports") for p in paths), paths


def test_every_stage_command_is_a_valid_isdm_invocation(in_fake_tree):
    for name, stage in _dvc_yaml()["stages"].items():
        argv = shlex.split(stage["cmd"])
        ctx = _parse_isdm(argv)
        assert ctx.params.get("config_path") == "params.yaml", name


def test_stage_params_exist_in_params_yaml():
    flat = flatten(load_config(REPO / "params.yaml"))
    sections = set(_params())
    for name, stage in _dvc_yaml()["stages"].items():
        for entry in stage.get("params", []):
            assert isinstance(entry, str), f"{name}: params entry {entry!r} must name params.yaml keys"
            assert entry in sections or entry in flat, f"stage {name}: {entry!r} not in params.yaml"


def _params_of(stage: dict) -> set[str]:
    return {p for p in stage.get("params", [])}


def test_stages_list_only_what_they_read():
    """Sampling knobs must not invalidate the diffusion model (a change of sample.s re-runs only
    sample and evaluate); tuning and tracking never invalidate a stage."""
    stages = _dvc_yaml()["stages"]
    for name in ("data", "train", "finetune"):
        assert not any(p.startswith("sample") for p in _params_of(stages[name])), name
    assert not any(p.startswith("evaluate") for name in STAGES[:-1] for p in _params_of(stages[name]))
    for name in STAGES:
        assert not any(p.split(".")[0] in ("tune", "tracking") for p in _params_of(stages[name]))
    assert "sample" in _params_of(stages["sample"]) and "evaluate" in _params_of(stages["evaluate"])
    assert "finetune" in _params_of(stages["finetune"]) and "train" not in _params_of(stages["finetune"])


def test_metrics_and_plots_are_dvc_cached_and_plots_exist():
    """Outputs stay out of git; DVC caches metrics and plots so `dvc exp show` and
    `dvc metrics diff` can read every experiment's values from the lock file's hashes."""
    doc = _dvc_yaml()
    declared = set()
    for stage in doc["stages"].values():
        for kind in ("metrics", "plots"):
            for item in stage.get(kind, []):
                assert isinstance(item, str), f"{item}: keep the default cache: true"
                declared.add(item)
    assert {"models/sdm/loss.csv", "reports/evaluate/metrics.json"} <= declared
    for plot in doc["plots"]:
        if isinstance(plot, str):
            assert plot in declared
        else:
            (spec,) = plot.values()
            assert set(spec["y"]) <= declared


# ----------------------------------------------------------------------------------------------
# MLproject
# ----------------------------------------------------------------------------------------------


def _mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def _render(entry: dict, overrides: dict | None = None) -> list[str]:
    """MLflow's substitution: each {name} becomes the shell-quoted parameter value."""
    values = {k: v["default"] for k, v in entry["parameters"].items()}
    values.update(overrides or {})
    return shlex.split(entry["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))


def test_mlproject_entry_points_call_the_cli(in_fake_tree):
    entries = _mlproject()["entry_points"]
    assert set(entries) == {*STAGES, "tune"}
    for name, entry in entries.items():
        argv = _render(entry)
        ctx = _parse_isdm(argv)
        assert ctx.params.get("config_path") == "params.yaml", name


def test_mlproject_paths_equal_the_dvc_stages(in_fake_tree):
    """An entry point run with its defaults reads and writes what the DVC stage does."""
    stage_cmds = {n: shlex.split(s["cmd"]) for n, s in _dvc_yaml()["stages"].items()}
    for name, entry in _mlproject()["entry_points"].items():
        ctx = _parse_isdm(_render(entry))
        if name in stage_cmds:
            stage_ctx = _parse_isdm(stage_cmds[name])
            for key, value in stage_ctx.params.items():
                if key not in ("overrides", "overwrite") and key in ctx.params:
                    assert ctx.params[key] == value, (name, key)


def test_mlproject_knobs_default_to_the_config_file(in_fake_tree):
    """No -P value, no override: the config file decides (here the tiny preset, whose
    sample.steps 3 / num_samples 4 MLproject must not replace); a given -P value wins."""
    from isdm.cli.common import load_cli_config

    shutil.copy(REPO / "configs" / "tiny.yaml", in_fake_tree / "tiny.yaml")
    expected = flatten(load_config("tiny.yaml"))

    def resolved(entry: dict, **given: str) -> dict:
        ctx = _parse_isdm(_render(entry, {"config": "tiny.yaml", **given}))
        with ctx:
            return flatten(load_cli_config(ctx.params["config_path"], ctx.params["overrides"]))

    entries = _mlproject()["entry_points"]
    for name, entry in entries.items():
        assert resolved(entry) == expected, name
    got = resolved(entries["sample"], s="3.0", steps="7")
    assert (got["sample.s"], got["sample.steps"]) == (3.0, 7)
    assert got == {**expected, "sample.s": 3.0, "sample.steps": 7}


def _env(first: Path | None = None) -> dict[str, str]:
    """The environment with ``first`` (a stand-in bin folder) and then the venv's bin on PATH."""
    # mlflow.set_experiment in earlier in-process tests exports MLFLOW_EXPERIMENT_ID; a child
    # `mlflow run --experiment-name` then refuses both.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env["PATH"] = os.pathsep.join([*([str(first)] if first else []), str(BIN), env.get("PATH", "")])
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


@pytest.mark.slow
def test_mlflow_run_data_entry_point(tmp_path, mlflow_uri):
    """`mlflow run . -e data --env-manager local` runs `isdm data synth` in this environment."""
    if not (BIN / "mlflow").exists() or not (BIN / "isdm").exists():
        pytest.skip("mlflow / isdm console scripts not installed in this environment")
    pytest.importorskip("isdm.data.synth")
    out = tmp_path / "synth"
    cmd = [str(BIN / "mlflow"), "run", str(REPO), "-e", "data", "--env-manager", "local",
           "--experiment-name", "isdm-synth", "-P", f"out={out}", "-P", "seed=3"]
    proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((out / "train" / "images").rglob("*.png"))
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)  # not the process-wide URI an earlier test set
    runs = client.search_runs([client.get_experiment_by_name("isdm-synth").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["seed"] == "3"
    assert runs[0].info.status == "FINISHED"


# ----------------------------------------------------------------------------------------------
# DVC invalidation with a stand-in `isdm`
# ----------------------------------------------------------------------------------------------

_STUB = '''#!{python}
"""Stand-in for `isdm` under DVC: writes the stage's declared outputs, derived from its params."""
import hashlib, json, os, sys, yaml
stage = os.environ["DVC_STAGE"]
doc = yaml.safe_load(open("dvc.yaml"))["stages"][stage]
params = yaml.safe_load(open("params.yaml"))
read = {{p: params[p] if p in params else params[p.split(".")[0]][p.split(".")[1]]
        for p in doc.get("params", [])}}
deps = sorted(d for d in doc.get("deps", []) if not d.startswith("src"))
def digest(path):
    if os.path.isdir(path):
        return "".join(digest(os.path.join(path, f)) for f in sorted(os.listdir(path)))
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
stamp = json.dumps({{"read": read, "deps": [digest(d) for d in deps]}}, sort_keys=True)
for kind in ("outs", "metrics", "plots"):
    for item in doc.get(kind, []):
        path = item if isinstance(item, str) else next(iter(item))
        if "." not in os.path.basename(path):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "x.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            if path.endswith(".json"):
                f.write(json.dumps({{"value": len(stamp)}}))
            elif path.endswith(".csv"):
                f.write("epoch,train_loss,miou,mix\\n1,0.5,0.5,RALLF000\\n")
            else:
                f.write(stamp)
with open("ran.log", "a") as f:
    f.write(stage + "\\n")
'''


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=_env(repo.parent / "bin"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _ran(repo: Path) -> list[str]:
    log = repo / "ran.log"
    text = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return text


@pytest.mark.slow
def test_dvc_reruns_only_the_stages_a_change_touches(tmp_path, monkeypatch):
    if not (BIN / "dvc").exists():
        pytest.skip("dvc not installed in this environment")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src" / "isdm", repo / "src" / "isdm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    (stub_bin / "isdm").write_text(_STUB.format(python=sys.executable))
    (stub_bin / "isdm").chmod(0o755)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=_env())
    _dvc(repo, "init", "-q")  # DVC_NO_ANALYTICS=1 is in the environment

    _dvc(repo, "repro")
    assert _ran(repo) == STAGES
    _dvc(repo, "repro")
    assert _ran(repo) == []

    params = _params()
    params["sample"]["s"] = 2.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(repo, "repro")
    assert _ran(repo) == ["sample", "evaluate"]

    # `dvc exp run -S` edits params.yaml keys and re-runs only what they touch
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=_env())
    subprocess.run(["git", "commit", "-qm", "pipeline"], cwd=repo, check=True, env=_env())
    _dvc(repo, "exp", "run", "-S", "finetune.drop_rate=0.3")
    assert _ran(repo) == ["finetune", "sample", "evaluate"]
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["drop_rate"] == 0.3

"""dvc.yaml and MLproject: every command is a valid `isdm` invocation, every params entry exists in
params.yaml, the dataset comes from data.root, and DVC re-runs exactly the stages a change touches
(with a stand-in `isdm`): none for runtime keys, all after `data` for another data.root. MLproject
passes its `config` and `overrides` through instead of declaring the knobs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from dvc_standin import standin_project

from isdm.cli import cli
from isdm.config import flatten, load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["data", "train", "finetune", "sample", "curate", "evaluate"]
# Sections no stage lists: how commands run (runtime), MLflow (tracking), `isdm tune`.
# sections the main chain never reads: how commands run, and the knobs of the other pipeline
# files (pipelines/tune: tune; pipelines/labels: labels)
NOT_IN_PIPELINE = {"runtime", "tracking", "tune", "labels"}
TEMPLATE = re.compile(r"\$\{([\w.]+)\}")


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _resolve(value, params: dict):
    """DVC's templating of dvc.yaml for ``${section.key}`` strings, with params.yaml as vars."""
    if isinstance(value, dict):
        return {k: _resolve(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, params) for v in value]
    if isinstance(value, str):
        def lookup(m: re.Match) -> str:
            node = params
            for part in m.group(1).split("."):
                node = node[part]
            return str(node)
        return TEMPLATE.sub(lookup, value)
    return value


def _raw_dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _dvc_yaml() -> dict:
    """dvc.yaml as DVC runs it with today's params.yaml."""
    return _resolve(_raw_dvc_yaml(), _params())


@pytest.fixture
def in_fake_tree(tmp_path, monkeypatch):
    """A working directory holding every path the pipeline names (click checks `exists=True`)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for path in ("data/synth", "data/synthetic", "data/curated", "models/sdm", "models/sdm_ft",
                 "reports"):
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
    assert {"data/synthetic/samples", "data/synthetic/labels"} <= outs["sample"] & deps["curate"]
    assert {"data/synthetic/samples", "data/synthetic/labels"} <= outs["sample"] & deps["evaluate"]
    assert "data/curated" in outs["curate"]
    # the quick pipeline's evaluate: real vs real + synthetic; curated rows: the full study
    assert "data/curated" not in deps["evaluate"]
    assert "--synthetic synthetic=data/synthetic" in stages["evaluate"]["cmd"]
    # outputs live under data/, models/ and reports/
    for paths in outs.values():
        assert all(p.split("/")[0] in ("data", "models", "reports") for p in paths), paths


def test_stages_after_data_read_the_dataset_of_data_root():
    """`data.root` decides the dataset of every stage after `data`; only `data` names the
    embedded folder, so a user's root never mixes with it."""
    stages = _raw_dvc_yaml()["stages"]
    for name in STAGES[1:]:
        stage = stages[name]
        assert "--data ${data.root}" in stage["cmd"], name
        assert "${data.root}" in stage["deps"], name
        assert not re.search(r"data/synth\b", json.dumps(stage)), name
    mine = _resolve(_raw_dvc_yaml(), {**_params(), "data": {"root": "data/mine"}})["stages"]
    assert all("data/mine" in mine[name]["deps"] for name in STAGES[1:])
    assert mine["data"] == _dvc_yaml()["stages"]["data"]


def test_every_config_key_is_read_by_a_stage_or_runtime_only():
    """A key no stage lists cannot invalidate anything: that must be a decision (the sections of
    NOT_IN_PIPELINE), never an oversight; and no stage lists one of those sections."""
    listed = {p for stage in _dvc_yaml()["stages"].values() for p in stage.get("params", [])}
    assert not {p.split(".")[0] for p in listed} & NOT_IN_PIPELINE
    for key in flatten(load_config(REPO / "params.yaml")):
        parts = key.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        assert prefixes & (listed | NOT_IN_PIPELINE), f"{key}: no stage lists it"


def test_every_stage_command_is_a_valid_isdm_invocation(in_fake_tree):
    for name, stage in _dvc_yaml()["stages"].items():
        argv = shlex.split(stage["cmd"])
        ctx = _parse_isdm(argv)
        assert ctx.params.get("config_paths") == ("params.yaml",), name


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
    """Sampling knobs must not invalidate the diffusion model (a change of sample.s re-runs
    sample, curate and evaluate); tuning and tracking never invalidate a stage; finetune lists
    train, whose keys it inherits; every stage depends on the config code (the defaults)."""
    stages = _dvc_yaml()["stages"]
    for name in ("data", "train", "finetune"):
        assert not any(p.startswith("sample") for p in _params_of(stages[name])), name
    before_curate = STAGES[:STAGES.index("curate")]  # curate's scorer trains with the evaluate recipe
    assert not any(p.startswith("evaluate") for name in before_curate for p in _params_of(stages[name]))
    assert not any(p.startswith("curate") for name in before_curate for p in _params_of(stages[name]))
    for name in STAGES:
        assert not any(p.split(".")[0] in ("tune", "tracking") for p in _params_of(stages[name]))
    assert "sample" in _params_of(stages["sample"]) and "evaluate" in _params_of(stages["evaluate"])
    assert "curate" in _params_of(stages["curate"]) and "curate" not in _params_of(stages["evaluate"])
    assert {"train", "finetune"} <= _params_of(stages["finetune"])
    assert "finetune" not in _params_of(stages["train"])
    assert all("src/isdm/config" in stage["deps"] for stage in stages.values())


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
        assert ctx.params.get("config_paths")[0] == "params.yaml", name
        declared = set(entry["parameters"])
        assert declared <= {"config", "tune_config", "overrides", "data", "out", "init",
                            "checkpoint", "synthetic", "curated"}, (name, declared)


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
    """No -P value: the config file decides (here the tiny preset, whose sample.steps 3 /
    num_samples 4 MLproject must not replace); `-P overrides="K=V K=V"` reaches the config."""
    from isdm.cli.common import load_cli_config

    shutil.copy(REPO / "configs" / "tiny.yaml", in_fake_tree / "tiny.yaml")
    expected = flatten(load_config("tiny.yaml"))

    def resolved(entry: dict, **given: str) -> dict:
        files = {k: "tiny.yaml" for k in ("config", "tune_config") if k in entry["parameters"]}
        ctx = _parse_isdm(_render(entry, {**files, **given}))
        with ctx:
            return flatten(load_cli_config(ctx.params["config_paths"], ctx.params["overrides"]))

    entries = _mlproject()["entry_points"]
    for name, entry in entries.items():
        assert resolved(entry) == expected, name
    got = resolved(entries["sample"], overrides="sample.s=3.0 'evaluate.seeds=[4, 5]'")
    assert got == {**expected, "sample.s": 3.0, "evaluate.seeds": [4, 5]}


def _env() -> dict[str, str]:
    """This environment with the venv's bin first on PATH (for `mlflow run`)."""
    # mlflow.set_experiment in earlier in-process tests exports MLFLOW_EXPERIMENT_ID; a child
    # `mlflow run --experiment-name` then refuses both.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
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
           "--experiment-name", "isdm-synth", "-P", f"out={out}", "-P", "overrides=synth.seed=3"]
    proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((out / "train" / "images").rglob("*.png"))
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)  # not the process-wide URI an earlier test set
    runs = client.search_runs([client.get_experiment_by_name("isdm-synth").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["overrides"] == "synth.seed=3"
    assert runs[0].info.status == "FINISHED"


# ----------------------------------------------------------------------------------------------
# DVC invalidation with a stand-in `isdm`
# ----------------------------------------------------------------------------------------------

_STUB = '''#!{python}
"""Stand-in for `isdm` under DVC: writes the stage's declared outputs, derived from its params."""
import hashlib, json, os, re, sys, yaml
stage = os.environ["DVC_STAGE"]
params = yaml.safe_load(open("params.yaml"))
def lookup(m):
    node = params
    for part in m.group(1).split("."):
        node = node[part]
    return str(node)
text = re.sub(r"\\$\\{{([\\w.]+)\\}}", lookup, open("dvc.yaml").read())
doc = yaml.safe_load(text)["stages"][stage]
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
if "--data" in sys.argv:
    with open("data.log", "a") as f:
        f.write(stage + "=" + sys.argv[sys.argv.index("--data") + 1] + "\\n")
'''


def _write_params(repo: Path, **changes) -> None:
    """params.yaml of ``repo`` with ``{"section.key": value}`` changes."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params.setdefault(section, {})[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_dvc_reruns_only_the_stages_a_change_touches(tmp_path):
    p = standin_project(tmp_path, _STUB)
    repo = p.repo

    p.dvc("repro")
    assert p.ran() == STAGES
    p.dvc("repro")
    assert p.ran() == []

    _write_params(repo, **{"sample.s": 2.5})
    p.dvc("repro")
    assert p.ran() == ["sample", "curate", "evaluate"]
    _write_params(repo, **{"curate.min_fidelity": 0.3})  # the gate's knobs: the gate only (the
    p.dvc("repro")                                       # quick evaluate has no curated rows)
    assert p.ran() == ["curate"]

    # `dvc exp run -S` edits params.yaml keys and re-runs only what they touch
    p.git("add", "-A")
    p.git("commit", "-qm", "pipeline")
    p.dvc("exp", "run", "-S", "finetune.drop_rate=0.3")
    assert p.ran() == ["finetune", "sample", "curate", "evaluate"]
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["drop_rate"] == 0.3

    # how commands run invalidates nothing (not in params.yaml: flags and ISDM_* variables; even
    # written there, no stage lists it)
    _write_params(repo, **{"runtime.num_workers": 4, "runtime.device": "cpu",
                           "runtime.progress": False})
    assert json.loads(p.dvc("status", "--json")) == {}
    p.dvc("repro")
    assert p.ran() == []

    # another dataset: `dvc add` it, point data.root at it; every stage after `data` is out of
    # date and reads the new folder
    (repo / "data" / "mine" / "train").mkdir(parents=True)
    (repo / "data" / "mine" / "train" / "a.png").write_bytes(b"mine")
    p.dvc("add", "data/mine")
    p.ran("data.log")
    _write_params(repo, **{"data.root": "data/mine"})
    assert set(json.loads(p.dvc("status", "--json"))) == set(STAGES[1:])
    _write_params(repo, **{"data.root": "data/synth"})
    p.git("add", "-A")
    p.git("commit", "-qm", "runtime settings, data/mine")
    p.dvc("exp", "run", "-S", "data.root=data/mine")
    assert p.ran() == STAGES[1:]
    assert p.ran("data.log") == [f"{name}=data/mine" for name in STAGES[1:]]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for name in STAGES[1:]:
        assert "--data data/mine" in lock[name]["cmd"], name
        assert "data/mine" in [d["path"] for d in lock[name]["deps"]], name

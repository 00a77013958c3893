"""What `dvc metrics show`, `dvc exp show` and a fresh clone see of the pipeline's results, with a
stand-in `isdm` that writes every declared output (evaluate: a headline metrics.json that
depends on sample.s) in a throwaway git + DVC repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEADLINE = ("miou_real_only", "miou_with_synthetic", "miou_gain", "miou_gain_lo", "miou_gain_hi",
            "label_fidelity")

_STUB = '''#!{python}
"""Stand-in for `isdm` under DVC: writes the stage's declared outputs."""
import json, os, yaml
doc = yaml.safe_load(open("dvc.yaml"))["stages"][os.environ["DVC_STAGE"]]
s = yaml.safe_load(open("params.yaml"))["sample"]["s"]
for kind in ("outs", "metrics", "plots"):
    for item in doc.get(kind, []):
        path = item if isinstance(item, str) else next(iter(item))
        if "." not in os.path.basename(path):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "x.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            if path == "reports/evaluate/metrics.json":
                f.write(json.dumps({{k: 0.1 + s / 100 for k in {headline}}}))
            elif path.endswith(".csv"):
                f.write("epoch,train_loss,miou,mix\\n1,0.5,0.5,RALLF000\\n")
            else:
                f.write(f"{{path}} at s={{s}}")
'''


def test_only_the_headline_is_a_declared_metric():
    """`dvc metrics show` / `dvc exp show` compare evaluate's headline file; the other stages'
    metrics files are plain (cached) outputs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {m for st in stages.values() for m in st.get("metrics", [])}
    assert declared == {"reports/evaluate/metrics.json"}
    outs = {o for st in stages.values() for o in st.get("outs", [])}
    assert {"models/sdm/metrics.json", "models/sdm_ft/metrics.json",
            "data/synthetic/summary.json"} <= outs


def _env(stub_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = os.pathsep.join([str(stub_bin), str(BIN), env.get("PATH", "")])
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", DVC_SITE_CACHE_DIR=str(
                   stub_bin.parent / "dvc-site"))
    return env


def _run(env: dict, cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_a_clone_pulls_the_committed_results_and_compares_them(tmp_path):
    if not (BIN / "dvc").exists():
        pytest.skip("dvc not installed in this environment")
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    (stub_bin / "isdm").write_text(_STUB.format(python=sys.executable, headline=list(HEADLINE)))
    (stub_bin / "isdm").chmod(0o755)
    env = _env(stub_bin)
    repo, remote, clone = tmp_path / "repo", tmp_path / "dvc-store", tmp_path / "clone"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src" / "isdm", repo / "src" / "isdm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git, dvc = (lambda *a: _run(env, repo, "git", *a)), (lambda *a: _run(env, repo, "dvc", *a))
    git("init", "-q", "-b", "main")
    dvc("init", "-q")
    # docs/guide/pipeline.md "Results from a clone": a local folder remote, the lock file committed, pushed
    dvc("remote", "add", "-d", "storage", str(remote))
    dvc("repro", "-q")
    git("add", "-A")
    git("commit", "-qm", "pipeline results")
    dvc("push", "-q")

    _run(env, tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "reports").exists()  # outputs are not in git ...
    _run(env, clone, "dvc", "pull", "-q")  # ... but come back from the remote
    for path in ("data/synth/x.txt", "models/sdm_ft/best.pt", "data/synthetic/samples/x.txt",
                 "reports/evaluate/metrics.json", "models/sdm/metrics.json"):
        assert (clone / path).read_text() == (repo / path).read_text(), path
    shown = _run(env, clone, "dvc", "metrics", "show")
    assert max(map(len, shown.splitlines())) < 160 and "miou_gain" in shown

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["sample"]["s"] = 3.0
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(env, clone, "dvc", "repro", "-q")
    diff = _run(env, clone, "dvc", "metrics", "diff", "main")
    assert "miou_gain" in diff and "0.115" in diff and "0.13" in diff  # s 1.5 -> 3.0

    git_c = lambda *a: _run(env, clone, "git", *a)  # noqa: E731
    git_c("commit", "-qam", "s=3.0")
    _run(env, clone, "dvc", "exp", "run", "-q", "-S", "sample.s=2.0", "-n", "s2")
    header = _run(env, clone, "dvc", "exp", "show", "--csv", "--only-changed").splitlines()[0]
    columns = header.split(",")
    assert set(columns) - {"Experiment", "rev", "typ", "Created", "parent"} <= {
        *HEADLINE, "sample.s", "data/synthetic/images", "data/synthetic/labels",
        "data/synthetic/samples", "data/synthetic/colored_labels", "data/synthetic/manifest.jsonl",
        "data/synthetic/run.json", "data/curated", "State", "Executor"}
    assert "sample.s" in columns and "miou_gain" in columns and len(columns) <= 25

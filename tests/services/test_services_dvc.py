"""README "Results from a clone": a DVC remote round trip with the real `isdm`.

The project's own stages data -> train -> finetune -> sample (dvc.yaml as it is, tiny params) run
in a throwaway git + DVC repository, their outputs are pushed to a local folder remote, a fresh
clone pulls them, `dvc status` is clean there, and `isdm sample` from the pulled checkpoint
writes the very bytes the pipeline's sample stage wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from servers import BIN, REPO, TINY

pytestmark = pytest.mark.slow

STAGES = ("data", "train", "finetune", "sample")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]), DVC_NO_ANALYTICS="1",
               DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def _run(env: dict, cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _tiny_params() -> dict:
    """params.yaml with configs/tiny.yaml's sizes, a few steps and no MLflow."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in yaml.safe_load(TINY.read_text()).items():
        if section in ("tune", "labels"):  # other pipelines' sections
            continue
        params[section] = values if section == "model" else {**params.get(section, {}), **values}
    params["train"].update(max_steps=2, max_epochs=1)
    params["finetune"].update(max_steps=2)
    params["sample"].update(steps=2)
    params["tracking"] = {"enabled": False}
    return params


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for sub in ("samples", "labels") for p in sorted((folder / sub).iterdir())}


def test_a_clone_pulls_the_pipeline_from_the_remote_and_samples_the_same_bytes(tmp_path):
    env = _env(tmp_path)
    repo, remote, clone = tmp_path / "repo", tmp_path / "dvc-store", tmp_path / "clone"
    repo.mkdir()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: stages[s] for s in STAGES}},
                                                  sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src" / "isdm", repo / "src" / "isdm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git, dvc = (lambda *a: _run(env, repo, "git", *a)), (lambda *a: _run(env, repo, "dvc", *a))
    git("init", "-q", "-b", "main")
    dvc("init", "-q")
    dvc("config", "core.analytics", "false")
    # README: a remote every clone reaches, the lock file committed, the outputs pushed
    dvc("remote", "add", "-d", "storage", str(remote))
    git("add", ".dvc/config")
    git("commit", "-qm", "DVC remote")
    dvc("repro", "-q")
    git("add", "-A")
    git("commit", "-qm", "results")
    dvc("push", "-q")

    _run(env, tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "models").exists()  # the outputs are not in git ...
    _run(env, clone, "dvc", "pull", "-q")  # ... they come from the remote
    assert "Data and pipelines are up to date" in _run(env, clone, "dvc", "status")
    pulled = clone / "models" / "sdm_ft" / "best.pt"
    assert pulled.read_bytes() == (repo / "models" / "sdm_ft" / "best.pt").read_bytes()
    _run(env, clone, "isdm", "sample", "-c", "params.yaml", "--data", "data/synth",
         "--checkpoint", str(pulled), "--out", str(tmp_path / "again"))
    again = _files(tmp_path / "again")
    assert len(again) == 2 * 4
    assert again == _files(clone / "data" / "synthetic") == _files(repo / "data" / "synthetic")

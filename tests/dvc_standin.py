"""A DVC project in a temporary folder whose ``isdm`` is a stand-in script (``from dvc_standin
import ...``), for the tests of what ``dvc repro`` re-runs and of the results it keeps.

Each test writes its own stub: a Python script (``{python}`` is its interpreter) that writes the
running stage's declared outputs and appends the stage's name to ``ran.log``. The project holds
this checkout's pipeline files and ``src/isdm`` (a dependency of every stage), is a git and DVC
repository, and runs offline with its own DVC site cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore")


@dataclass(frozen=True)
class Project:
    """``repo`` and the environment its commands run in (the stub first on PATH)."""

    repo: Path
    env: dict

    def run(self, *cmd: str, cwd: Path | None = None) -> str:
        """Run ``cmd`` (in ``repo`` unless ``cwd``); its stdout, or a failure with its output."""
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd or self.repo, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def dvc(self, *args: str, cwd: Path | None = None) -> str:
        return self.run(str(BIN / "dvc"), *args, cwd=cwd)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return self.run("git", *args, cwd=cwd)

    def ran(self, log: str = "ran.log") -> list[str]:
        """What the stand-in logged in ``log`` since the last call (the log is emptied)."""
        path = self.repo / log
        text = path.read_text().split() if path.exists() else []
        path.unlink(missing_ok=True)
        return text


def standin_env(stub_bin: Path, site_cache: Path) -> dict[str, str]:
    """This process's environment without its MLflow and DVC settings, ``stub_bin`` and the
    venv's bin first on PATH, analytics off, a git identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = os.pathsep.join([str(stub_bin), str(BIN), env.get("PATH", "")])
    env.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(site_cache),
               MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def standin_project(tmp_path: Path, stub: str, files: tuple[str, ...] = PIPELINE_FILES,
                    trees: tuple[str, ...] = (), **fmt) -> Project:
    """``tmp_path/repo`` with ``files`` and ``trees`` of this checkout and ``src/isdm``, git and
    DVC initialised, and ``stub.format(python=..., **fmt)`` as ``isdm`` on PATH; skips without
    dvc."""
    if not (BIN / "dvc").exists():
        pytest.skip("dvc not installed in this environment")
    repo, stub_bin = tmp_path / "repo", tmp_path / "bin"
    repo.mkdir()
    stub_bin.mkdir()
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, repo / name)
    for name in (*trees, "src/isdm"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (stub_bin / "isdm").write_text(stub.format(python=sys.executable, **fmt))
    (stub_bin / "isdm").chmod(0o755)
    project = Project(repo, standin_env(stub_bin, tmp_path / "dvc-site"))
    project.git("init", "-q", "-b", "main")
    project.dvc("init", "-q")
    return project

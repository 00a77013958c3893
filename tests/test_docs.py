"""The README is the front door (short, its links resolve) and the docs site builds strictly:
a broken link, a missing page or anchor fails `mkdocs build --strict`, and so this test."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from isdm.config import Config, flatten

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_is_at_most_300_lines():
    n = len(README.read_text().splitlines())
    assert n <= 300, f"README.md has {n} lines; move long material to a page under docs/"


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if "://" not in link]
    assert local, "the README links into docs/"
    missing = [link for link in local if link and not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_mkdocs_config_is_strict():
    # MkDocs' own tags (!!python/name:...) are not used, so the file is plain YAML
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert cfg["strict"] is True
    assert {k: cfg["validation"][k] for k in ("omitted_files", "unrecognized_links", "anchors")} \
        == {"omitted_files": "warn", "unrecognized_links": "warn", "anchors": "warn"}


@pytest.mark.slow  # 3-7 s on the shared 2-core machine (MkDocs + Material render every page)
def test_docs_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARNING" not in run.stderr, run.stderr[-3000:]
    # the generated reference holds every key of today's config tree
    page = (tmp_path / "site" / "reference" / "config.html").read_text()
    missing = [key for key in flatten(Config()) if f"<code>{key}</code>" not in page]
    assert not missing, f"keys missing from the generated reference: {missing}"
    assert (tmp_path / "site" / "images" / "pipeline_grid.png").exists()

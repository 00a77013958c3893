"""What `dvc metrics show`, `dvc exp show` and a fresh clone see of the pipeline's results, with a
stand-in `isdm` that writes every declared output (evaluate: a headline metrics.json that
depends on sample.s) in a throwaway git + DVC repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dvc_standin import PIPELINE_FILES, Project, standin_project

REPO = Path(__file__).resolve().parents[1]
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


@pytest.mark.slow
def test_a_clone_pulls_the_committed_results_and_compares_them(tmp_path):
    p = standin_project(tmp_path, _STUB, files=(*PIPELINE_FILES, ".gitignore"),
                        headline=list(HEADLINE))
    repo, remote, clone = p.repo, tmp_path / "dvc-store", tmp_path / "clone"
    git, dvc = p.git, p.dvc
    # docs/guide/pipeline.md "Results from a clone": a local folder remote, the lock file committed, pushed
    dvc("remote", "add", "-d", "storage", str(remote))
    dvc("repro", "-q")
    git("add", "-A")
    git("commit", "-qm", "pipeline results")
    dvc("push", "-q")

    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    c = Project(clone, p.env)  # the clone, in the same environment
    assert not (clone / "reports").exists()  # outputs are not in git ...
    c.dvc("pull", "-q")  # ... but come back from the remote
    for path in ("data/synth/x.txt", "models/sdm_ft/best.pt", "data/synthetic/samples/x.txt",
                 "reports/evaluate/metrics.json", "models/sdm/metrics.json"):
        assert (clone / path).read_text() == (repo / path).read_text(), path
    shown = c.dvc("metrics", "show")
    assert max(map(len, shown.splitlines())) < 160 and "miou_gain" in shown

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["sample"]["s"] = 3.0
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    c.dvc("repro", "-q")
    diff = c.dvc("metrics", "diff", "main")
    assert "miou_gain" in diff and "0.115" in diff and "0.13" in diff  # s 1.5 -> 3.0

    c.git("commit", "-qam", "s=3.0")
    c.dvc("exp", "run", "-q", "-S", "sample.s=2.0", "-n", "s2")
    header = c.dvc("exp", "show", "--csv", "--only-changed").splitlines()[0]
    columns = header.split(",")
    assert set(columns) - {"Experiment", "rev", "typ", "Created", "parent"} <= {
        *HEADLINE, "sample.s", "data/synthetic/images", "data/synthetic/labels",
        "data/synthetic/samples", "data/synthetic/colored_labels", "data/synthetic/manifest.jsonl",
        "data/synthetic/run.json", "data/curated", "State", "Executor"}
    assert "sample.s" in columns and "miou_gain" in columns and len(columns) <= 25

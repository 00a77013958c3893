"""pipelines/protocols/dvc.yaml (the layout set and the protocol rows), pipelines/labels/dvc.yaml (the
label-efficiency curve) and pipelines/full/dvc.yaml (the full study): every stage is a valid `isdm`
call on existing sources and params, a point's SDM has the main pipeline's recipe (so the 100 %
point may be the main pipeline's own), `dvc repro` of either file runs its stages after the main
chain's sample and never the main chain's evaluate, and a new fraction adds one point (with a stand-
in `isdm`); a real evaluate output of a subset is a point `isdm labels` reads."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from dvc_standin import standin_project

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = REPO / "pipelines" / "protocols" / "dvc.yaml"
LABELS = REPO / "pipelines" / "labels" / "dvc.yaml"
FULL = REPO / "pipelines" / "full" / "dvc.yaml"


def _render(text: str, item: str | None = None) -> str:
    root = yaml.safe_load((REPO / "params.yaml").read_text())
    own = yaml.safe_load((REPO / "pipelines" / "labels" / "params.yaml").read_text())
    values = {"data.root": root["data"]["root"], "labels.seed": str(own["labels"]["seed"])}
    if item is not None:
        values["item"] = item
    return re.sub(r"\$\{([\w.]+)\}", lambda m: values[m.group(1)], text)


def _stages(path: Path) -> list[tuple[str, dict]]:
    """(name, stage) with foreach stages expanded over labels.fractions."""
    doc = yaml.safe_load(path.read_text())
    fractions = yaml.safe_load((REPO / "pipelines" / "labels" / "params.yaml").read_text())[
        "labels"]["fractions"]
    out = []
    for name, stage in doc["stages"].items():
        items = [str(f) for f in fractions] if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for item in items:
            rendered = yaml.safe_load(_render(yaml.safe_dump(body), item))
            out.append((f"{name}@{item}" if item else name, rendered))
    return out


@pytest.mark.parametrize("path", [PROTOCOLS, LABELS, FULL], ids=["protocols", "labels", "full"])
def test_every_stage_is_an_isdm_call_on_existing_sources_and_params(path, tmp_path, monkeypatch):
    from isdm.cli import cli

    doc = yaml.safe_load(path.read_text())
    assert doc["vars"] == ["../../params.yaml:data"]  # the pipeline's own params.yaml: the rest
    own_file = f"pipelines/{path.parent.name}/params.yaml"
    own = yaml.safe_load((REPO / own_file).read_text())
    root = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "data" not in own  # DVC refuses a key defined twice in vars
    monkeypatch.chdir(tmp_path)  # the paths a command reads, made here (click checks them)
    for name, stage in _stages(path):
        assert stage["wdir"] == "../..", name
        for dep in stage["deps"]:
            if dep.startswith("src/"):
                assert (REPO / dep).is_dir(), (name, dep)
        for entry in stage.get("params", []):
            if isinstance(entry, str):
                assert entry in root, (name, entry)
            else:
                ((file, keys),) = entry.items()
                assert file == own_file and all(k.split(".")[0] in own for k in keys), name
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "isdm", name
        for token in argv:
            if "/" in token and "=" not in token and not token.startswith("-"):
                target = tmp_path / token
                if target.suffix == ".pt":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
                elif not target.suffix:
                    target.mkdir(parents=True, exist_ok=True)
        group = cli.get_command(None, argv[1])
        args = argv[2:]
        if hasattr(group, "commands"):
            group, args = group.commands[args[0]], args[1:]
        parsed = group.make_context(argv[1], list(args)).params
        if "config_paths" in parsed:
            assert parsed["config_paths"][0] == "params.yaml", name


def test_a_points_sdm_has_the_main_pipelines_recipe():
    """The points' train / finetune / sample read only params.yaml, the same sections as the
    main chain: so the main pipeline's SDM and samples are what a 100 % point would train."""
    main = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    labels = yaml.safe_load(LABELS.read_text())["stages"]
    for name in ("train", "finetune", "sample"):
        point = labels[name]["do"]
        assert point["params"] == main[name]["params"], name
        cmd = shlex.split(point["cmd"])
        assert cmd[1] == name and cmd[cmd.index("-c") + 1] == "params.yaml"
        assert cmd.count("-c") == 1, f"{name}: an overlay would make the 100 % point differ"
        assert [d for d in point["deps"] if d.startswith("src/")] == [
            d for d in main[name]["deps"] if d.startswith("src/")], name
    full = shlex.split(labels["full"]["cmd"])
    assert "synthetic=data/synthetic" in full and "${data.root}" in full
    assert labels["full"]["outs"] == ["reports/labels/points/1.0"]
    assert yaml.safe_load(LABELS.read_text())["stages"]["curve"]["deps"][0] == \
        "reports/labels/points"


_STUB = '''#!{python}
"""Stand-in for `isdm` under DVC: writes the declared outputs of the running stage."""
import os, re, yaml
file, _, name = os.environ["DVC_STAGE"].rpartition(":")
base, _, item = name.partition("@")
values = {{"data.root": yaml.safe_load(open("params.yaml"))["data"]["root"], "item": item}}
if file:
    own = yaml.safe_load(open(os.path.join(os.path.dirname(file), "params.yaml")))
    values.update({{f"labels.{{k}}": str(v) for k, v in own.get("labels", {{}}).items()}})
doc = yaml.safe_load(re.sub(r"\\$\\{{([\\w.]+)\\}}", lambda m: values[m.group(1)],
                            open(file or "dvc.yaml").read()))
stage = doc["stages"][base]
stage = stage.get("do", stage)
for kind in ("outs", "metrics", "plots"):
    for entry in stage.get(kind, []):
        path = entry if isinstance(entry, str) else next(iter(entry))
        if "." not in os.path.basename(path) or re.search(r"/[0-9.]+$", path):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "x.txt")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("epoch,miou,mix\\n1,0.5,R\\n" if path.endswith(".csv") else "{{}}")
with open("ran.log", "a") as f:
    f.write(name + "\\n")
'''


@pytest.mark.slow
def test_dvc_runs_the_protocol_and_label_pipelines_after_the_main_chains_sample(tmp_path):
    p = standin_project(tmp_path, _STUB, trees=("pipelines",))

    def run(*args: str) -> list[str]:
        p.dvc(*args)
        return p.ran()

    points = ["subset@0.25", "subset@0.5", "train@0.25", "train@0.5", "finetune@0.25",
              "finetune@0.5", "sample@0.25", "sample@0.5", "evaluate@0.25", "evaluate@0.5"]
    ran = run("repro", "pipelines/labels/dvc.yaml")
    assert ran[:4] == ["data", "train", "finetune", "sample"]  # the 100 % point's SDM and set
    assert sorted(ran[4:-2]) == sorted(points) and ran[-2:] == ["full", "curve"]
    assert run("repro", "pipelines/protocols/dvc.yaml") == ["layouts", "evaluate"]
    assert run("repro", "pipelines/full/dvc.yaml") == ["curate", "evaluate"]  # the full study
    assert run("repro", "pipelines/full/dvc.yaml") == []
    assert run("repro", "pipelines/labels/dvc.yaml") == []
    own = p.repo / "pipelines" / "labels" / "params.yaml"
    params = yaml.safe_load(own.read_text())
    params["labels"]["fractions"] = [0.25, 0.5, 0.75]
    own.write_text(yaml.safe_dump(params, sort_keys=False))
    ran = run("repro", "pipelines/labels/dvc.yaml")  # one new point and the curve
    assert sorted(ran) == sorted([s.replace("0.25", "0.75") for s in points if "0.25" in s]
                                 + ["curve"])
    assert run("repro") == ["evaluate"]  # the main chain's own rest (curate ran for the full study)


@pytest.mark.slow
def test_a_subsets_real_evaluate_report_is_a_point_of_the_curve(synth_dir, tmp_path):
    """`isdm data subset` + `isdm evaluate` (tiny) at 50 % and 100 %, then `isdm labels`."""
    from click.testing import CliRunner

    from isdm.cli import cli

    syn = tmp_path / "syn"
    (syn / "samples").mkdir(parents=True)
    (syn / "labels").mkdir()
    for img in sorted((synth_dir / "train" / "images").iterdir())[:4]:
        shutil.copy(img, syn / "samples" / f"s_{img.name}")
        mask = next((synth_dir / "train" / "masks").glob(img.stem + ".*"))
        shutil.copy(mask, syn / "labels" / f"s_{mask.name}")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"image_size": 32}, "tracking": {"enabled": False},
        "labels": {"fractions": [0.5]},
        "evaluate": {"architectures": ["FPN"], "seeds": [0, 1], "steps": 2, "val_every": 1,
                     "image_size": 32, "batch_size": 4, "bootstrap": 20, "workers": 1,
                     "threads": 1}}))
    invoke = CliRunner().invoke
    res = invoke(cli, ["data", "subset", str(synth_dir), str(tmp_path / "half"), "--fraction",
                       "0.5"])
    assert res.exit_code == 0, res.output
    for root, name in ((tmp_path / "half", "0.5"), (synth_dir, "1.0")):
        res = invoke(cli, ["evaluate", "-c", str(params), "--data", str(root), "--synthetic",
                           f"synthetic={syn}", "--out", str(tmp_path / "points" / name),
                           "--device", "cpu"])
        assert res.exit_code == 0, res.output
    res = invoke(cli, ["labels", "-c", str(params), str(tmp_path / "points"), "--out",
                       str(tmp_path / "curve")])
    assert res.exit_code == 0, res.output
    summary = yaml.safe_load((tmp_path / "curve" / "summary.json").read_text())
    assert [p["n"] for p in summary["points"]] == [4, 8]  # labelled images: train + validation
    assert summary["label"] == "RALLFALL[synthetic]" and summary["seeds"] == [0, 1]

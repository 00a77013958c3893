"""The sampling job's bookkeeping: exact counts, identical bytes, resume, shards, refusal, CLI.

The generator is a stand-in (``fake_engine`` of conftest.py, :class:`helpers.FakeEngine`:
per-row seeded noise tinted by the mask), so
these tests check the job, not the network; ``test_sampling_e2e.py`` runs the real tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isdm.config import Config, from_dict
from isdm.sampling import job as job_mod
from isdm.sampling.writer import FOLDERS, OutputExistsError

N_MASKS = 6
SIZE = 32


def make_dataset(root: Path, n: int = N_MASKS, size: int = SIZE, classes: int = 4) -> Path:
    """``n`` multi-class pairs: a rectangle of class (k % 3) + 1 on background, ignore strip."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[2 + k: 10 + 2 * k, 3: 9 + k] = k % (classes - 1) + 1
        if k == 0:
            mask[-1, :] = 255
        Image.fromarray(mask, "L").save(root / "train" / "masks" / f"m{k}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / "train" / "images" / f"m{k}.jpg")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def cfg_for(**sample) -> Config:
    tree = {"data": {"num_classes": 4, "image_size": SIZE},
            "sample": {"num_samples": 10, "batch_size": 3, "steps": 2, "seed": 7, **sample},
            "tracking": {"enabled": False}}
    return from_dict(Config, tree)


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for f in FOLDERS for p in sorted((out / f).glob("*.png"))} | \
        {"manifest.jsonl": (out / "manifest.jsonl").read_bytes()}


def test_exact_count_layout_and_manifest(tmp_path, data, ckpt, fake_engine):
    out = tmp_path / "out"
    summary = job_mod.run_sampling(cfg_for(), data, ckpt, out)
    names = {f: sorted(p.name for p in (out / f).iterdir()) for f in FOLDERS}
    assert all(len(v) == 10 for v in names.values())
    assert len({tuple(v) for v in names.values()}) == 1  # the same names in every folder
    lines = (out / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["index"] for r in recs] == list(range(10))
    assert [r["file"] for r in recs] == names["samples"]
    assert {r["sampler"] for r in recs} == {"dpmpp2m"} and {r["steps"] for r in recs} == {2}
    assert all(r["file"] == f"{r['index']:06d}_{r['source_mask']}.png" for r in recs)
    # the plan cycles the 6 masks in a seeded order: each is used once before any repeats
    assert sorted(r["source_index"] for r in recs[:6]) == list(range(6))
    assert summary["complete"] == 10 and summary["this_run"]["generated"] == 10
    assert fake_engine.calls == [3, 3, 3, 1]
    for name in ("config.json", "run.json", "summary.json", "grid.png"):
        assert (out / name).is_file()
    assert json.loads((out / "config.json").read_text())["sample"]["num_samples"] == 10


def test_labels_are_ids_and_images_are_real(tmp_path, data, ckpt, fake_engine):
    from PIL import Image

    out = tmp_path / "out"
    job_mod.run_sampling(cfg_for(num_samples=6), data, ckpt, out)
    for rec in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()):
        label = np.asarray(Image.open(out / "labels" / rec["file"]))
        src = np.asarray(Image.open(data / "train" / "masks" / f"{rec['source_mask']}.png"))
        assert np.array_equal(label, src)  # same size: ids unchanged, ignore 255 kept
        colored = Image.open(out / "colored_labels" / rec["file"])
        assert colored.mode == "P" and np.array_equal(np.asarray(colored), label)
        img = Image.open(out / "images" / rec["file"])
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"


def test_rerun_identical_bytes_and_batch_size_irrelevant(tmp_path, data, ckpt, fake_engine):
    a, b = tmp_path / "a", tmp_path / "b"
    job_mod.run_sampling(cfg_for(), data, ckpt, a)
    job_mod.run_sampling(cfg_for(batch_size=4), data, ckpt, b)
    assert files(a) == files(b)


def test_resume_generates_only_missing(tmp_path, data, ckpt, fake_engine):
    full, out = tmp_path / "full", tmp_path / "out"
    job_mod.run_sampling(cfg_for(), data, ckpt, full)
    # a run killed after 4 samples (max_new) ...
    s1 = job_mod.run_sampling(cfg_for(), data, ckpt, out, max_new=4)
    assert s1["complete"] == 4 and len((out / "manifest.jsonl").read_text().splitlines()) == 4
    # ... and a lost file of a finished sample (as if the kill hit mid-sample)
    victim = sorted((out / "samples").iterdir())[1]
    victim.unlink()
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"index": 3, "file": "torn')  # a torn last line
    fake_engine.calls = []
    s2 = job_mod.run_sampling(cfg_for(), data, ckpt, out)
    assert s2["this_run"]["generated"] == 7 and s2["this_run"]["skipped_existing"] == 3
    assert sum(fake_engine.calls) == 7
    assert files(out) == files(full)


def test_shards_union_equals_full_run(tmp_path, data, ckpt, fake_engine):
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    job_mod.run_sampling(cfg_for(), data, ckpt, full)
    s0 = job_mod.run_sampling(cfg_for(), data, ckpt, sharded, shard=(0, 2))
    assert s0["this_run"]["generated"] == 5 and s0["complete"] == 5
    s1 = job_mod.run_sampling(cfg_for(), data, ckpt, sharded, shard=(1, 2))
    assert s1["this_run"]["generated"] == 5 and s1["complete"] == 10
    assert files(sharded) == files(full)


def test_refuses_other_config_unless_overwrite(tmp_path, data, ckpt, fake_engine):
    out = tmp_path / "out"
    job_mod.run_sampling(cfg_for(num_samples=4), data, ckpt, out)
    with pytest.raises(OutputExistsError, match="sample.s"):
        job_mod.run_sampling(cfg_for(num_samples=4, s=3.0), data, ckpt, out)
    other = tmp_path / "other.pt"
    other.write_bytes(b"another checkpoint")
    with pytest.raises(OutputExistsError, match="checkpoint_sha256"):
        job_mod.run_sampling(cfg_for(num_samples=4), data, other, out)
    (out / "keep.txt").write_text("user file")  # a file isdm did not write: refused, kept
    with pytest.raises(OutputExistsError, match="keep.txt"):
        job_mod.run_sampling(cfg_for(num_samples=3, s=3.0), data, ckpt, out, overwrite=True)
    (out / "keep.txt").unlink()
    s = job_mod.run_sampling(cfg_for(num_samples=3, s=3.0), data, ckpt, out, overwrite=True)
    assert s["complete"] == 3 and len(list((out / "samples").iterdir())) == 3


def test_folder_masks_without_images_get_placeholder(tmp_path, data, ckpt, fake_engine):
    from PIL import Image

    folder = tmp_path / "my_masks" / "lot1"
    folder.mkdir(parents=True)
    for k in range(2):
        m = np.zeros((16, 16), np.uint8)
        m[k:k + 4, 2:6] = 3
        Image.fromarray(m, "L").save(folder / f"x{k}.png")
    out = tmp_path / "out"
    job_mod.run_sampling(cfg_for(num_samples=3, mask_source="folder",
                                 mask_dir=str(tmp_path / "my_masks")), data, ckpt, out)
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["source_mask"] for r in recs} <= {"lot1/x0", "lot1/x1"}
    assert recs[0]["file"].startswith("000000_lot1__x")
    img = np.asarray(Image.open(out / "images" / recs[0]["file"]))
    assert img.shape == (SIZE, SIZE, 3) and (img == 128).all()
    assert np.asarray(Image.open(out / "labels" / recs[0]["file"])).max() == 3


def test_augment_source_records_ops_and_regenerates(tmp_path, data, ckpt, fake_engine):
    a, b = tmp_path / "a", tmp_path / "b"
    job_mod.run_sampling(cfg_for(mask_source="augment"), data, ckpt, a)
    job_mod.run_sampling(cfg_for(mask_source="augment"), data, ckpt, b, shard=(1, 3))
    job_mod.run_sampling(cfg_for(mask_source="augment"), data, ckpt, b, shard=(0, 3))
    job_mod.run_sampling(cfg_for(mask_source="augment"), data, ckpt, b, shard=(2, 3))
    assert files(a) == files(b)
    recs = [json.loads(x) for x in (a / "manifest.jsonl").read_text().splitlines()]
    assert all(r["aug_seed"] is not None for r in recs)
    assert sum(bool(r["augmentation"]) for r in recs) >= 5


def test_balanced_plan_reported(tmp_path, data, ckpt, fake_engine):
    out = tmp_path / "out"
    s = job_mod.run_sampling(cfg_for(num_samples=8, balance={"enabled": True}), data, ckpt, out)
    dist = s["class_distribution"]
    assert dist["basis"] == "pixels" and dist["counted_classes"] == [1, 2, 3]
    assert dist["after"]["imbalance"] < dist["before"]["imbalance"]
    assert json.loads((out / "summary.json").read_text())["class_distribution"] == dist


def test_cli_end_to_end_with_tracking(tmp_path, data, ckpt, fake_engine, mlflow_uri):
    import yaml
    from click.testing import CliRunner

    from isdm.cli import cli

    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"num_classes": 4, "image_size": SIZE},
                                   "sample": {"num_samples": 4, "batch_size": 2, "steps": 2}}))
    out = tmp_path / "out"
    args = ["sample", "-c", str(cfg), "--data", str(data), "--checkpoint", str(ckpt),
            "--out", str(out), "--set", "sample.s=2.0"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "4/4 samples complete" in r.output
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.iloc[0]["tags.mlflow.runName"] == "sample dpmpp2m 2 steps s=2"
    assert runs.iloc[0]["metrics.images_per_s"] > 0
    assert "metrics.class_share_after.1" in runs.columns
    r2 = CliRunner().invoke(cli, args + ["--set", "sample.seed=5"])
    assert r2.exit_code == 1 and "different run" in r2.output
    bad = CliRunner().invoke(cli, args + ["--shard", "2/2"])
    assert bad.exit_code == 2 and "0 <= i < N" in bad.output


def test_extend_run_and_refuse_shrink(tmp_path, data, ckpt, fake_engine):
    full, out = tmp_path / "full", tmp_path / "out"
    job_mod.run_sampling(cfg_for(balance={"enabled": True}), data, ckpt, full)
    job_mod.run_sampling(cfg_for(num_samples=6, balance={"enabled": True}), data, ckpt, out)
    fake_engine.calls = []
    s = job_mod.run_sampling(cfg_for(balance={"enabled": True}), data, ckpt, out)
    assert s["this_run"]["generated"] == 4 and sum(fake_engine.calls) == 4
    assert files(out) == files(full)  # sample i's plan does not depend on num_samples
    with pytest.raises(OutputExistsError, match="extra ones"):
        job_mod.run_sampling(cfg_for(num_samples=5, balance={"enabled": True}), data, ckpt, out)


def test_records_carry_file_digests_and_overwrite_after_kill(tmp_path, data, ckpt, fake_engine):
    import hashlib

    from isdm.sampling.writer import OutputDir

    out = tmp_path / "out"
    job_mod.run_sampling(cfg_for(num_samples=4), data, ckpt, out)
    for rec in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()):
        assert sorted(rec["files"]) == [f"{f}/{rec['file']}" for f in sorted(FOLDERS)]
        for rel, meta in rec["files"].items():
            blob = (out / rel).read_bytes()
            assert meta == {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    # a run killed inside a batch: its names were announced, some files written, no record
    OutputDir(out).append([{"index": 4, "file": "000004_x.png", "pending": True}])
    (out / "samples" / "000004_x.png").write_bytes(b"half")
    (out / "labels" / ".000004_x.png.k3j_9x.tmp").write_bytes(b"temp of an atomic write")
    s = job_mod.run_sampling(cfg_for(num_samples=3, s=3.0), data, ckpt, out, overwrite=True)
    assert s["complete"] == 3
    assert sorted(p.name for f in FOLDERS for p in (out / f).iterdir()) == \
        sorted(json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text().splitlines()
               for _ in FOLDERS)


def test_refuses_a_run_json_isdm_did_not_write(tmp_path, data, ckpt, fake_engine):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("[1, 2]")
    with pytest.raises(OutputExistsError, match="not a run.json written by isdm"):
        job_mod.run_sampling(cfg_for(num_samples=2), data, ckpt, out, overwrite=True)
    assert (out / "run.json").read_text() == "[1, 2]"


def test_rerun_after_dvc_removed_the_outputs(tmp_path, data, ckpt, fake_engine):
    """`dvc repro` deletes a stage's outs (not manifest.lock) before running it again."""
    import shutil

    out = tmp_path / "out"
    job_mod.run_sampling(cfg_for(num_samples=4), data, ckpt, out)
    for folder in FOLDERS:
        shutil.rmtree(out / folder)
    for name in ("manifest.jsonl", "config.json", "run.json", "summary.json", "grid.png"):
        (out / name).unlink()
    assert sorted(p.name for p in out.iterdir()) == [".isdm.lock", "manifest.lock"]
    s = job_mod.run_sampling(cfg_for(num_samples=4, s=2.0), data, ckpt, out, overwrite=True)
    assert s["complete"] == 4 and s["this_run"]["generated"] == 4

"""Faults of `isdm sample` and its output folder (issue 10, cases 1, 5, 6 and 11).

The generator is faked (per-row seeded noise tinted by the mask): these tests check what the job
does with folders and files, not the network.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from isdm.cli import cli
from isdm.config import Config, from_dict
from isdm.errors import DatasetError, EvaluationError, OutputExistsError
from isdm.sampling import job as job_mod
from isdm.sampling.writer import FOLDERS, OutputDir


class FakeEngine:
    """uint8 images that depend only on (label row, seed)."""

    def __call__(self, labels: np.ndarray, seeds) -> np.ndarray:
        import torch

        out = []
        for lab, sd in zip(labels, seeds):
            g = torch.Generator().manual_seed(int(sd))
            noise = torch.randint(0, 128, (*lab.shape, 3), generator=g).numpy()
            out.append((noise + (lab[..., None] % 8) * 16).astype(np.uint8))
        return np.stack(out)


@pytest.fixture
def engine_loads(monkeypatch) -> list[str]:
    """Fake the checkpoint loader; the list records every load."""
    from isdm.sampling import engine

    loads: list[str] = []

    def load(cfg, checkpoint, device):
        loads.append(str(checkpoint))
        return FakeEngine(), cfg, {"weights": "fake"}

    monkeypatch.setattr(engine, "load_engine", load)
    return loads


@pytest.fixture
def ckpt(tmp_path) -> Path:
    p = tmp_path / "fake.pt"
    p.write_bytes(b"not a real checkpoint; the engine is faked")
    return p


def cfg_for(**sample) -> Config:
    return from_dict(Config, {
        "data": {"num_classes": 5, "image_size": 32},
        "sample": {"num_samples": 6, "batch_size": 4, "steps": 2, "seed": 1, **sample},
        "tracking": {"enabled": False}})


def outputs(out: Path) -> dict[str, bytes]:
    got = {f"{f}/{p.name}": p.read_bytes() for f in FOLDERS for p in sorted((out / f).iterdir())}
    got["manifest.jsonl"] = (out / "manifest.jsonl").read_bytes()
    return got


def cli_sample(tmp_path: Path, data: Path, ckpt: Path, out: Path, *extra: str):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"data": {"num_classes": 5, "image_size": 32},
                                  "sample": {"num_samples": 6, "batch_size": 4, "steps": 2},
                                  "tracking": {"enabled": False}}))
    return CliRunner().invoke(cli, ["sample", "-c", str(params), "--data", str(data),
                                    "--checkpoint", str(ckpt), "--out", str(out), *extra])


def test_case_01_overwrite_deletes_only_files_isdm_recorded(synth_dir, ckpt, engine_loads,
                                                            tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(synth_dir, ds)
    before = {p: p.read_bytes() for p in sorted(ds.rglob("*")) if p.is_file()}
    # --out a real dataset split (or inside one): nothing written or deleted, --overwrite not
    # offered
    for split in (ds / "train", ds / "train" / "images", ds / "test" / "new"):
        for extra in (("--overwrite",), ()):
            r = cli_sample(tmp_path, ds, ckpt, split, *extra)
            assert r.exit_code == 1, r.output
            assert f"inside the dataset split {ds / split.relative_to(ds).parts[0]}" in r.output
            assert "or --overwrite" not in r.output and "pass --overwrite" not in r.output
            assert {p: p.read_bytes() for p in sorted(ds.rglob("*")) if p.is_file()} == before
    assert not (ds / "test" / "new").exists()
    # an isdm folder with a file isdm did not write in samples/: refused before deleting anything
    out = tmp_path / "out"
    assert cli_sample(tmp_path, ds, ckpt, out).exit_code == 0
    (out / "samples" / "mine.png").write_bytes(b"a user's file")
    written = outputs(out)
    other = cli_sample(tmp_path, ds, ckpt, out, "--set", "sample.seed=9")
    assert other.exit_code == 1 and "different run" in other.output
    assert "samples/mine.png" in other.output and "or --overwrite" not in other.output
    r = cli_sample(tmp_path, ds, ckpt, out, "--set", "sample.seed=9", "--overwrite")
    assert r.exit_code == 1 and "nothing was deleted" in r.output and "samples/mine.png" in r.output
    assert outputs(out) == written
    # a file beside the folders is refused the same way
    (out / "samples" / "mine.png").unlink()
    written = outputs(out)
    (out / "notes.txt").write_text("a user's file")
    r = cli_sample(tmp_path, ds, ckpt, out, "--set", "sample.seed=9", "--overwrite")
    assert r.exit_code == 1 and "notes.txt" in r.output and outputs(out) == written
    # without the foreign files --overwrite is offered, and deletes exactly isdm's files
    (out / "notes.txt").unlink()
    other = cli_sample(tmp_path, ds, ckpt, out, "--set", "sample.seed=9")
    assert other.exit_code == 1 and "or --overwrite" in other.output
    r = cli_sample(tmp_path, ds, ckpt, out, "--set", "sample.seed=9", "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(list((out / "samples").iterdir())) == 6
    assert {json.loads(x)["seed"] for x in (out / "manifest.jsonl").read_text().splitlines()} == {9}


@pytest.mark.parametrize("source", ["train", "folder"])
def test_case_05_sample_validates_every_source_file_first(synth_dir, ckpt, engine_loads, tmp_path,
                                                          source):
    from PIL import Image

    ds = tmp_path / "ds"
    shutil.copytree(synth_dir, ds)
    train = ds / "train"
    masks = sorted((train / "masks").iterdir())
    Image.new("L", (16, 16)).save(masks[0])  # the image stays 32 x 32
    (train / "images" / masks[1].name).write_bytes(b"")  # zero-byte image
    data = (train / "images" / masks[2].name).read_bytes()
    (train / "images" / masks[2].name).write_bytes(data[:len(data) // 2])  # truncated image
    masks[3].write_text("not a png")
    cfg = cfg_for()
    if source == "folder":
        shutil.rmtree(train / "images")  # a folder of masks alone
        cfg = cfg_for(mask_source="folder", mask_dir=str(train / "masks"))
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        job_mod.run_sampling(cfg, ds, ckpt, out)
    named = {masks[3].name} | ({masks[0].name, masks[1].name, masks[2].name}
                               if source == "train" else set())
    assert {n for n in (m.name for m in masks) if n in str(err.value)} == named
    if source == "train":
        assert "size mismatch" in str(err.value)
    assert engine_loads == [] and not out.exists()  # before the checkpoint and any output


def test_case_06_resume_verifies_each_sample_and_evaluate_names_broken_files(
        synth_dir, ckpt, engine_loads, tmp_path):
    from isdm.evaluation.loading import load_synthetic

    full, out = tmp_path / "full", tmp_path / "out"
    job_mod.run_sampling(cfg_for(), synth_dir, ckpt, full)
    job_mod.run_sampling(cfg_for(), synth_dir, ckpt, out)
    names = sorted(p.name for p in (out / "samples").iterdir())
    (out / "samples" / names[0]).write_bytes(b"")  # zero-byte
    data = (out / "labels" / names[1]).read_bytes()
    (out / "labels" / names[1]).write_bytes(data[:-20])  # truncated
    data = (out / "images" / names[2]).read_bytes()
    (out / "images" / names[2]).write_bytes(bytes(len(data)))  # same size, not a PNG
    # a sample whose record is missing (the run died between its files and its record)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(x for x in lines
                                                  if json.loads(x)["file"] != names[3]) + "\n")
    with pytest.raises(EvaluationError, match=f"samples/{names[0]} is broken.*isdm sample"):
        load_synthetic(out, cfg_for().data)
    summary = job_mod.run_sampling(cfg_for(), synth_dir, ckpt, out)
    assert summary["this_run"]["generated"] == 4 and summary["complete"] == 6
    assert outputs(out) == outputs(full)
    assert len(load_synthetic(out, cfg_for().data)) == 6


def _race(out: Path, identities: list[dict]) -> list[object]:
    """``OutputDir.prepare`` from one thread per identity, released together."""
    barrier = threading.Barrier(len(identities))
    results: list[object] = [None] * len(identities)

    def claim(k: int) -> None:
        barrier.wait()
        try:
            results[k] = OutputDir(out).prepare(identities[k], {}, num_samples=4, overwrite=False)
        except OutputExistsError as e:
            results[k] = e

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(len(identities))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_case_11_shards_racing_on_a_fresh_folder_claim_it_once(synth_dir, ckpt, engine_loads,
                                                               tmp_path):
    for k in range(60):
        results = _race(tmp_path / f"same{k}", [{"run": "a"}] * 4)
        assert results.count(False) == 1 and results.count(True) == 3, results  # 1 claims
        results = _race(tmp_path / f"other{k}", [{"run": "a"}, {"run": "b"}])
        refused = [r for r in results if isinstance(r, OutputExistsError)]
        assert len(refused) == 1 and "different run" in str(refused[0]), results
    # two real shards started together on a fresh folder give the bytes of one run
    full, out = tmp_path / "full", tmp_path / "sharded"
    job_mod.run_sampling(cfg_for(), synth_dir, ckpt, full)
    errors: list[BaseException] = []

    def shard(i: int) -> None:
        try:
            job_mod.run_sampling(cfg_for(batch_size=1), synth_dir, ckpt, out, shard=(i, 2))
        except BaseException as e:  # noqa: BLE001 (reported by the assert below)
            errors.append(e)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert outputs(out) == outputs(full)  # the manifest too: no shard's record was lost

"""Faults of `isdm sample`, one test per failure mode: bad source files, broken samples, racing
shards (issue 10; the generator is faked: these check what the job does with files), guidance
without a null label, out-of-range counts and non-finite samples (issue 22). The output
folder's ownership: ``test_faults_ownership.py``."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import TINY, TINY_CKPT, cfg_for, isdm, no_traceback, outputs, random_checkpoint

from isdm.errors import ConfigError, DatasetError, EvaluationError, NumericalError, OutputExistsError
from isdm.sampling import job as job_mod
from isdm.sampling.writer import OutputDir

@pytest.mark.parametrize("source", ["train", "folder"])
def test_every_source_file_is_validated_before_any_work(synth_dir, ckpt, fake_engine, tmp_path,
                                                         source):
    """Issue 10 case 5."""
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
    assert fake_engine.loads == [] and not out.exists()  # before the checkpoint and any output

def test_a_resume_verifies_each_sample_and_evaluate_names_broken_files(
        synth_dir, ckpt, fake_engine, tmp_path):
    """Issue 10 case 6."""
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

def test_shards_racing_on_a_fresh_folder_claim_it_once(synth_dir, ckpt, fake_engine,
                                                               tmp_path):
    """Issue 10 case 11."""
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

def test_guidance_without_a_null_label_is_refused_unless_opted_in(synth_dir, tmp_path):
    """Issue 22: sampling with s != 1 from a checkpoint never trained with drop_rate > 0 guided
    with a null-label prediction the network never learned, silently."""
    from isdm.config import load_config
    from isdm.sampling.engine import load_engine

    plain = random_checkpoint(tmp_path / "sdm.pt")
    tuned = random_checkpoint(tmp_path / "ft.pt", action="finetune", drop_rate=0.2)
    for s, ckpt, extra, ok in [(1.5, plain, [], False), (0.0, plain, [], False),
                               (1.0, plain, [], True), (1.5, tuned, [], True),
                               (1.5, plain, ["sample.guidance_without_null_label=true"], True)]:
        cfg = load_config(TINY, [*TINY_CKPT, f"sample.s={s}", *extra])
        if ok:
            load_engine(cfg, ckpt, "cpu")
        else:
            with pytest.raises(ConfigError, match=f"sample.s={s:g} guides with the null label"):
                load_engine(cfg, ckpt, "cpu")
    r = isdm("sample", "-c", TINY, "--data", synth_dir, "--checkpoint", plain,
             "--out", tmp_path / "out", "--set", "tracking.enabled=false")
    assert no_traceback(r) and f"isdm finetune --init {plain}" in r.output, r.output
    assert "--set sample.s=1" in r.output and not (tmp_path / "out").exists()


def test_out_of_range_counts_are_refused(synth_dir, ckpt, fake_engine, tmp_path):
    """Issue 22: `sample --max-new -1` was taken (Python's [:-1]: all samples but one)."""
    r = isdm("sample", "-c", TINY, "--data", synth_dir, "--checkpoint", ckpt,
             "--out", tmp_path / "out", "--max-new", "-1")
    assert no_traceback(r) and "-1 is not in the range x>=0" in r.output
    with pytest.raises(ConfigError, match="--max-new -1: .* must be >= 0"):
        job_mod.run_sampling(cfg_for(), synth_dir, ckpt, tmp_path / "out", max_new=-1)
    for args, message in [(("--shard", "2/2"), "need 0 <= i < N"),
                          (("--set", "sample.num_samples=0"), "sample.num_samples=0: must be >= 1"),
                          (("--set", "sample.batch_size=-4"), "sample.batch_size=-4: must be >= 1")]:
        r = isdm("sample", "-c", TINY, "--data", synth_dir, "--checkpoint", ckpt,
                 "--out", tmp_path / "out", *args)
        assert no_traceback(r) and message in r.output, (args, r.output)
    r = isdm("tune", "-c", TINY, "--data", synth_dir, "--checkpoint", ckpt, "--out",
             tmp_path / "tune", "--n-trials", "-1")
    assert no_traceback(r) and "-1 is not in the range x>=0" in r.output
    assert fake_engine.loads == [] and not (tmp_path / "out").exists()


def test_non_finite_samples_are_never_written(tmp_path):
    """Issue 22: a NaN sample became a black PNG, rc 0."""
    from isdm.config import load_config
    from isdm.sampling.engine import load_engine

    cfg = load_config(TINY, [*TINY_CKPT, "sample.s=1"])
    engine, _, _ = load_engine(cfg, random_checkpoint(tmp_path / "sdm.pt"), "cpu")
    labels = np.zeros((2, 32, 32), np.uint8)
    assert engine(labels, [0, 1]).shape == (2, 32, 32, 3)
    engine.sampler = lambda model_fn, x_T, *a, **k: torch.full_like(x_T, float("nan"))
    with pytest.raises(NumericalError, match="NaN / inf pixels .* would be written as black"):
        engine(labels, [0, 1])

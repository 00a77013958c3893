"""Faults of output folders, one test per failure mode of the ownership rule
(:mod:`isdm.utils.ownership`): a command creates its --out or recognises its own earlier output
by its record; --overwrite removes only what the record lists; anything else is refused, named;
never inside a dataset split; one writer per folder (issue 10 cases 1 and 2, issue 22)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import (QUICK, REPO, TINY, cli_sample, isdm, no_traceback, outputs,
                      random_checkpoint, train_tiny)

from isdm.errors import OutputExistsError
from isdm.training.start import OUTPUTS, check_out_dir
from isdm.utils import ownership

@pytest.mark.slow
def test_an_earlier_training_run_is_not_replaced_silently(synth_dir, tmp_path):
    """Issue 10 case 2; a foreign file: issue 22."""
    out = tmp_path / "sdm"
    assert train_tiny(synth_dir, out).exit_code == 0
    before = (out / "best.pt").read_bytes()

    again = train_tiny(synth_dir, out)
    assert again.exit_code == 1
    msg = again.output
    assert f"{out} already holds the outputs of an earlier training run" in msg
    assert "best.pt (epoch 1, step 1)" in msg and "last.pt (epoch 1, step 1)" in msg
    assert "metrics.json" in msg and "loss.csv" in msg and "config.json" in msg
    assert f"--resume {out / 'last.pt'}" in msg and "--overwrite" in msg
    assert (out / "best.pt").read_bytes() == before

    ft = isdm("finetune", "-c", TINY, "--data", str(synth_dir), "--out", str(out),
              "--init", str(out / "best.pt"), *QUICK)
    assert ft.exit_code == 1 and f"`isdm train ... --resume {out / 'last.pt'}`" in ft.output
    assert (out / "best.pt").read_bytes() == before

    # a file isdm did not write is refused, even with --overwrite, and nothing is deleted
    (out / "notes.txt").write_text("mine")
    mixed = train_tiny(synth_dir, out, "--overwrite")
    assert mixed.exit_code == 1 and "notes.txt" in mixed.output and "no record" in mixed.output
    assert (out / "best.pt").read_bytes() == before
    (out / "notes.txt").unlink()

    # --overwrite starts over, replacing isdm's files only; a stale last.pt does not survive
    fresh = train_tiny(synth_dir, out, "--overwrite", "--set", "train.save_last=false")
    assert fresh.exit_code == 0, fresh.output
    assert (out / "best.pt").read_bytes() != before
    assert not (out / "last.pt").exists()
    resumed = train_tiny(synth_dir, out, "--resume", str(out / "best.pt"),
                         "--set", "train.max_steps=2")
    assert resumed.exit_code == 0, resumed.output

def test_sample_overwrite_deletes_only_files_isdm_recorded(synth_dir, ckpt, fake_engine,
                                                            tmp_path):
    """Issue 10 case 1; beside the folders and inside a split: issue 22."""
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

def _claims(tmp_path: Path) -> dict:
    """Each command's check of its --out, without running the command."""
    from isdm.curation.folder import prepare_out
    from isdm.data.synth import write_synthetic_dataset
    from isdm.evaluation.report import claim_out
    from isdm.tuning.study import claim_out as claim_study

    from isdm.config import SynthConfig

    from isdm.data.subset import write_subset
    from isdm.evaluation.labels_report import _claim_out as claim_curve

    tiny = SynthConfig(num_train=1, num_test=1, image_size=32)
    return {"train": lambda out: check_out_dir(out, "train", resuming=False, overwrite=True),
            "curate": lambda out: prepare_out(out, tmp_path / "synthetic"),
            "evaluate": claim_out, "tune": lambda out: claim_study(out, ""),
            "data synth": lambda out: write_synthetic_dataset(out, tiny),
            "data subset": lambda out: write_subset(tmp_path / "no-such-source", out, 0.5, 0),
            "labels": claim_curve,
            "sample": lambda out: ownership.check_not_in_split(out)}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_every_command_refuses_foreign_files_and_names_them_with_a_count(tmp_path):
    """Issue 22: `curate --out` an earlier curate folder deleted the user's other files in it;
    `evaluate --out` overwrote a user's files of the same names."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    for name in ("report.md", "metrics.json", "best.pt", "a.txt", "b.txt", "sub/c.txt", "d.txt"):
        (out / name).write_text(f"the user's {name}")
    before = _tree(out)
    for command, claim in _claims(tmp_path).items():
        if command == "sample":
            continue  # sample's own check: test_sample_overwrite_deletes_only_files_isdm_recorded
        with pytest.raises(OutputExistsError) as e:
            claim(out)
        msg = str(e.value)
        assert "holds 7 file(s) (a.txt, b.txt, best.pt, d.txt, metrics.json, ...)" in msg, msg
        assert f"`isdm {command}` has no record of writing" in msg and "--overwrite" in msg
        assert _tree(out) == before, command


def test_no_command_writes_inside_a_dataset_split(synth_dir, tmp_path):
    """Issue 22: `sample --out <dataset>/train/images --overwrite` wrote the synthetic set inside
    a dataset split."""
    ds = tmp_path / "ds"
    shutil.copytree(synth_dir, ds)
    before = _tree(ds)
    for target in (ds / "train", ds / "train" / "images", ds / "test" / "new" / "deeper"):
        for command, claim in _claims(tmp_path).items():
            with pytest.raises(OutputExistsError, match="is inside the dataset split"):
                claim(target)
        r = train_tiny(synth_dir, target, "--overwrite")
        assert no_traceback(r) and "inside the dataset split" in r.output
    assert _tree(ds) == before and not (ds / "test" / "new").exists()


def test_data_synth_into_an_embedded_set_the_user_extended_is_refused(tmp_path):
    """Issue 22: `data synth` into an earlier embedded set the user extended discarded the
    changes; its own earlier set is still replaced, file by file."""
    from isdm.config import SynthConfig
    from isdm.data.synth import write_synthetic_dataset

    out = tmp_path / "synth"
    write_synthetic_dataset(out, SynthConfig(num_train=3, num_test=1, image_size=32))
    mine = sorted((out / "train" / "images").iterdir())[0].with_name("9999_mine.png")
    shutil.copy(sorted((out / "train" / "images").iterdir())[0], mine)
    before = _tree(out)
    with pytest.raises(OutputExistsError, match="train/images/9999_mine.png"):
        write_synthetic_dataset(out, SynthConfig(num_train=2, num_test=1, image_size=32))
    assert _tree(out) == before
    mine.unlink()
    (out / ownership.RECORD).unlink()  # an older isdm's set (or one restored by DVC): synth.json
    write_synthetic_dataset(out, SynthConfig(num_train=2, num_test=1, image_size=32))
    assert len(list((out / "train" / "images").iterdir())) == 2


def test_a_second_writer_on_one_folder_fails_at_once_naming_the_first(synth_dir, tmp_path):
    """Issue 22: two `train` runs on one --out both succeeded and left a mix of both."""
    out = tmp_path / "sdm"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom isdm.utils import ownership\n"
         "with ownership.exclusive(sys.argv[1], 'train'):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (("train",), ("finetune", "--init", random_checkpoint(tmp_path / "i.pt"))):
            r = isdm(*args, "-c", TINY, "--data", synth_dir, "--out", out, "--no-progress",
                     "--set", "tracking.enabled=false")
            assert no_traceback(r), r.output
            assert f"--out {out} is being written by `isdm train` (pid {holder.pid} on" in r.output
        assert sorted(p.name for p in out.iterdir()) == [ownership.LOCK]
    finally:
        holder.kill()
        holder.wait()
    assert train_tiny(synth_dir, out).exit_code == 0  # the kernel released the dead one's lock


def test_a_new_folder_on_a_read_only_file_system_is_a_clear_error(synth_dir, tmp_path,
                                                                  monkeypatch):
    """Issue 22: a new --out on a read-only file system ended in a traceback."""
    import errno

    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if tmp_path / "ro" in (self, *self.parents):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    r = train_tiny(synth_dir, tmp_path / "ro" / "sdm")
    assert no_traceback(r), r.output
    assert f"cannot create --out {tmp_path / 'ro' / 'sdm'}: Read-only file system" in r.output


@pytest.mark.slow
def test_dvc_reruns_a_stage_after_deleting_its_outs_and_pulled_outs_stay_recognised(
        synth_dir, tmp_path):
    """The DVC path: `dvc repro` deletes a stage's outs (its .gitignore, the record and the lock
    stay) and runs the command without --overwrite; `dvc pull` restores outs without the
    record, which must read as isdm's earlier run, not as foreign files."""
    out = tmp_path / "sdm"
    assert train_tiny(synth_dir, out).exit_code == 0
    (out / ".gitignore").write_text("".join(f"/{n}\n" for n in OUTPUTS))  # DVC writes it
    pulled = {n: (out / n).read_bytes() for n in OUTPUTS}
    for name in OUTPUTS:
        (out / name).unlink()
    rerun = train_tiny(synth_dir, out)
    assert rerun.exit_code == 0, rerun.output
    (out / ownership.RECORD).unlink()
    for name, data in pulled.items():
        (out / name).write_bytes(data)
    with pytest.raises(OutputExistsError, match="already holds the outputs of an earlier"):
        check_out_dir(out, "train", resuming=False, overwrite=False)
    assert set(check_out_dir(out, "train", resuming=False, overwrite=True).existing) == set(OUTPUTS)

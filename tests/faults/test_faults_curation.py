"""Faults of `isdm curate`'s output folder, one test per failure mode (issue 22): an earlier
curate folder holding a user's files, and a file arriving while the set is built. (Folders
holding only foreign files, and dataset splits: ``test_faults_ownership.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isdm.curation.folder import prepare_out, publish
from isdm.errors import OutputExistsError
from isdm.utils import ownership


def _earlier_curate(out: Path) -> None:
    """A curate output as an isdm without the ownership record left it: its card.json and a
    manifest naming one kept pair's files and one loss map."""
    for rel in ("samples/000000_a.png", "images/000000_a.png", "labels/000000_a.png",
                "colored_labels/000000_a.png", "loss_maps/a.npy"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"isdm's")
    for name in ("card.md", "weights.json", "config.json"):
        (out / name).write_text("isdm's")
    (out / "card.json").write_text(json.dumps({"isdm": "curate"}))
    files = {f"{f}/000000_a.png": {} for f in ("samples", "images", "labels", "colored_labels")}
    (out / "manifest.jsonl").write_text(json.dumps(
        {"file": "000000_a.png", "files": files, "curate": {"loss_map": "loss_maps/a.npy"}}) + "\n")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_an_earlier_curate_folder_with_a_users_files_is_refused_and_kept(tmp_path):
    """Issue 22: `curate --out` an earlier curate folder replaced it whole, deleting the user's
    other files in it."""
    out, syn = tmp_path / "curated", tmp_path / "synthetic"
    _earlier_curate(out)
    (out / "notes.txt").write_text("the user's")
    (out / "samples" / "mine.png").write_bytes(b"the user's")
    before = _tree(out)
    with pytest.raises(OutputExistsError, match=r"holds 2 file\(s\) \(notes.txt, "
                                                r"samples/mine.png\).*no record of writing"):
        prepare_out(out, syn)
    assert _tree(out) == before
    (out / "notes.txt").unlink()
    (out / "samples" / "mine.png").unlink()
    assert set(prepare_out(out, syn).existing) == set(before) - {"notes.txt", "samples/mine.png"}


def test_a_file_arriving_while_the_set_is_built_is_kept(tmp_path):
    """Issue 22: the finished set is renamed over the earlier one; what arrived meanwhile is
    refused, not deleted; the folder's .gitignore and lock carry over."""
    out, syn = tmp_path / "curated", tmp_path / "synthetic"
    _earlier_curate(out)
    (out / ".gitignore").write_text("/x\n")
    (out / ownership.LOCK).write_text("")
    lock_inode = (out / ownership.LOCK).stat().st_ino
    staging = tmp_path / ".curated.staging"
    (staging / "samples").mkdir(parents=True)
    (staging / "samples" / "000001_b.png").write_bytes(b"new")
    (out / "late.txt").write_text("the user's")
    with pytest.raises(OutputExistsError, match="late.txt"):
        publish(staging, out, syn)
    assert (out / "late.txt").read_text() == "the user's" and (out / "card.json").exists()
    (out / "late.txt").unlink()
    publish(staging, out, syn)
    assert set(_tree(out)) == {".gitignore", ownership.LOCK, ownership.RECORD,
                               "samples/000001_b.png"}
    assert (out / ownership.LOCK).stat().st_ino == lock_inode  # the same lock a waiter holds
    assert ownership.read_record(out) == {"command": "curate", "files": ["samples/000001_b.png"]}

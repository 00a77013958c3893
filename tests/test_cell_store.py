"""The cell store: what a cell's key depends on, records written whole and read back exactly,
torn records never count, and where the store lives."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from isdm.config import load_config
from isdm.evaluation.spec import CellSpec, cell_spec
from isdm.evaluation.store import DEFAULT_ROOT, ENV, CellStore, resolve_root

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _spec(**changes) -> CellSpec:
    base = cell_spec(load_config(TINY), "FPN", "RALLF000", 0, real="r" * 64, test="t" * 64)
    return dataclasses.replace(base, **changes)


def test_the_key_changes_with_everything_a_cell_depends_on_and_nothing_else():
    cfg = load_config(TINY)
    key = cell_spec(cfg, "FPN", "RALLF000", 0, real="r", test="t").key
    assert key == cell_spec(cfg, "FPN", "RALLF000", 0, real="r", test="t").key
    assert len(key) == 24 and int(key, 16) >= 0
    changed = [cell_spec(cfg, "DeepLabV3Plus", "RALLF000", 0, real="r", test="t"),
               cell_spec(cfg, "FPN", "RALLF4", 0, real="r", test="t"),
               cell_spec(cfg, "FPN", "RALLF000", 1, real="r", test="t"),
               cell_spec(cfg, "FPN", "RALLF000", 0, real="r2", test="t"),
               cell_spec(cfg, "FPN", "RALLF000", 0, real="r", test=""),
               cell_spec(cfg, "FPN", "RALLF000", 0, real="r", test="t", device="cuda"),
               cell_spec(cfg, "FPN", "RALLF000", 0, real="r", test="t", steps=5)]
    for override in ("evaluate.lr=0.01", "evaluate.val_every=3", "evaluate.val_fraction=0.3",
                     "evaluate.loss=dice", "data.num_classes=4", "evaluate.encoder=resnet34"):
        changed.append(cell_spec(load_config(TINY, [override]), "FPN", "RALLF000", 0, real="r",
                                 test="t"))
    assert len({s.key for s in changed} | {key}) == len(changed) + 1
    # keys that choose cells, change nothing in one, or say how it runs
    for override in ("evaluate.seeds=[5,6]", "evaluate.mixes=[RALLF4]", "evaluate.bootstrap=7",
                     "evaluate.architectures=[UnetPlusPlus]", "evaluate.workers=3",
                     "evaluate.threads=2", "evaluate.window_overlap=0.5", "tune.eval_steps=9",
                     "sample.s=3.0", "runtime.device=cpu", "data.root=elsewhere"):
        same = cell_spec(load_config(TINY, [override]), "FPN", "RALLF000", 0, real="r", test="t")
        assert same.key == key, override
    # a real-only cell does not depend on the synthetic set; a synthetic mix does
    assert cell_spec(cfg, "FPN", "RALLF000", 0, real="r", test="t", synthetic="s").key == key
    a, b = (cell_spec(cfg, "FPN", "RALLFALL", 0, real="r", synthetic=s) for s in ("s1", "s2"))
    assert a.key != b.key


def test_a_field_added_later_with_a_neutral_default_keeps_the_old_keys():
    @dataclasses.dataclass(frozen=True)
    class Later(CellSpec):
        real_fraction: float = dataclasses.field(default=1.0, metadata={"neutral": True})

    old = _spec()
    assert Later(**dataclasses.asdict(old)).key == old.key
    assert Later(**dataclasses.asdict(old), real_fraction=0.5).key != old.key
    assert Later(**dataclasses.asdict(old), real_fraction=0.5).identity()["real_fraction"] == 0.5


def _put(store: CellStore, spec: CellSpec, weights=None):
    counts = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    fit = {"best_step": 2, "best_val_miou": 0.5, "steps": 4, "images_seen": 16, "epochs": 2.0,
           "val_every": 2, "train_seconds": 1.5,
           "history": [{"step": 2.0, "val_miou": 0.5, "train_loss": float("nan")}]}
    return store.put(spec, fit, {"threads": 1, "device": "cpu"}, test={"miou": 0.25},
                     counts=counts, weights=weights), counts


def test_a_record_reads_back_exactly(tmp_path):
    store = CellStore(tmp_path / "cells")
    spec = _spec()
    assert store.get(spec) is None
    weights = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    record, counts = _put(store, spec, weights)
    again = store.get(spec)
    assert again is not None and again.key == spec.key == record.key
    assert again.spec == spec.identity() and again.fit["best_step"] == 2
    assert again.fit["history"][0]["train_loss"] is None  # non-finite: null, strict JSON
    assert np.array_equal(again.counts, counts) and again.test == {"miou": 0.25}
    assert again.run["threads"] == 1 and again.run["files"]["weights.pt"]["bytes"] > 0
    loaded = again.load_weights()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    meta = json.loads((store.folder(spec) / "record.json").read_text())  # readable JSON
    assert meta["spec"]["arch"] == "FPN" and meta["key"] == spec.key
    assert store.count([spec, _spec(seed=9)]) == 1
    untested = _spec(seed=3, test="")
    rec = store.put(untested, {"best_step": 1, "best_val_miou": 0.1, "steps": 1}, {})
    assert rec.counts is None and rec.weights is None and rec.test is None


def test_torn_records_never_count_and_are_replaced(tmp_path):
    store = CellStore(tmp_path / "cells")
    spec = _spec()
    _put(store, spec, {"w": torch.ones(3)})
    folder = store.folder(spec)
    with open(folder / "counts.npz", "r+b") as f:  # truncated
        f.truncate(10)
    assert store.get(spec) is None
    _put(store, spec, {"w": torch.ones(3)})  # the next run replaces it
    assert store.get(spec) is not None
    (folder / "weights.pt").write_bytes(b"x" * (folder / "weights.pt").stat().st_size)
    from isdm.errors import EvaluationError

    with pytest.raises(EvaluationError, match="does not match its record"):
        store.get(spec).load_weights()  # same size, other bytes: caught when loaded
    (folder / "record.json").unlink()
    assert store.get(spec) is None
    # a writer killed before its rename leaves a temp folder: not a record; swept once dead
    dead = store.root / ".tmp" / f"{_spec(seed=4).key}.{_host()}.999999999.abcd1234"
    dead.mkdir(parents=True)
    (dead / "record.json").write_text("{}")
    assert store.get(_spec(seed=4)) is None
    CellStore(store.root).put(_spec(seed=5), {"best_step": 1, "best_val_miou": 0.1}, {})
    assert not dead.exists()


def _host() -> str:
    from isdm.evaluation.store import _HOST

    return _HOST


def test_progress_of_a_cell_in_training_is_saved_atomically(tmp_path):
    store = CellStore(tmp_path)
    spec = _spec()
    assert store.load_progress(spec) is None
    store.save_progress(spec, {"key": spec.key, "run": {"step": 3}})
    assert store.load_progress(spec) == {"key": spec.key, "run": {"step": 3}}
    store.progress_path(spec).write_bytes(b"torn")
    assert store.load_progress(spec) is None
    store.drop_progress(spec)
    assert not store.progress_path(spec).exists()


def test_the_store_lives_where_the_flag_the_environment_or_the_default_says(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "env"))
    assert resolve_root(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert resolve_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv(ENV)
    monkeypatch.chdir(tmp_path)
    assert resolve_root() == (tmp_path / DEFAULT_ROOT).resolve()
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/.isdm/" in ignored and "/.isdm/" in (REPO / ".dvcignore").read_text().splitlines()
    assert os.sep not in ENV

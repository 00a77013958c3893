"""A cell in training is resumable bit for bit: 0 -> k, save, load into a fresh run, k -> N
equals 0 -> N in one go (model, optimiser, batch stream, augmentation and crop draws, the forked
RNG of dropout, the selection so far); finishing changes nothing in a run; a killed cell job
resumes from its saved progress instead of starting again."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from isdm.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _cfg(*overrides: str):
    return load_config(TINY, ["tracking.enabled=false", "evaluate.batch_size=4",
                              "evaluate.val_every=2", "evaluate.steps=7", *overrides])


def _setup(cfg, data_root: Path, mix: str = "RALLF000"):
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.loading import empty_set, load_split

    real = load_split(cfg, data_root, "train")
    cell = plan_cell(cfg, "FPN", mix, 0, real.keys, [])
    return cell, real, empty_set(cfg)


def _run(cfg, cell, real, synth):
    from isdm.evaluation.cell import CellRun

    return CellRun(cfg, cell, real, synth, device=torch.device("cpu"))


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _same(a, b) -> None:
    fa, fb = a.fit, b.fit
    assert (fa.best_step, fa.best_val_miou, fa.steps) == (fb.best_step, fb.best_val_miou, fb.steps)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in fa.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in fb.history]
    assert fa.state_dict.keys() == fb.state_dict.keys()
    assert all(torch.equal(fa.state_dict[k], fb.state_dict[k]) for k in fa.state_dict)
    assert (a.counts is None) == (b.counts is None)
    if a.counts is not None:
        assert np.array_equal(a.counts, b.counts)


# between / at one validation; k=3 stays in the fast suite (~9 s on the busy 2-core machine):
# the only fast test of a cell's bit-identical resume
@pytest.mark.parametrize("k", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_training_resumed_from_a_saved_state_is_bit_identical(synth_dir, k):
    torch.set_num_threads(1)
    cfg = _cfg()
    cell, real, synth = _setup(cfg, synth_dir)
    straight = _run(cfg, cell, real, synth)
    straight.advance(7)
    first = _run(cfg, cell, real, synth)
    first.advance(k)
    state = _roundtrip(first.state_dict())
    torch.manual_seed(123)  # whatever the caller does with the global RNG meanwhile
    torch.rand(5)
    resumed = _run(cfg, cell, real, synth)
    resumed.load_state_dict(state)
    assert resumed.step == k
    resumed.advance(7)
    _same(straight.finish(real), resumed.finish(real))
    live = straight.loop.model.state_dict()
    assert all(torch.equal(v, resumed.loop.model.state_dict()[n]) for n, v in live.items())


def test_finishing_changes_nothing_so_a_run_finished_early_trains_on_identically(synth_dir):
    """The plateau calibration: check the curve at k, go on to N; the cell at N equals a cell
    trained straight to N (its selection ignores the extra validation at k)."""
    cfg = _cfg("evaluate.val_every=3")
    cell, real, synth = _setup(cfg, synth_dir)
    straight = _run(cfg, cell, real, synth)
    straight.advance(7)
    chunked = _run(cfg, cell, real, synth)
    chunked.advance(4)
    early = chunked.finish()
    assert early.fit.steps == 4 and [h["step"] for h in early.fit.history] == [3.0, 4.0]
    chunked.advance(7)
    done = chunked.finish()
    assert [h["step"] for h in done.fit.history] == [3.0, 6.0, 7.0]
    _same(straight.finish(), done)


@pytest.mark.slow
def test_crop_cells_resume_bit_identically(rect_dir):
    cfg = load_config(None, ["tracking.enabled=false", "data.crop=true", "data.image_size=32",
                             "data.num_classes=3", "evaluate.image_size=32",
                             "evaluate.batch_size=4", "evaluate.val_every=2", "evaluate.steps=5",
                             "evaluate.architectures=[FPN]"])
    cell, real, synth = _setup(cfg, rect_dir)
    straight = _run(cfg, cell, real, synth)
    straight.advance(5)
    first = _run(cfg, cell, real, synth)
    first.advance(3)
    resumed = _run(cfg, cell, real, synth)
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    resumed.advance(5)
    _same(straight.finish(), resumed.finish())


@pytest.mark.slow
def test_a_killed_cell_job_resumes_from_its_saved_progress(synth_dir, tmp_path, monkeypatch):
    """run_job saves progress at validations (save_every_s=0 here); a job killed after step 4
    resumes there, and its record equals an uninterrupted job's."""
    from isdm.evaluation.cell import CellRun
    from isdm.evaluation.store import CellStore
    from isdm.evaluation.worker import Digests, make_job, run_job

    cfg = _cfg()
    cell, _, _ = _setup(cfg, synth_dir)

    def job(store: CellStore):
        return make_job(cfg, synth_dir, cell, digests=Digests(synth_dir), synthetic=None,
                        test=True, device_type="cpu", store=store, save_every_s=0.0)

    clean, _ = run_job(job(CellStore(tmp_path / "clean")), torch.device("cpu"))
    store = CellStore(tmp_path / "killed")
    advance = CellRun.advance

    def dies_after_4(self, to_step):
        if to_step > 4:
            raise KeyboardInterrupt("killed")
        advance(self, to_step)

    monkeypatch.setattr(CellRun, "advance", dies_after_4)
    with pytest.raises(KeyboardInterrupt):
        run_job(job(store), torch.device("cpu"))
    assert store.get(job(store).spec) is None and store.progress_path(job(store).spec).exists()
    monkeypatch.setattr(CellRun, "advance", advance)
    record, trained = run_job(job(store), torch.device("cpu"))
    assert trained and record.run["resumed_at_step"] == 4
    assert not store.progress_path(job(store).spec).exists()
    assert record.key == clean.key and np.array_equal(record.counts, clean.counts)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in record.fit["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in clean.fit["history"]]
    a, b = record.load_weights(), clean.load_weights()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run_job(job(store), torch.device("cpu"))[1] is False  # now from the store


def test_auto_validation_keeps_validation_under_a_tenth_of_the_forward_passes(synth_dir,
                                                                              rect_dir):
    """val_every 0: the smallest interval at which a validation's forward passes (images or
    windows) are at most VAL_SHARE of the training's (3 per batch image per step)."""
    import math

    from isdm.evaluation.loading import load_split
    from isdm.evaluation.loop import val_windows
    from isdm.evaluation.segmenter import VAL_SHARE, validation_interval, validation_share

    assert validation_interval(7, 8, 1000) == 7  # an explicit interval is kept
    assert validation_interval(0, 8, 8) == 4 and validation_interval(0, 4, 240) == 200
    assert validation_share(4, 8, 8) <= VAL_SHARE < validation_share(3, 8, 8)
    cfg = _cfg("evaluate.val_every=0", "evaluate.steps=2")
    cell, real, synth = _setup(cfg, synth_dir)
    run = _run(cfg, cell, real, synth)
    assert run.val_every == math.ceil(len(cell.plan.val_keys) / (VAL_SHARE * 3 * 4))
    run.advance(2)
    assert run.finish().fit.val_every == run.val_every
    crops = load_config(None, ["data.crop=true", "data.image_size=32", "data.num_classes=3",
                               "evaluate.image_size=32"])
    whole = load_split(crops, rect_dir, "test")  # 48 x 72 images, 32 px windows, stride 24
    assert val_windows(whole) == whole.num_windows() == 3 * (2 * 3)

"""`isdm tune` searches the training protocol, the synthetic share and the mask source: each is
drawn only where its list is not empty (the share only for protocol mix, the split only for
pretrain), and a trial's draw reaches the trial's cells (their CellSpec) and its sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from isdm.config import load_config
from isdm.errors import ConfigError
from isdm.tuning import objective as tune_objective

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
_BASE = {"sample.s": 1.0, "finetune.drop_rate": 0.1, "sample.steps": 2, "sample.sampler": "ddim",
         "synthetic_ratio": 0.5}
_SPACE = ("tune.protocols=[mix, share 0.25, pretrain 0.5]", "tune.mask_sources=[train, augment]")
_NO_GATE = ("tune.curate_min_fidelity=[]", "tune.curate_pixel_thresholds=[]",
            "curate.min_fidelity=0", "curate.pixel_threshold=0", "tune.final_check=false")


def _cfg(*overrides: str):
    return load_config(TINY, ["tracking.enabled=false", "tune.drop_rates=[0.1]",
                              "tune.steps=[2]", "tune.samplers=[ddim]", *_NO_GATE, *overrides])


def test_the_protocol_and_mask_source_are_drawn_and_set_the_trials_config():
    import optuna

    cfg = _cfg(*_SPACE)
    draw = {**_BASE, "protocol": "share 0.25", "sample.mask_source": "augment"}
    params = tune_objective.suggest(optuna.trial.FixedTrial(draw), cfg)
    assert params == draw
    t = tune_objective.trial_config(cfg, params, n_real=6)
    assert (t.evaluate.protocol, t.evaluate.synthetic_share, t.sample.mask_source) == (
        "mix", 0.25, "augment")
    params = tune_objective.suggest(optuna.trial.FixedTrial({**draw, "protocol": "pretrain 0.5"}),
                                    cfg)
    t = tune_objective.trial_config(cfg, params, n_real=6)
    assert (t.evaluate.protocol, t.evaluate.pretrain_split, t.evaluate.steps) == (
        "pretrain", 0.5, cfg.tune.eval_steps)
    assert tune_objective.dotted_params(params, t) == {
        "sample.s": 1.0, "finetune.drop_rate": 0.1, "sample.steps": 2, "sample.sampler": "ddim",
        "sample.num_samples": 3, "evaluate.protocol": "pretrain",
        "evaluate.pretrain_split": 0.5, "sample.mask_source": "augment"}
    plain = tune_objective.suggest(optuna.trial.FixedTrial({**draw, "protocol": "mix"}), cfg)
    t = tune_objective.trial_config(cfg, plain, n_real=6)
    assert (t.evaluate.protocol, t.evaluate.synthetic_share) == ("mix", 0.0)
    # empty lists: the search space of before, the config's own protocol and masks
    assert tune_objective.suggest(optuna.trial.FixedTrial(_BASE), _cfg()) == _BASE
    assert tune_objective.protocol_codes(_cfg("tune.protocols=[share .250, share 0.25]")) == [
        "share 0.25"]


def test_best_params_translate_the_protocol_into_evaluate_keys():
    import optuna

    from isdm.tuning import results

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(results.N_REAL_ATTR, 6)
    study.add_trial(optuna.trial.create_trial(
        params={**_BASE, "protocol": "share 0.25"}, value=0.1, user_attrs={
            "gain": 0.1, "gain_se": None, "gain_repeats": [0.1]},
        distributions={**{k: optuna.distributions.CategoricalDistribution([v])
                          for k, v in _BASE.items()},
                       "protocol": optuna.distributions.CategoricalDistribution(
                           ["mix", "share 0.25"])}))
    best = results.best_params(study)
    assert (best["evaluate.protocol"], best["evaluate.synthetic_share"]) == ("mix", 0.25)
    assert "protocol" not in best and best["sample.num_samples"] == 3


def test_a_folder_mask_source_needs_a_mask_dir():
    with pytest.raises(ConfigError, match="tune.mask_sources"):
        _cfg("tune.mask_sources=[train, folder]")
    with pytest.raises(ConfigError, match="must be 'mix', 'share Q'"):
        _cfg("tune.protocols=[mix, finetune 0.5]")
    assert _cfg("tune.mask_sources=[folder]", "sample.mask_dir=masks").tune.mask_sources == (
        "folder",)


def _write_samples(cfg, data_root: Path, out: Path, log: list) -> dict:
    """A stand-in for run_sampling: the first num_samples train pairs, mirrored when the trial
    samples augmented masks (so the set's files, hence its digest, follow the mask source)."""
    from PIL import Image, ImageOps

    log.append(cfg.sample.mask_source)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    images = sorted((Path(data_root) / "train" / "images").iterdir())[:cfg.sample.num_samples]
    for img in images:
        mask = next((Path(data_root) / "train" / "masks").glob(img.stem + ".*"))
        for src, dest in ((img, out / "samples" / f"s_{img.stem}.png"),
                          (mask, out / "labels" / f"s_{img.stem}.png")):
            pic = Image.open(src)
            (ImageOps.mirror(pic) if cfg.sample.mask_source == "augment" else pic).save(dest)
    return {"this_run": {"seconds_per_image": 0.01}}


def test_a_trials_protocol_share_and_mask_source_reach_its_cells(synth_dir, tmp_path,
                                                                 monkeypatch):
    import optuna
    import torch

    import isdm.sampling
    from isdm.data.digest import synthetic_digest
    from isdm.evaluation.store import CellStore
    from isdm.evaluation.worker import Digests
    from isdm.tuning.cells import StudyCells

    class RecordingCells(StudyCells):
        """StudyCells.jobs as the objective uses it; values() records the jobs, trains none."""

        def __init__(self) -> None:
            self.data_root, self.device = synth_dir, torch.device("cpu")
            self.store, self.digests = CellStore(tmp_path / "cells"), Digests(synth_dir)
            self.made: list = []

        def values(self, jobs):
            self.made.append(list(jobs))
            for job in jobs:
                yield 0.5, job.spec.steps

    sampled: list = []
    monkeypatch.setattr(isdm.sampling, "run_sampling",
                        lambda cfg, root, ckpt, out, overwrite=False:
                        _write_samples(cfg, root, Path(out), sampled))
    monkeypatch.setattr(tune_objective, "finetuned_checkpoint", lambda cfg, *a: Path(a[1]))
    cfg = _cfg(*_SPACE, "tune.repeats=2", "tune.eval_steps=2", "tune.pruning=false")
    real = tune_objective.load_real_train(cfg, synth_dir)
    cells = RecordingCells()
    objective = tune_objective.make_objective(cfg, synth_dir, tmp_path / "sdm.pt", tmp_path / "t",
                                              real, [0.4, 0.4], None, cells)
    study = optuna.create_study(direction="maximize")
    draws = [{**_BASE, "protocol": "share 0.25", "sample.mask_source": "augment"},
             {**_BASE, "protocol": "pretrain 0.5", "sample.mask_source": "train"}]
    for draw in draws:
        study.enqueue_trial(draw)
    study.optimize(objective, n_trials=2)
    assert [t.params for t in study.trials] == draws
    assert sampled == ["augment", "train"]  # the trial's mask source reached its sampling
    share, pretrain = cells.made
    folders = [tmp_path / "t" / "trials" / f"{n:04d}" / "synthetic" for n in (0, 1)]
    for jobs, protocol, folder in ((share, "share 0.25", folders[0]),
                                   (pretrain, "pretrain 0.5", folders[1])):
        assert [j.spec.seed for j in jobs] == [0, 1]
        assert {j.spec.protocol for j in jobs} == {protocol}  # in the CellSpec: the cell's key
        assert {j.cell.label for j in jobs} == {f"RALLFALL {protocol}"}
        assert {j.spec.synthetic for j in jobs} == {synthetic_digest(folder)}
        assert {j.spec.steps for j in jobs} == {2}
    # the augmented trial's cells train on another set than the train-mask trial's
    assert share[0].spec.synthetic != pretrain[0].spec.synthetic

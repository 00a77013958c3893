"""``isdm curate``: the quality gate between ``sample`` and ``evaluate``.

:func:`curate_folder` (what ``isdm curate`` and a tuning trial call):

1. load the synthetic pairs (images at ``evaluate.image_size`` for the scorer, labels as stored);
2. score every pair with the scorer (:mod:`.scorer`): per-pixel loss map, prediction, per-class
   IoU against the conditioning mask, fidelity, mean loss;
3. filter (:mod:`.filters`): drop pairs with fidelity < ``curate.min_fidelity``; in the kept
   pairs set pixels with loss > ``curate.pixel_threshold`` x their class's mean loss (over the
   whole set) to ``ignore_index``; hardness weight per source mask;
4. memorisation (:mod:`.memorisation`): nearest real train image of every synthetic image;
5. write the curated folder (:mod:`.folder`) with its card (:mod:`.card`, :mod:`.figures`) and
   rename it into place.

:func:`run_curation` adds the scorer (a cell of the cell store) and one MLflow run: the params
curate reads (:func:`run_params`), the real and synthetic datasets as inputs, counts, card
artifacts.
Nothing here draws random numbers: the output is a function of the inputs and the scorer, whose
training is seeded by ``curate.seed``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from isdm.config import Config, flatten, save_config
from isdm.curation import filters
from isdm.curation.folder import Pair
from isdm.curation.scorer import Scorer
from isdm.errors import CurationError
from isdm.utils import ownership

__all__ = ["curate_folder", "run_curation", "check_policy", "run_params"]


def check_policy(cfg: Config) -> None:
    """Raises CurationError when the pixel filter is on but the labels cannot hold an ignore
    value."""
    tau, d = cfg.curate.pixel_threshold, cfg.data
    if tau > 0 and d.dataset_mode == "binary":
        raise CurationError(f"curate.pixel_threshold={tau}: binary labels have no ignore value "
                            "(any value > 0 is the defect), so no pixel can be ignored; set "
                            "curate.pixel_threshold=0 (the fidelity filter still applies)")
    if tau > 0 and d.ignore_index is None:
        raise CurationError(f"curate.pixel_threshold={tau} needs data.ignore_index (e.g. 255) to "
                            "mark the pixels it drops; set one, or curate.pixel_threshold=0")


def _score(cfg: Config, scorer: Scorer, images: Any, pairs: list[Pair]) -> None:
    from isdm.curation.scorer import pixel_scores

    nc = cfg.data.num_classes
    from isdm.config.data import image_hw

    eh, ew = image_hw(cfg.evaluate.image_size)
    if cfg.data.resize != "stretch" and any(p.label.shape[0] * ew != p.label.shape[1] * eh
                                            for p in pairs):
        raise CurationError(f"data.resize={cfg.data.resize} crops or pads synthetic images whose "
                            "aspect ratio differs from evaluate.image_size for the scorer, so its "
                            "logits cannot be mapped back onto their labels; set "
                            "evaluate.image_size to the samples' aspect ratio or "
                            "data.resize=stretch")
    scores = pixel_scores(scorer, images, [p.label for p in pairs], cfg.data.ignore_index,
                          cfg.evaluate.batch_size)
    for pair, (loss, pred) in zip(pairs, scores):
        pair.loss, pair.pred = loss, pred
        pair.iou = filters.pair_iou(pred, pair.label, nc)
        pair.fidelity = filters.fidelity(pair.iou, pair.label, nc)
        finite = loss[np.isfinite(loss)]
        pair.mean_loss = float(finite.mean(dtype=np.float64)) if finite.size else None


def _filter(cfg: Config, pairs: list[Pair]) -> np.ndarray:
    """Decide and apply the gate; returns the class mean losses ``[C]``."""
    c, nc = cfg.curate, cfg.data.num_classes
    # check_policy: the pixel filter is off without an ignore_index, so 255 is never written
    ignore = cfg.data.ignore_index if cfg.data.ignore_index is not None else 255
    means = filters.class_mean_loss([p.loss for p in pairs], [p.label for p in pairs], nc)
    for pair in pairs:
        pair.kept = pair.fidelity is None or pair.fidelity >= c.min_fidelity
        tau = c.pixel_threshold if pair.kept else 0.0
        high = filters.high_loss_pixels(pair.loss, pair.label, means, tau)
        pair.curated, pair.ignored = filters.ignore_pixels(pair.label, high, ignore, nc)
    losses: dict[str, list[float]] = {}
    for pair in pairs:
        losses.setdefault(pair.source, []).append(
            pair.mean_loss if pair.mean_loss is not None else float("nan"))
    weights = filters.hardness_weights(losses, c.hardness_power)
    for pair in pairs:
        pair.weight = weights[pair.source]
    return means


def curate_folder(cfg: Config, synthetic_dir: str | Path, out_dir: str | Path, scorer: Scorer,
                  *, figures: bool = True) -> dict[str, Any]:
    """Score, filter and write the curated copy of ``synthetic_dir`` into ``out_dir``.

    Args:
        scorer: :func:`isdm.curation.scorer.load_scorer` of this config and real dataset.
        figures: draw the card's three PNGs (a tuning trial may skip them).
    Returns:
        The card (``card.json``'s content).
    Raises:
        CurationError: the policy does not fit the labels, or the folder holds no pair.
        OutputExistsError: ``out_dir`` holds other files than an earlier curate output.
        BusyError: another process is writing ``out_dir``.
    """
    from isdm.curation import folder as out_mod

    check_policy(cfg)
    out_mod.prepare_out(out_dir, synthetic_dir)  # before the lock creates the folder
    with ownership.exclusive(out_dir, "curate"):
        return _curate(cfg, Path(synthetic_dir), Path(out_dir).resolve(), scorer, figures)


def _curate(cfg: Config, src: Path, out: Path, scorer: Scorer, figures: bool) -> dict[str, Any]:
    """:func:`curate_folder` with the output folder's lock held."""
    from isdm.curation import card as card_mod
    from isdm.curation import folder as out_mod
    from isdm.curation.memorisation import check_memorisation
    from isdm.evaluation.loading import eval_data_config, load_synthetic
    from isdm.utils.io import atomic_write_json, atomic_write_text

    out_mod.prepare_out(out, src)
    synth = load_synthetic(src, eval_data_config(cfg.data, cfg.evaluate.image_size))
    if not len(synth):
        raise CurationError(f"{src}: no synthetic pairs in samples/ + labels/; run isdm sample")
    pairs = out_mod.read_pairs(src, synth.keys, cfg.data)
    _score(cfg, scorer, synth.images, pairs)
    means = _filter(cfg, pairs)
    memo = check_memorisation(synth.images, scorer.real.images, cfg.curate.copy_quantile)
    for pair, i, d, copy in zip(pairs, memo.nearest, memo.distance, memo.near_copy):
        pair.nearest, pair.distance, pair.near_copy = scorer.real.keys[i], float(d), bool(copy)

    staging = out_mod.staging_dir(out)
    try:
        weights = {p.source: p.weight for p in sorted(pairs, key=lambda p: p.source)}
        out_mod.write_folder(staging, src, pairs, weights, cfg.curate.hardness_power)
        save_config(cfg, staging / "config.json")
        card = card_mod.card_data(cfg, src, pairs, means, memo, scorer)
        atomic_write_json(staging / "card.json", card)
        atomic_write_text(staging / "card.md", card_mod.card_markdown(card))
        if figures:
            _draw(staging, card, pairs, synth, scorer)
        out_mod.publish(staging, out, src)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card


def _uint8(images: Any) -> list[np.ndarray]:
    """``[N, 3, H, W]`` in [-1, 1] -> N uint8 ``[H, W, 3]``."""
    return list(((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255)
                .astype(np.uint8))


def _draw(root: Path, card: dict[str, Any], pairs: list[Pair], synth: Any, scorer: Scorer) -> None:
    from isdm.curation import figures
    from isdm.curation.card import SHOWN, ranked

    order = ranked(pairs)
    figures.fidelity_hist(card, root / "fidelity_hist.png")
    figures.best_worst(order[:SHOWN], order[::-1][:SHOWN], root / "best_worst.png")
    closest = sorted(pairs, key=lambda p: (p.distance, p.key))[:SHOWN]
    figures.closest_pairs(closest, dict(zip(synth.keys, _uint8(synth.images))),
                          dict(zip(scorer.real.keys, _uint8(scorer.real.images))),
                          root / "closest_pairs.png")


def run_params(cfg: Config, record: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The params of a curate run: what curate reads, no more. ``curate.*``; the ``data`` keys
    and the ``evaluate`` recipe that make its scorer (the keys of the scorer's cell,
    :func:`isdm.evaluation.spec.data_identity` / :func:`~isdm.evaluation.spec.recipe_identity`),
    ``evaluate.steps`` and, for ``auto``, ``evaluate.calibration.*``; and the generator of the
    synthetic set (:func:`isdm.lineage.generator_params`; none without a record)."""
    from isdm.evaluation.spec import data_identity, recipe_identity
    from isdm.lineage import generator_params

    data, recipe = set(data_identity(cfg)), set(recipe_identity(cfg)) | {"steps"}
    if cfg.evaluate.steps == "auto":
        recipe.add("calibration")

    def read(key: str) -> bool:
        section, name = key.split(".", 2)[:2]
        return section == "curate" or (section == "data" and name in data) or (
            section == "evaluate" and name in recipe)

    return {**{k: v for k, v in flatten(cfg).items() if read(k)}, **generator_params(record)}


def run_curation(cfg: Config, data_root: str | Path, synthetic_dir: str | Path,
                 out_dir: str | Path, *, cell_cache: Optional[str | Path] = None,
                 device: Optional[str] = None) -> dict[str, Any]:
    """:func:`curate_folder` with the scorer (its cell from the cell store ``cell_cache``,
    trained on ``data_root``'s train split on first use), inside one MLflow run.

    Returns:
        The card, plus ``scorer_reused`` (bool).
    """
    from isdm import tracking
    from isdm.curation.folder import prepare_out
    from isdm.curation.scorer import load_scorer
    from isdm.lineage import generator_tags, read_generator, real_dataset, synthetic_dataset

    c = cfg.curate
    check_policy(cfg)
    prepare_out(out_dir, synthetic_dir)  # refuse before the scorer is trained
    short = tracking.short
    name = (f"curate fidelity>={short(c.min_fidelity)} pixels>{short(c.pixel_threshold)}x "
            f"{c.architecture} seed {c.seed}")
    record = read_generator(synthetic_dir)  # the set's generator, not today's params.yaml
    with tracking.start_run(cfg.tracking, name=name, action="curate", dataset=str(data_root),
                            params=run_params(cfg, record),
                            tags=generator_tags(record, synthetic_dir)) as run:
        if run.run_id:  # what it read, as the evaluate run logs them
            run.log_dataset(real_dataset(data_root, cfg.data), "real")
            run.log_dataset(synthetic_dataset(synthetic_dir, cfg.data.num_classes), "synthetic")
        scorer = load_scorer(cfg, data_root, cell_cache=cell_cache,
                             device=device, on_validation=lambda r: run.log_metrics(
                                 {"scorer_val_miou": r["val_miou"]}, step=int(r["step"])))
        card = curate_folder(cfg, synthetic_dir, out_dir, scorer)
        counts, mem = card["counts"], card["memorisation"]
        run.log_metrics({
            "pairs": counts["pairs"], "kept": counts["kept"], "dropped": counts["dropped"],
            "pixels_ignored": counts["pixels_ignored"],
            "kept_share": counts["kept"] / counts["pairs"],
            "near_copy_share": mem["near_copy_share"], "scorer_best_val_miou": card["scorer"]["best_val_miou"],
            **({"fidelity_mean": card["fidelity"]["mean"]} if card["fidelity"]["mean"] is not None else {}),
            **{f"pixels_ignored.{k}": v["pixels_ignored"] for k, v in card["classes"].items()}})
        run.set_tags({"isdm.scorer_key": scorer.key, "isdm.scorer_reused": scorer.reused})
        for name in ("card.md", "card.json", "best_worst.png", "closest_pairs.png",
                     "fidelity_hist.png", "weights.json", "manifest.jsonl"):
            run.log_artifact(Path(out_dir) / name)
    return {**card, "scorer_reused": scorer.reused}

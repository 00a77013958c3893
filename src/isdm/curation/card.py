"""The synthetic-dataset card: ``card.json`` (every number) and ``card.md`` (the same, readable),
beside the pictures of :mod:`.figures`.

``card.json`` keys: ``isdm`` ("curate", how isdm recognises its own output folder),
``synthetic`` (the folder curated), ``generator`` (``run.json``'s ``generator`` block when the
sampling run wrote one, else the checkpoint and sampler settings of its records), ``scorer``,
``policy`` (the ``curate`` section), ``counts``, ``classes`` (per class id: mean loss, pixels
before, pixels ignored, pixel share before over all pairs and after over the kept, curated
labels), ``fidelity`` (summary and a 10-bin histogram of kept and dropped pairs), ``best`` /
``worst`` (sample keys, 8 each), ``memorisation``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from isdm.config import Config, to_dict
from isdm.curation.folder import Pair
from isdm.curation.memorisation import FEATURE_SIZE, Memorisation

__all__ = ["SHOWN", "ranked", "card_data", "card_markdown"]

SHOWN = 8  # best / worst / closest pairs in the card
_GENERATOR_KEYS = ("checkpoint_sha256", "sampler", "steps", "eta", "s", "precision", "seed")


def _num(v: Optional[float], digits: int = 4) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else round(float(v), digits)


def ranked(pairs: Sequence[Pair]) -> list[Pair]:
    """Pairs with a fidelity, best first (ties by key)."""
    return sorted((p for p in pairs if p.fidelity is not None), key=lambda p: (-p.fidelity, p.key))


def _generator(src: Path, pairs: Sequence[Pair]) -> dict[str, Any]:
    try:
        run = json.loads((src / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    run = run if isinstance(run, dict) else {}
    if isinstance(run.get("generator"), dict):
        return run["generator"]
    rec = next((p.record for p in pairs if "sampler" in p.record), {})
    block = {k: rec[k] for k in _GENERATOR_KEYS if k in rec}
    if run.get("checkpoint") is not None:
        block["checkpoint"] = run["checkpoint"]
    return block or {"note": f"{src} has no run.json or sampling records: generator unknown"}


def _class_table(cfg: Config, pairs: Sequence[Pair], class_means: np.ndarray) -> dict[str, Any]:
    nc = cfg.data.num_classes

    def pixels(labels: list[np.ndarray]) -> np.ndarray:
        total = np.zeros(nc, dtype=np.int64)
        for lab in labels:
            total += np.bincount(lab[lab < nc].astype(np.int64), minlength=nc)
        return total

    before = pixels([p.label for p in pairs])
    after = pixels([p.curated for p in pairs if p.kept])
    ignored = sum((p.ignored for p in pairs if p.kept), np.zeros(nc, dtype=np.int64))
    return {str(c): {"mean_loss": _num(class_means[c]), "pixels_before": int(before[c]),
                     "pixels_ignored": int(ignored[c]),
                     "share_before": _num(before[c] / max(before.sum(), 1)),
                     "share_after": _num(after[c] / max(after.sum(), 1))} for c in range(nc)}


def _fidelity(pairs: Sequence[Pair]) -> dict[str, Any]:
    edges = np.linspace(0.0, 1.0, 11)

    def hist(kept: bool) -> list[int]:
        vals = [p.fidelity for p in pairs if p.fidelity is not None and p.kept == kept]
        return [int(n) for n in np.histogram(vals, bins=edges)[0]]

    vals = [p.fidelity for p in pairs if p.fidelity is not None]
    stats = {k: _num(float(f(vals))) if vals else None
             for k, f in (("mean", np.mean), ("median", np.median), ("min", np.min), ("max", np.max))}
    return {**stats, "histogram": {"edges": [round(float(e), 2) for e in edges],
                                   "kept": hist(True), "dropped": hist(False)}}


def _memorisation(cfg: Config, pairs: Sequence[Pair], memo: Memorisation) -> dict[str, Any]:
    n = len(pairs)
    own = sum(p.nearest == p.source for p in pairs)
    closest = sorted(pairs, key=lambda p: (p.distance, p.key))[:SHOWN]
    return {
        "feature": f"{FEATURE_SIZE}x{FEATURE_SIZE} average-pooled RGB at evaluate.image_size, "
                   "minus its mean, L2-normalised; Euclidean distance in [0, 2]",
        "threshold": _num(memo.threshold),
        "calibration": f"quantile {cfg.curate.copy_quantile} of the {len(memo.real_distance)} real "
                       "train images' distances to their nearest other real train image",
        "real_nearest_distance": {"min": _num(float(memo.real_distance.min())),
                                  "median": _num(float(np.median(memo.real_distance)))},
        "synthetic_nearest_distance": {"min": _num(float(memo.distance.min())),
                                       "median": _num(float(np.median(memo.distance)))},
        "near_copies": int(memo.near_copy.sum()), "near_copy_share": _num(memo.near_copy.mean()),
        "nearest_is_own_source": own, "nearest_is_own_source_share": _num(own / n),
        "closest": [{"sample": p.key, "real": p.nearest, "distance": _num(p.distance)}
                    for p in closest],
    }


def card_data(cfg: Config, src: Path, pairs: Sequence[Pair], class_means: np.ndarray,
              memo: Memorisation, scorer: Any) -> dict[str, Any]:
    """Every number of the card (see the module docstring)."""
    kept = [p for p in pairs if p.kept]
    order = ranked(pairs)
    recipe = {**scorer.identity["recipe"], "steps": scorer.identity["steps"]}
    return {
        "isdm": "curate",
        "synthetic": str(src),
        "generator": _generator(src, pairs),
        "scorer": {"architecture": cfg.curate.architecture, "seed": cfg.curate.seed,
                   "trained_on": "real train split (mix RALLF000, evaluate recipe)",
                   "recipe": recipe, "best_val_miou": _num(scorer.best_val_miou),
                   "best_step": scorer.best_step, "cell_key": scorer.key,
                   "dataset_sha256": scorer.identity["real"]},
        "policy": to_dict(cfg.curate),
        "counts": {"pairs": len(pairs), "kept": len(kept), "dropped": len(pairs) - len(kept),
                   "pixels_ignored": int(sum(int(p.ignored.sum()) for p in kept))},
        "classes": _class_table(cfg, pairs, class_means),
        "fidelity": _fidelity(pairs),
        "best": [p.key for p in order[:SHOWN]],
        "worst": [p.key for p in order[::-1][:SHOWN]],
        "memorisation": _memorisation(cfg, pairs, memo),
    }


def _row(*cells: Any) -> str:
    return "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |"


def card_markdown(card: dict[str, Any]) -> str:
    """``card.md``: the card's numbers as text and tables, with the three pictures."""
    c, pol, sc, mem, fid = (card["counts"], card["policy"], card["scorer"], card["memorisation"],
                            card["fidelity"])
    gen = ", ".join(f"{k} {v}" for k, v in card["generator"].items())
    lines = [f"# Synthetic dataset card: {card['synthetic']}", "",
             f"**Generator:** {gen}", "",
             f"**Scorer:** {sc['architecture']} seed {sc['seed']}, {sc['trained_on']}; best "
             f"validation mIoU {sc['best_val_miou']} (step {sc['best_step']}); cell "
             f"`{sc['cell_key']}` of the cell store.", "",
             f"**Policy:** drop a pair with fidelity < {pol['min_fidelity']}; ignore a pixel whose "
             f"loss > {pol['pixel_threshold']} x its class's mean loss (0 = off); hardness "
             f"weights with power {pol['hardness_power']} (`weights.json`).", "",
             "## Counts", "", _row("pairs", "kept", "dropped", "pixels ignored"),
             _row(*["---"] * 4), _row(c["pairs"], c["kept"], c["dropped"], c["pixels_ignored"]),
             "", "## Classes (pixel shares: before = all pairs, after = kept pairs, ignored "
             "pixels excluded)", "",
             _row("class", "mean loss", "pixels before", "pixels ignored", "share before",
                  "share after"), _row(*["---"] * 6)]
    for cls, v in card["classes"].items():
        lines.append(_row(cls, v["mean_loss"], v["pixels_before"], v["pixels_ignored"],
                          v["share_before"], v["share_after"]))
    lines += ["", "## Fidelity", "",
              "Fidelity of a pair = mean IoU of the scorer's prediction against the "
              "conditioning mask over the classes the mask holds.", "",
              f"mean {fid['mean']}, median {fid['median']}, min {fid['min']}, max {fid['max']}.", "",
              "![fidelity histogram](fidelity_hist.png)", "",
              f"## The {SHOWN} best and {SHOWN} worst pairs", "",
              "Rows: generated image, conditioning mask, scorer prediction, curated label "
              "(gray = ignored); titles give the fidelity.", "",
              "![best and worst pairs](best_worst.png)", "",
              "## Memorisation", "",
              f"Feature: {mem['feature']}. Near-copy: nearest real distance below "
              f"{mem['threshold']} ({mem['calibration']}; real-vs-real nearest distance min "
              f"{mem['real_nearest_distance']['min']}, median "
              f"{mem['real_nearest_distance']['median']}).", "",
              f"Synthetic-to-real nearest distance min {mem['synthetic_nearest_distance']['min']}, "
              f"median {mem['synthetic_nearest_distance']['median']}; near-copies "
              f"{mem['near_copies']} of {c['pairs']} ({mem['near_copy_share']}); the nearest real "
              f"image is the pair's own source image for {mem['nearest_is_own_source']}.", "",
              "![closest pairs](closest_pairs.png)", ""]
    return "\n".join(lines)

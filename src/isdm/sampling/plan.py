"""The sampling plan: which mask (and augmentation) sample i is conditioned on, and its seed.

Everything here is a pure function of ``(sample.seed, i, the mask list, the config)``, so any
subset of samples (a shard, a resumed run) is planned identically to the full run.

- ``sample_seed(seed, i)``: the 63-bit seed of sample i's ``torch.Generator`` (initial noise and
  every sampler step), stream ``SAMPLE`` of :mod:`isdm.seeds`.
- With ``data.crop`` the source masks are the scaled train masks and sample i is conditioned on
  an ``image_size`` crop of one, drawn with ``crop_seed(seed, i)`` and centred on a defect pixel
  with probability ``data.crop_defect_prob`` as in training (:func:`isdm.data.crops.crop_origin`);
  the real image is cropped alongside and the crop is applied before any augmentation.
- Without balancing, sample i uses mask ``perm[i % N]`` where ``perm`` is a seeded permutation
  of the N source masks: the train masks cycled (the original behaviour) in a shuffled order.
  With ``mask_source='augment'`` it is augmented with seed ``aug_seed(seed, i)``.
- With ``sample.balance.enabled`` the choices come from :func:`isdm.sampling.balance.balance`
  over the source masks, plus ``balance.augment_variants`` augmented variants of each when
  ``use_mask_augmentation`` (implied by ``mask_source='augment'``). With ``data.crop`` the pool
  holds ``max(1, augment_variants)`` crops of each mask instead (augmented when augmenting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from isdm.config import Config
from isdm.data.crops import crop_origin
from isdm.sampling.augment import AugmentResult, augment_mask
from isdm.sampling.balance import BalanceResult, Choice, balance, class_counts, counted_classes
from isdm.sampling.mask_sources import LazyImages, MaskSet
from isdm.seeds import Stream, derive, generator

__all__ = ["Plan", "Conditioning", "sample_seed", "aug_seed", "crop_seed", "make_plan",
           "materialize"]


def sample_seed(seed: int, i: int) -> int:
    """Seed of sample ``i``'s generator: a 63-bit integer derived from ``(seed, i)``."""
    return derive(Stream.SAMPLE, seed, i)


def aug_seed(seed: int, *key: int) -> int:
    """Augmentation seed for sample ``i`` (``key=(i,)``) or pool variant ``key=(j, k)``."""
    return derive(Stream.AUGMENT if len(key) == 1 else Stream.AUG_VARIANT, seed, *key)


def crop_seed(seed: int, *key: int) -> int:
    """Crop seed for sample ``i`` (``key=(i,)``) or the k-th pool crop of mask j (``(j, k)``)."""
    return derive(Stream.SAMPLE_CROP, seed, *key)


@dataclass
class Plan:
    """``choices[i]`` for every sample i in ``0..num_samples-1`` and the class distribution."""

    choices: list[Choice]
    distribution: BalanceResult  # before / after counts (the balancer's, or of the plain plan)
    balanced: bool


def _augmenting(cfg: Config) -> bool:
    return cfg.sample.mask_source == "augment"


class Conditioning(NamedTuple):
    """What a planned sample is conditioned on."""

    mask: np.ndarray  # uint8 [H, W] class ids
    image: Optional[np.ndarray]  # uint8 [H, W, 3] real image (augmented with the mask), or None
    ops: tuple[str, ...]  # crop and augmentation ops applied, e.g. ("crop(12,40)", "hflip")


def materialize(choice: Choice, masks: MaskSet, cfg: Config, *,
                with_image: bool = True) -> Conditioning:
    """The mask, real image (None when ``with_image`` is False or the mask has none) and
    augmentation ops of a planned sample."""
    base = masks.masks[choice.source]
    image = masks.image(choice.source) if with_image else None
    ops: tuple[str, ...] = ()
    if choice.crop_seed is not None:
        h, w = masks.data.size
        rng = np.random.default_rng(choice.crop_seed)
        top, left = crop_origin(base.shape, (h, w), rng, masks.data.crop_defect_prob,
                                masks.pixels(choice.source))
        window = (slice(top, top + h), slice(left, left + w))
        base = np.ascontiguousarray(base[window])
        image = None if image is None else np.ascontiguousarray(image[window])
        ops = (f"crop({top},{left})",)
    if choice.aug_seed is None:
        return Conditioning(base, image, ops)
    r: AugmentResult = augment_mask(
        base, choice.aug_seed, cfg.sample.augment, masks.masks, image=image,
        donor_images=LazyImages(masks) if with_image else None,
        ignore_index=cfg.data.ignore_index, donor_instances=masks.instances)
    return Conditioning(r.mask, r.image, ops + r.ops)


def make_plan(cfg: Config, masks: MaskSet) -> Plan:
    """Plan every sample of the job (see the module docstring)."""
    s, bal = cfg.sample, cfg.sample.balance
    num_classes = cfg.data.num_classes
    pixels = bal.based_on_pixel_count if bal.enabled else True
    base_counts = np.stack([class_counts(m, num_classes, pixels=pixels) for m in masks.masks])
    cropping = cfg.data.crop
    if bal.enabled:
        augmenting = bal.use_mask_augmentation or _augmenting(cfg)
        if cropping:
            pool = [Choice(j, aug_seed(s.seed, j, k) if augmenting else None,
                           crop_seed(s.seed, j, k))
                    for j in range(len(masks)) for k in range(max(1, bal.augment_variants))]
            pool_counts = _counts(pool, masks, cfg, pixels)
        else:
            pool = [Choice(j) for j in range(len(masks))]
            if augmenting:
                pool += [Choice(j, aug_seed(s.seed, j, k))
                         for j in range(len(masks)) for k in range(bal.augment_variants)]
            pool_counts = np.concatenate([base_counts,
                                          _counts(pool[len(masks):], masks, cfg, pixels)])
        result = balance(pool_counts, pool, base_counts.sum(0), s.num_samples,
                         ejection_classes=bal.ejection_classes, max_class_dif=bal.max_class_dif,
                         based_on_generated_data_only=bal.based_on_generated_data_only,
                         basis="pixels" if pixels else "images", seed=s.seed)
        return Plan(result.choices, result, balanced=True)
    perm = generator(Stream.PLAN_ORDER, s.seed).permutation(len(masks))
    choices = [Choice(int(perm[i % len(masks)]), aug_seed(s.seed, i) if _augmenting(cfg) else None,
                      crop_seed(s.seed, i) if cropping else None)
               for i in range(s.num_samples)]
    generated = np.zeros(num_classes, dtype=np.int64)
    if _augmenting(cfg) or cropping:
        for c in choices:  # one augmented mask at a time: memory stays flat
            generated += class_counts(materialize(c, masks, cfg, with_image=False).mask,
                                      num_classes, pixels=True)
    else:
        generated = base_counts[[c.source for c in choices]].sum(0)
    dist = BalanceResult(choices=[], counted=counted_classes(num_classes, bal.ejection_classes),
                         basis="pixels", before=base_counts.sum(0), generated=generated,
                         from_zero=False, notes=["balancing disabled"])
    return Plan(choices, dist, balanced=False)


def _counts(pool: list[Choice], masks: MaskSet, cfg: Config, pixels: bool) -> np.ndarray:
    rows = [class_counts(materialize(c, masks, cfg, with_image=False).mask,
                         cfg.data.num_classes, pixels=pixels) for c in pool]
    return np.stack(rows) if rows else np.zeros((0, cfg.data.num_classes), dtype=np.int64)

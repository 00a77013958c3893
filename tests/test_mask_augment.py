"""Mask augmentation: exact geometry, copy-paste adds the instance, determinism by seed."""

from __future__ import annotations

import numpy as np
import pytest

from isdm.config import AugmentConfig
from isdm.sampling.augment import augment_mask, connected_instances, translate

NONE = AugmentConfig(hflip=0, vflip=0, rot90=0, translate=0, copy_paste=0)


def _mask() -> np.ndarray:
    m = np.zeros((6, 6), np.uint8)
    m[0, 1:3] = 1          # instance of class 1 (2 px)
    m[3:5, 4] = 2          # instance of class 2 (2 px, vertical)
    m[5, 0] = 255          # ignored pixel
    return m


def _image(m: np.ndarray) -> np.ndarray:
    return np.stack([m, m + 1, np.arange(36, dtype=np.uint8).reshape(6, 6)], -1)


def test_nothing_enabled_is_identity():
    m = _mask()
    r = augment_mask(m, 0, NONE, [m])
    assert np.array_equal(r.mask, m) and r.ops == () and r.image is None


@pytest.mark.parametrize("field, expect", [
    ("hflip", lambda a: a[:, ::-1]),
    ("vflip", lambda a: a[::-1]),
])
def test_flips_exact(field, expect):
    m = _mask()
    img = _image(m)
    r = augment_mask(m, 5, AugmentConfig(**{**vars_none(), field: 1.0}), image=img)
    assert np.array_equal(r.mask, expect(m))
    assert np.array_equal(r.image, expect(img))
    assert r.ops == (field,)


def vars_none() -> dict:
    return dict(hflip=0, vflip=0, rot90=0, translate=0, copy_paste=0)


def test_rot90_exact_and_seeded():
    m = _mask()
    seen = set()
    for seed in range(12):
        r = augment_mask(m, seed, AugmentConfig(**{**vars_none(), "rot90": 1.0}), image=_image(m))
        (op,) = r.ops
        k = int(op.removeprefix("rot90x"))
        assert np.array_equal(r.mask, np.rot90(m, k))
        assert np.array_equal(r.image[..., 2], np.rot90(_image(m)[..., 2], k))
        seen.add(k)
    assert seen == {1, 2, 3}


def test_translate_fills_background_and_moves_ignore():
    m = _mask()
    t = translate(m, 1, -2, fill=0)
    assert t.shape == m.shape
    assert t[1, 0] == 1 and t[1, 1] == 0           # (0,2) moved to (1,0); (0,3) was background
    assert t[0].tolist() == [0] * 6                 # uncovered top row is background
    assert t[:, 4:].tolist() == [[0, 0]] * 6        # uncovered right columns too
    assert t[4:6, 2].tolist() == [2, 2]             # class-2 instance moved to rows 4-5, col 2
    img = translate(_image(m), 0, 3, fill=None)
    assert np.array_equal(img[:, :3], np.repeat(_image(m)[:, :1], 3, axis=1))  # edge repeated


def test_translate_op_within_range():
    m = _mask()
    cfg = AugmentConfig(**{**vars_none(), "translate": 1.0, "max_shift": 0.5})
    for seed in range(10):
        r = augment_mask(m, seed, cfg)
        if r.ops:
            dy, dx = map(int, r.ops[0][len("translate("):-1].split(","))
            assert abs(dy) <= 3 and abs(dx) <= 3
            assert np.array_equal(r.mask, translate(m, dy, dx, fill=0))


def test_connected_instances_8_connectivity_and_ignore():
    m = np.zeros((5, 5), np.uint8)
    m[0, 0] = m[1, 1] = m[2, 2] = 1   # a diagonal crack: one 8-connected instance
    m[4, 4] = 1
    m[0, 4] = 2
    m[4, 0] = 255
    inst = connected_instances(m, ignore_index=255)
    assert [len(p) for p in inst] == [3, 1, 1]
    assert [int(m[p[0, 0], p[0, 1]]) for p in inst] == [1, 1, 2]


def test_copy_paste_adds_the_donor_instance():
    target = np.zeros((8, 8), np.uint8)
    donor = np.zeros((8, 8), np.uint8)
    donor[2:4, 5] = 3                         # the donor's only instance: 2 px of class 3
    donor_img = np.full((8, 8, 3), 200, np.uint8)
    img = np.zeros((8, 8, 3), np.uint8)
    cfg = AugmentConfig(**{**vars_none(), "copy_paste": 1.0})
    r = augment_mask(target, 7, cfg, [donor], image=img, donor_images=[donor_img])
    assert len(r.ops) == 1 and r.ops[0].startswith("paste(donor=0,class=3,at=(")
    top, left = map(int, r.ops[0].split("at=(")[1].rstrip(")").split(","))
    expect = np.zeros((8, 8), np.uint8)
    expect[top:top + 2, left] = 3
    assert np.array_equal(r.mask, expect)
    assert (r.image[expect == 3] == 200).all() and (r.image[expect == 0] == 0).all()
    assert np.array_equal(target, np.zeros((8, 8), np.uint8))  # input untouched


def test_copy_paste_without_instances_is_skipped():
    m = _mask()
    cfg = AugmentConfig(**{**vars_none(), "copy_paste": 1.0})
    r = augment_mask(m, 0, cfg, [np.zeros_like(m)])
    assert r.ops == () and np.array_equal(r.mask, m)


def test_deterministic_by_seed_and_varies_across_seeds():
    m, donors = _mask(), [_mask(), np.rot90(_mask()).copy()]
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, translate=0.5, copy_paste=0.5)
    a = augment_mask(m, 42, cfg, donors, image=_image(m), donor_images=[_image(d) for d in donors])
    b = augment_mask(m, 42, cfg, donors, image=_image(m), donor_images=[_image(d) for d in donors])
    assert a.ops == b.ops and np.array_equal(a.mask, b.mask) and np.array_equal(a.image, b.image)
    layouts = {augment_mask(m, s, cfg, donors).mask.tobytes() for s in range(20)}
    assert len(layouts) > 5
    values = set(np.unique(np.stack([augment_mask(m, s, cfg, donors).mask for s in range(20)])))
    assert values <= {0, 1, 2, 255}  # no new ids; ignore stays ignore

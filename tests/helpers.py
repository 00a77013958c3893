"""Helpers shared by test modules (``from helpers import ...``; the fixtures built on them are in
``conftest.py``): the original tool's train config and a stand-in sampling engine."""

from __future__ import annotations

import numpy as np

# The original tool's config_train.json, as committed upstream (paths aside): note the
# `weights_decay` typo that silently disabled weight decay there (tests/faults, case 18).
ORIGINAL_TRAIN = {
    "root_log_dir": "OUTPUT/", "data_dir": "data/synth", "dataset_mode": "lemon-multi-class",
    "lr": 0.0001, "batch_size": 32, "diffusion_steps": 1000, "image_size": 256,
    "learn_sigma": True, "num_classes": 6, "noise_schedule": "linear", "class_cond": True,
    "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
    "attention_resolutions": "32,16,8", "resblock_updown": True, "use_fp16": True,
    "use_scale_shift_norm": True, "use_checkpoint": True, "no_instance": True,
    "weights_decay": 1e-05,
}


class FakeEngine:
    """Stands in for the sampling engine: uint8 ``[B, H, W, 3]`` images of per-row seeded noise
    tinted by the mask, so they depend only on (labels row, seed). The ``fake_engine`` fixture
    installs it; ``calls`` holds the rows of every call, ``loads`` every checkpoint loaded."""

    calls: list[int] = []
    loads: list[str] = []

    def __init__(self, cfg=None) -> None:
        self.cfg = cfg

    def __call__(self, labels: np.ndarray, seeds) -> np.ndarray:
        import torch

        FakeEngine.calls.append(len(seeds))
        out = []
        for lab, sd in zip(labels, seeds):
            g = torch.Generator().manual_seed(int(sd))
            noise = torch.randint(0, 128, (*lab.shape, 3), generator=g).numpy()
            out.append((noise + (lab[..., None] % 8) * 16).astype(np.uint8))
        return np.stack(out)

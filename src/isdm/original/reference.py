"""The original ISDM code's configuration and its measured speed, which the benchmarks compare
isdm against like for like.

The original code is not part of isdm. Its figures below were measured by the author of
isdm's issue 16 on the same kind of machine as the benchmark's reference (2 CPU cores, AMD EPYC
with AVX-512 and native bf16, 2026), running the original code on its own JSON configuration
(:data:`CONFIG_TEXT`); isdm's rows of ``make bench`` run the same network configuration.
"""

from __future__ import annotations

from isdm.config import ModelConfig

__all__ = ["ORIGINAL_CPU", "IMAGE_SIZE", "NUM_CLASSES", "BATCH", "GUIDANCE_S", "FIGURES",
           "SOURCE", "CONFIG_TEXT"]

# the original's JSON config: 64 px, 64 channels, channel_mult 1,2,3,4 (guided-diffusion's for
# 64 px), 2 res blocks, attention at 32,16,8 with 64 channels per head, resblock_updown,
# learn_sigma, scale-shift norm, SPADE hidden 128, use_checkpoint true, 2 classes, batch 4, fp32
ORIGINAL_CPU = ModelConfig(num_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                           attention_resolutions=(32, 16, 8), num_head_channels=64,
                           resblock_updown=True, learn_sigma=True, spade_hidden=128,
                           use_checkpoint=True)
IMAGE_SIZE, NUM_CLASSES, BATCH, GUIDANCE_S = 64, 2, 4, 1.5

CONFIG_TEXT = ("original ISDM JSON config: 64 px, 64 channels, channel_mult 1,2,3,4, 2 res "
               "blocks, attention 32,16,8 (64 ch/head), learn_sigma, use_checkpoint true, "
               "2 classes, batch 4, fp32")
SOURCE = ("the original ISDM code measured by the author of isdm issue 16 on a 2-core AMD EPYC "
          "(AVX-512, native bf16), 2026, side by side with isdm on the same config")

FIGURES = {
    # training images/s of its optimisation steps (its loop also runs a validation forward per
    # step: 0.63 images/s overall)
    "train_images_per_s": 0.78,
    "train_images_per_s_overall": 0.63,
    # its sampling recipe: 300 respaced DDPM steps, guidance s = 1.5 (two full forwards per step)
    "sample_s_per_image": 173.5,
}

"""``build_model`` (a :class:`isdm.config.ModelConfig` -> :class:`SDMUNet`) and ``place`` (a
model on its device, in that device's fastest memory layout)."""

from __future__ import annotations

from isdm.models.unet import SDMUNet

__all__ = ["build_model", "place"]


def build_model(model_cfg, image_size: int | tuple[int, int], num_classes: int) -> SDMUNet:
    """Build the SDM UNet of a :class:`isdm.config.ModelConfig` for ``image_size`` images (an
    int: square; ``(H, W)``: a rectangle) and ``num_classes`` segmap channels; an empty
    ``channel_mult`` is chosen by image size (the short side)."""
    from isdm.config import default_channel_mult

    channel_mult = tuple(model_cfg.channel_mult) or default_channel_mult(image_size)
    return SDMUNet(
        image_size=image_size, num_classes=num_classes, num_channels=model_cfg.num_channels,
        channel_mult=channel_mult, num_res_blocks=model_cfg.num_res_blocks,
        attention_resolutions=tuple(model_cfg.attention_resolutions),
        num_head_channels=model_cfg.num_head_channels, dropout=model_cfg.dropout,
        resblock_updown=model_cfg.resblock_updown,
        use_scale_shift_norm=model_cfg.use_scale_shift_norm, learn_sigma=model_cfg.learn_sigma,
        spade_hidden=model_cfg.spade_hidden, use_checkpoint=model_cfg.use_checkpoint,
    )


def place(model, device, channels_last: bool | None = None):
    """Move ``model`` to ``device`` in its fastest memory layout (in place; returns it).

    ``channels_last=None`` chooses by device: channels-last (NHWC) on CPU, where oneDNN's
    convolutions run on it without layout reorders (docs/results/benchmarks.md measures the
    gain), contiguous NCHW on CUDA. Activations follow the weights' layout; the values agree with
    the NCHW network to float rounding, not bit for bit.
    """
    import torch

    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=fmt)

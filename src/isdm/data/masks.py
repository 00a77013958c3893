"""The ONE home of mask semantics: stored mask -> class ids -> one-hot segmap -> null label / drop.

Training, sampling and evaluation all import from here, so a mask means the same everywhere.

Stored masks (PNG):

- ``binary``: any value > 0 is the defect class 1, 0 is background. So {0,1} and {0,255} masks
  both work, and anti-aliased or JPEG-ish edges (254, 3, ...) count as defect. RGB(A) masks are
  defect wherever any colour channel is > 0. ``ignore_index`` does not apply to binary masks
  (255 is the defect there).
- ``multi-class``: class ids ``0..num_classes-1`` stored as 8-bit gray or as the INDICES of a
  palette PNG (the palette colours are irrelevant). ``ignore_index`` (default 255) marks
  unlabeled pixels, kept as is. Any other value >= num_classes is an error.

Tensors: labels are int64 ``[B, H, W]``; the one-hot segmap is float32 ``[B, C, H, W]`` where
ignored pixels are all-zero vectors; the null label of classifier-free guidance is all zeros
everywhere (not "all background": that is a real layout, the original tool's bug).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from isdm.errors import MaskValueError

if TYPE_CHECKING:  # torch is imported inside the functions: `isdm data check` stays fast
    import torch
    from PIL import Image

__all__ = [
    "MaskValueError",
    "read_mask_array",
    "mask_image_to_array",
    "decode_mask",
    "check_label_space",
    "invalid_values",
    "one_hot",
    "null_label",
    "drop_mask",
    "drop_labels",
    "PALETTE",
    "IGNORE_COLOR",
    "colorize",
]


def read_mask_array(path: str | Path) -> np.ndarray:
    """The stored values of a mask file: ``[H, W]`` (gray / palette indices) or ``[H, W, 3]`` (RGB).

    Palette ('P') images give their indices, 16-bit images their raw integers, alpha is dropped.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return mask_image_to_array(img)


def mask_image_to_array(img: "Image.Image") -> np.ndarray:
    """A loaded PIL mask as an integer array (see :func:`read_mask_array`)."""
    mode = img.mode
    if mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if mode == "LA":
        return np.asarray(img.getchannel("L"))
    if mode == "PA":
        return np.asarray(img.getchannel("P"))
    return np.asarray(img.convert("RGB"))


def _collapse_rgb(array: np.ndarray, mode: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"mask array must be [H,W] or [H,W,3], got shape {array.shape}")
    if mode == "binary":
        return array.max(axis=2)
    if (array == array[..., :1]).all():  # gray stored as RGB: all channels equal
        return array[..., 0]
    raise ValueError(
        "multi-class mask stored as colour RGB: save class ids as 8-bit gray or as a palette (P) "
        "PNG whose indices are the class ids"
    )


def check_label_space(num_classes: int, ignore_index: Optional[int]) -> None:
    """Class ids and ``ignore_index`` must fit the uint8 label maps used everywhere."""
    if not 2 <= num_classes <= 255:
        raise ValueError(f"num_classes={num_classes}: must be in 2..255 (uint8 label maps)")
    if ignore_index is not None and not num_classes <= ignore_index <= 255:
        raise ValueError(f"ignore_index={ignore_index}: must be in {num_classes}..255 or null "
                         "(uint8 label maps, not a class id)")


def invalid_values(labels: np.ndarray, num_classes: int, ignore_index: Optional[int]) -> list[int]:
    """Sorted values of a multi-class id map that are neither a class id nor ``ignore_index``."""
    values = np.unique(labels)
    bad = values[(values < 0) | (values >= num_classes)]
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    return [int(v) for v in bad]


def decode_mask(
    array: np.ndarray,
    mode: str,
    num_classes: int,
    ignore_index: Optional[int] = 255,
) -> np.ndarray:
    """Stored mask values -> uint8 class ids ``[H, W]``.

    Args:
        array: integer ``[H, W]`` (gray values or palette indices) or ``[H, W, 3]`` RGB.
        mode: ``binary`` (any value > 0 -> 1) or ``multi-class`` (values are the ids).
        num_classes: C; valid multi-class ids are ``0..C-1``.
        ignore_index: kept as is in multi-class masks (must fit uint8), or None.

    Raises:
        MaskValueError: a multi-class value outside ``0..C-1`` and not ``ignore_index``.
    """
    check_label_space(num_classes, ignore_index if mode == "multi-class" else None)
    array = _collapse_rgb(np.asarray(array), mode)
    if mode == "binary":
        return (array > 0).astype(np.uint8)
    if mode != "multi-class":
        raise ValueError(f"dataset_mode {mode!r}: use 'binary' or 'multi-class'")
    bad = invalid_values(array, num_classes, ignore_index)
    if bad:
        allowed = f"0..{num_classes - 1}"
        if ignore_index is not None:
            allowed += f" or {ignore_index} (ignore)"
        raise MaskValueError(
            f"mask values {bad} are not valid class ids (allowed: {allowed}); fix: set "
            f"data.num_classes >= {max(bad) + 1}, or remap the mask, or use --mode binary if "
            "every value > 0 means defect", bad)
    return array.astype(np.uint8)


def one_hot(labels: "torch.Tensor | np.ndarray", num_classes: int,
            ignore_index: Optional[int] = 255) -> "torch.Tensor":
    """Class ids ``[B, H, W]`` (or ``[H, W]``) int -> float32 one-hot ``[B, C, H, W]`` (``[C, H, W]``).

    Pixels equal to ``ignore_index`` get the all-zero vector (no class). Any other id outside
    ``0..C-1`` raises ValueError.
    """
    import torch

    labels = torch.as_tensor(labels).long()
    valid = torch.ones_like(labels, dtype=torch.bool)
    if ignore_index is not None:
        valid = labels != ignore_index
    ids = torch.where(valid, labels, torch.zeros_like(labels))
    if bool(((ids < 0) | (ids >= num_classes)).any()):
        bad = torch.unique(labels[valid & ((labels < 0) | (labels >= num_classes))]).tolist()
        raise ValueError(f"one_hot: label values {bad} outside 0..{num_classes - 1} "
                         f"(ignore_index={ignore_index})")
    out = torch.nn.functional.one_hot(ids, num_classes).to(torch.float32)
    out = out * valid.unsqueeze(-1).to(torch.float32)
    return out.movedim(-1, -3).contiguous()


def null_label(segmap: "torch.Tensor") -> "torch.Tensor":
    """The classifier-free-guidance null label: all zeros, same shape/dtype/device as ``segmap``."""
    import torch

    return torch.zeros_like(segmap)


def drop_mask(batch_size: int, drop_rate: float, generator: "Optional[torch.Generator]",
              device: "Optional[torch.device | str]" = None) -> "torch.Tensor":
    """bool ``[B]``: True where a sample's segmap is replaced by the null label.

    Each entry is an independent Bernoulli(``drop_rate``) draw ``u < drop_rate``, ``u ~ U[0,1)``
    from ``generator`` (on the generator's device, then moved to ``device``).
    """
    import torch

    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate={drop_rate}: must be in [0, 1]")
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(batch_size, generator=generator, device=gen_device)
    return (u < drop_rate).to(device if device is not None else gen_device)


def drop_labels(segmap: "torch.Tensor", drop_rate: float,
                generator: "Optional[torch.Generator]") -> "torch.Tensor":
    """Classifier-free-guidance finetuning (SDM Sec. 3.3): replace each sample's one-hot segmap
    ``[B, C, H, W]`` by the null label with probability ``drop_rate``.

    With ``drop_rate == 0`` the input is returned unchanged and no random number is drawn, so
    training without dropout is bit-identical to code that never calls this.
    """

    if drop_rate == 0:
        return segmap
    keep = ~drop_mask(segmap.shape[0], drop_rate, generator, device=segmap.device)
    return segmap * keep.view(-1, *([1] * (segmap.dim() - 1))).to(segmap.dtype)


# --------------------------------------------------------------------------------------------
# colours
# --------------------------------------------------------------------------------------------

# The original ISDM tool's colours for ids 0..11 (0 black, 1 white: binary masks read as
# black/white).
_ORIGINAL_COLORS = [
    (0, 0, 0), (255, 255, 255), (1, 0, 103), (255, 0, 86), (158, 0, 142), (14, 76, 161),
    (255, 229, 2), (0, 95, 57), (0, 255, 0), (149, 0, 58), (255, 147, 126), (164, 36, 0),
]
IGNORE_COLOR = (128, 128, 128)


def _build_palette() -> np.ndarray:
    """uint8 [256, 3]: the original 12 colours, then the PASCAL-VOC bit-interleaved colours
    (deterministic, pairwise distinct) skipping any already used; id 255 (ignore) is gray."""
    colors = list(_ORIGINAL_COLORS)
    used = set(colors) | {IGNORE_COLOR}
    j = 1
    while len(colors) < 255:
        r = g = b = 0
        c = j
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        j += 1
        if (r, g, b) not in used:
            used.add((r, g, b))
            colors.append((r, g, b))
    colors.append(IGNORE_COLOR)
    return np.array(colors, dtype=np.uint8)


PALETTE: np.ndarray = _build_palette()
"""uint8 ``[256, 3]`` colour of each class id; ``PALETTE[255]`` (ignore) is gray."""


def colorize(ids: "Union[np.ndarray, torch.Tensor]") -> "Image.Image":
    """Class ids ``[H, W]`` (numpy or torch, values 0..255) -> PIL 'P' image with :data:`PALETTE`.

    The PNG stores the ids themselves as indices, so a colored label is also a valid
    multi-class mask.
    """
    from PIL import Image

    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"colorize: expected ids [H, W], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"colorize: ids must be in 0..255, got {ids.min()}..{ids.max()}")
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    img.putpalette(PALETTE.reshape(-1).tolist())
    return img

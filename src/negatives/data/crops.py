"""Random resized crops, drawn and taken for a whole batch at once.

The boxes are drawn like ``torchvision.transforms.RandomResizedCrop`` (10
attempts, then the central-crop fallback), all samples at once, from uniform
draws made first (:func:`crop_draws`) so that the same draws give the same
boxes wherever they are taken: on the device by MoCo v2's augmentation
(:class:`negatives.data.augment.MoCoV2Augment`), or when a streamed image
folder is decoded (:class:`negatives.data.sources.FolderSource`).  On the
device, crop + resize + flip are one affine map per sample
(:func:`resized_crop_flip`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_params", "crop_draws", "boxes_from_draws", "resized_crop_flip"]


def crop_draws(batch: int, attempts: int = 10, generator: torch.Generator | None = None, device=None) -> Tensor:
    """The uniform draws of ``batch`` RandomResizedCrop boxes, ``[B, 2 attempts + 2]``
    float64: each attempt's area fraction and log aspect ratio, then the
    offset (see :func:`boxes_from_draws`)."""
    u = torch.rand(batch, attempts, 2, generator=generator, device=device, dtype=torch.float64)
    off = torch.rand(batch, 2, generator=generator, device=device, dtype=torch.float64)
    return torch.cat([u.flatten(1), off], dim=1)


def boxes_from_draws(draws: Tensor, height: int, width: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> Tensor:
    """RandomResizedCrop boxes ``[B, 4]`` int64 ``(top, left, h, w)`` of an
    image of ``height x width`` from the draws of :func:`crop_draws`.

    As ``torchvision.transforms.RandomResizedCrop.get_params``, for every
    sample at once: candidates with the area fraction uniform in ``scale``
    and the log aspect ratio uniform in ``log(ratio)``, sides rounded; the
    first that fits is taken, with its offset uniform over the valid
    positions; a sample with no fitting candidate gets torchvision's fallback,
    the central crop of the whole image clamped to ``ratio``.
    """
    batch = draws.shape[0]
    u, off = draws[:, :-2].view(batch, -1, 2), draws[:, -2:]
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [B, attempts]
    found = ok.any(1)
    first = torch.where(found, ok.long().argmax(1), 0)  # first fitting attempt
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # fallback: torchvision's central crop
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    top = torch.where(found, (off[:, 0] * (height - h + 1)).long().clamp_max(height - h), (height - fh) // 2)
    left = torch.where(found, (off[:, 1] * (width - w + 1)).long().clamp_max(width - w), (width - fw) // 2)
    return torch.stack([top, left, h, w], dim=1)


def crop_params(
    batch: int,
    height: int,
    width: int,
    scale=(0.2, 1.0),
    ratio=(3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device=None,
    attempts: int = 10,
) -> Tensor:
    """Per-sample RandomResizedCrop boxes ``[B, 4]`` int64 ``(top, left, h, w)``
    of images of ``height x width``: :func:`boxes_from_draws` of fresh
    :func:`crop_draws`."""
    return boxes_from_draws(crop_draws(batch, attempts, generator, device), height, width, scale, ratio)


def _sample_coords(start: Tensor, length: Tensor, out: int, size: int, centres: Tensor | None = None) -> Tensor:
    """``[B, out]`` normalised (``align_corners=False``) input coordinates at
    which output pixels ``0 .. out-1`` sample the span ``[start, start+length)``
    of an input side of ``size`` pixels: ``start + (o + 0.5) length / out - 0.5``,
    clamped to the span's first and last pixel centres -- torchvision's
    bilinear resize of the cropped image, edges included.  ``centres``: the
    float32 ``o + 0.5`` when the caller has them."""
    o = torch.arange(out, device=start.device, dtype=torch.float32) + 0.5 if centres is None else centres
    start, length = start.float().unsqueeze(1), length.float().unsqueeze(1)
    src = start + o * (length / out) - 0.5
    src = torch.minimum(torch.maximum(src, start), start + length - 1)
    return (2 * src + 1) / size - 1


def resized_crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Float ``[B, C, H, W]`` -> ``[B, C, h, w]`` (default: the input size):
    each sample's box ``(top, left, h, w)`` resized bilinearly, mirrored
    left-right where ``flip [B]`` bool.

    The same numbers as ``torchvision``'s ``resized_crop(antialias=False)`` +
    ``horizontal_flip`` per image, for the whole batch in one ``grid_sample``:
    the sampling grid is each sample's affine map (scale ``w / W``, offset
    ``(2 left + w) / W - 1``, the x scale negated by a flip) evaluated at the
    output pixel centres, separably in x and y, with coordinates clamped to
    the box's edge pixels as resizing the cropped image does.
    """
    b, c, hgt, wid = x.shape
    oh, ow = size or (hgt, wid)
    boxes, flip = boxes.to(x.device).float(), flip.to(x.device)
    centres = torch.arange(max(oh, ow), device=x.device, dtype=torch.float32) + 0.5
    gx = _sample_coords(boxes[:, 1], boxes[:, 3], ow, wid, centres[:ow])  # [B, ow]
    gx = torch.where(flip.unsqueeze(1), gx.flip(1), gx)
    gy = _sample_coords(boxes[:, 0], boxes[:, 2], oh, hgt, centres[:oh])  # [B, oh]
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(1), gy.unsqueeze(2)), dim=-1)  # [B, oh, ow, 2]
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)

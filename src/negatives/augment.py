"""MoCo v2 augmentation ("aug+"), applied to a whole batch on the training
device with per-sample random parameters (kornia).

For each image independently: RandomResizedCrop(scale 0.2-1) back to the
input size, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale
p=0.2, GaussianBlur sigma in [0.1, 2] with p=0.5 (kernel about 10% of the
image side, odd, at least 3), horizontal flip p=0.5, then normalisation with
the dataset's channel mean and std.

Grayscale inputs (one channel) keep only the brightness and contrast parts of
the jitter: saturation, hue and grayscale conversion need colour.

Input: ``[B, C, H, W]`` uint8 (or float in [0, 1]); output ``[B, C, H, W]``
float, normalised.  Randomness comes from torch's global generator on the
batch's device, which the trainer seeds per run.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MoCoV2Augment", "Normalize", "blur_kernel_size"]


def blur_kernel_size(side: int) -> int:
    k = max(3, int(round(0.1 * side)))
    return k if k % 2 == 1 else k + 1


class Normalize(nn.Module):
    """uint8 or [0, 1] float ``[B, C, H, W]`` -> ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std


class MoCoV2Augment(nn.Module):
    """Batched MoCo v2 augmentation; see the module docstring."""

    def __init__(self, size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                 crop_scale: tuple[float, float] = (0.2, 1.0), blur: bool = True):
        super().__init__()
        import kornia.augmentation as K

        ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=crop_scale)]
        if channels == 3:
            ops += [K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
        else:
            ops += [K.ColorJitter(0.4, 0.4, 0.0, 0.0, p=0.8)]
        if blur:
            k = blur_kernel_size(size)
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=0.5))
        ops.append(K.RandomHorizontalFlip())
        self.ops = nn.Sequential(*ops)
        self.normalize = Normalize(mean, std)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return self.normalize(self.ops(x))

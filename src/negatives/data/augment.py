"""MoCo v2 augmentation ("aug+"), applied to a whole batch on the batch's
device with per-sample random parameters, in a fixed number of batched tensor
operations (no per-sample loop).

For each image independently: RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3)
back to the input size, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8,
RandomGrayscale p=0.2, GaussianBlur sigma in [0.1, 2] with p=0.5 (below),
horizontal flip p=0.5, then normalisation with the dataset's channel mean and
std -- the torchvision pipeline of the MoCo v2 code, batched:

* crop + resize + flip are one affine map per sample: ``affine_grid`` +
  ``grid_sample`` (bilinear, border clamping = torchvision's bilinear resize
  without antialias, which a crop never needs: it is only ever enlarged);
  crop boxes are drawn like ``torchvision.transforms.RandomResizedCrop``
  (10 attempts, then the central-crop fallback), all samples at once
  (:mod:`negatives.data.crops`).
  Streamed image folders (ImageNet) are cropped when they are decoded
  instead, on the full image as the official pipeline crops it
  (:class:`negatives.data.sources.FolderSource`); here they are only flipped;
* colour jitter: brightness, contrast, saturation, hue with per-sample
  factors (the identity factor for samples it skips), in one random order
  per batch (torchvision draws the order per image);
* blur: a per-sample separable Gaussian (a delta kernel for the samples it
  skips, which is exactly the identity), reflect padding.  MoCo v2 blurs with
  PIL's ``GaussianBlur(radius=sigma)``, whose spread is ``sigma`` pixels
  whatever the image size; ours is the discrete Gaussian
  ``T(n) = e^{-s^2} I_n(s^2)`` (Lindeberg's, ``I_n`` the modified Bessel
  function), whose variance is exactly ``s^2`` for every ``s`` -- also below
  one pixel, where a sampled ``exp(-n^2 / 2 s^2)`` is nearly a delta -- on
  ``2 ceil(4 s_max) + 1 = 17`` taps (all but ~1e-4 of its mass at s = 2): the
  drawn sigma is the effective one on every image size.  The kernel is cut
  at the image side where that is shorter (images under 9 pixels).  The
  CIFAR-size configs turn the blur off, as the official CIFAR demo does.

Grayscale inputs (one channel) keep only the brightness and contrast parts of
the jitter: saturation, hue and grayscale conversion need colour.

Input: ``[B, C, H, W]`` uint8 (or float in [0, 1]); output ``[B, C, H, W]``
float32, normalised, on the input's device.  Randomness comes from the
``generator`` passed to :meth:`MoCoV2Augment.forward`, by default torch's
global generator of the batch's device, which the trainer seeds per epoch;
the draws are made in a fixed order, so a seed fixes the views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .crops import crop_params, resized_crop_flip

__all__ = [
    "MoCoV2Augment",
    "Normalize",
    "blur_kernel_size",
    "gaussian_kernels",
    "blur",
]


def blur_kernel_size(side: int, sigma_max: float = 2.0) -> int:
    """Taps of the blur kernel: ``2 ceil(4 sigma_max) + 1``, cut to ``2 side - 1``
    (reflect padding needs a radius below the side)."""
    return 2 * min(math.ceil(4 * sigma_max), side - 1) + 1


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


# ------------------------------------------------------------------ colour ops


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` (torchvision's weights)."""
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor x + (1 - factor) other, 0, 1)``; factor ``[B, 1, 1, 1]``."""
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_offsets() -> Tensor:
    """``[1, 3, 1, 1]`` float32: the offsets n = 5, 3, 1 of R, G, B in :func:`_hsv_to_rgb`."""
    return torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)


def _hsv_to_rgb(x: Tensor, n: Tensor | None = None) -> Tensor:
    """HSV -> RGB, ``c_n = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``,
    n = 5, 3, 1 for R, G, B (the same values as torchvision's table form).
    ``n``: :func:`_hsv_offsets` already on ``x``'s device (a module's buffer:
    made here, it would be a host-to-device copy on every call)."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = (_hsv_offsets() if n is None else n).to(device=x.device, dtype=x.dtype)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def _adjust_hue(x: Tensor, shift: Tensor, n: Tensor | None = None) -> Tensor:
    """torchvision's ``adjust_hue`` with a per-sample shift ``[B]`` in [-0.5, 0.5]
    (``n``: as for :func:`_hsv_to_rgb`)."""
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1), n)


# ------------------------------------------------------------------------ blur

#: terms of the Bessel series: exact to float64 rounding for sigma <= 3
_BESSEL_TERMS = 40


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """``[B, size]`` discrete Gaussians of standard deviation ``sigma [B]``
    (module docstring), normalised over the ``size`` (odd) taps.

    ``T(n) = e^{-t} I_n(t)``, ``t = sigma^2``, by the series
    ``I_n(t) = sum_m (t/2)^(2m+n) / (m! (m+n)!)`` in float64: its variance
    is ``t`` and its sum 1 over all integers ``n``.
    """
    r = (size - 1) // 2
    t = sigma.double().pow(2).view(-1, 1, 1)  # [B, 1, 1]
    n = torch.arange(r + 1, device=sigma.device, dtype=torch.float64).view(1, -1, 1)
    m = torch.arange(_BESSEL_TERMS, device=sigma.device, dtype=torch.float64).view(1, 1, -1)
    log_terms = (2 * m + n) * torch.log(t / 2) - torch.lgamma(m + 1) - torch.lgamma(m + n + 1) - t
    half = log_terms.exp().sum(2)  # [B, r + 1]: n = 0 .. r
    k = torch.cat([half[:, 1:].flip(1), half], dim=1)  # n = -r .. r
    return (k / k.sum(1, keepdim=True)).float()


def _reflect_index(n: int, r: int, device=None) -> Tensor:
    """``[n, 2r + 1]``: the input position read by tap ``t`` of output ``j``
    under reflect padding (``-1 -> 1``, ``n -> n - 2``; needs ``r < n``)."""
    j = (torch.arange(n, device=device).unsqueeze(1) + torch.arange(-r, r + 1, device=device)).abs()
    return torch.where(j > n - 1, 2 * (n - 1) - j, j)


def _blur_matrices(kernels: Tensor, n: int, dtype) -> Tensor:
    """``[B, n, n]``: row ``j`` holds the weights output ``j`` gives each input position."""
    b, k = kernels.shape
    idx = _reflect_index(n, k // 2, kernels.device).expand(b, n, k)
    m = torch.zeros(b, n, n, dtype=dtype, device=kernels.device)
    return m.scatter_add_(2, idx, kernels.to(dtype).unsqueeze(1).expand(b, n, k))


def blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Separable per-sample blur with reflect padding; x ``[B, C, H, W]``,
    kernels ``[B, k]`` (odd ``k``, radius below both sides).

    ``y = M_h x M_w^T`` per sample, with ``M`` the banded matrices of the
    kernel (reflect padding inside them): two batched matrix products, the
    numbers of the tap-by-tap form up to rounding (``tests/models/test_models_augment.py``)
    in fewer passes; a delta kernel gives the identity exactly.
    """
    b, c, h, w = x.shape
    mw = _blur_matrices(kernels, w, x.dtype)
    mh = mw if h == w else _blur_matrices(kernels, h, x.dtype)
    y = x.reshape(b, c * h, w) @ mw.transpose(1, 2)  # along W
    return mh.unsqueeze(1) @ y.view(b, c, h, w)  # along H


# --------------------------------------------------------------------- module


class MoCoV2Augment(nn.Module):
    """Batched MoCo v2 augmentation; see the module docstring."""

    def __init__(
        self,
        size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: tuple[float, float] = (0.2, 1.0),
        blur: bool = True,
    ):
        super().__init__()
        self.size = size
        self.channels = channels
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = (3 / 4, 4 / 3)
        colour = channels == 3
        #: ColorJitter(brightness, contrast, saturation, hue) and its probability
        self.jitter = (0.4, 0.4, 0.4 if colour else 0.0, 0.1 if colour else 0.0)
        self.jitter_p = 0.8
        self.grayscale_p = 0.2 if colour else 0.0
        self.blur_p = 0.5 if blur else 0.0
        self.blur_sigma = (0.1, 2.0)
        self.blur_size = blur_kernel_size(size, self.blur_sigma[1])
        self.flip_p = 0.5
        self.normalize = Normalize(mean, std)
        # each jitter factor is lo + span u (u ~ U[0, 1)), the identity for a sample it skips:
        # the four made in one go from these (not saved: derived from the settings)
        bri, con, sat, hue = self.jitter
        self.register_buffer("jitter_lo", torch.tensor([1 - bri, 1 - con, 1 - sat, -hue]), persistent=False)
        self.register_buffer("jitter_span", torch.tensor([2 * bri, 2 * con, 2 * sat, 2 * hue]), persistent=False)
        self.register_buffer("jitter_identity", torch.tensor([1.0, 1.0, 1.0, 0.0]), persistent=False)
        # the hue's constants live on the module's device: none is copied there inside forward
        self.register_buffer("hsv_offsets", _hsv_offsets(), persistent=False)

    @torch.no_grad()
    def forward(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        batch: int | None = None,
        rows: slice | None = None,
        cropped: bool = False,
    ) -> Tensor:
        """Two calls, two views.  ``x [b, C, H, W]``: a batch, or the ``rows``
        of a ``batch`` of images (a process's slice of the global batch): the
        draws are then the whole batch's, so every process augments its
        images as one process augments the batch.  ``cropped``: ``x`` is a
        view whose random-resized crop was taken when it was decoded (a
        streamed folder, :meth:`negatives.data.sources.FolderSource.batches`),
        so it is only flipped here."""
        b, c, h, w = x.shape
        dev = x.device
        g = generator
        n = b if batch is None else batch
        pick = slice(None) if rows is None else rows

        def rand(*shape):
            return torch.rand(n, *shape, generator=g, device=dev)[pick]

        # every draw, in a fixed order
        boxes = (
            None if cropped else crop_params(n, h, w, self.crop_scale, self.crop_ratio, generator=g, device=dev)[pick]
        )
        flip = rand() < self.flip_p
        bri, con, sat, hue = self.jitter
        jit = rand() < self.jitter_p
        f = rand(4)
        # the jitter's order is control flow: drawn on the CPU (the passed
        # generator if it is a CPU one, else torch's global CPU generator,
        # which torch.manual_seed seeds too), so a GPU batch needs no host sync
        cpu_g = g if g is not None and g.device.type == "cpu" else None
        order = torch.randperm(4, generator=cpu_g).tolist()
        gray = rand() < self.grayscale_p
        blur_on = rand() < self.blur_p
        sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * rand()

        if x.dtype == torch.uint8:
            x = x.float()
            scale = 1.0 / 255.0
        else:
            x = x.float()
            scale = 1.0
        # a view cropped as it was decoded is only mirrored (exactly, no resampling)
        y = (
            torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
            if cropped
            else resized_crop_flip(x, boxes, flip, (self.size, self.size))
        )
        if scale != 1.0:
            y.mul_(scale)

        view = (b, 1, 1, 1)
        # brightness, contrast, saturation, hue factors [B, 4]
        jitter = torch.where(jit.unsqueeze(1), self.jitter_lo + self.jitter_span * f, self.jitter_identity)
        factors = {0: jitter[:, 0].view(view), 1: jitter[:, 1].view(view), 2: jitter[:, 2].view(view), 3: jitter[:, 3]}
        if self.jitter_p > 0:
            for op in order:
                if op == 0 and bri:
                    y = (y * factors[0]).clamp_(0, 1)
                elif op == 1 and con:
                    lum = _gray(y) if c == 3 else y
                    y = _blend(y, lum.mean(dim=(1, 2, 3), keepdim=True), factors[1])
                elif op == 2 and sat:
                    y = _blend(y, _gray(y), factors[2])
                elif op == 3 and hue:
                    y = torch.where(jit.view(view), _adjust_hue(y, factors[3], self.hsv_offsets), y)
        if self.grayscale_p > 0:
            y = torch.where(gray.view(view), _gray(y).expand_as(y), y)
        if self.blur_p > 0:
            k = gaussian_kernels(sigma, self.blur_size)
            delta = torch.zeros_like(k)
            delta[:, self.blur_size // 2] = 1.0
            y = blur(y, torch.where(blur_on.unsqueeze(1), k, delta))
        return self.normalize(y)

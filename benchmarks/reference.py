"""The common public way of training MoCo v2, as a reference for our trainer.

* data: per-image torchvision transforms on PIL images in a ``DataLoader``
  with worker processes -- RandomResizedCrop(scale), ColorJitter(0.4, 0.4,
  0.4, 0.1) p=0.8, RandomGrayscale p=0.2, MoCo v2's GaussianBlur (PIL's
  ``ImageFilter.GaussianBlur(radius=sigma)``, sigma uniform in [0.1, 2]) p=0.5,
  RandomHorizontalFlip, ToTensor, Normalize (grayscale images: brightness and
  contrast only, like ours);
* loss and queue: exactly facebookresearch/moco's ``builder.py`` --
  ``logits = cat([l_pos, l_neg], 1) / T``, cross-entropy against zero labels,
  the queue a ``[dim, K]`` buffer, ``_dequeue_and_enqueue`` writing columns,
  the momentum update parameter by parameter, and the CIFAR demo's
  single-device batch shuffle around the key encoder.

The model (backbone + MLP head, split batch-norm) is the one our trainer
builds, so a comparison measures the pipelines, not the networks.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torchvision import transforms as T

from negatives.policies.candidates import Candidates


class TwoCrops:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        return [self.transform(x), self.transform(x)]


class GaussianBlur:
    """MoCo v2's blur (``moco/loader.py``): PIL's Gaussian blur with a radius
    drawn uniformly from ``sigma``."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def moco_v2_transform(size: int, channels: int, mean, std, crop_scale=(0.2, 1.0), blur: bool = True):
    colour = channels == 3
    ops = [
        T.RandomResizedCrop(size, scale=crop_scale),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4 if colour else 0.0, 0.1 if colour else 0.0)], p=0.8),
    ]
    if colour:
        ops.append(T.RandomGrayscale(p=0.2))
    if blur:
        ops.append(T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5))
    ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class ImageDataset(torch.utils.data.Dataset):
    """uint8 ``[N, C, H, W]`` -> PIL images through ``transform`` (per image)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels
        self.transform = transform
        self.mode = "L" if images.shape[1] == 1 else "RGB"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        a = self.images[i]
        img = Image.fromarray(a[..., 0] if self.mode == "L" else a, mode=self.mode)
        return self.transform(img), int(self.labels[i])


class ReferenceMoCo(nn.Module):
    """facebookresearch/moco ``builder.MoCo`` on one device: no all-gather,
    the keys shuffled around the key encoder as the CIFAR demo's
    ``_batch_shuffle_single_gpu`` (with split batch-norm, as ours)."""

    def __init__(
        self,
        encoder: nn.Module,
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.07,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K, generator=generator), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0
        self.queue[:, ptr : ptr + batch_size] = keys.T
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    def forward(self, im_q, im_k, policy=None):
        """``policy`` (a negatives policy, or None: all) removes negatives the
        plain way: its ``[B, K]`` mask (``policy(sim, candidates).keep``) sets their logits to ``-inf``."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            idx_shuffle = torch.randperm(im_k.shape[0]).to(im_k.device)
            idx_unshuffle = torch.argsort(idx_shuffle)
            k = F.normalize(self.encoder_k(im_k[idx_shuffle]), dim=1)
            k = k[idx_unshuffle]
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        if policy is not None:
            mask = policy(l_neg.detach(), Candidates()).keep
            if mask is not None:
                l_neg = l_neg.masked_fill(~mask, float("-inf"))
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels


def reference_loss(
    q: torch.Tensor, k: torch.Tensor, queue_keys: torch.Tensor, T: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference formulation of the loss from embeddings: queue_keys ``[K, D]``."""
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue_keys.T])
    if mask is not None:
        l_neg = l_neg.masked_fill(~mask, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def reference_loader(
    images, labels, mean, std, batch_size: int, num_workers: int = 1, seed: int = 0, pin_memory: bool = False
):
    size, channels = images.shape[2], images.shape[1]
    ds = ImageDataset(images, labels, TwoCrops(moco_v2_transform(size, channels, mean, std)))
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )

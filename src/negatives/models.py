"""Backbones, the MoCo v2 MLP head and split batch-norm.

* ``small-cnn``: a 3-block CNN sized for CPU budgets (the embedded default).
* ``resnet18`` / ``resnet50``: torchvision ResNets with the small-image stem
  (3x3 conv, stride 1, no max-pool), as in the official MoCo CIFAR demo.

Every backbone maps ``[B, C, H, W] -> [B, F]`` (the *learned representation*)
and has an attribute ``feature_dim = F``; :class:`Encoder` adds the MLP head
``F -> F -> D`` whose (normalised) output is the *contrastive-space embedding*.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitBatchNorm2d", "SmallCNN", "resnet", "MLPHead", "Encoder", "build_encoder", "BACKBONES"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """Batch-norm whose training statistics are computed over ``num_splits``
    equal sub-batches, standing in for shuffle-BN on a single device (the
    batch is the concatenation of the sub-batches).  In eval mode it is plain
    batch-norm with the running statistics averaged over the splits."""

    def __init__(self, num_features: int, num_splits: int = 1, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        if x.shape[0] % s:
            raise ValueError(f"batch of {x.shape[0]} cannot be split into {s} batch-norm splits")
        # each split is normalised by its own statistics; chunks along the
        # batch keep the memory format (channels_last stays fast on CPU)
        outs, means, vars_ = [], [], []
        for chunk in x.chunk(s):
            mean, var = self.running_mean.clone(), self.running_var.clone()
            outs.append(F.batch_norm(chunk, mean, var, self.weight, self.bias,
                                     training=True, momentum=self.momentum, eps=self.eps))
            means.append(mean)
            vars_.append(var)
        with torch.no_grad():  # running statistics: the average of the splits' updates
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(vars_).mean(0))
            self.num_batches_tracked.add_(1)
        return torch.cat(outs)


def _norm(num_splits: int):
    def make(c: int) -> nn.Module:
        return SplitBatchNorm2d(c, num_splits) if num_splits > 1 else nn.BatchNorm2d(c)

    return make


class SmallCNN(nn.Module):
    """Three conv blocks (``width``, 2x, 4x channels), global average pool.

    ``[B, C, H, W] -> [B, 4*width]``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, num_splits: int = 1):
        super().__init__()
        norm = _norm(num_splits)

        def block(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers

        self.features = nn.Sequential(
            *block(in_channels, width, True),
            *block(width, 2 * width, True),
            *block(2 * width, 4 * width, False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def resnet(depth: int, in_channels: int = 3, num_splits: int = 1, small_stem: bool = True) -> nn.Module:
    """torchvision ResNet-18/50 without its classifier; with ``small_stem``
    the first conv is 3x3 stride 1 and the max-pool is removed (CIFAR-style).
    ``[B, C, H, W] -> [B, 512 or 2048]``."""
    import torchvision

    ctor = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]
    net = ctor(weights=None, norm_layer=_norm(num_splits))
    if small_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class MLPHead(nn.Module):
    """MoCo v2 projection head ``[B, F] -> Linear(F, F) -> ReLU -> Linear(F, D) -> [B, D]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Backbone + MLP head. ``forward`` gives the (unnormalised) head output
    ``[B, D]``; :meth:`represent` the backbone output ``[B, F]``."""

    def __init__(self, backbone: nn.Module, head: MLPHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def represent(self, x: Tensor) -> Tensor:
        return self.backbone(x)


BACKBONES = ("small-cnn", "resnet18", "resnet50")


def build_encoder(
    backbone: str,
    in_channels: int,
    dim: int = 128,
    hidden_dim: int | None = None,
    num_splits: int = 1,
    width: int = 32,
) -> Encoder:
    """Build the encoder named in config.  ``hidden_dim`` defaults to the
    backbone's feature dimension (MoCo v2: 2048-2048-128 for ResNet-50)."""
    if backbone == "small-cnn":
        net = SmallCNN(in_channels, width=width, num_splits=num_splits)
    elif backbone in ("resnet18", "resnet50"):
        net = resnet(int(backbone[6:]), in_channels, num_splits=num_splits)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    return Encoder(net, MLPHead(net.feature_dim, hidden_dim or net.feature_dim, dim))

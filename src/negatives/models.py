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

__all__ = ["SplitBatchNorm2d", "MaxPool2x2", "SmallCNN", "resnet", "MLPHead", "Encoder", "build_encoder", "BACKBONES"]


class _SplitBatchNormFn(torch.autograd.Function):
    """Training-mode batch-norm of ``num_splits`` contiguous sub-batches,
    written straight into one output tensor (no ``torch.cat`` of the
    per-split outputs, no copy in backward): each split goes through
    ``native_batch_norm`` / ``native_batch_norm_backward`` with ``out=`` the
    split's slice.  Chunks along the batch of a contiguous or channels-last
    tensor are themselves contiguous in that format, so the slices are valid
    outputs.  Returns the output and the per-split updated running statistics
    ``[s, C]``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running: tuple[Tensor, Tensor], s: int, momentum: float, eps: float):
        running_mean, running_var = running  # read only: one argument, no gradient
        out = torch.empty_like(x)
        c = x.shape[1]
        means = running_mean.detach().expand(s, c).clone()
        vars_ = running_var.detach().expand(s, c).clone()
        save_mean = x.new_empty((s, c), dtype=running_mean.dtype)
        save_invstd = x.new_empty((s, c), dtype=running_mean.dtype)
        for i, (xc, oc) in enumerate(zip(x.chunk(s), out.chunk(s))):
            torch.ops.aten.native_batch_norm.out(
                xc,
                weight,
                bias,
                means[i],
                vars_[i],
                True,
                momentum,
                eps,
                out=oc,
                save_mean=save_mean[i],
                save_invstd=save_invstd[i],
            )
        ctx.save_for_backward(x, weight, save_mean, save_invstd)
        ctx.s, ctx.eps = s, eps
        ctx.mark_non_differentiable(means, vars_)
        return out, means, vars_

    @staticmethod
    def backward(ctx, grad_out, _gm, _gv):
        x, weight, save_mean, save_invstd = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous(memory_format=_format_of(x))
        gx = torch.empty_like(x) if need_x else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros_like(weight) if need_b else None
        dw, db = torch.empty_like(weight), torch.empty_like(weight)
        gx_chunks = gx.chunk(s) if need_x else [None] * s
        for i, (g, xc, gxc) in enumerate(zip(grad_out.chunk(s), x.chunk(s), gx_chunks)):
            torch.ops.aten.native_batch_norm_backward.out(
                g,
                xc,
                weight,
                None,
                None,
                save_mean[i],
                save_invstd[i],
                True,
                ctx.eps,
                [need_x, need_w, need_b],
                out0=gxc if need_x else xc.new_empty(0),
                out1=dw,
                out2=db,
            )
            if need_w:
                gw += dw
            if need_b:
                gb += db
        return gx, gw, gb, None, None, None, None


def _format_of(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _SplitGroupNormFn(torch.autograd.Function):
    """Training-mode batch-norm of ``num_splits`` contiguous sub-batches in a
    constant number of calls whatever the split count: channel ``c`` of split
    ``j`` is group ``c`` of sample ``j`` of a group norm over the view
    ``[s, C, B/s, H, W]``, so one ``native_group_norm`` (and one backward)
    normalises every split by its own statistics.  The view is copied into a
    contiguous tensor of the parameters' dtype (the layout group norm wants on
    a GPU; float32 statistics under a bf16 autocast too) and the output copied back
    into the input's dtype and memory format: 3 calls forward, 3 backward.
    Returns the output and each split's mean and ``1 / sqrt(var + eps)``
    ``[s, C]`` (biased variance, for the running statistics)."""

    @staticmethod
    def forward(ctx, x, weight, bias, s: int, eps: float):
        b, c, h, w = x.shape
        n = b // s
        # in the parameters' precision (float32 under a bf16 autocast too)
        # (empty + copy_: Tensor.to(dtype, memory_format=...) keeps a view's strides when the dtype matches)
        xg = torch.empty((s, c, n, h, w), dtype=weight.dtype, device=x.device)
        xg.copy_(x.unflatten(0, (s, n)).transpose(1, 2))
        out, mean, rstd = torch.native_group_norm(xg, weight, bias, s, c, n * h * w, c, eps)
        y = torch.empty_like(x)  # x's dtype and memory format
        y.unflatten(0, (s, n)).copy_(out.transpose(1, 2))
        ctx.save_for_backward(xg, weight, mean, rstd)
        ctx.x_dtype, ctx.x_format = x.dtype, _format_of(x)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)  # no zero gradients for the statistics
        return y, mean, rstd

    @staticmethod
    def backward(ctx, grad_y, _gm, _gr):
        xg, weight, mean, rstd = ctx.saved_tensors
        s, c, n, h, w = xg.shape
        if grad_y is None:
            return None, None, None, None, None
        gg = torch.empty_like(xg)
        gg.copy_(grad_y.unflatten(0, (s, n)).transpose(1, 2))
        gxg, gw, gb = torch.ops.aten.native_group_norm_backward(
            gg, xg, mean, rstd, weight, s, c, n * h * w, c, list(ctx.needs_input_grad[:3])
        )
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty((s * n, c, h, w), dtype=ctx.x_dtype, device=xg.device, memory_format=ctx.x_format)
            gx.unflatten(0, (s, n)).copy_(gxg.transpose(1, 2))
        return gx, gw, gb, None, None


class SplitBatchNorm2d(nn.BatchNorm2d):
    """Batch-norm over ``num_splits`` sub-batches, as if on that many GPUs (MoCo's CIFAR demo).

    Batch-norm whose training statistics are computed over ``num_splits``
    equal contiguous sub-batches (the batch is their concatenation), as one
    device's stand-in for per-GPU batch-norm.  It is shuffle-BN only together
    with MoCo's key shuffle (:func:`negatives.methods.moco.shuffled_keys`): the key
    encoder's splits then hold other images than the query encoder's, as in
    the official CIFAR demo.  (The demo's ``SplitBatchNorm`` groups images
    ``n mod s``; contiguous splits are what keep SimCLR's two views of an
    image apart.)  In eval mode it is plain batch-norm with the running
    statistics averaged over the splits.

    The definition is :meth:`reference`: each split through ``F.batch_norm``
    with its own copy of the running statistics, then the average of the
    splits' updates.  Two faster forms compute the same numbers: on CPU the
    splits are normalised into one preallocated output
    (:class:`_SplitBatchNormFn`, bit-identical); on a GPU, where each call
    launches kernels and the per-split loop would make a step launch-bound,
    one group norm over all the splits (:class:`_SplitGroupNormFn`: about
    as many calls as plain batch-norm, equal to the definition up to float
    rounding).  Under ``torch.compile`` the definition (the compiler fuses
    the loop itself)."""

    def __init__(self, num_features: int, num_splits: int = 1, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits
        # averages the splits' statistics in one call (not saved: the state dict is plain batch-norm's)
        self.register_buffer("split_weights", torch.ones(1, num_splits), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        if x.shape[0] % s:
            raise ValueError(f"batch of {x.shape[0]} cannot be split into {s} batch-norm splits")
        if torch.compiler.is_compiling() or not (self.affine and self.track_running_stats and x.dim() == 4):
            return self.reference(x)
        if x.device.type == "cpu" and x.dtype == self.weight.dtype:
            running = (self.running_mean, self.running_var)
            out, means, vars_ = _SplitBatchNormFn.apply(x, self.weight, self.bias, running, s, self.momentum, self.eps)
            self._update_running(means, vars_)
            return out
        return self.grouped(x)

    def grouped(self, x: Tensor) -> Tensor:
        """The GPU form: every split at once through one group norm
        (:class:`_SplitGroupNormFn`), the running statistics updated in five
        calls whatever the split count.  Equal to :meth:`reference` up to
        float rounding."""
        s = self.num_splits
        out, mean, rstd = _SplitGroupNormFn.apply(x, self.weight, self.bias, s, self.eps)
        with torch.no_grad():
            # the average of the splits' updates, (1 - m) r + m mean_j(stat_j), the
            # variance unbiased over a split's count: each average a [1, s] x [s, C] product
            m, c, count = self.momentum, x.shape[1], x.numel() // (s * x.shape[1])
            unbias = count / max(count - 1, 1)
            ones = self.split_weights
            self.running_mean.view(1, c).addmm_(ones, mean, beta=1 - m, alpha=m / s)
            self.running_var.view(1, c).addmm_(ones, rstd.pow(-2), beta=1 - m, alpha=m * unbias / s).sub_(
                m * unbias * self.eps
            )
            self.num_batches_tracked.add_(1)
        return out

    def reference(self, x: Tensor) -> Tensor:
        """The definition: each split normalised by its own statistics
        (chunks along the batch keep the memory format), the running
        statistics the average of the splits' updates."""
        outs, ms, vs = [], [], []
        for chunk in x.chunk(self.num_splits):
            mean, var = self.running_mean.clone(), self.running_var.clone()
            outs.append(
                F.batch_norm(
                    chunk, mean, var, self.weight, self.bias, training=True, momentum=self.momentum, eps=self.eps
                )
            )
            ms.append(mean)
            vs.append(var)
        self._update_running(torch.stack(ms), torch.stack(vs))
        return torch.cat(outs)

    @torch.no_grad()
    def _update_running(self, means: Tensor, vars_: Tensor) -> None:
        """The running statistics from the splits' updated copies ``[s, C]``: their average."""
        self.running_mean.copy_(means.mean(0))
        self.running_var.copy_(vars_.mean(0))
        self.num_batches_tracked.add_(1)


def _norm(num_splits: int):
    def make(c: int) -> nn.Module:
        return SplitBatchNorm2d(c, num_splits) if num_splits > 1 else nn.BatchNorm2d(c)

    return make


class MaxPool2x2(nn.MaxPool2d):
    """A 2x2 max-pool with a cheaper path when no gradient is needed.

    ``nn.MaxPool2d(2)``.  Without gradient (the key encoder, feature
    extraction) the maximum of each 2x2 window is taken by two elementwise
    maxima of strided views: the same values, cheaper on CPU than the indexed
    kernel, which computes argmax indices nobody reads.  With
    gradient, the indexed kernel (its backward gives a tie's gradient to the
    first maximum, which the elementwise form would split)."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor, as MaxPool2d
        x = x[..., :h, :w]
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class SmallCNN(nn.Module):
    """Three conv blocks (``width``, 2x, 4x channels), global average pool.

    ``[B, C, H, W] -> [B, 4*width]``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, num_splits: int = 1):
        super().__init__()
        norm = _norm(num_splits)

        def block(cin, cout, pool):
            # max-pool before ReLU: the same function (ReLU is monotone, so
            # relu(maxpool(x)) == maxpool(relu(x))) with the ReLU and its
            # backward on a quarter of the elements; the modules keep their
            # positions' parameters, so state dicts are unchanged
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout)]
            if pool:
                layers.append(MaxPool2x2())
            layers.append(nn.ReLU(inplace=True))
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
    """A torchvision ResNet-18/50 backbone without its classifier.

    torchvision ResNet-18/50 without its classifier; with ``small_stem``
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
    """Backbone and MLP head: the encoder MoCo and SimCLR train.

    ``forward`` gives the (unnormalised) head output
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
    small_stem: bool = True,
) -> Encoder:
    """The encoder a config names (backbone, width, head, split batch-norm).

    Build the encoder named in config.  ``hidden_dim`` defaults to the
    backbone's feature dimension (MoCo v2: 2048-2048-128 for ResNet-50).
    ``small_stem`` (ResNets): the 3x3 stem without max-pool of the CIFAR demo;
    False: torchvision's 7x7 stride-2 stem and max-pool (ImageNet)."""
    if backbone == "small-cnn":
        net = SmallCNN(in_channels, width=width, num_splits=num_splits)
    elif backbone in ("resnet18", "resnet50"):
        net = resnet(int(backbone[6:]), in_channels, num_splits=num_splits, small_stem=small_stem)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    return Encoder(net, MLPHead(net.feature_dim, hidden_dim or net.feature_dim, dim))

"""The fast forms of the models and the augmentation give the numbers of the
plain ones (CPU, not timed): the batched crop against per-image torchvision,
split batch-norm against per-split F.batch_norm, the max-pool without
gradient against the indexed kernel."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from negatives.data.augment import MoCoV2Augment
from negatives.data.crops import crop_params, resized_crop_flip
from negatives.models import SplitBatchNorm2d, build_encoder


def test_batched_crop_equals_per_image_torchvision():
    g = torch.Generator().manual_seed(0)
    for (h, w), out in (((28, 28), (28, 28)), ((32, 17), (20, 24))):
        x = torch.randint(0, 256, (32, 3, h, w), dtype=torch.uint8, generator=g).float()
        boxes = crop_params(32, h, w, (0.2, 1.0), generator=g)
        flip = torch.rand(32, generator=g) < 0.5
        y = resized_crop_flip(x, boxes, flip, out)
        for i in range(32):
            ref = TF.resized_crop(x[i], *boxes[i].tolist(), list(out), antialias=False)
            if flip[i]:
                ref = TF.horizontal_flip(ref)
            torch.testing.assert_close(y[i], ref, rtol=0, atol=1e-3)  # pixel values 0..255


def test_split_batchnorm_fast_path_equals_per_split_batch_norm():
    torch.manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(12, 5, 6, 6).contiguous(memory_format=fmt).requires_grad_(True)
        bn = SplitBatchNorm2d(5, num_splits=3)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
        ref_rm, ref_rv = bn.running_mean.clone(), bn.running_var.clone()
        y = bn(x)
        gy = torch.randn_like(y)
        gx, gw, gb = torch.autograd.grad(y, (x, bn.weight, bn.bias), gy)
        outs, ms, vs = [], [], []
        for chunk in x.chunk(3):
            m, v = ref_rm.clone(), ref_rv.clone()
            outs.append(F.batch_norm(chunk, m, v, bn.weight, bn.bias, True, 0.1, 1e-5))
            ms.append(m)
            vs.append(v)
        ref = torch.cat(outs)
        rx, rw, rb = torch.autograd.grad(ref, (x, bn.weight, bn.bias), gy)
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(gw, rw)
        torch.testing.assert_close(gb, rb)
        torch.testing.assert_close(bn.running_mean, torch.stack(ms).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack(vs).mean(0))
        assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)


def test_small_cnn_pool_before_relu_is_the_same_function():
    torch.manual_seed(0)
    enc = build_encoder("small-cnn", 1, dim=8, width=4).eval()
    x = torch.randn(3, 1, 12, 12)
    f = enc.backbone.features
    y = x
    for m in f:  # the original order, ReLU before max-pool
        y = m(y) if not isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) else y
        if isinstance(m, torch.nn.BatchNorm2d):
            y = torch.relu(y)
        if isinstance(m, torch.nn.MaxPool2d):
            y = m(y)
    torch.testing.assert_close(enc.represent(x), y)
    assert list(enc.state_dict()) == [k for k in enc.state_dict()]  # keys unchanged by the reorder
    assert "backbone.features.1.weight" in enc.state_dict() and "backbone.features.5.weight" in enc.state_dict()


def test_augment_runs_on_float_and_uint8_alike():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    aug = MoCoV2Augment(16, 3, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x.float() / 255)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 5, 7, 9), (3, 2, 3, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_maxpool_without_gradient_equals_the_indexed_kernel(shape, channels_last):
    from negatives.models import MaxPool2x2

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, shape, generator=g).float()  # many ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = MaxPool2x2()(x)
    assert torch.equal(fast, F.max_pool2d(x, 2))
    # with gradient: the indexed kernel, a tie's gradient to the first maximum
    xg = x.clone().requires_grad_()
    MaxPool2x2()(xg).sum().backward()
    xr = x.clone().requires_grad_()
    F.max_pool2d(xr, 2).sum().backward()
    assert torch.equal(xg.grad, xr.grad)


def _per_split_reference(x, weight, bias, running_mean, running_var, s, momentum=0.1, eps=1e-5):
    """Split batch-norm by its definition: F.batch_norm per contiguous split,
    the running statistics the average of the splits' updates."""
    outs, ms, vs = [], [], []
    for chunk in x.chunk(s):
        m, v = running_mean.clone(), running_var.clone()
        outs.append(F.batch_norm(chunk, m, v, weight, bias, True, momentum, eps))
        ms.append(m)
        vs.append(v)
    return torch.cat(outs), torch.stack(ms).mean(0), torch.stack(vs).mean(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("splits", [2, 3, 8])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_split_batchnorm_gpu_form_equals_per_split_batch_norm(fmt, splits, dtype):
    """The GPU form (one group norm over every split) against the definition:
    output, input/weight/bias gradients and running statistics, in both memory
    formats, the output and input gradient in the input's format."""
    torch.manual_seed(splits)
    bn = SplitBatchNorm2d(5, num_splits=splits).to(dtype)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    x = (3 * torch.randn(4 * splits, 5, 6, 7, dtype=dtype) + 2).contiguous(memory_format=fmt).requires_grad_(True)
    y = bn.grouped(x)
    gy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, bn.weight, bn.bias), gy)
    ref, ref_rm, ref_rv = _per_split_reference(x, bn.weight, bn.bias, rm, rv, splits)
    rx, rw, rb = torch.autograd.grad(ref, (x, bn.weight, bn.bias), gy)
    tol = {} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for got, want in ((y, ref), (gx, rx), (gw, rw), (gb, rb), (bn.running_mean, ref_rm), (bn.running_var, ref_rv)):
        torch.testing.assert_close(got, want, **tol)
    assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)
    assert int(bn.num_batches_tracked) == 1


def test_split_batchnorm_gpu_form_under_bf16_autocast_keeps_float32_statistics():
    """bf16 activations (what autocast hands a GPU's batch-norm): the output
    and input gradient are bf16 in the input's format, the statistics come
    from the float32 values, so the running statistics equal the float32
    definition's on the same bf16 input."""
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(4, num_splits=4)
    x = (2 * torch.randn(16, 4, 5, 5) + 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = bn.grouped(x)
    (gx,) = torch.autograd.grad(y, (x,), torch.ones_like(y))
    ref, ref_rm, ref_rv = _per_split_reference(x.detach().float(), bn.weight, bn.bias, torch.zeros(4), torch.ones(4), 4)
    assert y.dtype == gx.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(bn.running_mean, ref_rm)
    torch.testing.assert_close(bn.running_var, ref_rv)


def test_split_batchnorm_off_the_cpu_makes_as_many_calls_whatever_the_splits():
    """On a non-CPU device (meta: the GPU branches) a split layer's forward and
    backward make the same number of ATen calls for 2 splits and for 16, and
    few: the per-split loop made 4 calls per split forward and 3 backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func.overloadpacket.__name__ not in (
                "empty",
                "empty_like",
                "empty_strided",
                "detach",
            ):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for splits in (2, 16):
        bn = SplitBatchNorm2d(64, num_splits=splits).to("meta")
        x = torch.empty(64, 64, 8, 8, device="meta").contiguous(memory_format=torch.channels_last).requires_grad_()
        Count.n = 0
        with Count():
            bn(x).sum().backward()
        counts.append(Count.n)
    assert counts[0] == counts[1] <= 13, counts

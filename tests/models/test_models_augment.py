"""Backbones (small stem), the MLP head, and the batched MoCo v2 augmentation."""

import numpy as np
import pytest
import torch

from negatives.data.augment import MoCoV2Augment, blur, blur_kernel_size, gaussian_kernels
from negatives.data.crops import crop_params, resized_crop_flip
from negatives.models import SplitBatchNorm2d, build_encoder


@pytest.mark.parametrize("backbone,features", [("small-cnn", 64), ("resnet18", 512), ("resnet50", 2048)])
def test_backbones_give_representation_and_embedding(backbone, features):
    torch.manual_seed(0)
    enc = build_encoder(backbone, in_channels=1, dim=32, num_splits=2, width=16)
    x = torch.randn(4, 1, 28, 28)
    assert enc.represent(x).shape == (4, features)
    assert enc(x).shape == (4, 32)
    assert enc.head.net[0].in_features == features == enc.head.net[0].out_features  # MoCo v2: F -> F -> D
    assert any(isinstance(m, SplitBatchNorm2d) for m in enc.modules())


def test_resnet_small_stem_keeps_resolution():
    enc = build_encoder("resnet18", in_channels=3, dim=8)
    conv1 = enc.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(enc.backbone.maxpool, torch.nn.Identity)


def test_unknown_backbone_names_the_allowed_ones():
    with pytest.raises(ValueError, match="small-cnn, resnet18, resnet50"):
        build_encoder("vit", 1)


def test_augmentation_is_per_sample_and_seeded():
    x = torch.full((8, 1, 28, 28), 0, dtype=torch.uint8)
    x[:, :, 8:20, 4:14] = 255  # the same off-centre square in every image
    aug = MoCoV2Augment(28, 1, [0.5], [0.5])
    torch.manual_seed(0)
    a = aug(x)
    assert a.shape == (8, 1, 28, 28) and a.dtype == torch.float32
    # identical inputs, different random parameters per sample
    assert len({tuple(v.flatten().tolist()) for v in a}) == 8
    torch.manual_seed(0)
    assert torch.equal(aug(x), a)


def test_colour_and_grayscale_pipelines():
    gray = MoCoV2Augment(32, 1, [0.5], [0.5])
    colour = MoCoV2Augment(32, 3, [0.5] * 3, [0.5] * 3)
    assert gray.grayscale_p == 0.0 and colour.grayscale_p == 0.2
    assert gray.jitter == (0.4, 0.4, 0.0, 0.0) and colour.jitter == (0.4, 0.4, 0.4, 0.1)  # no colour ops on one channel
    out = colour(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert blur_kernel_size(224) == 17 and blur_kernel_size(28) == 17 and blur_kernel_size(6) == 11


def test_crop_params_within_scale_and_ratio_and_fallback():
    g = torch.Generator().manual_seed(0)
    boxes = crop_params(4000, 28, 28, (0.2, 1.0), generator=g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    area = (h * w).float() / 784
    # sides are rounded: allow the rounding slack of one pixel per side
    assert area.min() >= 0.2 * (1 - 2 / 28) ** 2 - 1e-6 and area.max() <= 1.0
    ratio = w.float() / h.float()
    assert ratio.min() >= (3 / 4) * (1 - 1 / 6) and ratio.max() <= (4 / 3) * (1 + 1 / 6)
    assert len(set(map(tuple, boxes.tolist()))) > 1000  # per-sample draws
    # no candidate fits a 2x40 image with ratio in [3/4, 4/3]: torchvision's central fallback
    fb = crop_params(5, 2, 40, (0.9, 1.0), generator=g)
    assert fb.tolist() == [[0, 18, 2, 3]] * 5  # w = round(2 * 4/3), left = (40 - 3) // 2


def test_identity_crop_reproduces_input_and_flip_is_exact():
    x = torch.rand(3, 2, 10, 14)
    full = torch.tensor([[0, 0, 10, 14]] * 3)
    torch.testing.assert_close(resized_crop_flip(x, full, torch.zeros(3, dtype=torch.bool)), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        resized_crop_flip(x, full, torch.ones(3, dtype=torch.bool)), x.flip(-1), rtol=0, atol=1e-6
    )


def test_output_is_normalised_and_unit_draws_are_identity():
    # every random op switched off: crop = whole image -> output = (x/255 - mean) / std
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    aug = MoCoV2Augment(28, 1, [0.3], [0.2], crop_scale=(1.0, 1.0), blur=False)
    aug.jitter_p = 0.0
    aug.flip_p = 0.0
    aug.crop_ratio = (1.0, 1.0)
    torch.testing.assert_close(aug(x), (x.float() / 255 - 0.3) / 0.2, rtol=0, atol=1e-5)


def test_augmentation_deterministic_under_a_passed_generator():
    x = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    aug = MoCoV2Augment(20, 3, [0.5] * 3, [0.5] * 3)
    a = aug(x, generator=torch.Generator().manual_seed(7))
    b = aug(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x, generator=torch.Generator().manual_seed(8)))


def test_resnet_stems():
    from negatives.models import build_encoder

    small = build_encoder("resnet18", 3, dim=8, small_stem=True).backbone
    large = build_encoder("resnet18", 3, dim=8, small_stem=False).backbone
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, torch.nn.MaxPool2d)
    x = torch.zeros(2, 3, 64, 64)
    # the ImageNet stem downsamples 4x before the first block
    assert small.layer1(small.relu(small.bn1(small.conv1(x)))).shape[-1] == 64
    assert large.layer1(large.maxpool(large.relu(large.bn1(large.conv1(x))))).shape[-1] == 16


def _spread(profile: np.ndarray) -> float:
    """Standard deviation of a 1-d response around its centre."""
    x = np.arange(len(profile)) - len(profile) // 2
    return float(np.sqrt((profile * x**2).sum() / profile.sum()))


def _impulse_response(sigma: float, side: int) -> np.ndarray:
    """Our blur of a one-pixel-wide vertical line at the centre of a ``side`` x ``side`` image: a row."""
    x = torch.zeros(1, 1, side, side)
    x[..., side // 2] = 1.0
    k = gaussian_kernels(torch.tensor([sigma]), blur_kernel_size(side))
    return blur(x, k)[0, 0, side // 2].double().numpy()


@pytest.mark.parametrize("side", [28, 32, 96, 224])
def test_the_blurs_spread_is_the_drawn_sigma_on_every_image_size(side):
    # MoCo v2's sigma is in pixels whatever the image size (PIL's radius); the kernel cut at 10% of a 28-px
    # side made sigma = 2 act as 0.8
    for sigma in np.linspace(0.1, 2.0, 20):
        assert _spread(_impulse_response(sigma, side)) == pytest.approx(sigma, abs=4e-3), (side, sigma)


def test_the_blur_spreads_as_moco_v2s_pil_blur():
    from PIL import Image, ImageFilter

    for sigma in (0.3, 0.5, 0.8, 1.0, 1.5, 2.0):
        line = np.zeros((64, 64), np.uint8)
        line[:, 32] = 255
        pil = np.asarray(Image.fromarray(line, "L").filter(ImageFilter.GaussianBlur(radius=sigma)), np.float64)
        # PIL rounds to uint8, which trims the tails: within 0.03 pixels
        assert _spread(_impulse_response(sigma, 64)) == pytest.approx(_spread(pil[10]), abs=0.03), sigma


def test_blur_kernels_are_discrete_gaussians():
    from scipy.special import ive

    sigma = torch.tensor([0.1, 0.7, 2.0])
    k = gaussian_kernels(sigma, 17).double()
    n = np.arange(-8, 9)
    for row, s in zip(k, sigma.tolist()):
        want = ive(np.abs(n), s * s)  # e^{-t} I_n(t), t = sigma^2
        np.testing.assert_allclose(row.numpy(), want / want.sum(), rtol=1e-6, atol=1e-9)
        assert row.sum().item() == pytest.approx(1.0, abs=1e-6) and torch.equal(row, row.flip(0))


def test_augment_blurs_with_the_drawn_sigma():
    aug = MoCoV2Augment(28, 1, [0.0], [1.0])
    assert aug.blur_size == 17 and aug.blur_sigma == (0.1, 2.0) and aug.blur_p == 0.5
    assert MoCoV2Augment(28, 1, [0.0], [1.0], blur=False).blur_p == 0.0


def _blur_by_taps(x, kernels):
    """The plain separable blur: reflect padding, then a weighted sum of shifted copies, tap by tap."""
    import torch.nn.functional as F

    k = kernels.shape[1]
    r = k // 2
    wts = kernels.to(x.dtype).view(x.shape[0], 1, 1, 1, k)
    xp = F.pad(x, (r, r, 0, 0), mode="reflect")
    y = sum(wts[..., t] * xp[..., t : t + x.shape[3]] for t in range(k))
    yp = F.pad(y, (0, 0, r, r), mode="reflect")
    return sum(wts[..., t] * yp[..., t : t + x.shape[2], :] for t in range(k))


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (4, 3, 20, 13), (3, 2, 9, 30)])
def test_blur_equals_the_plain_tap_by_tap_form(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    size = blur_kernel_size(min(shape[2:]))
    k = gaussian_kernels(torch.rand(shape[0], generator=g) * 1.9 + 0.1, size).double()
    torch.testing.assert_close(blur(x, k), _blur_by_taps(x, k), rtol=0, atol=1e-12)
    delta = torch.zeros_like(k)
    delta[:, size // 2] = 1
    assert torch.equal(blur(x, delta), x)  # a skipped image is left exactly as it was


def test_split_batchnorm_normalises_each_split_separately():
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    x[4:] += 5.0  # the second split with another mean
    bn = SplitBatchNorm2d(3, num_splits=2).train()
    y = bn(x)
    torch.testing.assert_close(y[:4], F.batch_norm(x[:4], None, None, training=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[4:], F.batch_norm(x[4:], None, None, training=True), rtol=1e-5, atol=1e-5)
    # the running mean: the average of the splits' updates
    torch.testing.assert_close(
        bn.running_mean, 0.1 * (x[:4].mean((0, 2, 3)) + x[4:].mean((0, 2, 3))) / 2, rtol=1e-5, atol=1e-5
    )
    bn.eval()  # one normalisation by the running statistics
    torch.testing.assert_close(
        bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False), rtol=1e-6, atol=1e-6
    )

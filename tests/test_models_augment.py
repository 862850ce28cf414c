"""Backbones (small stem), the MLP head, and the batched MoCo v2 augmentation."""

import pytest
import torch

from negatives.augment import MoCoV2Augment, blur_kernel_size, crop_params, resized_crop_flip
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
    assert blur_kernel_size(224) == 23 and blur_kernel_size(28) == 3 and blur_kernel_size(96) == 11


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
    torch.testing.assert_close(resized_crop_flip(x, full, torch.ones(3, dtype=torch.bool)), x.flip(-1),
                               rtol=0, atol=1e-6)


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

"""Backbones (small stem), the MLP head, and the batched MoCo v2 augmentation."""

import pytest
import torch

from negatives.augment import MoCoV2Augment, blur_kernel_size
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
    names = lambda aug: [type(m).__name__ for m in aug.ops]  # noqa: E731
    assert "RandomGrayscale" not in names(gray) and "RandomGrayscale" in names(colour)
    jitter = next(m for m in gray.ops if type(m).__name__ == "ColorJitter")
    assert jitter.saturation == 0.0 and jitter.hue == 0.0 and jitter.brightness == 0.4  # no colour ops on one channel
    assert colour(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)).shape == (4, 3, 32, 32)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(28) == 3 and blur_kernel_size(96) == 11

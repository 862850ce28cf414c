"""Streamed image folders (ImageNet) are cropped as the official pipeline
crops them: ``RandomResizedCrop`` on the full decoded image, at decode time,
not on a centre crop prepared beforehand; every process decodes only its
own slice of a batch, and a run on two processes is the run on one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import fake_imagenet
from PIL import Image

from negatives import data
from negatives.data.crops import boxes_from_draws, crop_draws
from negatives.data.folders import decode_views
from negatives.data.sources import loader_workers, open_train_source
from negatives.training.pretrain import pretrain


def reference_box(draws: torch.Tensor, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``, one image, its random
    numbers taken from ``draws`` (10 attempts of area and log ratio, then the offset)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(10):
        u_area, u_ratio = draws[2 * attempt].item(), draws[2 * attempt + 1].item()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = min(int(draws[-2].item() * (height - h + 1)), height - h)
            j = min(int(draws[-1].item() * (width - w + 1)), width - w)
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "height, width, scale",
    [(375, 500, (0.2, 1.0)), (500, 333, (0.08, 1.0)), (20, 400, (0.9, 1.0)), (64, 64, (0.2, 1.0))],
)
def test_boxes_on_the_full_image_are_torchvisions(height, width, scale):
    draws = crop_draws(500, generator=torch.Generator().manual_seed(height + width))
    boxes = boxes_from_draws(draws, height, width, scale)
    want = [reference_box(d, height, width, scale, (3 / 4, 4 / 3)) for d in draws]
    assert [tuple(b) for b in boxes.tolist()] == want


def _image(path, width: int, height: int):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_a_view_is_the_resized_crop_of_the_full_image_and_reaches_its_borders(tmp_path):
    path = tmp_path / "wide.png"
    _image(path, 64, 32)
    draws = crop_draws(400, generator=torch.Generator().manual_seed(0))
    boxes = boxes_from_draws(draws, 32, 64)
    # the old pipeline kept the centre 32 x 32 (columns 16..47) before cropping
    assert int(boxes[:, 1].min()) == 0 and int((boxes[:, 1] + boxes[:, 3]).max()) == 64
    edge = int(boxes[:, 1].argmin())
    views = decode_views(path, 16, draws[[edge, 0]])
    assert views.shape == (2, 3, 16, 16) and views.dtype == torch.uint8
    with Image.open(path) as im:
        for view, box in zip(views, boxes[[edge, 0]]):
            want = TF.pil_to_tensor(
                TF.resized_crop(
                    im.convert("RGB"),
                    *box.tolist(),
                    [16, 16],
                    interpolation=TF.InterpolationMode.BILINEAR,
                    antialias=True,
                )
            )
            assert torch.equal(view, want)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, wordnet_reader):
    tmp = tmp_path_factory.mktemp("streamed")
    fake_imagenet(tmp / "raw", per_class=8)
    return data.prepare(
        "imagenet", tmp / "raw", tmp / "out", storage="stream", image_size=16, wordnet=wordnet_reader, workers=0
    )


def test_only_the_given_images_are_decoded(streamed, monkeypatch):
    import negatives.data.sources as sources

    decoded = []
    real = sources.decode_views
    monkeypatch.setattr(sources, "decode_views", lambda path, *a: (decoded.append(path.name), real(path, *a))[1])
    source = open_train_source(streamed, workers=0)
    order = torch.tensor([5, 2, 9, 0])
    draws = iter([torch.stack([crop_draws(2), crop_draws(2)], 1) for _ in range(2)])
    batches = list(source.view_batches(order, 2, draws))
    assert [b[2].tolist() for b in batches] == [[5, 2], [9, 0]]
    assert [b[0].shape for b in batches] == [(2, 2, 3, 16, 16)] * 2
    assert decoded == [source.files[i].rsplit("/", 1)[-1] for i in order.tolist()]


def test_a_streamed_run_on_two_processes_is_the_run_on_one(streamed, tmp_path):
    settings = dict(
        backbone="small-cnn",
        width=4,
        dim=8,
        epochs=2,
        batch_size=8,
        queue_size=16,
        bn_splits=2,
        knn_monitor=0,
        threads=2,
    )
    runs = {
        n: torch.load(
            pretrain(
                streamed,
                "moco",
                "drop[75_100)",
                0.2,
                0,
                {**settings, "processes": n},
                tmp_path / str(n),
                log=lambda m: None,
            ),
            weights_only=False,
        )
        for n in (1, 2)
    }
    for name, value in runs[1]["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(runs[2]["model"][name], value, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(runs[2]["model"][name], value), name
    assert [r["loss"] for r in runs[1]["log"]] == pytest.approx([r["loss"] for r in runs[2]["log"]], rel=1e-5)


def test_a_view_cropped_as_decoded_is_only_mirrored_on_the_device():
    """``cropped=True``: no second crop; with the colour ops and the blur off,
    the output is the normalised view, mirrored exactly where the flip drew."""
    from negatives.data.augment import MoCoV2Augment

    aug = MoCoV2Augment(16, 3, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], blur=False)
    aug.jitter_p = aug.grayscale_p = 0.0
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    y = aug(x, generator=g, cropped=True)
    plain = aug.normalize(x.float().mul_(1.0 / 255.0))
    flipped = [bool(torch.equal(y[i], plain[i].flip(2))) for i in range(64)]
    assert all(flipped[i] or torch.equal(y[i], plain[i]) for i in range(64))
    assert 10 < sum(flipped) < 54  # p = 0.5 of 64


@pytest.mark.parametrize("threads, workers", [(3, 2), (1, 0)])
def test_a_training_process_decodes_within_the_jobs_cpus(streamed, tmp_path, monkeypatch, threads, workers):
    """The decoding workers of a training process follow the CPUs given to
    the job (pretrain.threads, shared by its processes on the machine; one
    left for the step), not the machine's CPU count."""
    import negatives.training.build as trainer

    seen = []
    real = trainer.open_train_source
    monkeypatch.setattr(
        trainer, "open_train_source", lambda d, workers=None: (seen.append(workers), real(d, workers=workers))[1]
    )
    settings = dict(
        backbone="small-cnn",
        width=4,
        dim=8,
        epochs=1,
        batch_size=8,
        queue_size=16,
        bn_splits=2,
        knn_monitor=0,
        threads=threads,
    )
    pretrain(streamed, "moco", "all", 0.2, 0, settings, tmp_path, log=lambda m: None)
    assert seen == [workers]  # the source it trains from (pretrain counts the images apart)
    assert [loader_workers(c) for c in (1, 2, 4, 16)] == [0, 1, 3, 15]  # 16 CPUs over 2 processes: 8 each

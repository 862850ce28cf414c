"""The paper-faithful linear probe (negatives.probe) and its hook in
evaluate_checkpoint: it learns a separable problem, the backbone stays frozen
(batch-norm running statistics included), and every number is a setting."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from negatives import data
from negatives.evaluation.faithful import FaithfulSettings, ProbeAugment, faithful_linear_probe, faithful_probe, frozen
from negatives.evaluation.probes import evaluate_checkpoint
from negatives.features import topk_accuracy
from negatives.models import Encoder, MLPHead
from negatives.optim import SGD

ROOT = Path(__file__).resolve().parents[2]


def colour_images(n_per_class: int, seed: int, size: int = 16):
    """Three classes, each a noisy image with one bright colour channel:
    uint8 ``[3 n, 3, size, size]`` and labels ``[3 n]``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    x = torch.randint(0, 120, (len(labels), 3, size, size), generator=g, dtype=torch.uint8)
    x[torch.arange(len(labels)), labels] += 120
    return x, labels


def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc = Encoder(backbone, MLPHead(8, 8, 4))
    with torch.no_grad():  # running statistics that are not the defaults, to see them stay
        bn = backbone[1]
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return enc


SMALL = FaithfulSettings(epochs=3, milestones=(2,), batch_size=16)


def _state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_learns_a_separable_problem_with_the_backbone_frozen():
    train, test = data.TensorSource(*colour_images(20, 0)), data.TensorSource(*colour_images(10, 1))
    enc = tiny_encoder().train()
    before = _state(enc)
    rng = torch.get_rng_state()
    scores = faithful_linear_probe(enc, train, test, 3, [0.5] * 3, [0.25] * 3, SMALL)
    assert scores.shape == (30, 3) and scores.dtype == torch.float32
    assert topk_accuracy(scores, test.labels, ks=(1,))[1] >= 95.0
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats, num_batches_tracked
    assert enc.training and all(p.requires_grad for p in enc.parameters())  # restored
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left as it was
    again = faithful_linear_probe(enc, train, test, 3, [0.5] * 3, [0.25] * 3, SMALL)
    assert torch.equal(scores, again)  # a function of the inputs and the seed


def test_frozen_is_eval_mode_without_gradients():
    enc = tiny_encoder().train()
    with frozen(enc.backbone) as b:
        assert not b.training and not any(p.requires_grad for p in b.parameters())
        b(torch.randn(4, 3, 8, 8))
    assert enc.backbone.training and all(p.requires_grad for p in enc.backbone.parameters())


def test_learning_rate_steps_at_the_milestones(monkeypatch):
    seen = []
    real_step = SGD.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(SGD, "step", step)
    train = data.TensorSource(*colour_images(4, 0))  # 12 images, batch 16: one step an epoch
    s = FaithfulSettings(epochs=4, lr=30.0, milestones=(1, 3), gamma=0.1, batch_size=16)
    faithful_linear_probe(tiny_encoder(), train, train, 3, [0.5] * 3, [0.25] * 3, s)
    assert seen == pytest.approx([30.0, 3.0, 3.0, 0.3])


def test_augment_crops_and_flips_per_image():
    torch.manual_seed(0)
    aug = ProbeAugment(8, [0.0] * 3, [1.0] * 3, crop_scale=(0.08, 1.0))
    x = torch.arange(8 * 3 * 8 * 8, dtype=torch.float32).reshape(8, 3, 8, 8) / (8 * 3 * 64)
    y = aug(x)
    assert y.shape == x.shape
    assert len({tuple(v.flatten().tolist()) for v in y}) == 8  # every image gets its own crop


def test_settings_defaults_are_the_config_defaults():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["evaluate"]["faithful"]
    assert FaithfulSettings.from_dict(cfg) == FaithfulSettings()
    assert {**asdict(FaithfulSettings()), "milestones": [60, 80]} == cfg
    with pytest.raises(KeyError, match="unknown evaluate.faithful key.*lr_steps; allowed: batch_size"):
        FaithfulSettings.from_dict({"lr_steps": [1]})


def test_probe_on_a_streamed_folder(tmp_path, wordnet_reader):
    from conftest import fake_imagenet

    fake_imagenet(tmp_path / "raw", per_class=4)
    d = data.load_prepared(
        data.prepare(
            "imagenet",
            tmp_path / "raw",
            tmp_path / "out",
            storage="stream",
            image_size=16,
            wordnet=wordnet_reader,
            workers=0,
        )
    )
    scores = faithful_probe(tiny_encoder(), d, {"epochs": 2, "milestones": [1], "batch_size": 4}, workers=0)
    assert scores.shape == (8, 2) and torch.isfinite(scores).all()


def test_evaluate_checkpoint_with_the_faithful_probe(tmp_path, fashion_root, monkeypatch):
    from negatives.training.pretrain import init_checkpoint

    path = data.prepare("fashion-mnist", fashion_root, tmp_path / "data", 60, 30)
    ckpt = init_checkpoint(path, "moco", 0, {"backbone": "small-cnn", "width": 4, "dim": 8, "bn_splits": 1}, tmp_path)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["evaluate"]
    cfg.update(probe="faithful", fewshot_labels_per_class=2, knn_k=5)
    cfg["faithful"].update(epochs=2, milestones=[1], batch_size=32)
    calls = []
    import negatives.evaluation.faithful as probe

    real = probe.faithful_probe
    monkeypatch.setattr(probe, "faithful_probe", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    res = evaluate_checkpoint(ckpt, path, cfg, tmp_path / "probe.json")
    assert calls == [cfg["faithful"]]
    assert res["evaluation"]["probe"] == "faithful" and res["evaluation"]["faithful"] == cfg["faithful"]
    assert res["evaluation"]["knn_k"] == 5 and "device" not in res["evaluation"]
    assert json.loads((tmp_path / "probe.json").read_text()) == res
    assert 0 <= res["linear_top1"] <= 100 and res["policy"] == "random-init"

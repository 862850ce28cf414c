"""One pretraining epoch on a GPU at CIFAR scale, as a run of a config trains
it: the whole dataset on the device as uint8 (synthetic images of the
config's shape), the config's model, batch, queue, augmentation (blur as
configured) and policy, the policy started for the run's epochs and told the
training progress, the trainer's own step
(:func:`negatives.training.step.train_step`: bf16 autocast on a GPU,
channels-last), optionally torch.compile'd encoders.

    python benchmarks/gpu_epoch.py                          # configs/cifar10.yaml: ResNet-18, batch 512, K=4096
    python benchmarks/gpu_epoch.py --compile                # the encoders compiled
    python benchmarks/gpu_epoch.py --bn-splits 1            # plain batch-norm instead of the config's 8 splits
    python benchmarks/gpu_epoch.py --policy 'mochi[256_128_64_1]' --epoch 100
    python benchmarks/gpu_epoch.py --profile prof.txt       # also: the top kernels of one step, by GPU time
    python benchmarks/gpu_epoch.py --tiny --device cpu      # any device: a few steps of a small model

Every step of the epoch is timed (``images // batch`` steps, the trainer's
epoch), after ``--warmup`` untimed steps (compilation, cuDNN's choice,
allocator).  On CUDA the timed steps run under
``torch.cuda.set_sync_debug_mode(--sync-debug)`` ("error", the default,
makes any host sync inside a step raise).  Prints images/s and the epoch's
seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

from negatives.config_files import read_config
from negatives.data.augment import MoCoV2Augment
from negatives.methods import build_method
from negatives.optim import SGD
from negatives.policies import parse_policy
from negatives.training.settings import PretrainSettings, seeded_encoder
from negatives.training.step import train_step

ROOT = Path(__file__).resolve().parents[1]


def build(s: PretrainSettings, policy: str, channels: int, size: int, device: torch.device, compile_: bool):
    """The model, augmentation and optimiser as the trainer builds them."""
    pol = parse_policy(policy)
    pol.policy.start(s.epochs, s.queue_size)
    model = build_method(
        "moco", seeded_encoder(s, channels, 0), pol, s, 0.2, generator=torch.Generator().manual_seed(1)
    ).to(device, memory_format=torch.channels_last)
    if compile_:
        model.encoder_q.compile()
        model.encoder_k.compile()
    aug = MoCoV2Augment(
        size, channels, [0.5] * channels, [0.25] * channels, crop_scale=(s.crop_scale_min, 1.0), blur=s.blur
    ).to(device)
    opt = SGD(model.encoder_q.parameters(), lr=s.lr, momentum=s.sgd_momentum, weight_decay=s.weight_decay)
    return model, aug, opt


def profile_step(step, path: str, cuda: bool, top: int = 10) -> None:
    """``torch.profiler`` over one step: the ``top`` kernels (GPU) or ops
    (CPU) by self time, and the step's launches, written to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=top)
    kernels = sum(
        e.count
        for e in prof.key_averages()
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
    )
    with open(path, "w") as f:
        f.write(f"one step, top {top} by {sort}; {kernels} GPU kernel events\n{table}\n")
    print(f"profile of one step written to {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "cifar10.yaml"))
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, help="default: the config's pretrain.batch_size")
    p.add_argument("--queue", type=int, help="default: the config's pretrain.queue_size")
    p.add_argument("--bn-splits", type=int, help="default: the config's pretrain.bn_splits")
    p.add_argument("--policy", default="all")
    p.add_argument(
        "--epoch", type=int, help="which epoch of the run (its progress goes to the policy; default: the middle one)"
    )
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the epoch")
    p.add_argument("--profile", metavar="FILE", help="also profile one step after the epoch into FILE")
    p.add_argument("--tiny", action="store_true", help="small-cnn, 512 images, batch 64, K=256: a CPU smoke run")
    p.add_argument(
        "--sync-debug",
        default="error",
        choices=["warn", "error"],
        help="error (default): a host sync inside a step raises (tests/training/test_no_host_sync.py checks the "
        "same on the meta device)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    cfg = read_config(a.config)  # an overlay: layered on config.yaml
    settings = {**cfg["pretrain"], "device": a.device}
    if a.tiny:
        a.images = 512
        settings.update(batch_size=64, queue_size=256, backbone="small-cnn", bn_splits=2)
    for key, value in (("batch_size", a.batch), ("queue_size", a.queue), ("bn_splits", a.bn_splits)):
        settings[key] = value or settings[key]
    try:  # checked as a run's settings are (a split count that does not divide the batch, say)
        s = PretrainSettings.from_dict(settings)
    except ValueError as e:
        p.error(str(e))
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.images, a.channels, a.size, a.size), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (a.images,), device=dev)
    model, aug, opt = build(s, a.policy, a.channels, a.size, dev, a.compile)
    steps = a.images // s.batch_size
    epoch = s.epochs // 2 if a.epoch is None else a.epoch
    order = torch.randperm(a.images, device=dev)

    def step(i: int):
        idx = order[(i % steps) * s.batch_size : (i % steps + 1) * s.batch_size]
        return train_step(
            model,
            aug,
            opt,
            images[idx],
            labels[idx],
            idx,
            progress=Fraction(epoch * steps + i % steps, s.epochs * steps),
        )[0]

    for i in range(a.warmup):  # compilation, cuDNN, the allocator
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(a.sync_debug)
    t0 = time.perf_counter()
    total = torch.zeros((), device=dev)
    for i in range(steps):
        total += step(i)
    if cuda:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(
        f"{s.backbone} bn_splits {s.bn_splits} batch {s.batch_size} K={s.queue_size} {a.policy} "
        f"blur {'on' if s.blur else 'off'}, epoch {epoch} of {s.epochs}, {steps} steps, on {dev} "
        f"(compile={a.compile}, cudnn.benchmark={a.cudnn_benchmark}, torch {torch.__version__}): "
        f"{steps * s.batch_size / dt:.0f} images/s, epoch {dt:.2f} s, mean loss {float(total) / steps:.3f}"
    )
    if a.profile:
        profile_step(lambda: step(0), a.profile, cuda)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

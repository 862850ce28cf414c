"""One pretraining epoch on a GPU at CIFAR scale, the whole dataset on the
device as uint8: ResNet-18 (small stem), batch 512, K=4096, 32x32x3
synthetic images, bf16 autocast, channels-last, optional torch.compile.

    python benchmarks/gpu_epoch.py                      # needs CUDA: 50,000 images
    python benchmarks/gpu_epoch.py --compile            # the encoders compiled
    python benchmarks/gpu_epoch.py --tiny               # any device (CPU): a few steps of a small model

On CUDA the steps run under ``torch.cuda.set_sync_debug_mode(a.sync_debug)``
("error", the default, makes any host sync in the step raise).  Prints images/s of the epoch.
"""

from __future__ import annotations

import argparse
import time

import torch

from negatives.data.augment import MoCoV2Augment
from negatives.models import build_encoder
from negatives.methods.moco import MoCo
from negatives.optim import SGD
from negatives.policies import parse_policy
from negatives.training.settings import step_precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--policy", default="all")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="small-cnn, 512 images, batch 64, K=256: a CPU smoke run")
    p.add_argument("--sync-debug", default="error", choices=["warn", "error"],
                   help="error (default): a host sync inside a step raises (tests/test_no_host_sync.py checks the "
                        "same on the meta device)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    if a.tiny:
        a.images, a.batch, a.queue, a.backbone = 512, 64, 256, "small-cnn"
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.images, 3, 32, 32), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (a.images,), device=dev)
    enc = build_encoder(a.backbone, 3, dim=128, num_splits=8 if not a.tiny else 2, width=16)
    model = MoCo(enc, 128, a.queue, 0.99, 0.2, parse_policy(a.policy)).to(dev, memory_format=torch.channels_last)
    if a.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    aug = MoCoV2Augment(32, 3, [0.5] * 3, [0.25] * 3).to(dev)
    opt = SGD(model.encoder_q.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    steps = a.images // a.batch

    def step(idx):
        x = images[idx]
        x_q = aug(x).contiguous(memory_format=torch.channels_last)
        x_k = aug(x).contiguous(memory_format=torch.channels_last)
        with step_precision(dev):
            loss, _ = model(x_q, x_k, labels[idx], idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    order = torch.randperm(a.images, device=dev)
    for i in range(min(3, steps)):  # warm-up (and compilation)
        step(order[i * a.batch:(i + 1) * a.batch])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(a.sync_debug)
    t0 = time.perf_counter()
    total = torch.zeros((), device=dev)
    for i in range(steps):
        total += step(order[i * a.batch:(i + 1) * a.batch])
    if cuda:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"{a.backbone} batch {a.batch} K={a.queue} {a.policy} on {dev} (compile={a.compile}): "
          f"{steps * a.batch / dt:.0f} images/s, epoch {dt:.1f} s, mean loss {float(total) / steps:.3f}")


if __name__ == "__main__":
    main()

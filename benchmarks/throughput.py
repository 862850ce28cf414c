"""Our trainer's step against the common public pipeline (benchmarks/reference.py),
side by side in one process run.

    python benchmarks/throughput.py                        # default scale of config.yaml, real data if --data
    python benchmarks/throughput.py --data /tmp/data/data.pt --steps 30

Both train the same model (our encoder: backbone + MLP head, split BN) with
the same batch, queue size, temperature, optimiser and device, one step of
each in turn: ours = batched augmentation of a uint8 batch on the device +
``MoCo`` (+ policy) as in ``train.py``'s inner loop; the reference = a
DataLoader (``--workers`` worker processes) of per-image torchvision
transforms + facebookresearch/moco's logits/cross-entropy/queue.  Each step
is timed from fetching the batch to the optimiser step; the median gives
images/s, and the ratio ours/reference is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceMoCo, reference_loader  # noqa: E402

from negatives.augment import MoCoV2Augment  # noqa: E402
from negatives.moco import MoCo  # noqa: E402
from negatives.policies import parse_policy  # noqa: E402
from negatives.train import PretrainSettings, _build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--data", help="prepared data.pt (default: random uint8 images of the default shape)")
    p.add_argument("--policy", default="all")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of both trainers (default: pretrain.threads); the reference's "
                        "DataLoader workers come on top")
    args = p.parse_args()

    s = PretrainSettings.from_dict(yaml.safe_load(open(args.config))["pretrain"])
    if args.threads:
        s.threads = args.threads
    torch.set_num_threads(s.threads)
    if args.data:
        d = torch.load(args.data, weights_only=False)
        images, labels, mean, std = d["train_images"], d["train_labels"], d["mean"], d["std"]
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (10000, 1, 28, 28), dtype=torch.uint8, generator=g)
        labels, mean, std = torch.zeros(10000, dtype=torch.long), [0.5], [0.25]
    n, c, h, w = images.shape
    b, k, tau = s.batch_size, s.queue_size, args.temperature
    print(f"scale: {s.backbone} width {s.width}, batch {b}, K={k}, {h}x{w}x{c}, threads {s.threads}, "
          f"reference workers {args.workers}, torch {torch.__version__}")

    cl = torch.channels_last
    ours = MoCo(_build(s, c, 0), s.dim, k, s.momentum, tau, parse_policy(args.policy),
                generator=torch.Generator().manual_seed(1)).to(memory_format=cl)
    opt_o = torch.optim.SGD(ours.encoder_q.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    aug = MoCoV2Augment(h, c, mean, std, crop_scale=(s.crop_scale_min, 1.0), blur=s.blur)
    ref = ReferenceMoCo(_build(s, c, 0), s.dim, k, s.momentum, tau, generator=torch.Generator().manual_seed(1))
    opt_r = torch.optim.SGD(ref.encoder_q.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = reference_loader(images, labels, mean, std, b, num_workers=args.workers)
    it = iter(loader)
    order = torch.randperm(n)
    pol = parse_policy(args.policy)

    def step_ours(i):
        idx = order[(i * b) % (n - b + 1):][:b]
        x = images[idx]
        x_q = aug(x).contiguous(memory_format=cl)
        x_k = aug(x).contiguous(memory_format=cl)
        loss, _ = ours(x_q, x_k, labels[idx], idx)
        opt_o.zero_grad(set_to_none=True)
        loss.backward()
        opt_o.step()

    def step_ref(i):
        nonlocal it
        try:
            (im_q, im_k), _ = next(it)
        except StopIteration:
            it = iter(loader)
            (im_q, im_k), _ = next(it)
        logits, tgt = ref(im_q, im_k, None if args.policy == "all" else pol)
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        opt_r.zero_grad()
        loss.backward()
        opt_r.step()

    times = {"ours": [], "reference": []}
    for i in range(args.warmup + args.steps):
        for name, f in (("ours", step_ours), ("reference", step_ref)):
            t0 = time.perf_counter()
            f(i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    for name in times:
        print(f"{name:<10} {b / med[name]:8.0f} images/s  {1e3 * med[name]:7.1f} ms/step")
    print(f"ours / reference: {med['reference'] / med['ours']:.2f}x images/s (target: at least 2x on CPU)")


if __name__ == "__main__":
    main()

"""Our trainer's step against the common public pipeline (benchmarks/reference.py),
side by side in one process run.

    python benchmarks/throughput.py                        # default scale of config.yaml, real data if --data
    python benchmarks/throughput.py --data /tmp/data/data.pt --steps 30
    python benchmarks/throughput.py --device cuda --cifar-scale    # the GPU comparison

Both train the same model (our encoder: backbone + MLP head, split BN) with
the same batch, queue size, temperature, optimiser and device: ours =
batched augmentation of a uint8 batch on the device + ``MoCo`` (+ policy) as
in ``train.py``'s inner loop; the reference = a DataLoader (``--workers``
worker processes) of per-image torchvision transforms +
facebookresearch/moco's logits/cross-entropy/queue.

Each trainer is measured at every torch thread count of ``--threads``
(default: ``pretrain.threads`` and all cores; the reference's worker
processes come on top).  Every configuration gets the machine to itself for
a block of steps, the blocks of all configurations follow each other round
after round (so load on the machine hits all alike), each after a rest in
which the reference's worker processes refill their prefetch queues (so
they do not run during another configuration's block), and the first steps
of each block are not timed (the reference's: as many as its loader had
prefetched, then it is measured at the pace of its workers).  A step is timed from fetching the batch to the
optimiser step; the median gives images/s.  Two ratios are printed: at the
same thread count, and each trainer at its best setting (the throughput a
user of either gets from the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceMoCo, reference_loader  # noqa: E402

from negatives.config_files import read_config
from negatives.data.augment import MoCoV2Augment  # noqa: E402
from negatives.methods import build_method  # noqa: E402
from negatives.optim import SGD  # noqa: E402
from negatives.policies import parse_policy  # noqa: E402
from negatives.runtime.memory import keep_freed_memory  # noqa: E402
from negatives.training.settings import PretrainSettings, seeded_encoder, step_precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--data", help="prepared data.pt (default: random uint8 images of the default shape)")
    p.add_argument("--policy", default="all")
    p.add_argument("--steps", type=int, default=24, help="timed steps per configuration")
    p.add_argument("--block", type=int, default=6, help="timed steps per block")
    p.add_argument(
        "--block-warmup",
        type=int,
        default=1,
        help="untimed steps at the start of each block (the reference's: at least 2 x workers + 1, "
        "the batches its loader prefetched before the block)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds of rest before each block, while the reference's workers refill their queues",
    )
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="the reference's DataLoader worker counts to measure"
    )
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--compile", action="store_true", help="also ours with torch.compile'd encoders (pretrain.compile)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda: both trainers' models (ours: data, augmentation "
        "and bf16 autocast on the device; the reference: fp32, batches from its DataLoader)",
    )
    p.add_argument(
        "--cifar-scale",
        action="store_true",
        help="the GPU scale: ResNet-18, batch 512, K=4096, 50,000 random 32x32x3 images",
    )
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch thread counts to measure, each for both trainers (default: pretrain.threads "
        "and every core); the reference's DataLoader workers come on top",
    )
    args = p.parse_args()
    keep_freed_memory()  # as python -m negatives does (both trainers share the process)

    s = PretrainSettings.from_dict(read_config(args.config)["pretrain"])
    args.thread_counts = sorted(set(args.threads or [s.threads, os.cpu_count() or 1]))
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if args.cifar_scale:
        s.backbone, s.batch_size, s.queue_size, s.dim, s.bn_splits, s.small_stem = "resnet18", 512, 4096, 128, 8, True
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels, mean, std = torch.randint(0, 10, (50000,), generator=g), [0.5] * 3, [0.25] * 3
    elif args.data:
        d = torch.load(args.data, weights_only=False)
        images, labels, mean, std = d["train_images"], d["train_labels"], d["mean"], d["std"]
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (10000, 1, 28, 28), dtype=torch.uint8, generator=g)
        labels, mean, std = torch.zeros(10000, dtype=torch.long), [0.5], [0.25]
    n, c, h, w = images.shape
    b, k, tau = s.batch_size, s.queue_size, args.temperature
    print(
        f"scale: {s.backbone} width {s.width}, batch {b}, K={k}, {h}x{w}x{c}, device {dev}, "
        f"threads {args.thread_counts}, reference workers {args.workers}, torch {torch.__version__}"
    )
    dev_images, dev_labels = images.to(dev), labels.to(dev)  # ours: the whole dataset on the device

    cl = torch.channels_last

    def build_ours():
        recipe = parse_policy(args.policy)
        recipe.policy.start(s.epochs, k)
        model = build_method(
            "moco", seeded_encoder(s, c, 0), recipe, s, tau, generator=torch.Generator().manual_seed(1)
        ).to(dev, memory_format=cl)
        return model, SGD(model.encoder_q.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    trainers = {"ours": build_ours()}
    if args.compile:
        trainers["ours-compiled"] = build_ours()
        for enc in (trainers["ours-compiled"][0].encoder_q, trainers["ours-compiled"][0].encoder_k):
            enc.compile()
    aug = MoCoV2Augment(h, c, mean, std, crop_scale=(s.crop_scale_min, 1.0), blur=s.blur).to(dev)
    ref = ReferenceMoCo(
        seeded_encoder(s, c, 0), s.dim, k, s.momentum, tau, generator=torch.Generator().manual_seed(1)
    ).to(dev)
    opt_r = torch.optim.SGD(ref.encoder_q.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # one persistent loader per worker count; a loader's iterator restarts at its epoch's end
    loaders = {
        wk: reference_loader(images, labels, mean, std, b, num_workers=wk, pin_memory=cuda) for wk in args.workers
    }
    iters = {wk: iter(dl) for wk, dl in loaders.items()}
    order = torch.randperm(n, device=dev)
    pol = parse_policy(args.policy)

    def step_ours(i, _workers=None, name="ours"):
        model, opt = trainers[name]
        idx = order[(i * b) % (n - b + 1) :][:b]
        x = dev_images[idx]
        x_q = aug(x).contiguous(memory_format=cl)
        x_k = aug(x).contiguous(memory_format=cl)
        with step_precision(dev):
            loss, _ = model(x_q, x_k, dev_labels[idx], idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_ref(i, workers):
        try:
            (im_q, im_k), _ = next(iters[workers])
        except StopIteration:
            iters[workers] = iter(loaders[workers])
            (im_q, im_k), _ = next(iters[workers])
        im_q, im_k = im_q.to(dev, non_blocking=True), im_k.to(dev, non_blocking=True)
        logits, tgt = ref(im_q, im_k, None if args.policy == "all" else pol)
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        opt_r.zero_grad()
        loss.backward()
        opt_r.step()

    # each configuration gets the machine to itself for a block of steps, the
    # blocks of all configurations follow each other round after round (load
    # on the machine hits all alike); the first steps of a block are not
    # timed: the thread pool resizes, and a reference loader comes back with
    # the batches it prefetched (2 per worker) while it was not measured
    steps = {"ours": step_ours, "reference": step_ref}
    if args.compile:
        steps["ours-compiled"] = lambda i, wk: step_ours(i, wk, "ours-compiled")
        t0 = time.perf_counter()
        steps["ours-compiled"](0, None)
        print(f"compiling the encoders (first step): {time.perf_counter() - t0:.1f} s")
    configs = [(name, t, None) for name in trainers for t in args.thread_counts] + [
        ("reference", t, wk) for t in args.thread_counts for wk in args.workers
    ]
    times = {cfg: [] for cfg in configs}
    for name, t, wk in configs:
        torch.set_num_threads(t)
        for _ in range(args.warmup):
            steps[name](0, wk)
    i = 0
    for _ in range(max(1, -(-args.steps // args.block))):
        for name, t, wk in configs:
            torch.set_num_threads(t)
            time.sleep(args.settle)  # the reference's workers refill their prefetch queues now, not during a block
            # a reference loader holds up to 2 batches per worker from before
            skip = args.block_warmup if wk is None else max(args.block_warmup, 2 * wk + 1)
            for j in range(skip + args.block):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                steps[name](i, wk)
                if cuda:
                    torch.cuda.synchronize()
                i += 1
                if j >= skip:
                    times[(name, t, wk)].append(time.perf_counter() - t0)
    med = {cfg: statistics.median(v) for cfg, v in times.items()}
    for (name, t, wk), m in med.items():
        setting = f"{t} thread(s)" + (f" + {wk} worker process(es)" if name == "reference" else "")
        print(
            f"{name:<14} {setting:<36} {b / m:8.0f} images/s  {1e3 * m:7.1f} ms/step  "
            f"({len(times[(name, t, wk)])} steps)"
        )
    t0 = min(args.thread_counts)
    same = min(m for (name, t, _), m in med.items() if name == "reference" and t == t0)
    print(
        f"ours / reference at {t0} torch thread(s) each (reference: its best worker count): "
        f"{same / med[('ours', t0, None)]:.2f}x images/s"
    )
    best_o = min((m, cfg) for cfg, m in med.items() if cfg[0].startswith("ours"))
    if args.compile:
        for t in args.thread_counts:
            print(
                f"compiled / eager encoders at {t} thread(s): "
                f"{med[('ours', t, None)] / med[('ours-compiled', t, None)]:.2f}x images/s"
            )
    best_r = min((m, cfg) for cfg, m in med.items() if cfg[0] == "reference")
    print(
        f"ours / reference, each at its best setting ({best_o[1][0]} {best_o[1][1]} thread(s); reference {best_r[1][1]} "
        f"thread(s) + {best_r[1][2]} worker(s)): {best_r[0] / best_o[0]:.2f}x images/s (target: at least 2x)"
    )


if __name__ == "__main__":
    main()

"""Training throughput of `all` against band policies, side by side in one run.

    python benchmarks/band_overhead.py                 # the default scale of config.yaml
    python benchmarks/band_overhead.py --steps 40 --policies all 'keep[95_100)' 'keep[0_95)'
    python benchmarks/band_overhead.py --all-policies  # every policy of config.yaml's figures
    python benchmarks/band_overhead.py --all-policies --rounds 3   # each raced 3 times: median and range
    python benchmarks/band_overhead.py --all-policies --device cuda --queue 65536 --batch 256 \
        --backbone resnet18 --image-size 32 --channels 3   # the GPU figure (bf16 autocast)

Each policy races `all` (the first policy) on its own: their steps are
interleaved (A, B, A, B, ...) on identically built models and the same
batches, so that machine noise hits both alike; the medians give images/s
and the policy's ratio to `all`.  With ``--rounds N`` every policy races N
times, the races of each round in turn, so that each policy meets the
machine's slower and faster phases; the ratio printed is the median of its
N, next to their range.  The first ``--warmup`` steps of every race are not
timed: a policy's model has sat idle through the other races, and its first
steps after that pay for cold caches and allocator state, which `all`
(raced every time) and a training process pay once.  Also printed: the
selection alone (the policy's call on a [B, K] matrix) and its share of
`all`'s step, a second, less noisy estimate of the overhead.
The target: any policy costs at most 10% over `all` on CPU.
Labels are drawn from 10 classes, so the class policies remove what they
would on Fashion-MNIST; every policy is built as the trainer builds it
(``build_method``, ``start(epochs)``, ``queue_extra`` for replace mode).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from negatives.config_files import read_config
from negatives.data.augment import MoCoV2Augment
from negatives import grid
from negatives.methods import build_method
from negatives.policies import Candidates, parse_policy
from negatives.optim import SGD
from negatives.training.settings import PretrainSettings, seeded_encoder
from negatives.training.step import train_step
from negatives.runtime.memory import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--policies", nargs="+", default=["all", "keep[95_100)", "keep[0_95)", "drop[99.9_100)"])
    p.add_argument("--all-policies", action="store_true", help="every MoCo policy of the config's figures")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10,
                   help="untimed steps at the start of each race (a model idle through the other races "
                        "comes back with cold caches and allocator state, which a training process pays once)")
    p.add_argument("--rounds", type=int, default=1,
                   help="race every policy this many times, in rounds spread over the run; report the median "
                        "ratio and its range (one race's ratio moves by a few points with the machine's phase)")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU: bf16 autocast, steps timed to a synchronize)")
    p.add_argument("--queue", type=int, help="K (default: pretrain.queue_size); the GPU figure: 65536")
    p.add_argument("--batch", type=int, help="batch size (default: pretrain.batch_size)")
    p.add_argument("--backbone", help="default: pretrain.backbone (the GPU figure: resnet18 on 32x32x3)")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1:
        p.error(f"--rounds and --steps must be at least 1, got {args.rounds} and {args.steps}")
    keep_freed_memory()  # as python -m negatives does

    cfg = read_config(args.config)
    s = PretrainSettings.from_dict(cfg["pretrain"])
    s.queue_size, s.batch_size = args.queue or s.queue_size, args.batch or s.batch_size
    s.backbone = args.backbone or s.backbone
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.set_num_threads(s.threads)
    b, k = s.batch_size, s.queue_size
    print(f"scale: {s.backbone} width {s.width}, batch {b}, K={k}, {args.image_size}px x{args.channels}, "
          f"device {dev}, threads {s.threads}, torch {torch.__version__}")

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, args.channels, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=g).to(dev)
    labels, idx = torch.randint(0, 10, (b,), generator=g).to(dev), torch.arange(b, device=dev)
    if args.all_policies:
        args.policies = list(dict.fromkeys(
            ["all"] + [p for f in grid.FIGURES if f not in grid.ANALYSES and grid.figure_method(cfg, f) == "moco"
                       for p in grid.figure_policies(cfg, f)]))
    aug = MoCoV2Augment(args.image_size, args.channels, [0.5] * args.channels, [0.25] * args.channels).to(dev)

    def build(name):
        policy = parse_policy(name)
        policy.start(s.epochs)
        model = build_method("moco", seeded_encoder(s, args.channels, 0), dim=s.dim, queue_size=k, queue_extra=s.queue_extra,
                             momentum=s.momentum, temperature=0.2, policy=policy,
                             generator=torch.Generator().manual_seed(1)).to(dev, memory_format=torch.channels_last)
        return model, SGD(model.encoder_q.parameters(), lr=0.01, momentum=0.9)

    def race(runs):
        """Steps of ``runs`` interleaved; the median step time of each."""
        times = {name: [] for name in runs}
        for step in range(args.warmup + args.steps):
            for name, (model, opt) in runs.items():
                torch.manual_seed(step)
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                train_step(model, aug, opt, images, labels, idx, progress=0.5)  # past any warm-up
                if cuda:
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        return {name: statistics.median(t) for name, t in times.items()}

    # each policy against the baseline in its own race, two models at a
    # time: what one training process sees (racing all policies at once
    # also measures the models evicting each other from the caches)
    first = args.policies[0]
    baseline = build(first)
    models = {name: build(name) for name in args.policies[1:]}
    rounds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rounds[name].append(race({first: baseline, name: model}))

    sim = (torch.rand(b, k, generator=g) * 2 - 1).to(dev)
    keys = torch.nn.functional.normalize(torch.randn(k, s.dim, generator=g), dim=1).to(dev)
    cands = Candidates(labels=torch.randint(0, 10, (k,), generator=g).to(dev), keys=keys, query_labels=labels,
                       queries=torch.nn.functional.normalize(torch.randn(b, s.dim, generator=g), dim=1).to(dev))
    spread = args.rounds > 1
    print(f"\n{'policy':<36}{'images/s':>10}{'step ms':>10}{first + ' ms':>10}{'vs ' + first:>10}"
          f"{'selection ms':>14}{'sel / step':>12}" + (f"{'range of ' + str(args.rounds):>18}" if spread else ""))
    worst = 0.0
    for name, races in rounds.items():
        ratios = sorted(r[name] / r[first] for r in races)
        med = {n: statistics.median(r[n] for r in races) for n in (first, name)}
        policy = parse_policy(name)
        policy.start(s.epochs)
        policy(sim, cands, 0.5)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            policy(sim, cands, 0.5)
        if cuda:
            torch.cuda.synchronize()
        sel = (time.perf_counter() - t0) / 20
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        print(f"{name:<36}{b / med[name]:>10.0f}{med[name] * 1e3:>10.1f}{med[first] * 1e3:>10.1f}{ratio:>9.3f}x"
              f"{sel * 1e3:>14.2f}{100 * sel / med[first]:>11.1f}%"
              + (f"{ratios[0]:>9.3f}-{ratios[-1]:.3f}x" if spread else ""))
    target = "+5% on GPU (K=65536, batch 256)" if cuda else "+10% on CPU"
    median = "median of the rounds' ratios, " if spread else ""
    print(f"\nworst overhead over {first} ({median}each policy): {100 * (worst - 1):+.1f}% (target: at most {target})")

if __name__ == "__main__":
    main()

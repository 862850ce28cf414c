"""Training throughput of `all` against band policies, side by side in one run;
or, with ``--before REV``, of each policy against itself as built by the package at git revision REV.

    python benchmarks/band_overhead.py                 # the default scale of config.yaml
    python benchmarks/band_overhead.py --steps 40 --policies all 'keep[95_100)' 'keep[0_95)'
    python benchmarks/band_overhead.py --all-policies  # every policy of config.yaml's figures
    python benchmarks/band_overhead.py --all-policies --rounds 3   # each raced 3 times: median and range
    python benchmarks/band_overhead.py --all-policies --device cuda --queue 65536 --batch 256 \
        --backbone resnet18 --image-size 32 --channels 3   # the GPU figure (bf16 autocast)
    python benchmarks/band_overhead.py --before fbecef0 --all-policies --rounds 5 --share-queries 0
        # each policy of the working tree against itself at fbecef0 (without the log's gradient shares)
    python benchmarks/band_overhead.py --shares-cost --all-policies --rounds 3
        # each policy against itself with pretrain.share_queries 0: what the log's gradient shares cost

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

With ``--before REV`` every policy instead races the same policy built by the
package of revision REV (imported next to the working tree's, see
``_before.py``), the same way: interleaved steps, the same seeds and batches,
``--rounds`` spread over the run.  Printed per policy: images/s before and
after (medians), the step-time ratio after/before (above 1: the working tree
is slower) and the selection alone before and after.  A race's ratio is the
median over its steps of each step's ratio to the one just before it, of the
other side: neighbours in time share the machine's phase, which on a busy
machine narrows the rounds' range next to a ratio of the two medians; the
ratio printed is the median over the rounds, next to their range.  Each side
is built through its own package only, in one function per side
(:func:`working_tree_side`, :func:`revision_side`), so that the two may have
different APIs.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from negatives import grid
from negatives.config_files import read_config
from negatives.runtime.memory import keep_freed_memory
from negatives.training.settings import PretrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _before import ROOT, load_before


class Inputs(NamedTuple):
    """What both sides are given: the scale and the same tensors."""

    settings: dict  # the config's pretrain section at the command line's scale
    channels: int
    image_size: int
    device: torch.device
    images: torch.Tensor  # uint8 [B, C, H, W]
    labels: torch.Tensor  # [B], 10 classes
    idx: torch.Tensor  # [B]
    sim: torch.Tensor  # [B, K], for the selection alone
    cand_labels: torch.Tensor
    keys: torch.Tensor  # [K, dim]
    queries: torch.Tensor  # [B, dim]


class Side(NamedTuple):
    """One package's part of a race."""

    #: a policy -> one training step (``train_step`` at progress 0.5) of a model freshly built for it
    build: Callable[[str], Callable[[], None]]
    #: a policy -> one call of its selection alone on the fixed [B, K] matrix
    select: Callable[[str], Callable[[], None]]


def working_tree_side(x: Inputs) -> Side:
    """The working tree's package: every call this benchmark makes into its API
    is here, and only here (adapt this one function when that API changes; the
    revision side keeps its own).  A model is built as the trainer builds it."""
    from negatives.data.augment import MoCoV2Augment
    from negatives.methods import build_method
    from negatives.optim import SGD
    from negatives.policies import Candidates, parse_policy
    from negatives.training.settings import seeded_encoder
    from negatives.training.step import train_step

    s = PretrainSettings.from_dict(x.settings)
    aug = MoCoV2Augment(x.image_size, x.channels, [0.5] * x.channels, [0.25] * x.channels).to(x.device)
    k = x.sim.shape[1]
    cands = Candidates(
        labels=x.cand_labels,
        keys=x.keys,
        query_labels=x.labels,
        queries=x.queries,
        age_ordered=True,
    )

    def build(name):
        recipe = parse_policy(name)
        recipe.policy.start(s.epochs, s.queue_size)
        model = build_method(
            "moco", seeded_encoder(s, x.channels, 0), recipe, s, 0.2, generator=torch.Generator().manual_seed(1)
        ).to(x.device, memory_format=torch.channels_last)
        opt = SGD(model.encoder_q.parameters(), lr=0.01, momentum=0.9)
        return lambda: train_step(model, aug, opt, x.images, x.labels, x.idx, progress=0.5)  # past any warm-up

    def select(name):
        policy = parse_policy(name).policy
        policy.start(s.epochs, k)  # the selection alone: the K newest, no older stand-ins
        return lambda: policy(x.sim, cands, 0.5)

    return Side(build, select)


def revision_side(pkg: str, x: Inputs) -> Side:
    """The package of an older revision, imported as ``pkg``: every call this
    benchmark makes into it is here, and only here, through its API as of
    fbecef0 (a model built as that revision's trainer builds it; settings it
    does not know are left out)."""
    mod = {
        m: importlib.import_module(f"{pkg}.{m}")
        for m in ("data.augment", "methods", "optim", "policies", "training.settings", "training.step")
    }
    settings = mod["training.settings"]
    known = set(settings.PretrainSettings.__dataclass_fields__)
    s = settings.PretrainSettings.from_dict({k: v for k, v in x.settings.items() if k in known})
    aug = (
        mod["data.augment"]
        .MoCoV2Augment(x.image_size, x.channels, [0.5] * x.channels, [0.25] * x.channels)
        .to(x.device)
    )
    parse_policy = mod["policies"].parse_policy
    cands = mod["policies"].Candidates(labels=x.cand_labels, keys=x.keys, query_labels=x.labels, queries=x.queries)
    train_step = mod["training.step"].train_step

    def build(name):
        policy = parse_policy(name)
        policy.start(s.epochs)
        model = (
            mod["methods"]
            .build_method(
                "moco",
                settings.seeded_encoder(s, x.channels, 0),
                dim=s.dim,
                queue_size=s.queue_size,
                queue_extra=s.queue_extra,
                momentum=s.momentum,
                temperature=0.2,
                policy=policy,
                generator=torch.Generator().manual_seed(1),
            )
            .to(x.device, memory_format=torch.channels_last)
        )
        opt = mod["optim"].SGD(model.encoder_q.parameters(), lr=0.01, momentum=0.9)
        return lambda: train_step(model, aug, opt, x.images, x.labels, x.idx, progress=0.5)

    def select(name):
        policy = parse_policy(name)
        policy.start(s.epochs)
        return lambda: policy(x.sim, cands, 0.5)

    return Side(build, select)


def race(runs: dict, steps: int, warmup: int, cuda: bool) -> dict:
    """Steps of ``runs`` (name -> one step) interleaved; the step times of each, in order."""
    times = {name: [] for name in runs}
    for step in range(warmup + steps):
        for name, one_step in runs.items():
            torch.manual_seed(step)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            one_step()
            if cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def call_time(call: Callable[[], None], cuda: bool, n: int = 20) -> float:
    """Mean seconds of one call, after one untimed call."""
    call()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def against_first(args, x: Inputs, side: Side, cuda: bool) -> None:
    """Each policy against the first (`all`) in its own race, two models at a
    time: what one training process sees (racing all policies at once also
    measures the models evicting each other from the caches)."""
    b = x.images.shape[0]
    first = args.policies[0]
    baseline = side.build(first)
    models = {name: side.build(name) for name in args.policies[1:]}
    rounds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times = race({first: baseline, name: model}, args.steps, args.warmup, cuda)
            rounds[name].append({n: statistics.median(t) for n, t in times.items()})

    spread = args.rounds > 1
    print(
        f"\n{'policy':<36}{'images/s':>10}{'step ms':>10}{first + ' ms':>10}{'vs ' + first:>10}"
        f"{'selection ms':>14}{'sel / step':>12}" + (f"{'range of ' + str(args.rounds):>18}" if spread else "")
    )
    worst = 0.0
    for name, races in rounds.items():
        ratios = sorted(r[name] / r[first] for r in races)
        med = {n: statistics.median(r[n] for r in races) for n in (first, name)}
        sel = call_time(side.select(name), cuda)
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        print(
            f"{name:<36}{b / med[name]:>10.0f}{med[name] * 1e3:>10.1f}{med[first] * 1e3:>10.1f}{ratio:>9.3f}x"
            f"{sel * 1e3:>14.2f}{100 * sel / med[first]:>11.1f}%"
            + (f"{ratios[0]:>9.3f}-{ratios[-1]:.3f}x" if spread else "")
        )
    target = "+5% on GPU (K=65536, batch 256)" if cuda else "+10% on CPU"
    median = "median of the rounds' ratios, " if spread else ""
    print(f"\nworst overhead over {first} ({median}each policy): {100 * (worst - 1):+.1f}% (target: at most {target})")


def against_revision(args, x: Inputs, before: Side, after: Side, cuda: bool) -> None:
    """Each policy of the working tree against itself at ``--before``, in its own race."""
    b = x.images.shape[0]
    models = {name: {"before": before.build(name), "after": after.build(name)} for name in args.policies}
    rounds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, runs in models.items():
            times = race(runs, args.steps, args.warmup, cuda)
            rounds[name].append(
                {
                    "ratio": statistics.median(a / b for a, b in zip(times["after"], times["before"])),
                    **{side: statistics.median(t) for side, t in times.items()},
                }
            )

    print(
        f"\n{'policy':<36}{'before img/s':>13}{'after img/s':>12}{'after/before':>13}"
        f"{'range of ' + str(args.rounds):>16}{'sel before ms':>15}{'sel after ms':>14}"
    )
    worst = (0.0, "")
    for name, races in rounds.items():
        ratios = sorted(r["ratio"] for r in races)
        med = {side: statistics.median(r[side] for r in races) for side in ("before", "after")}
        # the selections alone, interleaved too; the median of five means of 20 calls
        sel = {"before": [], "after": []}
        calls = {"before": before.select(name), "after": after.select(name)}
        for _ in range(5):
            for side, call in calls.items():
                sel[side].append(call_time(call, cuda))
        ratio = statistics.median(ratios)
        worst = max(worst, (ratio, name))
        print(
            f"{name:<36}{b / med['before']:>13.0f}{b / med['after']:>12.0f}{ratio:>12.3f}x"
            f"{ratios[0]:>9.3f}-{ratios[-1]:.3f}x{statistics.median(sel['before']) * 1e3:>15.2f}"
            f"{statistics.median(sel['after']) * 1e3:>14.2f}"
        )
    print(
        f"\nslowest against {args.before} (median of {args.rounds} round(s) of {args.steps} steps): {worst[1]} "
        f"{100 * (worst[0] - 1):+.1f}% per step"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--policies", nargs="+", default=["all", "keep[95_100)", "keep[0_95)", "drop[99.9_100)"])
    p.add_argument("--all-policies", action="store_true", help="every MoCo policy of the config's figures")
    p.add_argument(
        "--before", metavar="REV", help="race each policy against itself as built by the package at this git revision"
    )
    p.add_argument(
        "--share-queries", type=int, help="pretrain.share_queries of the working tree's models (default: the config's)"
    )
    p.add_argument(
        "--shares-cost",
        action="store_true",
        help="race each policy against itself with pretrain.share_queries 0 (the log's gradient shares off)",
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed steps at the start of each race (a model idle through the other races "
        "comes back with cold caches and allocator state, which a training process pays once)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="race every policy this many times, in rounds spread over the run; report the median "
        "ratio and its range (one race's ratio moves by a few points with the machine's phase)",
    )
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU: bf16 autocast, steps timed to a synchronize)")
    p.add_argument("--queue", type=int, help="K (default: pretrain.queue_size); the GPU figure: 65536")
    p.add_argument("--batch", type=int, help="batch size (default: pretrain.batch_size)")
    p.add_argument("--backbone", help="default: pretrain.backbone (the GPU figure: resnet18 on 32x32x3)")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        p.error(
            f"--rounds and --steps must be at least 1 and --warmup at least 0, "
            f"got {args.rounds}, {args.steps} and {args.warmup}"
        )
    keep_freed_memory()  # as python -m negatives does

    cfg = read_config(args.config)
    scale = {"queue_size": args.queue, "batch_size": args.batch, "backbone": args.backbone}
    settings = {**cfg["pretrain"], **{key: v for key, v in scale.items() if v}}
    if args.share_queries is not None:
        settings["share_queries"] = args.share_queries
    if args.shares_cost and args.before:
        p.error("--shares-cost races the working tree against itself; it takes no --before")
    try:
        s = PretrainSettings.from_dict(settings)
    except ValueError as e:
        p.error(f"{args.config}: {e}")
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.set_num_threads(s.threads)
    b, k = s.batch_size, s.queue_size
    if args.all_policies:
        args.policies = list(
            dict.fromkeys(
                ["all"]
                + [
                    p
                    for f in grid.FIGURES
                    if f not in grid.ANALYSES and grid.figure_method(cfg, f) == "moco"
                    for p in grid.figure_policies(cfg, f)
                ]
            )
        )

    g = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (b, args.channels, args.image_size, args.image_size), dtype=torch.uint8, generator=g
    ).to(dev)
    labels, idx = torch.randint(0, 10, (b,), generator=g).to(dev), torch.arange(b, device=dev)
    sim = (torch.rand(b, k, generator=g) * 2 - 1).to(dev)
    keys = torch.nn.functional.normalize(torch.randn(k, s.dim, generator=g), dim=1).to(dev)
    cand_labels = torch.randint(0, 10, (k,), generator=g).to(dev)
    queries = torch.nn.functional.normalize(torch.randn(b, s.dim, generator=g), dim=1).to(dev)
    x = Inputs(settings, args.channels, args.image_size, dev, images, labels, idx, sim, cand_labels, keys, queries)

    sides = {"the working tree": working_tree_side(x)}
    if args.shares_cost:  # the same package, its gradient shares off: "before" is share_queries 0
        args.before = "share_queries 0"
        sides[args.before] = working_tree_side(x._replace(settings={**settings, "share_queries": 0}))
    elif args.before:
        try:
            pkg = load_before(args.before)
            atexit.register(shutil.rmtree, Path(pkg.__file__).parents[2], ignore_errors=True)  # its extracted copy
            sides[args.before] = revision_side(pkg.__name__, x)
        except subprocess.CalledProcessError as e:
            p.error(f"--before: cannot read revision {args.before!r}: {e.stderr.decode().strip()}")
    for rev, side in sides.items():  # every policy parsed by every side before any race
        for name in args.policies:
            try:
                side.select(name)
            except ValueError as e:
                p.error(f"--policies: {name!r} is no policy of {rev}: {e}")
    after, before = sides["the working tree"], sides.get(args.before)
    print(
        f"scale: {s.backbone} width {s.width}, batch {b}, K={k}, {args.image_size}px x{args.channels}, "
        f"device {dev}, threads {s.threads}, torch {torch.__version__}"
        + (f"; {args.before} against the working tree" if before else "")
    )
    if before:
        against_revision(args, x, before, after, cuda)
    else:
        against_first(args, x, after, cuda)


if __name__ == "__main__":
    main()

"""One MoCo v2 training step (train.py's inner loop: two augmented views, both
encoders, loss, backward, SGD), before and after the speed work, side by side.

    python benchmarks/step_speed.py [--before 81a404e] [--policies all 'keep[0,95)'] [--steps 20]

The revision ``--before`` and the working tree build the same model from the
same seed at the default scale of config.yaml, on the same real or random
uint8 batch; their steps are interleaved and the median step time of each is
printed with the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _before import ROOT, load_before  # noqa: E402


def build(pkg: str, s: dict, policy: str, c: int, h: int, mean, std):
    aug_m, moco_m, pol_m, train_m = (
        importlib.import_module(f"{pkg}.{m}") for m in ("augment", "moco", "policies", "train")
    )
    known = {f.name for f in dataclasses.fields(train_m.PretrainSettings)}
    st = train_m.PretrainSettings.from_dict({k: v for k, v in s.items() if k in known})  # older revisions know fewer
    model = moco_m.MoCo(
        train_m.seeded_encoder(st, c, 0),
        st.dim,
        st.queue_size,
        st.momentum,
        0.2,
        pol_m.parse_policy(policy),
        generator=torch.Generator().manual_seed(1),
    ).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    aug = aug_m.MoCoV2Augment(h, c, mean, std)
    return model, opt, aug


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="81a404e")
    p.add_argument("--data")
    p.add_argument("--policies", nargs="+", default=["all", "keep[0,95)"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    s = yaml.safe_load(open(ROOT / "config.yaml"))["pretrain"]
    torch.set_num_threads(s["threads"])
    before = load_before(args.before).__name__
    if args.data:
        d = torch.load(args.data, weights_only=False)
        images, mean, std = d["train_images"][: s["batch_size"]], d["mean"], d["std"]
    else:
        images = torch.randint(0, 256, (s["batch_size"], 1, 28, 28), dtype=torch.uint8)
        mean, std = [0.5], [0.25]
    n, c, h, w = images.shape
    labels, idx = torch.zeros(n, dtype=torch.long), torch.arange(n)
    runs = {
        (pkg, pol): (*build(pkg, s, pol, c, h, mean, std), []) for pol in args.policies for pkg in (before, "negatives")
    }
    for step in range(args.warmup + args.steps):
        for model, opt, aug, times in runs.values():
            torch.manual_seed(step)
            t0 = time.perf_counter()
            x_q = aug(images).contiguous(memory_format=torch.channels_last)
            x_k = aug(images).contiguous(memory_format=torch.channels_last)
            loss, stats = model(x_q, x_k, labels, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(stats["kept"])
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
    print(f"{'policy':<16}{'before ms':>11}{'after ms':>10}{'speed-up':>10}")
    for pol in args.policies:
        b = statistics.median(runs[(before, pol)][3])
        a = statistics.median(runs[("negatives", pol)][3])
        print(f"{pol:<16}{1e3 * b:>11.1f}{1e3 * a:>10.1f}{b / a:>9.2f}x")


if __name__ == "__main__":
    main()

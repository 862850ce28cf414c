"""The policy's part of a MoCo step, at a git revision and in the working tree, side by side.

    python benchmarks/policy_ab.py f86607e                     # the default policies
    python benchmarks/policy_ab.py f86607e all 'keep[0_95)' 'mochi[256_128_64_1]'

Times what a policy adds to a step, without the encoders: ``sim = q @
keys.T`` (K = 4096, or K + queue_extra = 5120 in replace mode), the
selection, the loss, and the backward pass to ``q`` -- the revision's code
(imported next to the working tree by ``_before.load_before``) and the
working tree's, interleaved step by step (median of 40 each after 3 of
warm-up), one thread, batch 256, D = 64, labels from 10 classes.  Printed:
both medians, their difference, and each policy's part against `all`'s.
This isolates the policy code from the convolutions, whose run-to-run drift
is larger than these differences; ``band_overhead.py`` gives the share of a
whole training step.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from negatives.policies import PolicyError, parse_policy
from negatives.runtime.memory import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _before import load_before  # noqa: E402

POLICIES = [
    "all",
    "keep[95_100)",
    "keep[0_95)",
    "drop[99_100)",
    "drop-same-class@replace",
    "drop[99.9_100)@replace",
    "drop[99.9_100)&other-class@replace",
    "mochi[256_128_64_1]",
    "ring[100->10_10_linear_50]",
    "hard[1_0.1]",
    "curriculum[0_100->95_100_linear]",
]
B, K, D, EXTRA = 256, 4096, 64, 1024


def _loss(pkg: str):
    """``(policy, selection, q, l_pos, sim) -> loss`` at τ = 0.2, in the layouts of revisions that had
    one (``methods.loss.ContrastiveLoss``, or the flat ``moco.policy_loss`` before it); None for the
    layout where a policy name's ``Recipe`` carries its loss."""
    if importlib.util.find_spec(f"{pkg}.policies.recipe") is not None:
        return None
    try:
        criterion = importlib.import_module(f"{pkg}.methods.loss").ContrastiveLoss
    except ModuleNotFoundError:
        flat = importlib.import_module(f"{pkg}.moco").policy_loss
        return lambda policy, sel, q, l_pos, sim: flat(policy, sel, q, l_pos, sim, 0.2)
    return lambda policy, sel, q, l_pos, sim: criterion(0.2, policy.loss)(l_pos, sim, sel, q)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("revision", help="the git revision to compare with (e.g. a commit before a change)")
    p.add_argument("policies", nargs="*", default=POLICIES)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    for name in args.policies:
        try:
            parse_policy(name)  # an unknown policy: its error before anything is timed
        except PolicyError as e:
            p.error(str(e))
    try:
        before = load_before(args.revision)
    except subprocess.CalledProcessError as e:
        p.error(f"cannot read revision {args.revision!r}: {e.stderr.decode().strip()}")
    keep_freed_memory()
    torch.set_num_threads(1)
    versions = {
        tag: (importlib.import_module(f"{pkg}.policies"), _loss(pkg))
        for tag, pkg in (("before", before.__name__), ("after", "negatives"))
    }

    g = torch.Generator().manual_seed(0)
    q_raw = torch.randn(B, D, generator=g)
    labels = torch.randint(0, 10, (B,), generator=g)
    # keys leaning towards one query direction: cosines spread as after some training
    keys_all = F.normalize(torch.randn(K + EXTRA, D, generator=g) + 0.3 * q_raw[:1], dim=1)
    key_labels = torch.randint(0, 10, (K + EXTRA,), generator=g)

    def make_step(tag: str, name: str):
        P, M = versions[tag]
        if M is None:
            return _recipe_step(P, name)
        policy = P.parse_policy(name)
        policy.start(4)
        window = K if policy.mode == "replace" else None
        n = K + (EXTRA if window else 0)
        keys = keys_all[:n]

        def step():
            q = F.normalize(q_raw.clone().requires_grad_(True), dim=1)
            l_pos = (q * q.detach().roll(1, 0)).sum(1)
            sim = q @ keys.T
            cands = P.Candidates(
                labels=key_labels[:n], indices=torch.arange(n), keys=keys, query_labels=labels, queries=q.detach()
            )
            with torch.no_grad():
                sel = P.select(policy, sim.detach(), cands, 0.5, window)
            M(policy, sel, q, l_pos, sim).backward()

        return step

    def _recipe_step(P, name: str):
        """The step through a name's Recipe: its policy's mask and mix, its loss."""
        recipe = P.parse_policy(name)
        recipe.policy.start(4, K)
        n = K + (EXTRA if recipe.replace else 0)
        keys = keys_all[:n]

        def step():
            q = F.normalize(q_raw.clone().requires_grad_(True), dim=1)
            l_pos = (q * q.detach().roll(1, 0)).sum(1)
            sim = q @ keys.T
            cands = P.Candidates(
                labels=key_labels[:n],
                indices=torch.arange(n),
                keys=keys,
                query_labels=labels,
                queries=q.detach(),
                age_ordered=True,
            )  # the first K the newest
            with torch.no_grad():
                sel = recipe.policy(sim.detach(), cands, 0.5)
            recipe.loss(l_pos, sim, sel.keep, 0.2, sel.synthetic(q, sim)).backward()

        return step

    print(
        f"batch {B}, K={K} (+{EXTRA} in replace mode), D={D}, 1 thread, torch {torch.__version__}; "
        f"before = {args.revision}, after = working tree"
    )
    print(f"\n{'policy':<38}{'before ms':>10}{'after ms':>10}{'change':>9}{'before - all':>14}{'after - all':>13}")
    medians = {}
    for name in args.policies:
        steps = {tag: make_step(tag, name) for tag in versions}
        times = {tag: [] for tag in steps}
        for r in range(3 + args.steps):
            for tag, step in steps.items():
                t0 = time.perf_counter()
                step()
                if r >= 3:
                    times[tag].append(time.perf_counter() - t0)
        medians[name] = {tag: statistics.median(t) * 1e3 for tag, t in times.items()}
        m = medians[name]
        base = medians.get("all", {"before": float("nan"), "after": float("nan")})
        print(
            f"{name:<38}{m['before']:>10.2f}{m['after']:>10.2f}{m['after'] - m['before']:>+9.2f}"
            f"{m['before'] - base['before']:>+14.2f}{m['after'] - base['after']:>+13.2f}"
        )


if __name__ == "__main__":
    main()

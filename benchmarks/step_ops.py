"""Kernel-launching ATen calls of one training step, by phase, on the ``meta``
device (which takes the library's GPU branches and computes nothing).

    python benchmarks/step_ops.py                          # CIFAR scale: ResNet-18, 8 splits, batch 512, K=4096
    python benchmarks/step_ops.py --bn-splits 1 --blur     # plain batch-norm; the blur on
    python benchmarks/step_ops.py --policies all 'mochi[256_128_64_1]' --progress 0.5

Every ATen call that touches a device tensor is counted with a
``TorchDispatchMode``, except views (no kernel) and bare allocations
(``empty*``); each counted call launches at least one kernel on a GPU, so
the count is a floor on the step's launches.  The count does not depend on
the batch size.  The phases are the library's own functions, wrapped only to
label the calls they make.  ``tests/training/test_step_budget.py`` holds the budget.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from fractions import Fraction
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from negatives.data.augment import MoCoV2Augment
from negatives.methods import build_method, num_candidates
from negatives.methods import moco as moco_module
from negatives.models import build_encoder
from negatives.optim import SGD
from negatives.policies import parse_policy
from negatives.training.settings import PretrainSettings
from negatives.training.step import train_step

PHASES = ("aug", "query fwd", "key fwd", "momentum", "glue", "selection", "loss", "enqueue", "backward", "opt step")
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class OpCounter(TorchDispatchMode):
    """Counts kernel-launching ATen calls on non-CPU tensors, by the current phase."""

    def __init__(self):
        super().__init__()
        self.phase = "glue"
        self.counts: Counter = Counter()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in _ALLOCATIONS or name in ("detach", "alias", "lift_fresh"):
            return out
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type != "cpu" for t in tensors):
            self.counts[self.phase] += 1
            self.ops[(self.phase, name)] += 1
        return out

    @contextlib.contextmanager
    def labelled(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous


def _label(counter: OpCounter, phase: str, fn):
    def wrapped(*args, **kwargs):
        with counter.labelled(phase):
            return fn(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def _phases(counter: OpCounter, model, aug, opt):
    """Label the calls of the step's parts (instance attributes and the moco
    module's names; all restored afterwards)."""
    patched = []

    def patch(obj, name, phase):
        patched.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, _label(counter, phase, getattr(obj, name)))

    patch(aug, "forward", "aug")
    patch(model.encoder_q, "forward", "query fwd")
    patch(moco_module, "shuffled_keys", "key fwd")
    patch(moco_module, "momentum_update", "momentum")
    patch(model, "policy", "selection")
    patch(model, "loss", "loss")
    if hasattr(model, "queue"):
        patch(model.queue, "enqueue", "enqueue")
    patch(opt, "step", "opt step")
    original_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        with counter.labelled("backward"):
            return original_backward(self, *a, **k)

    torch.Tensor.backward = backward
    try:
        yield
    finally:
        torch.Tensor.backward = original_backward
        for obj, name, old in reversed(patched):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_MISSING = object()


def build_step(
    policy: str = "all",
    *,
    method: str = "moco",
    backbone: str = "resnet18",
    bn_splits: int = 8,
    batch: int = 512,
    queue: int = 4096,
    image: int = 32,
    channels: int = 3,
    blur: bool = False,
    width: int = 16,
    epochs: int = 10,
    device="meta",
):
    """The pieces of one step as the trainer builds them: ``(model, aug, opt, images, labels)``."""
    pol = parse_policy(policy)
    pol.policy.start(epochs, num_candidates(method, queue, batch))
    enc = build_encoder(backbone, channels, dim=128, num_splits=bn_splits, width=width)
    # the log's gradient shares as a run measures them by default (pretrain.share_queries)
    settings = SimpleNamespace(
        dim=128, queue_size=queue, queue_extra=1024, momentum=0.99, share_queries=PretrainSettings().share_queries
    )
    model = build_method(method, enc, pol, settings, 0.2).to(device, memory_format=torch.channels_last)
    aug = MoCoV2Augment(image, channels, [0.5] * channels, [0.25] * channels, blur=blur).to(device)
    opt = SGD(model.encoder_q.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    x = torch.zeros(batch, channels, image, image, dtype=torch.uint8, device=device)
    y = (torch.arange(batch) % 10).to(device)
    return model, aug, opt, x, y


def count_step(policy: str = "all", progress: float = 0.5, **kw) -> OpCounter:
    """The calls of the second step (the first creates the momentum buffers)
    of :func:`build_step`'s step, by phase."""
    model, aug, opt, x, y = build_step(policy, **kw)
    idx = torch.arange(x.shape[0], device=x.device)
    progress = Fraction(progress).limit_denominator(1000)
    train_step(model, aug, opt, x, y, idx, progress)
    counter = OpCounter()
    with _phases(counter, model, aug, opt), counter:
        train_step(model, aug, opt, x, y, idx, progress)
    return counter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--policies",
        nargs="+",
        default=["all", "keep[95_100)", "mochi[256_128_64_1]", "ring[100->10_10_linear_50]", "drop[99_100)@replace"],
    )
    p.add_argument("--method", default="moco", choices=["moco", "simclr"])
    p.add_argument("--bn-splits", type=int, default=8)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--blur", action="store_true", help="the blur on (configs/cifar10.yaml has it off)")
    p.add_argument("--progress", type=float, default=0.5, help="training progress passed to the policy")
    p.add_argument("--top", type=int, default=0, help="also print the N most frequent ops")
    a = p.parse_args()
    print(
        f"{a.method}, ResNet-18 small stem, bn_splits {a.bn_splits}, batch {a.batch}, K={a.queue}, 3x32x32, "
        f"blur {'on' if a.blur else 'off'}, progress {a.progress}: kernel-launching ATen calls per step (meta)"
    )
    print("| policy | " + " | ".join(PHASES) + " | total |")
    print("| --- |" + " ---: |" * (len(PHASES) + 1))
    for policy in a.policies:
        c = count_step(
            policy, a.progress, method=a.method, bn_splits=a.bn_splits, batch=a.batch, queue=a.queue, blur=a.blur
        )
        print(f"| `{policy}` | " + " | ".join(str(c.counts[ph]) for ph in PHASES) + f" | {sum(c.counts.values())} |")
        if a.top:
            for (phase, op), n in c.ops.most_common(a.top):
                print(f"    {n:5d}  {phase:10s} {op}")


if __name__ == "__main__":
    main()

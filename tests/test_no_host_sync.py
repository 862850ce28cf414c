"""No host synchronisation inside a training step, checked without a GPU.

A step that reads a device value on the host -- ``int(t)``, ``t.item()``,
``bool(t)``, boolean-mask indexing, ``nonzero``, ``bincount``, ``unique`` --
stalls a CUDA stream until the GPU catches up.  Each of those raises on the
``meta`` device, which has shapes and no values, so a whole step (both
augmentations, both encoders, the policy's selection, the loss, backward and
the optimiser) that runs on ``meta`` reads nothing back.  On a GPU,
``benchmarks/gpu_epoch.py`` checks the same with
``torch.cuda.set_sync_debug_mode("error")``.
"""

import pytest
import torch

from negatives.data.augment import MoCoV2Augment
from negatives.methods import build_method
from negatives.models import build_encoder
from negatives.optim import SGD
from negatives.policies import parse_policy

POLICIES = ["all", "keep[95_100)", "keep[0_95)", "keep[40_60)", "drop[99_100)", "drop-same-class",
            "drop[95_100)&same-class", "drop[99_100)@replace", "drop-same-class@replace",
            "drop[95_100)&other-class@replace", "mochi[16_8_4]",
            "ring[100->10_10_linear_50]", "ring[50->10_0_linear]", "curriculum[0_100->90_100_linear]", "debiased[0.1]", "hard[1_0.1]",
            "retain-hard[0.1]"]


def _step(method, policy, device):
    pol = parse_policy(policy)
    pol.start(4)
    enc = build_encoder("small-cnn", 1, dim=16, num_splits=2, width=8)
    model = build_method(method, enc, dim=16, queue_size=256, queue_extra=64, momentum=0.99, temperature=0.2,
                         policy=pol).to(device)
    aug = MoCoV2Augment(16, 1, [0.5], [0.25]).to(device)
    opt = SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.zeros(32, 1, 16, 16, dtype=torch.uint8, device=device)
    labels = (torch.arange(32) % 4).to(device)
    for _ in range(2):
        loss, stats = model(aug(x), aug(x), labels, torch.arange(32, device=device), progress=0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss, stats


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_a_training_step_reads_nothing_back_from_the_device(method, policy):
    if method == "simclr" and (policy.endswith("@replace") or policy.startswith("retain")):
        pytest.skip("queue policies are MoCo's")
    loss, stats = _step(method, policy, torch.device("meta"))
    assert loss.device.type == "meta" and loss.shape == ()
    assert all(v.shape == () for v in stats.values())


def test_the_check_catches_a_host_read():
    """The premise: reading a meta tensor's value fails."""
    t = torch.zeros(3, device="meta")
    for read in (lambda: int(t.sum()), lambda: t[t > 0], lambda: torch.bincount(t.long())):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()

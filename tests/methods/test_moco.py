"""MoCo (negatives.methods.moco): the momentum update, a step's loss as the
recipe's loss of the step's cosines for every kind of policy, builder.py's
step, the keys enqueued (and counted by a retaining queue), the exact kept
counts, and the float32 loss under a bf16 autocast."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from negatives.losses.info_nce import info_nce
from negatives.methods import build_method
from negatives.methods.moco import MoCo, momentum_update
from negatives.models import build_encoder
from negatives.policies import Candidates, parse_policy
from negatives.queues.fifo import KeyQueue
from negatives.training.settings import PretrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference import ReferenceMoCo


def _moco(policy="all", k=40, dim=8, extra=8, momentum=0.9, seed=1):
    recipe = parse_policy(policy)
    recipe.policy.start(4, k)
    torch.manual_seed(seed)
    return build_method(
        "moco",
        build_encoder("small-cnn", 1, dim=dim, width=4),
        recipe,
        PretrainSettings(dim=dim, queue_size=k, queue_extra=extra, momentum=momentum),
        0.2,
        generator=torch.Generator().manual_seed(3),
    )


def test_momentum_update_is_the_formula():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in b.parameters()]
    momentum_update(a, b, 0.9)
    for pq, pk, pk0 in zip(a.parameters(), b.parameters(), before):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq)


def test_a_step_enqueues_the_key_encoders_keys_and_trains_only_the_query_encoder():
    model = _moco("keep[95_100)")
    x = torch.randn(4, 1, 12, 12)
    before = model.queue.keys.clone()
    loss, stats = model(x, x, torch.tensor([1, 2, 3, 4]), torch.tensor([7, 8, 9, 10]))
    assert torch.isfinite(loss) and float(stats["kept"]) == 2  # round(40 * 5 / 100)
    keys, labels, indices = model.queue.ordered()
    assert labels[-4:].tolist() == [1, 2, 3, 4] and indices[-4:].tolist() == [7, 8, 9, 10]
    assert (labels[:-4] == -1).all() and int(model.queue.ptr) == 4
    with torch.no_grad():
        expected = F.normalize(model.encoder_k(x), dim=1)
    torch.testing.assert_close(keys[-4:], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.queue.keys[4:], before[4:])
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())


def test_mochi_enqueues_only_the_keys():
    model = _moco("mochi[8,4,4]")
    before = model.queue.keys.clone()
    x = torch.randn(4, 1, 12, 12)
    loss, stats = model(x, x, torch.tensor([1, 2, 3, 4]), torch.tensor([7, 8, 9, 10]))
    assert torch.isfinite(loss) and float(stats["kept"]) == 40 + 8
    assert model.queue.keys.shape == (40, 8) and torch.equal(model.queue.keys[4:], before[4:])
    assert model.queue.labels[:4].tolist() == [1, 2, 3, 4] and (model.queue.labels[4:] == -1).all()
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())


POLICIES = [
    "all",
    "keep[90_100)",
    "drop[50_100)",
    "drop-same-class",
    "drop[50_100)@replace",
    "drop-same-class@replace",
    "mochi[8_4_4]",
    "ring[50_10]",
    "debiased[0.1]",
    "hard[1_0.1]",
    "retain-hard[0.25]",
]


@pytest.mark.parametrize("name", POLICIES)
def test_a_steps_loss_is_the_recipes_loss_of_the_steps_cosines(name):
    """Recomputed from the encoders after the step (eval mode: no shuffle) and
    the queue before it: the policy's selection over the queue's slots (newest
    first for @replace), its synthetic negatives, the recipe's loss; the loss,
    the query encoder's gradient, the kept count and the queue after the step."""
    recipe = parse_policy(name)
    model = _moco(name, k=16, extra=8).eval()
    g = torch.Generator().manual_seed(5)
    for step in range(2):  # the second step: a queue not in slot order
        queue = copy.deepcopy(model.queue)
        x_q, x_k = torch.rand(4, 1, 12, 12, generator=g), torch.rand(4, 1, 12, 12, generator=g)
        labels, indices = torch.randint(0, 3, (4,), generator=g), torch.arange(4) + 4 * step
        torch.manual_seed(10 + step)  # MoCHi's draws
        loss, stats = model(x_q, x_k, labels, indices, progress=0.5)
        grads = torch.autograd.grad(loss, list(model.encoder_q.parameters()))
        q = F.normalize(model.encoder_q(x_q), dim=1)
        with torch.no_grad():
            k = F.normalize(model.encoder_k(x_k), dim=1)
        order = queue.newest_first() if recipe.replace else torch.arange(queue.size)  # @replace: newest first
        sim = q @ queue.keys[order].T
        cands = Candidates(
            labels=queue.labels[order],
            indices=queue.indices[order],
            keys=queue.keys[order],
            query_labels=labels,
            queries=q.detach(),
            age_ordered=recipe.replace,
        )
        torch.manual_seed(10 + step)
        sel = model.policy(sim.detach(), cands, 0.5)
        want = recipe.loss((q * k).sum(1), sim, sel.keep, 0.2, sel.synthetic(q, sim))
        torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
        for got, ref in zip(grads, torch.autograd.grad(want, list(model.encoder_q.parameters()))):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
        assert torch.equal(stats["kept"], sel.kept_per_query(sim.shape[1]))
        queue.enqueue(k, labels, indices, sim=sim.detach())
        for key, value in queue.state_dict().items():
            torch.testing.assert_close(model.queue.state_dict()[key], value, rtol=1e-6, atol=1e-6)


def test_a_retaining_queue_counts_the_steps_hardest_keys():
    model = _moco("retain-hard[0.5]", k=40)
    x = torch.randn(4, 1, 12, 12)
    for i in range(3):
        loss, stats = model(x, x, torch.full((4,), i), torch.arange(4) + 4 * i)
        loss.backward()
        assert float(stats["kept"]) == 40
    # each step 4 queries x round(40 * 5 / 100) = 2 hardest; the counts of evicted keys restart at 0
    assert 0 < int(model.queue.hard.sum()) <= 3 * 4 * 2 and int(model.queue.seen.max()) == 12
    assert int(model.queue.clock) == 12


@pytest.mark.parametrize(
    "policy,kept",
    [("keep[0_95)", 3891), ("drop[99.9_100)", 4092), ("drop[10_20)", 4096 - 410), ("drop[90_100)@replace", 4096)],
)
def test_the_kept_count_is_exact(policy, kept):
    model = _moco(policy, k=4096, extra=512)
    x = torch.randn(8, 1, 12, 12)
    _, stats = model(x, x, torch.zeros(8, dtype=torch.long), torch.arange(8))
    assert float(stats["kept"]) == kept


def test_all_and_keep_0_100_give_the_same_loss():
    x = torch.randn(4, 1, 12, 12)
    losses = [_moco(p)(x, x, torch.zeros(4, dtype=torch.long), torch.arange(4))[0] for p in ("all", "keep[0_100)")]
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("policy", ["all", "keep[0_95)", "keep[90_95)"])
def test_a_step_is_builder_pys_step(policy):
    """The same encoder weights, queue, views and key shuffle: the loss is
    builder.py's cross-entropy (the removed negatives' logits -inf), and the
    queue after the step is its queue."""
    torch.manual_seed(0)
    recipe = parse_policy(policy)
    ours = MoCo(
        build_encoder("small-cnn", 1, dim=8, width=4, num_splits=2),
        KeyQueue(40, 8, generator=torch.Generator().manual_seed(3)),
        recipe.policy,
        recipe.loss,
        0.9,
        0.2,
    )
    ref = ReferenceMoCo(build_encoder("small-cnn", 1, dim=8, width=4, num_splits=2), 8, 40, 0.9, 0.2)
    ref.load_state_dict(
        {
            **{k: v for k, v in ref.state_dict().items() if not k.startswith("encoder")},
            **{k: v for k, v in ours.state_dict().items() if k.startswith("encoder")},
        },
        strict=True,
    )
    ref.queue.copy_(ours.queue.keys.T)
    x_q, x_k = torch.randn(4, 1, 12, 12), torch.randn(4, 1, 12, 12)
    torch.manual_seed(1)  # the same key shuffle for both
    loss, _ = ours(x_q, x_k, torch.zeros(4, dtype=torch.long), torch.arange(4))
    torch.manual_seed(1)
    logits, labels = ref(x_q, x_k, None if policy == "all" else parse_policy(policy).policy)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.queue.keys, ref.queue.T, rtol=1e-5, atol=1e-6)


def test_moco_takes_a_queue_a_policy_and_a_loss():
    enc = build_encoder("small-cnn", 1, dim=8, width=4)
    seen = []

    def loss(l_pos, sim, keep, temperature, synthetic):
        seen.append((sim.shape, keep, temperature, synthetic))
        return info_nce(l_pos, sim, keep, temperature, synthetic)

    model = MoCo(enc, KeyQueue(12, 8), parse_policy("drop[50_100)").policy, loss, momentum=0.5, temperature=0.3)
    x = torch.randn(4, 1, 12, 12)
    model(x, x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    ((shape, keep, temperature, synthetic),) = seen
    assert shape == (4, 12) and keep.shape == (4, 12) and (keep.sum(1) == 6).all()
    assert temperature == 0.3 and synthetic is None


@pytest.mark.parametrize(
    "policy",
    ["all", "keep[95_100)", "drop[90_100)&other-class", "mochi[16_8_4]", "drop[90_100)@replace", "hard[1_0.1]"],
)
def test_bf16_autocast_step_computes_the_loss_in_float32_close_to_the_float32_step(policy):
    """The GPU path's precision, on CPU: under a bf16 autocast only the
    encoders and the [B, K] matmul run in bf16; the loss is float32 and the
    float32 step's within bf16's rounding (same weights, views and queue)."""
    recipe = parse_policy(policy)
    recipe.policy.start(4, 256)
    torch.manual_seed(0)
    model = build_method(
        "moco",
        build_encoder("small-cnn", 1, dim=16, num_splits=2, width=8),
        recipe,
        PretrainSettings(dim=16, queue_size=256, queue_extra=64, momentum=0.99),
        0.2,
        generator=torch.Generator().manual_seed(1),
    )
    x = torch.rand(32, 1, 16, 16)
    views = (x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    labels, idx = torch.arange(32) % 4, torch.arange(32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = {}
    for precision in ("fp32", "bf16"):
        model.load_state_dict(state)
        torch.manual_seed(2)  # the same shuffle and MoCHi draws
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses[precision], _ = model(*views, labels, idx, progress=0.5)
    assert losses["fp32"].dtype == losses["bf16"].dtype == torch.float32
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=5e-3, atol=5e-3)

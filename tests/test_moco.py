"""MoCo v2 pieces: the InfoNCE loss, the queue, the momentum update, split BN."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from negatives.models import SplitBatchNorm2d, build_encoder
from negatives.methods.moco import MoCo, momentum_update
from negatives.losses import Terms, fused_info_nce, info_nce
from negatives.queue import KeyQueue
from negatives.policies import Band, parse_policy


def test_info_nce_matches_hand_computation():
    tau = 0.5
    l_pos = torch.tensor([0.8, 0.1])
    sim = torch.tensor([[0.2, -0.4, 0.6], [0.3, 0.0, -1.0]])
    # L_b = -log(e^{p/τ} / (e^{p/τ} + Σ e^{s/τ}))
    expected = []
    for p, row in zip([0.8, 0.1], [[0.2, -0.4, 0.6], [0.3, 0.0, -1.0]]):
        num = math.exp(p / tau)
        expected.append(-math.log(num / (num + sum(math.exp(s / tau) for s in row))))
    got = info_nce(l_pos, sim, None, tau)
    assert abs(got.item() - sum(expected) / 2) < 1e-6


def test_info_nce_drop_mode_removes_negatives_from_denominator():
    tau = 0.2
    l_pos = torch.tensor([0.5])
    sim = torch.tensor([[0.9, 0.1, -0.3]])
    keep = torch.tensor([[False, True, True]])
    num = math.exp(0.5 / tau)
    expected = -math.log(num / (num + math.exp(0.1 / tau) + math.exp(-0.3 / tau)))
    assert abs(info_nce(l_pos, sim, keep, tau).item() - expected) < 1e-6
    # and a removed negative gets no gradient
    s = sim.clone().requires_grad_(True)
    info_nce(l_pos, s, keep, tau).backward()
    assert s.grad[0, 0] == 0 and s.grad[0, 1] != 0


def test_info_nce_equals_cross_entropy_reference():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    k = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    queue = F.normalize(torch.randn(32, 16, generator=g), dim=1)
    # the reference implementation: logits [pos | neg] / T, labels 0
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.07
    ref = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert torch.allclose(info_nce((q * k).sum(1), q @ queue.T, None, 0.07), ref, atol=1e-5)


def test_queue_is_fifo_and_stores_labels_and_indices():
    q = KeyQueue(size=6, dim=2, generator=torch.Generator().manual_seed(0))
    assert (q.labels == -1).all() and (q.indices == -1).all()
    for step in range(4):  # 4 batches of 2: the first is overwritten after 3
        keys = F.normalize(torch.full((2, 2), float(step + 1)), dim=1) * torch.tensor([1.0, (-1.0) ** step])
        q.enqueue(keys, torch.tensor([10 * step, 10 * step + 1]), torch.tensor([2 * step, 2 * step + 1]))
    keys, labels, indices = q.ordered()
    assert labels.tolist() == [10, 11, 20, 21, 30, 31]  # oldest first; batch 0 evicted
    assert indices.tolist() == [2, 3, 4, 5, 6, 7]
    assert torch.allclose(keys[-1], F.normalize(torch.tensor([4.0, -4.0]), dim=0))
    assert int(q.ptr) == 2


def test_queue_rejects_batch_not_dividing_size():
    q = KeyQueue(size=5, dim=2)
    try:
        q.enqueue(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    except ValueError as e:
        assert "multiple" in str(e)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")


def test_momentum_update_matches_formula():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in b.parameters()]
    momentum_update(a, b, 0.9)
    for pq, pk, pk0 in zip(a.parameters(), b.parameters(), before):
        assert torch.allclose(pk, 0.9 * pk0 + 0.1 * pq)


def test_moco_step_enqueues_keys_and_uses_policy():
    torch.manual_seed(0)
    enc = build_encoder("small-cnn", 1, dim=8, width=4)
    model = MoCo(enc, 8, queue_size=40, momentum=0.9, temperature=0.2, policy=Band("keep", 95, 100))
    x = torch.randn(4, 1, 12, 12)
    loss, stats = model(x, x, torch.tensor([1, 2, 3, 4]), torch.tensor([7, 8, 9, 10]))
    assert torch.isfinite(loss)
    assert stats["kept"] == 2  # round(40 * 5 / 100)
    keys, labels, indices = model.queue.ordered()
    assert labels[-4:].tolist() == [1, 2, 3, 4] and indices[-4:].tolist() == [7, 8, 9, 10]
    # the enqueued keys are the key encoder's normalised outputs
    with torch.no_grad():
        expected = F.normalize(model.encoder_k(x), dim=1)
    assert torch.allclose(keys[-4:], expected, atol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_moco_loss_with_all_equals_keep_0_100():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 12, 12)
    losses = []
    for pol in ("all", "keep[0_100)"):
        torch.manual_seed(1)
        enc = build_encoder("small-cnn", 1, dim=8, width=4)
        m = MoCo(enc, 8, 40, 0.9, 0.2, parse_policy(pol), generator=torch.Generator().manual_seed(3))
        losses.append(m(x, x, torch.zeros(4, dtype=torch.long), torch.arange(4))[0])
    assert torch.allclose(losses[0], losses[1])


def test_split_batchnorm_normalises_each_split_separately():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    x[4:] += 5.0  # second half with another mean
    bn = SplitBatchNorm2d(3, num_splits=2).train()
    y = bn(x)
    ref = F.batch_norm(x[:4], None, None, training=True), F.batch_norm(x[4:], None, None, training=True)
    assert torch.allclose(y[:4], ref[0], atol=1e-5) and torch.allclose(y[4:], ref[1], atol=1e-5)
    # running mean: average of the splits' updates
    m0 = 0.1 * x[:4].mean((0, 2, 3))
    m1 = 0.1 * x[4:].mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, (m0 + m1) / 2, atol=1e-5)
    bn.eval()
    assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False), atol=1e-6)


def test_gathered_band_and_masked_band_give_the_same_loss_and_gradient():
    """A keep band reaches the loss as [B, n] positions; a mask of the same
    negatives must give the same loss and the same gradient."""
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(100, 8, generator=g), dim=1)
    l_pos = torch.rand(6, generator=g)
    sel = Band("keep", 90, 95)(q @ queue.T, None)
    assert sel._index is not None and sel._index.shape == (6, 5)      # the stored form: positions
    grads = []
    for use_index in (True, False):
        s = (q @ queue.T).requires_grad_(True)
        neg = s.gather(1, sel._index) if use_index else s
        loss = info_nce(l_pos, neg, None if use_index else sel.mask(s.shape), 0.1)
        loss.backward()
        grads.append((loss.detach(), s.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def _autograd_info_nce(l_pos, sim, keep, temperature, drop_index=None):
    """InfoNCE as plain autograd ops: the form :class:`KeptExpSum` replaces."""
    pos, neg = l_pos / temperature, sim / temperature
    with torch.no_grad():
        m = torch.maximum(neg.amax(dim=1), pos)
    e = torch.exp(neg - m.unsqueeze(1))
    if keep is not None:
        e = torch.where(keep, e, 0.0)
    if drop_index is not None:
        e = e.scatter(1, drop_index, 0.0)
    return (m + torch.log(torch.exp(pos - m) + e.sum(dim=1)) - pos).mean()


@pytest.mark.parametrize("form", ["all", "keep", "drop_index"])
def test_fused_negative_term_gives_autograds_loss_and_gradients_bit_for_bit(form):
    g = torch.Generator().manual_seed(3)
    sim0, pos0 = torch.rand(32, 300, generator=g) * 2 - 1, torch.rand(32, generator=g) * 2 - 1
    keep = (torch.rand(32, 300, generator=g) > 0.3) if form == "keep" else None
    drop = torch.rand(32, 300, generator=g).argsort(1)[:, :9] if form == "drop_index" else None
    out = []
    def fused(l_pos, sim, keep, temperature, drop_index):
        return fused_info_nce(l_pos, sim, temperature, Terms(keep=keep, drop_index=drop_index))

    for loss_fn in (_autograd_info_nce, fused):
        sim, pos = sim0.clone().requires_grad_(), pos0.clone().requires_grad_()
        loss = loss_fn(pos, sim, keep, 0.2, drop)
        loss.backward()
        out.append((loss, sim.grad, pos.grad))
    for a, b in zip(*out):
        assert torch.equal(a, b)
    grad = out[1][1]
    if keep is not None:
        assert (grad[~keep] == 0).all() and (grad[keep] != 0).all()
    if drop is not None:
        assert (grad.gather(1, drop) == 0).all()

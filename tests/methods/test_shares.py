"""The gradient's share by difficulty (negatives.methods.shares): by hand, the
groups as the bands rank them, and in a real step equal to the shares of the
loss's own gradient computed again by autograd and ranked by a full sort;
a band's shares zero outside it; the measurement leaves the step unchanged."""

import copy

import pytest
import torch

from negatives.methods import build_method
from negatives.methods.shares import GROUPS, GradientShares, group_positions, shares
from negatives.models import build_encoder
from negatives.policies import Band, parse_policy
from negatives.ranking import percent_of
from negatives.training.settings import PretrainSettings

K, EXTRA, B, DIM = 1000, 200, 8, 8


def test_shares_by_hand():
    w = torch.tensor([[1.0, 3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    groups = [torch.tensor([[3], [0]]), torch.tensor([[0, 2], [1, 2]])]
    got = shares(w, groups, torch.tensor([[2.0], [0.0]], dtype=torch.float64))
    # total 1 + 3 + 4 + 2 = 10: {3} 4/10, {0, 2} 1/10, synthetic 2/10; no gradient at all: every share 0
    assert got.tolist() == [[0.4, 0.1, 0.2], [0.0, 0.0, 0.0]]
    assert shares(w[:1], [groups[0][:1]], None).tolist() == [[0.5, 0.0]]  # without synthetic: 4/8


@pytest.mark.parametrize("m", [20, 333, 1000, 4096])
def test_the_groups_are_the_bands_candidates(m):
    """The hardest p% and the easiest half are what keep[100-p_100) and keep[0_50) keep."""
    sim = torch.rand(6, m, generator=torch.Generator().manual_seed(m))
    got = group_positions(sim)
    bands = [Band("keep", 100 - p, 100) for p in (0.1, 1, 5, 10)] + [Band("keep", 0, 50)]
    for positions, band in zip(got, bands):
        want = band(sim, None).keep
        mask = torch.zeros_like(want).scatter_(1, positions, True)
        assert torch.equal(mask, want) and positions.shape[1] == int(want[0].sum()), band.name


def _model(method, policy, queries, seed=0):
    recipe = parse_policy(policy)
    recipe.policy.start(4, K if method == "moco" else 2 * B - 2)
    torch.manual_seed(seed)
    settings = PretrainSettings(dim=DIM, queue_size=K, queue_extra=EXTRA, momentum=0.9, share_queries=queries)
    model = build_method(
        method, build_encoder("small-cnn", 1, dim=DIM, width=4), recipe, settings, 0.2, torch.Generator().manual_seed(3)
    )
    return model.train(), recipe


def plain_shares(sim, weights, synthetic):
    """One query at a time: its candidates sorted hardest first (a full sort), each group's
    ``|dL/ds|`` over the total of its negatives' and synthetic negatives'."""
    m, rows = sim.shape[1], []
    for b in range(sim.shape[0]):
        order = torch.argsort(sim[b], descending=True)
        extra = 0.0 if synthetic is None else float(synthetic[b].sum())
        total = float(weights[b].sum()) + extra
        if total == 0:  # no gradient to any negative (DCL's clamp): every share 0
            rows.append([0.0] * 6)
            continue
        row = [float(weights[b][order[: percent_of(m, p)]].sum()) / total for p in (0.1, 1, 5, 10)]
        row.append(float(weights[b][order[m - percent_of(m, 50) :]].sum()) / total)
        rows.append(row + [extra / total])
    return torch.tensor(rows, dtype=torch.float64)


def _step_with_reference(method, policy, queries):
    """One training step's measured shares, and the same computed again: the
    loss's gradient with respect to its inputs by autograd on copies of them,
    mapped back to the candidates, ranked by a full sort."""
    model, recipe = _model(method, policy, queries)
    seen = {}
    watch = model.gradient_shares.watch

    def spying_watch(sim, at, neg, synthetic):
        seen.update(sim=sim.detach().clone(), at=at)
        return watch(sim, at, neg, synthetic)

    def recording_loss(l_pos, neg, keep, temperature, synthetic=None):
        seen.update(args=(l_pos, neg, synthetic), keep=keep)
        return recipe.loss(l_pos, neg, keep, temperature, synthetic)

    model.gradient_shares.watch, model.loss = spying_watch, recording_loss
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 1, 12, 12, generator=g)
    loss, stats = model(x, x + 0.05 * torch.rand(B, 1, 12, 12, generator=g), torch.arange(B) % 3, torch.arange(B))
    loss.backward()
    leaves = [None if a is None else a.detach().clone().requires_grad_(True) for a in seen["args"]]
    again = recipe.loss(*leaves[:2], seen["keep"], 0.2, leaves[2])
    grads = torch.autograd.grad(again, [a for a in leaves[1:] if a is not None])
    r = min(queries, seen["sim"].shape[0])
    w = grads[0][:r].abs().double()
    if seen["at"] is not None:
        w = torch.zeros(r, seen["sim"].shape[1], dtype=torch.float64).scatter_(1, seen["at"][:r], w)
    synthetic = grads[1][:r].abs().double() if len(grads) > 1 else None
    return stats, plain_shares(seen["sim"][:r].double(), w, synthetic)


CASES = [
    ("moco", "all"),
    ("moco", "keep[95_100)"),
    ("moco", "keep[0_90)"),
    ("moco", "drop[95_100)"),
    ("moco", "drop-same-class@replace"),
    ("moco", "mochi[64_32_16]"),
    ("moco", "debiased[0.1]"),
    ("moco", "hard[1_0.1]"),
    ("moco", "ring[50_10]"),
    ("simclr", "all"),
    ("simclr", "keep[90_100)"),
    ("simclr", "mochi[4_2_2]"),
]


@pytest.mark.parametrize("method,policy", CASES)
def test_a_steps_shares_are_those_of_its_losss_gradient(method, policy):
    stats, want = _step_with_reference(method, policy, queries=5)
    sums = stats["shares"]
    assert sums.shape == (len(GROUPS) + 1,) and float(sums[-1]) == 5  # the first 5 queries
    torch.testing.assert_close(sums[:-1].double() / 5, want.mean(0), rtol=1e-5, atol=1e-6)
    got = dict(zip(GROUPS, (sums[:-1] / 5).tolist()))
    if policy == "keep[95_100)":  # every negative it keeps is among the hardest 5%
        assert got["hardest_5"] == pytest.approx(1, abs=1e-6) and got["easiest_50"] == 0
    if policy in ("drop[95_100)", "keep[0_90)"):  # none of them
        assert got["hardest_5"] == 0 and (got["hardest_10"] == 0) == (policy == "keep[0_90)")
    assert (got["synthetic"] > 0) == policy.startswith("mochi")


def test_infonces_shares_are_its_softmax_weights():
    """With every negative kept, |dL/ds_i| is e^{s_i/τ} / Σ e^{logits/τ} / (τB): the shares are the softmax's."""
    stats, _ = _step_with_reference("moco", "all", queries=B)
    model, _ = _model("moco", "all", B)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 1, 12, 12, generator=g)
    x_k = x + 0.05 * torch.rand(B, 1, 12, 12, generator=g)
    captured = {}
    model.loss = lambda l_pos, neg, keep, t, s=None: captured.update(l=l_pos, n=neg) or l_pos.sum()
    model(x, x_k, torch.arange(B) % 3, torch.arange(B))
    p = torch.softmax(torch.cat([captured["l"][:, None], captured["n"]], 1).detach().double() / 0.2, 1)[:, 1:]
    torch.testing.assert_close(
        stats["shares"][:-1].double() / B,
        plain_shares(captured["n"].detach().double(), p, None).mean(0),
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize("method,policy", [("moco", "mochi[64_32_16]"), ("moco", "keep[95_100)"), ("simclr", "all")])
def test_measuring_leaves_the_step_bit_for_bit(method, policy):
    weights = []
    for queries in (0, 8):
        model, _ = _model(method, policy, queries)
        opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(2)
        for step in range(3):
            x = torch.rand(B, 1, 12, 12, generator=g)
            torch.manual_seed(step)  # MoCHi's draws, the shuffle
            loss, stats = model(x, x.flip(3), torch.arange(B) % 3, torch.arange(B) + B * step)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert ("shares" in stats) == bool(queries)
        weights.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_nothing_is_measured_without_gradient():
    neg = torch.rand(3, 5)
    assert GradientShares(4).watch(neg, None, neg, None) == (neg, None, {})
    assert GradientShares(0).watch(neg, None, neg.requires_grad_(), None)[2] == {}

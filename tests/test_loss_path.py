"""One loss path: for every policy family, in drop and replace mode, the loss
training runs (``ContrastiveLoss.__call__``, which reads a selection in the
form it is stored in) equals its plain definition
(``ContrastiveLoss.reference``: the mask over the candidates, the synthetic
negatives appended, the plain InfoNCE or the policy's loss), value and
gradient, in float64."""

import pytest
import torch
import torch.nn.functional as F

from negatives.losses import info_nce
from negatives.methods.loss import ContrastiveLoss
from negatives.policies import Candidates, Selection, parse_policy, select

POLICIES = ["all", "keep[90_100)", "keep[0_75)", "keep[40_60)", "drop[90_100)", "drop[5_95)", "drop-same-class",
            "drop[75_100)&same-class", "drop[90_100)&other-class", "drop[90_100)@replace",
            "drop[90_100)&same-class@replace", "drop-same-class@replace", "mochi[16_8_4]", "mochi[16_8_0]",
            "ring[100->10_10_linear_50]", "ring[20_0]", "curriculum[0_100->90_100_linear]", "debiased[0.1]",
            "hard[1_0.1]", "retain-hard[0.1]"]
B, K, EXTRA, D = 6, 64, 32, 8


def _step(name: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    policy = parse_policy(name)
    policy.start(4)
    window = K if policy.mode == "replace" else None
    n = K + (EXTRA if window else 0)
    raw = torch.randn(B, D, dtype=torch.float64, generator=g)
    keys = F.normalize(torch.randn(n, D, dtype=torch.float64, generator=g) + 0.5 * raw[:1], dim=1)
    positive = F.normalize(torch.randn(B, D, dtype=torch.float64, generator=g), dim=1)
    cands = Candidates(labels=torch.randint(0, 3, (n,), generator=g), indices=torch.arange(n), keys=keys,
                       query_labels=torch.randint(0, 3, (B,), generator=g),
                       queries=F.normalize(raw, dim=1))
    with torch.no_grad():
        sel = select(policy, F.normalize(raw, dim=1) @ keys.T, cands, 0.5, window)
    return policy, raw, keys, positive, sel


@pytest.mark.parametrize("name", POLICIES)
def test_the_loss_equals_its_plain_definition(name):
    policy, raw, keys, positive, sel = _step(name)
    criterion = ContrastiveLoss(0.2, policy.loss)
    results = []
    for form in (criterion, criterion.reference):
        x = raw.clone().requires_grad_(True)
        q = F.normalize(x, dim=1)
        loss = form((q * positive).sum(1), q @ keys.T, sel, q)
        loss.backward()
        results.append((loss.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)


def test_the_plain_definition_is_infonce_over_what_the_mask_keeps():
    """The reference itself, by hand: one query, four candidates, the second
    and fourth kept: -log(e^{p/t} / (e^{p/t} + e^{s_2/t} + e^{s_4/t}))."""
    l_pos, sim = torch.tensor([0.5], dtype=torch.float64), torch.tensor([[0.9, 0.1, 0.7, -0.3]], dtype=torch.float64)
    sel = Selection.at(torch.tensor([[3, 1]]))
    got = ContrastiveLoss(0.5).reference(l_pos, sim, sel, torch.zeros(1, 2, dtype=torch.float64))
    e = torch.exp(torch.tensor([0.5, 0.1, -0.3], dtype=torch.float64) / 0.5)
    assert abs(float(got) - float(-torch.log(e[0] / e.sum()))) < 1e-15
    assert torch.equal(sel.mask((1, 4)), torch.tensor([[False, True, False, True]]))
    assert float(info_nce(l_pos, sim, sel.mask((1, 4)), 0.5)) == float(got)


def test_synthetic_negatives_read_from_their_own_cosines_on_simclr():
    """SimCLR's candidates get gradient; MoCHi's mixes must not: with
    ``synthetic_sim`` (the cosines with gradient to the query only) the fast
    loss equals the reference given the same cosines."""
    policy, raw, keys, positive, _ = _step("mochi[16_8_4]", seed=3)
    with torch.no_grad():
        q0 = F.normalize(raw, dim=1)
        sel = policy(q0 @ keys.T, Candidates(keys=keys, queries=q0), 0.5)
    criterion = ContrastiveLoss(0.2)
    grads = []
    for form in (criterion, criterion.reference):
        k = keys.clone().requires_grad_(True)
        x = raw.clone().requires_grad_(True)
        q = F.normalize(x, dim=1)
        loss = form((q * positive).sum(1), q @ k.T, sel, q, synthetic_sim=q @ k.detach().T)
        grads.append(torch.autograd.grad(loss, [x, k]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)

"""The debiased and hard-negative weighted losses (negatives.losses.reweighted):
the authors' formulas on identical tensors (loss and gradient, with and
without a keep mask), values by hand, the clamp, the neutral settings, the
earlier fused form's numbers, and large beta at small temperatures."""

import math

import pytest
import torch
import torch.nn.functional as F

from negatives.losses.info_nce import info_nce
from negatives.losses.reweighted import reweighted_nce
from negatives.methods.simclr import candidate_index, twin_index
from negatives.policies import Candidates, PolicyError, parse_policy

from .published import dcl_loss, hcl_loss, hcl_loss_kept


def _unit(*shape, seed=0, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


# ------------------------------------------------------------------ the authors' formulas

#: (policy name, its published loss on (out_1, out_2, t))
PUBLISHED = [
    ("debiased[0]", lambda a, b, t: dcl_loss(a, b, 0.0, t, debiased=False)),
    ("debiased[0.1]", lambda a, b, t: dcl_loss(a, b, 0.1, t)),
    ("debiased[0.3]", lambda a, b, t: dcl_loss(a, b, 0.3, t)),  # the clamp acts on some rows
    ("hard[1_0.1]", lambda a, b, t: hcl_loss(a, b, 0.1, 1.0, t)),
    ("hard[0.5_0.05]", lambda a, b, t: hcl_loss(a, b, 0.05, 0.5, t)),
    ("hard[2_0.3]", lambda a, b, t: hcl_loss(a, b, 0.3, 2.0, t)),
    ("hard[1_0]", lambda a, b, t: hcl_loss(a, b, 0.0, 1.0, t)),
    ("hard[0_0.1]", lambda a, b, t: dcl_loss(a, b, 0.1, t)),
]


@pytest.mark.parametrize("t", [0.5, 0.2])
@pytest.mark.parametrize("name,published", PUBLISHED, ids=[p for p, _ in PUBLISHED])
def test_the_loss_is_the_authors_loss_on_simclrs_views(name, published, t):
    """On SimCLR's 2B views (each view's twin the positive, the other 2B - 2
    views the negatives), the policy's loss equals the authors' training loss:
    value and gradient to the embeddings, float64."""
    b, d = 8, 16
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(2 * b, d, dtype=torch.float64, generator=g)
    raw[b:] = raw[:b] + 0.7 * raw[b:]  # twins alike, as augmented views
    results = []
    for form in ("ours", "published"):
        x = raw.clone().requires_grad_(True)
        z = F.normalize(x, dim=1)
        if form == "ours":
            s = z @ z.T
            l_pos = s.gather(1, twin_index(b).unsqueeze(1)).squeeze(1)
            loss = parse_policy(name).loss(l_pos, s.gather(1, candidate_index(b)), None, t)
        else:
            loss = published(z[:b], z[b:], t)
        results.append((loss, *torch.autograd.grad(loss, x)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-13)


def test_the_clamp_acts_on_some_rows_of_the_published_comparison():
    b = 8
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(2 * b, 16, dtype=torch.float64, generator=g)
    raw[b:] = raw[:b] + 0.7 * raw[b:]
    z = F.normalize(raw, dim=1)
    s = z @ z.T
    n = 2 * b - 2
    for t, tau_plus in ((0.5, 0.3), (0.2, 0.1)):  # debiased[0.3], debiased[0.1]
        pos = torch.exp(s.gather(1, twin_index(b).unsqueeze(1)).squeeze(1) / t)
        estimate = (torch.exp(s.gather(1, candidate_index(b)) / t).sum(1) - tau_plus * n * pos) / (1 - tau_plus)
        clamped = estimate < n * math.exp(-1 / t)
        assert clamped.any() and not clamped.all()


@pytest.mark.parametrize("beta,tau_plus", [(0.0, 0.1), (1.0, 0.1), (0.5, 0.05), (2.0, 0.3), (1.0, 0.0)])
def test_with_a_keep_mask_the_loss_is_the_authors_formula_over_the_kept_negatives(beta, tau_plus):
    """Each query's kept negatives (``N`` its own count) through the authors'
    formula, one query at a time: value and gradient, float64."""
    b, k, t = 10, 50, 0.2
    g = torch.Generator().manual_seed(int(beta * 10 + tau_plus * 100))
    raw0 = torch.randn(b, 8, dtype=torch.float64, generator=g)
    keys = _unit(k, 8, seed=3, dtype=torch.float64)
    positive = _unit(b, 8, seed=4, dtype=torch.float64)
    keep = torch.rand(b, k, generator=g) > 0.4
    keep[0] = False
    keep[0, 7] = True  # a query keeping one
    results = []
    for form in ("ours", "published"):
        x = raw0.clone().requires_grad_(True)
        q = F.normalize(x, dim=1)
        l_pos, sim = (q * positive).sum(1), q @ keys.T
        if form == "ours":
            loss = reweighted_nce(l_pos, sim, keep, t, tau_plus=tau_plus, beta=beta)
        else:
            loss = hcl_loss_kept(l_pos, sim, keep, tau_plus, beta, t)
        results.append((loss, *torch.autograd.grad(loss, x)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-13)


def test_a_removed_negative_gets_no_gradient_and_its_value_does_not_matter():
    g = torch.Generator().manual_seed(0)
    l_pos, sim0 = torch.rand(4, generator=g), torch.rand(4, 9, generator=g) * 2 - 1
    keep = torch.rand(4, 9, generator=g) > 0.3
    keep[:, 0] = True
    out = []
    for sim_in in (sim0, sim0.masked_fill(~keep, 0.999)):
        s = sim_in.clone().requires_grad_(True)
        loss = reweighted_nce(l_pos, s, keep, 0.5, tau_plus=0.1, beta=1.0)
        out.append((loss, *torch.autograd.grad(loss, s)))
    assert (out[0][1][~keep] == 0).all() and (out[0][1][keep] != 0).all()
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1])


# ------------------------------------------------------------------ by hand

L_POS = [0.8, 0.1]
SIM = [[0.2, -0.4, 0.6], [0.3, 0.0, -1.0]]


def _hand(l_pos, sims, t, tau_plus, beta):
    """Chuang et al. / Robinson et al., one query at a time, in plain floats."""
    out = []
    for p, row in zip(l_pos, sims):
        n = len(row)
        imp = [math.exp(beta * s / t) for s in row]
        reweighted = sum(w * math.exp(s / t) for w, s in zip(imp, row)) / (sum(imp) / n)
        ng = max((-tau_plus * n * math.exp(p / t) + reweighted) / (1 - tau_plus), n * math.exp(-1 / t))
        out.append(-math.log(math.exp(p / t) / (math.exp(p / t) + ng)))
    return sum(out) / len(out)


@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.3])
def test_debiased_loss_by_hand(tau_plus):
    got = reweighted_nce(
        torch.tensor(L_POS, dtype=torch.float64), torch.tensor(SIM, dtype=torch.float64), None, 0.5, tau_plus=tau_plus
    )
    assert float(got) == pytest.approx(_hand(L_POS, SIM, 0.5, tau_plus, 0.0), rel=1e-14)


@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.0), (1.0, 0.1), (0.5, 0.05), (2.0, 0.3)])
def test_hard_weighted_loss_by_hand(beta, tau_plus):
    got = parse_policy(f"hard[{beta},{tau_plus}]").loss(torch.tensor(L_POS), torch.tensor(SIM), None, 0.5)
    assert float(got) == pytest.approx(_hand(L_POS, SIM, 0.5, tau_plus, beta), rel=1e-6)


def test_the_clamp_by_hand():
    # tau+ = 0.5: (e^.4 + e^-.8 + e^1.2 - 0.5 * 3 * e^1.6) / 0.5 < 0, so Ng is the clamp 3 e^{-1/t} = 3 e^-2
    p, row, t = 0.8, SIM[0], 0.5
    assert (sum(math.exp(s / t) for s in row) - 0.5 * 3 * math.exp(p / t)) / 0.5 < 0
    want = -math.log(math.exp(p / t) / (math.exp(p / t) + 3 * math.exp(-1 / t)))
    got = reweighted_nce(
        torch.tensor([p], dtype=torch.float64), torch.tensor([row], dtype=torch.float64), None, t, tau_plus=0.5
    )
    assert float(got) == pytest.approx(want, rel=1e-14)


def test_the_keep_mask_by_hand():
    keep = torch.tensor([[True, False, True], [False, True, True]])
    kept = [[0.2, 0.6], [0.0, -1.0]]  # N = 2 for each query
    for beta, tau_plus in ((0.0, 0.1), (1.0, 0.1), (3.0, 0.2)):
        got = reweighted_nce(torch.tensor(L_POS), torch.tensor(SIM), keep, 0.5, tau_plus=tau_plus, beta=beta)
        assert float(got) == pytest.approx(_hand(L_POS, kept, 0.5, tau_plus, beta), rel=1e-6)


def test_synthetic_negatives_count_as_kept_ones():
    g = torch.Generator().manual_seed(2)
    l_pos, sim, syn = torch.rand(3, generator=g), torch.rand(3, 6, generator=g), torch.rand(3, 2, generator=g)
    keep = torch.rand(3, 6, generator=g) > 0.3
    ones = torch.ones(3, 2, dtype=torch.bool)
    for mask, full in ((None, None), (keep, torch.cat([keep, ones], 1))):
        got = reweighted_nce(l_pos, sim, mask, 0.2, syn, tau_plus=0.1, beta=1.0)
        assert torch.equal(got, reweighted_nce(l_pos, torch.cat([sim, syn], 1), full, 0.2, tau_plus=0.1, beta=1.0))


def test_a_query_keeping_no_negative_adds_zero():
    l_pos, sim = torch.tensor([0.8, 0.1]), torch.tensor(SIM, requires_grad=True)
    keep = torch.tensor([[False, False, False], [False, True, True]])
    loss = reweighted_nce(l_pos, sim, keep, 0.5, tau_plus=0.1, beta=1.0)
    assert loss.item() == pytest.approx(_hand([0.1], [[0.0, -1.0]], 0.5, 0.1, 1.0) / 2, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, sim)
    assert (grad[0] == 0).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "kwargs,message", [({"tau_plus": 1.0}, "tau_plus"), ({"tau_plus": -0.1}, "tau_plus"), ({"beta": -1.0}, "beta")]
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        reweighted_nce(torch.tensor(L_POS), torch.tensor(SIM), None, 0.5, **kwargs)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("debiased[1]", "[0, 1)"),
        ("debiased[-0.1]", "[0, 1)"),
        ("hard[-1,0.1]", "beta must be >= 0"),
        ("hard[1]", "malformed"),
        ("debiased", "malformed"),
        ("hard[1,0.1,2]", "malformed"),
    ],
)
def test_loss_policies_reject_bad_settings(text, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert fragment in str(e.value) and "allowed" in str(e.value)


# ------------------------------------------------------------------ neutral settings, the earlier form


def test_neutral_settings_are_info_nce():
    g = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, {"rtol": 2e-6, "atol": 1e-6}), (torch.float64, {"rtol": 1e-13, "atol": 1e-13})):
        q = _unit(16, 32, seed=1, dtype=dtype)
        sim0 = q @ _unit(300, 32, seed=3, dtype=dtype).T
        l_pos = (q * _unit(16, 32, seed=2, dtype=dtype)).sum(1)
        keep = torch.rand(16, 300, generator=g) > 0.3
        for mask in (None, keep):
            for t in (0.07, 0.2):
                out = []
                for loss_fn in (info_nce, parse_policy("debiased[0]").loss, parse_policy("hard[0,0]").loss):
                    s = sim0.clone().requires_grad_(True)
                    loss = loss_fn(l_pos, s, mask, t)
                    out.append((loss, *torch.autograd.grad(loss, s)))
                for got in out[1:]:
                    torch.testing.assert_close(got[0], out[0][0], **tol)
                    torch.testing.assert_close(got[1], out[0][1], **tol)
    # beta = 0 is the debiased loss
    assert torch.equal(
        parse_policy("hard[0,0.1]").loss(l_pos, sim0, keep, 0.2),
        parse_policy("debiased[0.1]").loss(l_pos, sim0, keep, 0.2),
    )


def _earlier_reweighted(l_pos, sim, keep, t, beta, tau_plus):
    """The earlier fused form's arithmetic (fbecef0's ``reweighted_nce`` with its
    ImportanceSums / KeptExpSum sums) as autograd ops: ``m`` the row's largest
    logit kept or not, the weights scaled by the largest kept one."""
    pos, neg = l_pos / t, sim / t
    with torch.no_grad():
        m = torch.maximum(neg.amax(dim=1), pos)
    e = torch.exp(neg - m.unsqueeze(1))
    n = torch.full_like(pos, float(sim.shape[1]))
    kept = neg
    if keep is not None:
        e, n = torch.where(keep, e, 0.0), keep.sum(1).to(pos.dtype)
        kept = neg.masked_fill(~keep, float("-inf"))
    if beta == 0:
        negative = e.sum(1)
    else:
        with torch.no_grad():
            top = kept.amax(dim=1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        imp = torch.exp(beta * (kept - top))
        negative = (imp * e).sum(1) / (imp.sum(1) / n.clamp(min=1)).clamp(min=torch.finfo(imp.dtype).tiny)
    pos_e = torch.exp(pos - m)
    negative = torch.maximum((negative - tau_plus * n * pos_e) / (1 - tau_plus), n * torch.exp(-1.0 / t - m))
    return (m + torch.log(pos_e + negative) - pos).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
@pytest.mark.parametrize("masked", [False, True])
def test_the_loss_gives_the_earlier_fused_forms_numbers(beta, masked, dtype):
    g = torch.Generator().manual_seed(int(beta * 10) + masked)
    q = _unit(12, 16, seed=4)
    sim0 = (q @ _unit(150, 16, seed=5).T).to(dtype)
    l_pos = (q * _unit(12, 16, seed=6)).sum(1).to(dtype)
    keep = (torch.rand(12, 150, generator=g) > 0.4) if masked else None
    if masked:
        keep[0] = False  # a query with no negative left
        sim0[1, ~keep[1]] = 0.99  # removed negatives above every kept one
    out = []
    for loss_fn in (_earlier_reweighted, lambda *a: reweighted_nce(*a[:4], beta=a[4], tau_plus=a[5])):
        s = sim0.clone().requires_grad_(True)
        loss = loss_fn(l_pos, s, keep, 0.2, beta, 0.1)
        out.append((loss, *torch.autograd.grad(loss, s)))
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(out[1][0], out[0][0], **tol)
    torch.testing.assert_close(out[1][1], out[0][1], **tol)
    if masked:
        assert (out[1][1][~keep] == 0).all()


def test_large_beta_at_a_small_temperature_stays_finite():
    q = _unit(8, 16)
    s = (q @ _unit(200, 16, seed=1).T).requires_grad_(True)
    loss = reweighted_nce(torch.ones(8) * 0.9, s, None, 0.05, tau_plus=0.1, beta=10.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # removed negatives far above every kept one: e^{beta (s - top)/t} would overflow float32
    s = torch.full((2, 6), -0.9)
    s[:, :2] = 0.99
    s.requires_grad_(True)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, :2] = False
    loss = reweighted_nce(torch.ones(2) * 0.5, s, keep, 0.05, tau_plus=0.1, beta=10.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[:, :2] == 0).all()


def test_loss_policies_keep_every_negative_and_read_no_label():
    for text in ("debiased[0.1]", "hard[1,0.1]"):
        recipe = parse_policy(text)
        assert recipe.policy(torch.randn(2, 5), Candidates()).keep is None
        assert not recipe.uses_labels and not recipe.needs_queue

"""InfoNCE (negatives.losses.info_nce): exact values by hand, MoCo's
``builder.py`` form, removed negatives absent with no gradient, synthetic
negatives counted with gradient to the query only, and every policy's loss
equal to its plain definition (one query at a time, the kept negatives and the
materialised mixes)."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from negatives.losses.info_nce import info_nce
from negatives.policies import Candidates, Mix, Selection, parse_policy
from negatives.policies.mixing import MoCHi

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference import reference_loss


def _unit(*shape, seed=0, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def plain_info_nce(l_pos, sim, keep, t, extra=None):
    """InfoNCE one query at a time: ``-p/t + log(e^{p/t} + Σ_kept e^{s/t} + Σ e^{extra/t})``
    over the kept columns picked out of ``sim`` (no mask, no ``-inf``)."""
    rows = []
    for b in range(sim.shape[0]):
        terms = [l_pos[b : b + 1], sim[b] if keep is None else sim[b][keep[b]]]
        if extra is not None:
            terms.append(extra[b])
        rows.append(torch.logsumexp(torch.cat(terms) / t, 0) - l_pos[b] / t)
    return torch.stack(rows).mean()


# ------------------------------------------------------------------ values by hand


def test_info_nce_of_a_hand_example():
    t = 0.5
    l_pos, rows = [0.8, 0.1], [[0.2, -0.4, 0.6], [0.3, 0.0, -1.0]]
    want = (
        sum(
            -math.log(math.exp(p / t) / (math.exp(p / t) + sum(math.exp(s / t) for s in row)))
            for p, row in zip(l_pos, rows)
        )
        / 2
    )
    got = info_nce(torch.tensor(l_pos, dtype=torch.float64), torch.tensor(rows, dtype=torch.float64), None, t)
    assert float(got) == pytest.approx(want, rel=1e-15)
    assert float(info_nce(torch.tensor(l_pos), torch.tensor(rows), None, t)) == pytest.approx(want, rel=1e-6)


def test_removed_negatives_are_absent_from_the_denominator_by_hand():
    t = 0.2
    keep = torch.tensor([[False, True, True]])
    want = -math.log(math.exp(0.5 / t) / (math.exp(0.5 / t) + math.exp(0.1 / t) + math.exp(-0.3 / t)))
    sim = torch.tensor([[0.9, 0.1, -0.3]], dtype=torch.float64, requires_grad=True)
    got = info_nce(torch.tensor([0.5], dtype=torch.float64), sim, keep, t)
    assert got.item() == pytest.approx(want, rel=1e-15)
    got.backward()
    assert sim.grad[0, 0] == 0 and (sim.grad[0, 1:] > 0).all()
    # one positive, one kept negative equal to it: log 2
    one = info_nce(torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]), 1.0)
    assert float(one) == pytest.approx(math.log(2), rel=1e-7)


def test_a_query_keeping_no_negative_has_zero_loss_and_gradient():
    sim = torch.tensor([[0.3, -0.2], [0.1, 0.4]], requires_grad=True)
    l_pos = torch.tensor([0.2, 0.7], requires_grad=True)
    keep = torch.tensor([[False, False], [True, False]])
    loss = info_nce(l_pos, sim, keep, 0.5)
    want = (math.log(math.exp(0.7 / 0.5) + math.exp(0.1 / 0.5)) - 0.7 / 0.5) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert l_pos.grad[0] == 0 and (sim.grad[0] == 0).all() and sim.grad[1, 0] > 0 and sim.grad[1, 1] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0, 5.0])
def test_a_removed_negative_is_exactly_a_minus_inf_logit(tau, dtype):
    """The subtraction that removes a negative gives masked_fill's ``-inf`` loss and gradient bit for bit."""
    g = torch.Generator().manual_seed(3)
    sim, l_pos = torch.rand(8, 50, generator=g, dtype=dtype) * 2 - 1, torch.rand(8, generator=g, dtype=dtype)
    keep = torch.rand(8, 50, generator=g) > 0.3
    keep[0] = False  # a query keeping none
    grads = []
    for form in ("ours", "-inf"):
        s, p = sim.clone().requires_grad_(True), l_pos.clone().requires_grad_(True)
        if form == "ours":
            loss = info_nce(p, s, keep, tau)
        else:
            logits = torch.cat([p.unsqueeze(1), s.masked_fill(~keep, -math.inf)], 1) / tau
            loss = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
        loss.backward()
        grads.append((loss.detach(), s.grad, p.grad))
    for ours, ref in zip(*grads):
        assert torch.equal(ours, ref)


# ------------------------------------------------------------------ MoCo's builder.py form


@pytest.mark.parametrize("tau", [0.2, 0.07])
@pytest.mark.parametrize(
    "policy",
    ["all", "keep[95_100)", "keep[0_95)", "keep[40_60)", "drop[99.9_100)", "drop[0_90)", "drop[10_20)", "keep[5_100)"],
)
def test_info_nce_equals_the_reference_cross_entropy(policy, tau):
    """logits ``[B, 1 + K]`` (removed ones ``-inf``), label 0: loss and gradient."""
    q, key, queue = _unit(16, 12), _unit(16, 12, seed=1), _unit(200, 12, seed=2)
    sim = q @ queue.T
    keep = parse_policy(policy).policy(sim, Candidates()).keep
    assert (keep is None) == (policy == "all")
    s = sim.clone().requires_grad_(True)
    ours = info_nce((q * key).sum(1), s, keep, tau)
    torch.testing.assert_close(ours, reference_loss(q, key, queue, tau, keep), rtol=1e-6, atol=1e-6)
    ours.backward()
    s_ref = sim.clone().requires_grad_(True)
    logits = (
        torch.cat([(q * key).sum(1, keepdim=True), s_ref if keep is None else s_ref.masked_fill(~keep, -math.inf)], 1)
        / tau
    )
    F.cross_entropy(logits, torch.zeros(16, dtype=torch.long)).backward()
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-5, atol=1e-7)
    if keep is not None:
        assert (s.grad[~keep] == 0).all() and (s.grad[keep] != 0).all()


def test_info_nce_with_every_negative_is_builder_pys_loss_and_gradient_from_the_embeddings():
    q0, k0, queue = _unit(8, 16, seed=3), _unit(8, 16, seed=4), _unit(32, 16, seed=5)
    grads = []
    for form in ("ours", "builder"):
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        if form == "ours":
            loss = info_nce((q * k).sum(1), q @ queue.T, None, 0.07)
        else:
            logits = (
                torch.cat([torch.einsum("nc,nc->n", q, k).unsqueeze(-1), torch.einsum("nc,ck->nk", q, queue.T)], 1)
                / 0.07
            )
            loss = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
        grads.append((loss, *torch.autograd.grad(loss, [q, k])))
    for ours, builder in zip(*grads):
        torch.testing.assert_close(ours, builder, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ the mask


def _shifted_info_nce(l_pos, sim, keep, t):
    """The form the earlier fused loss computed (``m + log(e^{p/t - m} + Σ_kept e^{s/t - m}) - p/t``,
    ``m`` the row's largest logit kept or not): the new loss gives its numbers to rounding."""
    pos, neg = l_pos / t, sim / t
    with torch.no_grad():
        m = torch.maximum(neg.amax(dim=1), pos)
    e = torch.exp(neg - m.unsqueeze(1))
    if keep is not None:
        e = torch.where(keep, e, 0.0)
    return (m + torch.log(torch.exp(pos - m) + e.sum(dim=1)) - pos).mean()


@pytest.mark.parametrize("form", ["all", "keep", "drop a few"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_info_nce_gives_the_earlier_fused_forms_loss_and_gradient(form, dtype):
    g = torch.Generator().manual_seed(3)
    sim0 = torch.rand(32, 300, generator=g, dtype=dtype) * 2 - 1
    pos0 = torch.rand(32, generator=g, dtype=dtype) * 2 - 1
    keep = {
        "all": None,
        "keep": torch.rand(32, 300, generator=g) > 0.3,
        "drop a few": torch.ones(32, 300, dtype=torch.bool).scatter(
            1, torch.rand(32, 300, generator=g).argsort(1)[:, :9], False
        ),
    }[form]
    out = []
    for loss_fn in (_shifted_info_nce, info_nce):
        sim, pos = sim0.clone().requires_grad_(), pos0.clone().requires_grad_()
        loss = loss_fn(pos, sim, keep, 0.2)
        out.append((loss, *torch.autograd.grad(loss, [sim, pos])))
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-15}
    for new, old in zip(out[1], out[0]):
        torch.testing.assert_close(new, old, **tol)
    if keep is not None:
        assert (out[1][1][~keep] == 0).all() and (out[1][1][keep] != 0).all()


def test_a_band_as_a_mask_is_infonce_over_the_gathered_band_and_removed_values_do_not_matter():
    q, queue = _unit(6, 8), _unit(100, 8, seed=1)
    l_pos = torch.rand(6, generator=torch.Generator().manual_seed(2))
    sim = q @ queue.T
    keep = parse_policy("keep[90_95)").policy(sim, Candidates()).keep
    assert (keep.sum(1) == 5).all()
    band = sim.topk(10, dim=1).indices[:, 5:]  # ranks 5..9 from the hardest
    assert torch.equal(keep, torch.zeros_like(keep).scatter(1, band, True))
    results = []
    for s0, mask in ((sim, keep), (sim.gather(1, band), None), (sim.masked_fill(~keep, 0.99), keep)):
        s = s0.clone().requires_grad_(True)
        loss = info_nce(l_pos, s, mask, 0.1)
        (grad,) = torch.autograd.grad(loss, s)
        results.append((loss, grad if mask is None else grad.gather(1, band)))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-7)
    assert torch.equal(results[2][0], results[0][0])  # a removed value never enters the sum


# ------------------------------------------------------------------ synthetic negatives


def test_synthetic_negatives_are_counted_like_kept_ones():
    g = torch.Generator().manual_seed(0)
    l_pos, sim, syn = torch.rand(4, generator=g), torch.rand(4, 7, generator=g), torch.rand(4, 3, generator=g)
    keep = torch.rand(4, 7, generator=g) > 0.4
    got = info_nce(l_pos, sim, keep, 0.2, syn)
    want = info_nce(l_pos, torch.cat([sim, syn], 1), torch.cat([keep, torch.ones(4, 3, dtype=torch.bool)], 1), 0.2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, plain_info_nce(l_pos, sim, keep, 0.2, syn), rtol=1e-6, atol=1e-6)
    assert got > info_nce(l_pos, sim, keep, 0.2)


def test_the_synthetic_logits_a_selection_adds_are_q_dot_the_materialised_mixes():
    q, keys = _unit(3, 8), _unit(20, 8, seed=1)
    l_pos = torch.tensor([0.5, 0.2, 0.9])
    pol = MoCHi(4, 3, 2)
    torch.manual_seed(0)
    cand = Candidates(keys=keys, queries=q)
    sel = pol(q @ keys.T, cand, 0.0)
    h = pol.embeddings(cand)  # [3, 5, 8]
    torch.testing.assert_close(sel.synthetic(q, q @ keys.T), torch.einsum("bd,bsd->bs", q, h))
    got = info_nce(l_pos, q @ keys.T, sel.keep, 0.2, sel.synthetic(q, q @ keys.T))
    torch.testing.assert_close(
        got, info_nce(l_pos, torch.cat([q @ keys.T, torch.einsum("bd,bsd->bs", q, h)], 1), None, 0.2)
    )
    assert float(sel.kept_per_query(20)) == 25


@pytest.mark.parametrize("real", ["all", "keep", "band", "drop a few"])
def test_mochis_closed_form_gives_the_loss_and_gradient_of_the_materialised_mixes(real):
    """A selection with MoCHi's mix: the loss and the gradients (to the
    encoder's raw output and to q) of the plain InfoNCE over the same real
    negatives and the mixes as detached embeddings ``q . h``."""
    b, k, d = 3, 40, 8
    raw = torch.randn(b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    q = F.normalize(raw, dim=1)
    keys = _unit(k, d, seed=6, dtype=torch.float64)
    l_pos = (q * _unit(b, d, seed=7, dtype=torch.float64)).sum(1)
    sim = q @ keys.T
    pol = MoCHi(6, 10, 7, generator=torch.Generator().manual_seed(8))
    cand = Candidates(keys=keys, queries=q.detach())
    mix = pol(sim.detach(), cand, 0.0).mix
    h = pol.embeddings(cand)
    keep = {
        "all": None,
        "keep": torch.rand(b, k, generator=torch.Generator().manual_seed(9)) < 0.7,
        "band": torch.zeros(b, k, dtype=torch.bool).index_fill(1, torch.arange(5, 30), True),
        "drop a few": torch.ones(b, k, dtype=torch.bool).scatter(1, torch.tensor([[0, 3], [5, 1], [2, 39]]), False),
    }[real]
    sel = Selection(keep=keep, mix=mix)
    fast = info_nce(l_pos, sim, sel.keep, 0.2, sel.synthetic(q, sim))
    plain = plain_info_nce(l_pos, sim, keep, 0.2, torch.einsum("bd,bsd->bs", q, h))
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(fast, [raw, q], retain_graph=True), torch.autograd.grad(plain, [raw, q])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    kept = k if keep is None else keep.sum(1).double().mean()
    assert float(sel.kept_per_query(k)) == pytest.approx(float(kept) + h.shape[1])


def test_synthetic_negatives_give_no_gradient_to_the_candidates():
    """SimCLR's candidates get gradient, MoCHi's mixes must not: the synthetic
    cosines read from ``q @ keys.detach().T`` give the gradient of the mixes as
    detached embeddings, to the queries and to the candidates."""
    b, k, d = 6, 64, 8
    g = torch.Generator().manual_seed(3)
    raw0 = torch.randn(b, d, dtype=torch.float64, generator=g)
    keys0 = _unit(k, d, seed=4, dtype=torch.float64)
    positive = _unit(b, d, seed=5, dtype=torch.float64)
    pol = MoCHi(16, 8, 4, generator=torch.Generator().manual_seed(6))
    q0 = F.normalize(raw0, dim=1)
    cand = Candidates(keys=keys0, queries=q0)
    sel = pol(q0 @ keys0.T, cand, 0.5)
    h = pol.embeddings(cand)
    grads = []
    for form in ("closed", "materialised"):
        x, keys = raw0.clone().requires_grad_(True), keys0.clone().requires_grad_(True)
        q = F.normalize(x, dim=1)
        if form == "closed":
            loss = info_nce((q * positive).sum(1), q @ keys.T, None, 0.2, sel.synthetic(q, q @ keys.detach().T))
        else:
            loss = plain_info_nce((q * positive).sum(1), q @ keys.T, None, 0.2, torch.einsum("bd,bsd->bs", q, h))
        grads.append(torch.autograd.grad(loss, [x, keys]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_mix_logits_by_hand():
    """q = (0.6, 0.8, 0) and the candidates e1, e2, e3 (sim = (0.6, 0.8, 0)):
    the pair mix of e1, e2 with alpha = 0.25 and the query mix of e3 with
    beta = 0.4, their cosines and the gradient h + h' to q."""
    q = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64, requires_grad=True)
    sim = q @ torch.eye(3, dtype=torch.float64).T
    # |0.25 e1 + 0.75 e2|^2 = 0.625;  |0.4 q + 0.6 e3|^2 = 0.16 + 0.36 (q . e3 = 0) = 0.52
    r, r_q = math.sqrt(0.625), math.sqrt(0.52)
    mix = Mix(
        i=torch.tensor([[0, 2]]),
        j=torch.tensor([[1, 2]]),
        a=torch.tensor([[0.25 / r, 0.0]], dtype=torch.float64),
        c=torch.tensor([[0.75 / r, 0.6 / r_q]], dtype=torch.float64),
        d=torch.tensor([[0.0, 0.4 / r_q]], dtype=torch.float64),
    )
    got = Selection(mix=mix).synthetic(q, sim)
    # q . h = (0.25 * 0.6 + 0.75 * 0.8) / r;  q . h' = 0.4 / r_q
    torch.testing.assert_close(got, torch.tensor([[0.75 / r, 0.4 / r_q]], dtype=torch.float64), rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(got.sum(), q)
    want = torch.tensor([[0.25 / r + 0.24 / r_q, 0.75 / r + 0.32 / r_q, 0.6 / r_q]], dtype=torch.float64)
    torch.testing.assert_close(grad, want, rtol=1e-14, atol=1e-14)


def test_mochis_synthetic_cosines_by_hand():
    """MoCHi on q = (0.6, 0.8, 0) with orthonormal candidates: the two hardest
    are e2, e1; each draw's cosine against the geometry (|x e_i + y e_j|^2 =
    x^2 + y^2, or (x + y)^2 when i = j; |b q + (1 - b) e_j|^2 = b^2 + (1 - b)^2 + 2 b (1 - b) q_j)."""
    q = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)
    keys = torch.eye(3, dtype=torch.float64)
    pol = MoCHi(2, 4, 4, generator=torch.Generator().manual_seed(3))
    got = pol(q @ keys.T, Candidates(keys=keys, queries=q), 0.0).synthetic(q, q @ keys.T)[0].tolist()
    m = pol.last_mix
    hard, qc = m["hard"][0].tolist(), [0.6, 0.8, 0.0]
    assert sorted(hard) == [0, 1]
    pairs = [(hard[i], hard[j], a) for i, j, a in zip(m["i"][0].tolist(), m["j"][0].tolist(), m["alpha"][0].tolist())]
    assert any(i != j for i, j, _ in pairs)
    want = [
        (a * qc[i] + (1 - a) * qc[j]) / math.sqrt(a * a + (1 - a) ** 2 + (2 * a * (1 - a) if i == j else 0))
        for i, j, a in pairs
    ]
    for j, b in zip(m["jq"][0].tolist(), m["beta"][0].tolist()):
        n = hard[j]
        want.append((b + (1 - b) * qc[n]) / math.sqrt(b * b + (1 - b) ** 2 + 2 * b * (1 - b) * qc[n]))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ every policy's loss

POLICIES = [
    "all",
    "keep[90_100)",
    "keep[0_75)",
    "keep[40_60)",
    "drop[90_100)",
    "drop[5_95)",
    "drop-same-class",
    "drop[75_100)&same-class",
    "drop[90_100)&other-class",
    "drop[90_100)@replace",
    "drop[90_100)&same-class@replace",
    "drop-same-class@replace",
    "mochi[16_8_4]",
    "mochi[16_8_0]",
    "ring[100->10_10_linear_50]",
    "ring[20_0]",
    "curriculum[0_100->90_100_linear]",
    "retain-hard[0.1]",
]
B, K, EXTRA, D = 6, 64, 32, 8


@pytest.mark.parametrize("name", POLICIES)
def test_every_policys_loss_equals_its_plain_definition(name):
    """As MoCo computes it (the policy's mask over the queue's K (+ E) keys,
    newest first for ``@replace``, its synthetic negatives, the recipe's loss) against InfoNCE
    one query at a time over the kept negatives and the materialised mixes:
    value and gradient, float64."""
    g = torch.Generator().manual_seed(0)
    recipe = parse_policy(name)
    assert recipe.loss is info_nce
    recipe.policy.start(4, K)
    n = K + (EXTRA if recipe.replace else 0)
    raw0 = torch.randn(B, D, dtype=torch.float64, generator=g)
    keys = F.normalize(torch.randn(n, D, dtype=torch.float64, generator=g) + 0.5 * raw0[:1], dim=1)
    positive = _unit(B, D, seed=1, dtype=torch.float64)
    q0 = F.normalize(raw0, dim=1)
    cands = Candidates(
        labels=torch.randint(0, 3, (n,), generator=g),
        indices=torch.arange(n),
        keys=keys,
        query_labels=torch.randint(0, 3, (B,), generator=g),
        queries=q0,
        age_ordered=recipe.replace,
    )
    sel = recipe.policy(q0 @ keys.T, cands, 0.5)
    h = recipe.policy.embeddings(cands) if sel.mix is not None else None
    assert (h is not None) == name.startswith("mochi")
    results = []
    for form in ("training", "plain"):
        x = raw0.clone().requires_grad_(True)
        q = F.normalize(x, dim=1)
        l_pos, sim = (q * positive).sum(1), q @ keys.T
        if form == "training":
            loss = recipe.loss(l_pos, sim, sel.keep, 0.2, sel.synthetic(q, sim))
        else:
            loss = plain_info_nce(l_pos, sim, sel.keep, 0.2, None if h is None else torch.einsum("bd,bsd->bs", q, h))
        results.append((loss, *torch.autograd.grad(loss, x)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)

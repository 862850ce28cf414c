"""The neighbouring methods as negative policies: MoCHi, Ring and band
curricula, the debiased and hard-weighted losses, the hard-retaining queue."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from negatives.policies import bands, reweighted
from negatives.policies import mixing
from negatives.policies import retention
from negatives.policies import ring
from negatives.losses import debiased_nce, hard_nce, reweighted_nce
from negatives.policies.mixing import MoCHi
from negatives.models import build_encoder
from negatives.methods.moco import MoCo
from negatives.losses import Terms, fused_info_nce, info_nce
from negatives.methods.loss import ContrastiveLoss
from negatives.queue import KeyQueue
from negatives.policies import Candidates, Mix, PolicyError, Selection, parse_policy
from negatives.policies.retention import RetainHard, RetainingQueue
from negatives.methods.simclr import SimCLR, candidate_index, twin_index


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _cone_coefficients(h, a, b):
    """``(x, y, residual)`` with ``h ~ x a + y b`` (least squares)."""
    basis = torch.stack([a, b], dim=1).double()                  # [D, 2]
    sol = torch.linalg.lstsq(basis, h.double().unsqueeze(1)).solution.flatten()
    residual = (basis @ sol - h.double()).norm().item()
    return sol[0].item(), sol[1].item(), residual


def _with_embeddings(selection, h, q, l_pos, sim, temperature):
    """The plain InfoNCE over the real negatives ``selection`` keeps and the
    synthetic negatives ``h [B, s, D]`` as embeddings (``q . h``)."""
    keep = selection.mask(sim.shape)
    keep = torch.ones_like(sim, dtype=torch.bool) if keep is None else keep
    neg = torch.cat([sim, torch.einsum("bd,bsd->bs", q, h.to(q.dtype))], dim=1)
    return info_nce(l_pos, neg, torch.cat([keep, keep.new_ones(h.shape[:2])], dim=1), temperature)


# --------------------------------------------------------------------------
# MoCHi
# --------------------------------------------------------------------------

def _mochi_step(policy, b=3, k=40, d=8, seed=0):
    """One step: ``(q, keys, sim, selection, h)`` with ``h [B, s+s', D]`` the
    draw's synthetic negatives, materialised."""
    q = _unit(b, d, seed=seed)
    keys = _unit(k, d, seed=seed + 1)
    sim = q @ keys.T
    cand = Candidates(keys=keys, queries=q)
    sel = policy(sim, cand, 0.0)
    return q, keys, sim, sel, policy.embeddings(cand)


def test_mochi_pair_mixes_are_unit_and_in_the_cone_of_two_of_the_n_hardest():
    n = 5
    pol = MoCHi(n, 12, 0, generator=torch.Generator().manual_seed(1))
    q, keys, sim, sel, h_all = _mochi_step(pol)
    assert sel.mask(sim.shape) is None                                    # every real negative is kept
    assert h_all.shape == (3, 12, 8) and not h_all.requires_grad
    assert torch.allclose(h_all.norm(dim=2), torch.ones(3, 12), atol=1e-6)
    # the closed form's cosines are those of the materialised mixes
    torch.testing.assert_close(sel.synthetic(q, sim), torch.einsum("bd,bsd->bs", q, h_all))
    for row in range(3):
        hard = keys[torch.argsort(sim[row], descending=True)[:n]]   # the N hardest, the slow way
        for h in h_all[row]:
            # some pair (i, j) of the N hardest has h = x n_i + y n_j with x, y >= 0
            fits = []
            for i, j in itertools.combinations_with_replacement(range(n), 2):
                x, y, res = _cone_coefficients(h, hard[i], hard[j])
                if i == j:
                    fits.append(res < 1e-5 and x + y > 0)
                else:
                    fits.append(res < 1e-5 and x >= -1e-6 and y >= -1e-6)
            assert any(fits)


def test_mochi_query_mixes_weigh_the_query_below_one_half():
    n = 4
    pol = MoCHi(n, 0, 200, generator=torch.Generator().manual_seed(2))
    q, keys, sim, sel, h_all = _mochi_step(pol, b=2)
    assert h_all.shape == (2, 200, 8) and sel.synthetic(q, sim).shape == (2, 200)
    assert torch.allclose(h_all.norm(dim=2), torch.ones(2, 200), atol=1e-6)
    torch.testing.assert_close(sel.synthetic(q, sim), torch.einsum("bd,bsd->bs", q, h_all))
    betas = []
    for row in range(2):
        hard = keys[torch.argsort(sim[row], descending=True)[:n]]
        for h in h_all[row]:
            best = min((_cone_coefficients(h, q[row], hard[j]) for j in range(n)), key=lambda t: t[2])
            x, y, res = best
            assert res < 1e-5 and x >= -1e-6 and y > 0
            betas.append(x / (x + y))                       # the query's weight before normalising
    betas = torch.tensor(betas)
    assert betas.max() < 0.5
    assert betas.max() > 0.45 and betas.min() < 0.05       # beta ~ U[0, 0.5), not a constant
    # and the recorded draw is the weight that was used
    assert torch.allclose(pol.last_mix["beta"].flatten().double(), betas.double(), atol=1e-4)


def test_mochi_draws_from_the_global_generator_deterministically():
    pol = MoCHi(6, 8, 4)
    torch.manual_seed(7)
    a, mix_a = _mochi_step(pol)[4], _mochi_step(pol)[3]._mix
    torch.manual_seed(7)
    b, mix_b = _mochi_step(pol)[4], _mochi_step(pol)[3]._mix
    torch.manual_seed(8)
    c = _mochi_step(pol)[4]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(torch.equal(getattr(mix_a, f), getattr(mix_b, f)) for f in "ijacd")


def test_mochi_mixes_are_detached_even_from_inputs_with_gradient():
    q = _unit(3, 8).requires_grad_(True)
    keys = _unit(30, 8, seed=1).requires_grad_(True)
    pol = MoCHi(4, 4, 4)
    cand = Candidates(keys=keys, queries=q)
    sel = pol(q.detach() @ keys.detach().T, cand, 0.0)
    assert all(not getattr(sel._mix, f).requires_grad for f in "acd")
    h = pol.embeddings(cand)
    assert not h.requires_grad and h.grad_fn is None


def test_mochi_warm_up_in_epochs():
    pol = parse_policy("mochi[4,2,2,3]")
    sim = torch.randn(2, 10)
    cand = Candidates(keys=_unit(10, 4), queries=_unit(2, 4, seed=1))
    with pytest.raises(PolicyError, match="start"):
        pol(sim, cand, 0.5)                                # epochs unknown
    pol.start(10)
    steps = 7                                              # per epoch; progress = step / (7 * 10)
    assert pol(sim, cand, (3 * steps - 1) / (10 * steps)).has_synthetic is False     # last step of epoch 3 (index 2)
    assert pol(sim, cand, (3 * steps) / (10 * steps))._mix.i.shape == (2, 4)  # first step of epoch 4
    assert pol.embeddings(cand).shape == (2, 4, 4)
    assert parse_policy("mochi[4,2,2]")(sim, cand, 0.0).has_synthetic       # no warm-up


def test_mochi_works_on_simclr_candidates_through_pool_index():
    """SimCLR: 2B views, each query's candidates are the other 2B-2 views
    (pool_index [2B, 2B-2]); mixes come from the query's own candidates."""
    b2, d, n = 6, 5, 2
    views = _unit(b2, d, seed=3)
    partner = torch.arange(b2).reshape(2, -1).flip(0).flatten()    # view i's positive
    pool_index = torch.stack([torch.tensor([j for j in range(b2) if j not in (i, int(partner[i]))])
                              for i in range(b2)])                 # [2B, 2B-2]
    sim = torch.einsum("bd,bkd->bk", views, views[pool_index])
    pol = MoCHi(n, 3, 0, generator=torch.Generator().manual_seed(0))
    cand = Candidates(keys=views, queries=views, pool_index=pool_index)
    sel = pol(sim, cand, 0.0)
    h_all = pol.embeddings(cand)
    assert h_all.shape == (b2, 3, d)
    torch.testing.assert_close(sel.synthetic(views, sim), torch.einsum("bd,bsd->bs", views, h_all))
    for row in range(b2):
        own = views[pool_index[row][torch.argsort(sim[row], descending=True)[:n]]]
        for h in h_all[row]:
            assert min(_cone_coefficients(h, own[0], own[1])[2], _cone_coefficients(h, own[0], own[0])[2],
                       _cone_coefficients(h, own[1], own[1])[2]) < 1e-5


def test_mochi_on_simclr_gives_the_gradient_of_detached_mixes():
    """SimCLR's candidates carry gradient; the synthetic negatives must not:
    the model's loss and gradient equal those with the materialised mixes."""
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).double()
    pol = MoCHi(3, 4, 3, generator=torch.Generator().manual_seed(4))
    model = SimCLR(enc, temperature=0.2, policy=pol)
    x1, x2 = torch.randn(4, 1, 2, 6, dtype=torch.float64), torch.randn(4, 1, 2, 6, dtype=torch.float64)
    labels = torch.arange(4)
    loss, _ = model(x1, x2, labels, labels)
    grad = torch.autograd.grad(loss, list(enc.parameters()))
    # the plain path, on the same draw
    z = F.normalize(enc(torch.cat([x1, x2])), dim=1)
    s = z @ z.T
    l_pos = s.gather(1, twin_index(4).unsqueeze(1)).squeeze(1)
    pool_index = candidate_index(4)
    h = pol.embeddings(Candidates(keys=z.detach(), queries=z.detach(), pool_index=pool_index))
    plain = _with_embeddings(Selection.every(), h, z, l_pos, s.gather(1, pool_index), 0.2)
    torch.testing.assert_close(loss, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(grad, torch.autograd.grad(plain, list(enc.parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_mochi_bad_settings_are_policy_errors():
    with pytest.raises(PolicyError, match=r"N\*N = 16 pairs"):
        parse_policy("mochi[4,17,1]")
    parse_policy("mochi[4,16,1]")                          # exactly N*N is fine
    with pytest.raises(PolicyError, match="warm-up of 10 epochs"):
        parse_policy("mochi[4,2,2,10]").validate(100, epochs=10)
    parse_policy("mochi[4,2,2,9]").validate(100, epochs=10)
    with pytest.raises(PolicyError, match="only 5 candidates"):
        parse_policy("mochi[8,4,4]").validate(5)
    for bad in ("mochi[4,2]", "mochi[4,2,2,1,1]", "mochi[4,2.5,1]", "mochi[0,1,1]", "mochi[4,0,0]", "mochi(4,2,2)"):
        with pytest.raises(PolicyError, match="allowed"):
            parse_policy(bad)


def test_moco_with_mochi_enqueues_only_keys_and_gives_no_key_encoder_gradient():
    torch.manual_seed(0)
    enc = build_encoder("small-cnn", 1, dim=8, width=4)
    model = MoCo(enc, 8, queue_size=40, momentum=0.9, temperature=0.2, policy=parse_policy("mochi[8,4,4]"),
                 generator=torch.Generator().manual_seed(1))
    before = model.queue.keys.clone()
    x = torch.randn(4, 1, 12, 12)
    loss, stats = model(x, x, torch.tensor([1, 2, 3, 4]), torch.tensor([7, 8, 9, 10]))
    assert torch.isfinite(loss) and stats["kept"] == 40 + 8
    keys, labels, indices = model.queue.ordered()
    with torch.no_grad():
        expected = F.normalize(model.encoder_k(x), dim=1)
    # the 4 new entries are the batch's keys; the other 36 are the old keys, untouched
    assert torch.allclose(model.queue.keys[:4], expected, atol=1e-5)
    assert torch.equal(model.queue.keys[4:], before[4:])
    assert labels[-4:].tolist() == [1, 2, 3, 4] and (labels[:-4] == -1).all()
    assert model.queue.keys.shape == (40, 8)
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())


def test_policy_loss_adds_the_synthetic_logits():
    q = _unit(3, 8)
    keys = _unit(20, 8, seed=1)
    l_pos = torch.tensor([0.5, 0.2, 0.9])
    pol = MoCHi(4, 3, 2)
    torch.manual_seed(0)
    cand = Candidates(keys=keys, queries=q)
    sel = pol(q @ keys.T, cand, 0.0)
    got = ContrastiveLoss(0.2)(l_pos, q @ keys.T, sel, q)
    h = pol.embeddings(cand)
    expected = info_nce(l_pos, torch.cat([q @ keys.T, torch.einsum("bd,bsd->bs", q, h)], 1), None, 0.2)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("real", ["all", "keep", "index", "drop_index"])
def test_mochi_closed_form_loss_and_gradient_equal_the_materialised_mixes(real):
    """Fast path == plain path: a selection with MoCHi's mix gives the loss and
    the gradients (to the encoder's raw output and to q itself) of the plain
    InfoNCE over the same real negatives and the mixes as embeddings
    (``q . h``), whatever selection of real negatives comes with them."""
    b, k, d = 3, 40, 8
    raw = torch.randn(b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    q = F.normalize(raw, dim=1)                                                   # the query, normalised
    keys = F.normalize(_unit(k, d, seed=6).double(), dim=1)                      # unit in float64
    l_pos = (q * _unit(b, d, seed=7).double()).sum(1)
    sim = q @ keys.T
    pol = MoCHi(6, 10, 7, generator=torch.Generator().manual_seed(8))
    cand = Candidates(keys=keys, queries=q.detach())
    mix = pol(sim.detach(), cand, 0.0)._mix
    h = pol.embeddings(cand)
    real_sel = {"all": Selection.every(),
                "keep": Selection.where(torch.rand(b, k, generator=torch.Generator().manual_seed(9)) < 0.7),
                "index": Selection.at(torch.arange(5, 30).expand(b, -1)),
                "drop_index": Selection.without(torch.tensor([[0, 3], [5, 1], [2, 39]]))}[real]
    fast = ContrastiveLoss(0.2)(l_pos, sim, real_sel.with_mix(mix), q)
    plain = _with_embeddings(real_sel, h, q, l_pos, sim, 0.2)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad(fast, [raw, q], retain_graph=True)
    g_plain = torch.autograd.grad(plain, [raw, q])
    for got, want in zip(g_fast, g_plain):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert real_sel.with_mix(mix).kept_per_query(k) == real_sel.kept_per_query(k) + h.shape[1]


def test_mix_logits_by_hand():
    """One query q = (0.6, 0.8, 0) and the candidates e1, e2, e3 (so sim =
    (0.6, 0.8, 0)): the pair mix of e1, e2 with alpha = 0.25 and the query
    mix of e3 with beta = 0.4, in closed form and by hand."""
    q = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64, requires_grad=True)
    keys = torch.eye(3, dtype=torch.float64)
    sim = q @ keys.T
    # h  = normalize(0.25 e1 + 0.75 e2):  |.|^2 = 0.0625 + 0.5625 = 0.625 (e1 . e2 = 0)
    # h' = normalize(0.4 q + 0.6 e3):     |.|^2 = 0.16 + 0.36 + 2 (0.4)(0.6)(q . e3 = 0) = 0.52
    r, r_q = math.sqrt(0.625), math.sqrt(0.52)
    mix = Mix(i=torch.tensor([[0, 2]]), j=torch.tensor([[1, 2]]),
              a=torch.tensor([[0.25 / r, 0.0]], dtype=torch.float64),
              c=torch.tensor([[0.75 / r, 0.6 / r_q]], dtype=torch.float64),
              d=torch.tensor([[0.0, 0.4 / r_q]], dtype=torch.float64))
    got = mix.logits(q, sim)
    # q . h = (0.25 * 0.6 + 0.75 * 0.8) / sqrt(0.625) = 0.75 / 0.790569...
    # q . h' = (0.4 * 1 + 0.6 * 0) / sqrt(0.52) = 0.4 / 0.721110...
    torch.testing.assert_close(got, torch.tensor([[0.9486832980505138, 0.5547001962252291]], dtype=torch.float64),
                               rtol=1e-14, atol=1e-14)
    # gradient to q: h + h' = (0.25, 0.75, 0) / sqrt(0.625) + (0.24, 0.32, 0.6) / sqrt(0.52)
    (grad,) = torch.autograd.grad(got.sum(), q)
    want = torch.tensor([[0.25 / r + 0.24 / r_q, 0.75 / r + 0.32 / r_q, 0.6 / r_q]], dtype=torch.float64)
    torch.testing.assert_close(grad, want, rtol=1e-14, atol=1e-14)


def test_mochi_closed_form_by_hand():
    """MoCHi on q = (0.6, 0.8, 0) with orthonormal candidates e1, e2, e3: the
    two hardest are e2, e1; every draw's cosine is checked against the
    geometry (|x e_i + y e_j|^2 = x^2 + y^2, or (x + y)^2 when i = j)."""
    q = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)
    keys = torch.eye(3, dtype=torch.float64)
    pol = MoCHi(2, 4, 4, generator=torch.Generator().manual_seed(3))
    mix = pol(q @ keys.T, Candidates(keys=keys, queries=q), 0.0)._mix
    got = mix.logits(q, q @ keys.T)[0].tolist()
    m = pol.last_mix
    hard = m["hard"][0].tolist()
    assert sorted(hard) == [0, 1]
    qc = [0.6, 0.8, 0.0]
    pairs = [(hard[i], hard[j], a) for i, j, a in zip(m["i"][0].tolist(), m["j"][0].tolist(), m["alpha"][0].tolist())]
    assert any(i != j for i, j, _ in pairs)
    want = [(a * qc[i] + (1 - a) * qc[j]) / math.sqrt(a * a + (1 - a) ** 2 + (2 * a * (1 - a) if i == j else 0))
            for i, j, a in pairs]
    # query mixes: |b q + (1 - b) e_j|^2 = b^2 + (1 - b)^2 + 2 b (1 - b) q_j
    for j, b in zip(m["jq"][0].tolist(), m["beta"][0].tolist()):
        n = hard[j]
        want.append((b + (1 - b) * qc[n]) / math.sqrt(b * b + (1 - b) ** 2 + 2 * b * (1 - b) * qc[n]))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------
# debiased and hard-negative weighted losses
# --------------------------------------------------------------------------

L_POS = [0.8, 0.1]
SIM = [[0.2, -0.4, 0.6], [0.3, 0.0, -1.0]]


def _hand(l_pos, sims, t, tau_plus, beta):
    """Chuang et al. / Robinson et al., one query at a time, in plain floats."""
    out = []
    for p, row in zip(l_pos, sims):
        n = len(row)
        imp = [math.exp(beta * s / t) for s in row]
        mean_imp = sum(imp) / n
        reweighted = sum(w * math.exp(s / t) for w, s in zip(imp, row)) / mean_imp
        ng = (-tau_plus * n * math.exp(p / t) + reweighted) / (1 - tau_plus)
        ng = max(ng, n * math.exp(-1 / t))
        out.append(-math.log(math.exp(p / t) / (math.exp(p / t) + ng)))
    return sum(out) / len(out)


@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.3])
def test_debiased_loss_matches_hand_computation(tau_plus):
    got = debiased_nce(torch.tensor(L_POS), torch.tensor(SIM), None, 0.5, tau_plus)
    assert got.item() == pytest.approx(_hand(L_POS, SIM, 0.5, tau_plus, 0.0), rel=1e-6)


def test_debiased_clamp_by_hand():
    # tau+ = 0.5: row 0's estimate (e^.4 + e^-.8 + e^1.2 - 0.5*3*e^1.6) / 0.5 = (5.261 - 7.430) / 0.5 is
    # negative, so Ng is the clamp 3 e^{-1/t} = 3 e^-2
    p, row, t = 0.8, SIM[0], 0.5
    raw = (sum(math.exp(s / t) for s in row) - 0.5 * 3 * math.exp(p / t)) / 0.5
    assert raw < 0
    expected = -math.log(math.exp(p / t) / (math.exp(p / t) + 3 * math.exp(-1 / t)))
    got = debiased_nce(torch.tensor([p]), torch.tensor([row]), None, t, 0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.0), (1.0, 0.1), (0.5, 0.05), (2.0, 0.3)])
def test_hard_weighted_loss_matches_hand_computation(beta, tau_plus):
    got = hard_nce(torch.tensor(L_POS), torch.tensor(SIM), None, 0.5, beta, tau_plus)
    assert got.item() == pytest.approx(_hand(L_POS, SIM, 0.5, tau_plus, beta), rel=1e-6)


def test_reweighted_losses_respect_the_keep_mask():
    keep = torch.tensor([[True, False, True], [False, True, True]])
    kept = [[0.2, 0.6], [0.0, -1.0]]                     # N = 2 for each query
    for beta, tau_plus in ((0.0, 0.1), (1.0, 0.1)):
        got = reweighted_nce(torch.tensor(L_POS), torch.tensor(SIM), keep, 0.5, tau_plus, beta)
        assert got.item() == pytest.approx(_hand(L_POS, kept, 0.5, tau_plus, beta), rel=1e-6)
    # a removed negative gets no gradient
    s = torch.tensor(SIM).requires_grad_(True)
    reweighted_nce(torch.tensor(L_POS), s, keep, 0.5, 0.1, 1.0).backward()
    assert s.grad[0, 1] == 0 and s.grad[1, 0] == 0 and s.grad[0, 0] != 0


def test_neutral_settings_are_info_nce_exactly():
    g = torch.Generator().manual_seed(0)
    q, k = _unit(16, 32, seed=1), _unit(16, 32, seed=2)
    sim = q @ _unit(300, 32, seed=3).T
    l_pos = (q * k).sum(1)
    keep = torch.rand(16, 300, generator=g) > 0.3
    for mask in (None, keep):
        for t in (0.07, 0.2):
            ref = fused_info_nce(l_pos, sim, t, Terms(keep=mask))      # the form MoCo trains with
            assert torch.equal(parse_policy("debiased[0]").loss(l_pos, sim, mask, t), ref)
            assert torch.equal(parse_policy("hard[0,0]").loss(l_pos, sim, mask, t), ref)
    # beta = 0 is the debiased loss
    assert torch.equal(hard_nce(l_pos, sim, keep, 0.2, 0.0, 0.1), debiased_nce(l_pos, sim, keep, 0.2, 0.1))


def _autograd_hard_nce(l_pos, sim, keep, t, beta, tau_plus):
    """The hard-weighted loss written as plain autograd ops (what ImportanceSums fuses)."""
    pos, neg = l_pos / t, sim / t
    with torch.no_grad():
        m = torch.maximum(neg.amax(dim=1), pos)
    e = torch.exp(neg - m.unsqueeze(1))
    n = torch.full_like(pos, float(sim.shape[1]))
    kept = neg
    if keep is not None:
        e, n = torch.where(keep, e, 0.0), keep.sum(1).to(pos.dtype)
        kept = neg.masked_fill(~keep, float("-inf"))
    with torch.no_grad():
        top = kept.amax(dim=1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    imp = torch.exp(beta * (kept - top))
    negative = (imp * e).sum(1) / (imp.sum(1) / n.clamp(min=1)).clamp(min=torch.finfo(imp.dtype).tiny)
    pos_e = torch.exp(pos - m)
    negative = torch.maximum((negative - tau_plus * n * pos_e) / (1 - tau_plus), n * torch.exp(-1.0 / t - m))
    return (m + torch.log(pos_e + negative) - pos).mean()


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_importance_sums_give_autograds_loss_and_gradient(beta, masked):
    g = torch.Generator().manual_seed(int(beta * 10) + masked)
    q = _unit(12, 16, seed=4)
    sim0 = (q @ _unit(150, 16, seed=5).T).double()
    l_pos = (q * _unit(12, 16, seed=6)).sum(1).double()
    keep = (torch.rand(12, 150, generator=g) > 0.4) if masked else None
    if masked:
        keep[0] = False                                   # a query with no negative left
        sim0[1, ~keep[1]] = 0.99                          # removed negatives above every kept one
    out = []
    for loss_fn in (_autograd_hard_nce, hard_nce):
        s = sim0.clone().requires_grad_(True)
        loss = loss_fn(l_pos, s, keep, 0.2, beta, 0.1)
        loss.backward()
        out.append((loss, s.grad))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-10, atol=1e-14)
    if masked:
        assert (out[1][1][~keep] == 0).all()


def test_hard_weighted_loss_stays_finite_at_large_beta_and_small_temperature():
    q = _unit(8, 16)
    s = (q @ _unit(200, 16, seed=1).T).requires_grad_(True)
    loss = hard_nce(torch.ones(8) * 0.9, s, None, 0.05, 10.0, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # removed negatives far above every kept one: e^{beta (s - top)/t} would overflow float32
    s = torch.full((2, 6), -0.9)
    s[:, :2] = 0.99
    s.requires_grad_(True)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, :2] = False
    loss = hard_nce(torch.ones(2) * 0.5, s, keep, 0.05, 10.0, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and (s.grad[:, :2] == 0).all()


def test_loss_policies_keep_every_negative_and_plug_into_moco():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 12, 12)
    for text in ("debiased[0.1]", "hard[1,0.1]"):
        pol = parse_policy(text)
        assert pol(torch.randn(2, 5), Candidates()).mask((2, 5)) is None
        assert callable(pol.loss) and not pol.uses_labels
        model = MoCo(build_encoder("small-cnn", 1, dim=8, width=4), 8, 40, 0.9, 0.2, pol)
        loss, stats = model(x, x, torch.zeros(4, dtype=torch.long), torch.arange(4))
        assert torch.isfinite(loss) and stats["kept"] == 40
        loss.backward()


@pytest.mark.parametrize("text,fragment", [("debiased[1]", "[0, 1)"), ("debiased[-0.1]", "[0, 1)"),
                                           ("hard[-1,0.1]", "beta must be >= 0"), ("hard[1]", "malformed"),
                                           ("debiased", "malformed"), ("hard[1,0.1,2]", "malformed")])
def test_loss_policies_reject_bad_settings(text, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert fragment in str(e.value) and "allowed" in str(e.value)


# --------------------------------------------------------------------------
# the hard-retaining queue
# --------------------------------------------------------------------------

def _fill(queue, batches, b=2):
    """Enqueue ``batches`` batches of ``b`` keys; key n has label n, index 100 + n."""
    for step in range(batches):
        ids = torch.arange(step * b, (step + 1) * b)
        angle = ids.float()
        keys = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        queue.enqueue(keys, ids, 100 + ids)


def test_retaining_queue_with_nothing_to_retain_is_fifo():
    for retain in (0.0, 0.5):                               # 0.5: nothing is hard yet, so nothing is retained
        a = KeyQueue(6, 2, generator=torch.Generator().manual_seed(0))
        r = RetainingQueue(6, 2, retain, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.keys, r.keys)
        for n in range(1, 6):
            _fill(a, 1), _fill(r, 1)
            a.enqueue(a.keys[:2] * 0 + n, torch.tensor([n, n]), torch.tensor([n, n]))
            r.enqueue(r.keys[:2] * 0 + n, torch.tensor([n, n]), torch.tensor([n, n]))
            for x, y in zip(a.ordered(), r.ordered()):
                assert torch.equal(x, y)
            assert torch.equal(a.keys, r.keys) and torch.equal(a.newest_first(), r.newest_first())


def test_retaining_queue_keeps_the_hard_keys_on_a_hand_made_example():
    pol = parse_policy("retain-hard[0.34,20]")             # K = 6: R = floor(2.04) = 2; hardest round(1.2) = 1
    queue = pol.make_queue(6, 2, generator=torch.Generator().manual_seed(0))
    assert isinstance(queue, RetainingQueue) and queue.retained_slots == 2 and pol.hard_count(6) == 1
    _fill(queue, 3)                                         # slots 0..5 hold keys 0..5 (key n in slot n)
    assert queue.labels.tolist() == [0, 1, 2, 3, 4, 5]

    def step(hardest_slots):
        """Two queries; query i's hardest candidate is the slot ``hardest_slots[i]``."""
        sim = torch.zeros(2, 6)
        sim[0, hardest_slots[0]] = 1.0
        sim[1, hardest_slots[1]] = 1.0
        assert pol(sim, Candidates(), 0.0).mask(sim.shape) is None      # every negative used

    step([0, 1])                                            # keys 0, 1: hard for 1 of 2 queries each
    assert queue.frequency().tolist() == [0.5, 0.5, 0, 0, 0, 0]
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([6, 7]), torch.tensor([106, 107]))
    # FIFO would evict keys 0 and 1; they are retained, the next oldest (2, 3) go
    assert queue.labels.tolist() == [0, 1, 6, 7, 4, 5]
    assert queue.seen.tolist() == [2, 2, 0, 0, 2, 2] and queue.hard.tolist() == [1, 1, 0, 0, 0, 0]

    step([2, 2])                                            # key 6 (slot 2) hard for both: frequency 1
    assert queue.frequency().tolist() == [0.25, 0.25, 1.0, 0, 0, 0]
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([8, 9]), torch.tensor([108, 109]))
    # retained: key 6 (1.0) and, of the tie 0/1 at 0.25, the newer key 1; key 0 is now the oldest
    # non-retained key and is evicted with key 4 (next oldest)
    assert queue.labels.tolist() == [8, 1, 6, 7, 9, 5]
    keys, labels, indices = queue.ordered()
    assert labels.tolist() == [1, 5, 6, 7, 8, 9]            # oldest first, by insertion
    assert indices.tolist() == [101, 105, 106, 107, 108, 109]
    assert queue.labels[queue.newest_first()].tolist() == [9, 8, 7, 6, 5, 1]


def test_retaining_queue_refuses_a_batch_larger_than_the_free_slots():
    queue = RetainingQueue(6, 2, 0.5)
    with pytest.raises(ValueError, match="non-retained slots"):
        queue.enqueue(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_moco_asks_the_policy_for_its_queue():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 12, 12)
    plain = MoCo(build_encoder("small-cnn", 1, dim=8, width=4), 8, 40, 0.9, 0.2, parse_policy("all"))
    assert type(plain.queue) is KeyQueue
    pol = parse_policy("retain-hard[0.5]")
    model = MoCo(build_encoder("small-cnn", 1, dim=8, width=4), 8, 40, 0.9, 0.2, pol)
    assert isinstance(model.queue, RetainingQueue) and pol.queue is model.queue
    for i in range(3):
        loss, stats = model(x, x, torch.full((4,), i), torch.arange(4) + 4 * i)
        loss.backward()
        assert stats["kept"] == 40
    # each step, 4 queries x round(40 * 5 / 100) = 2 hardest were recorded
    assert int(model.queue.seen.max()) > 0
    assert {"queue.hard", "queue.seen", "queue.stamp", "queue.clock"} <= set(model.state_dict())
    assert int(model.queue.clock) == 12


def test_retain_hard_validation_and_parsing():
    assert parse_policy("retain-hard[0.25]").name == "retain-hard[0.25]"
    assert parse_policy("retain-hard[0.25, 5]").name == "retain-hard[0.25]"
    assert parse_policy("retain-hard[0.25,10]").name == "retain-hard[0.25_10]"
    with pytest.raises(PolicyError, match="retains none"):
        parse_policy("retain-hard[0.01]").validate(50)
    with pytest.raises(PolicyError, match="no negative"):
        parse_policy("retain-hard[0.5,1]").validate(40)     # round(0.4) = 0
    for bad in ("retain-hard[1]", "retain-hard[0]", "retain-hard[0.5,100]", "retain-hard"):
        with pytest.raises(PolicyError, match="allowed"):
            parse_policy(bad)
    # SimCLR (no queue of its own): every negative, nothing recorded
    pol = RetainHard(0.5)
    assert pol(torch.randn(2, 4), Candidates(pool_index=torch.zeros(2, 4, dtype=torch.long))).mask((2, 4)) is None


# --------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("module", [bands, mixing, ring, reweighted, retention])
def test_each_module_parser_ignores_the_others_forms(module):
    forms = ["all", "keep[95_100)", "drop[99_100)&same-class", "mochi[4,2,2]", "ring[100->10,10,linear,50]",
             "curriculum[0,100->95,100,linear]", "debiased[0.1]", "hard[1,0.1]", "retain-hard[0.25]"]
    mine = [f for f in forms if module.parse(f) is not None]
    assert len(mine) >= 1 and all(parse_policy(f).name == module.parse(f).name for f in mine)
    assert isinstance(module.GRAMMAR, str) and module.GRAMMAR


def test_new_policies_do_not_read_labels_and_are_not_replace_mode():
    for text in ("mochi[4,2,2]", "ring[100->10,10,linear,50]", "curriculum[0,100->95,100,linear]", "debiased[0.1]",
                 "hard[1,0.1]", "retain-hard[0.25]"):
        pol = parse_policy(text)
        assert pol.uses_labels is False and pol.mode == "drop"
        with pytest.raises(PolicyError):
            parse_policy(text + "@replace")

"""MoCHi as a policy (Kalantidis et al. 2020): synthetic negatives mixed from
each query's N hardest, their draws, the warm-up, and the closed form of
their cosines equal to the materialised mixes."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from negatives.losses.info_nce import info_nce
from negatives.methods.moco import MoCo
from negatives.methods.simclr import SimCLR, candidate_index, twin_index
from negatives.models import build_encoder
from negatives.policies import Band, Candidates, Mix, MoCHi, PolicyError, parse_policy
from negatives.queues.fifo import KeyQueue


def _unit(*shape, seed=0, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def _cone_coefficients(h, a, b):
    """``(x, y, residual)`` with ``h ~ x a + y b`` (least squares)."""
    basis = torch.stack([a, b], dim=1).double()  # [D, 2]
    sol = torch.linalg.lstsq(basis, h.double().unsqueeze(1)).solution.flatten()
    residual = (basis @ sol - h.double()).norm().item()
    return sol[0].item(), sol[1].item(), residual


def reference_mixes(policy, keys, queries, sim):
    """The last draw's synthetic negatives from the definition, one query
    and one mix at a time: ``normalize(alpha n_i + (1 - alpha) n_j)`` of two
    of the query's N hardest (checked to be the N hardest by a full sort),
    then ``normalize(beta q + (1 - beta) n_j)``; ``[B, s + s', D]``."""
    m = policy.last_mix
    out = []
    for row in range(sim.shape[0]):
        hard = m["hard"][row].tolist()
        assert sorted(hard) == sorted(torch.argsort(sim[row], descending=True)[: policy.n_hard].tolist())
        mixes = []
        for i, j, a in zip(m["i"][row].tolist(), m["j"][row].tolist(), m["alpha"][row].tolist(), strict=True):
            mixes.append(F.normalize(a * keys[hard[i]] + (1 - a) * keys[hard[j]], dim=0))
        for j, b in zip(m["jq"][row].tolist(), m["beta"][row].tolist(), strict=True):
            mixes.append(F.normalize(b * queries[row] + (1 - b) * keys[hard[j]], dim=0))
        out.append(torch.stack(mixes))
    return torch.stack(out)


def _with_embeddings(keep, h, q, l_pos, sim, temperature):
    """The plain InfoNCE over the real negatives ``keep`` and the synthetic
    negatives ``h [B, s, D]`` as embeddings (``q . h``)."""
    keep = torch.ones_like(sim, dtype=torch.bool) if keep is None else keep
    neg = torch.cat([sim, torch.einsum("bd,bsd->bs", q, h.to(q.dtype))], dim=1)
    return info_nce(l_pos, neg, torch.cat([keep, keep.new_ones(h.shape[:2])], dim=1), temperature)


def _mochi_step(policy, b=3, k=40, d=8, seed=0):
    """One step: ``(q, keys, sim, selection, h)`` with ``h [B, s+s', D]`` the
    draw's synthetic negatives, materialised."""
    q = _unit(b, d, seed=seed)
    keys = _unit(k, d, seed=seed + 1)
    sim = q @ keys.T
    cand = Candidates(keys=keys, queries=q)
    sel = policy(sim, cand, 0.0)
    return q, keys, sim, sel, policy.embeddings(cand)


# ------------------------------------------------------------------ by hand


def test_mix_logits_by_hand():
    """q = (0.6, 0.8, 0), candidates e1, e2, e3: the pair mix of e1, e2 with
    alpha = 0.25 and the query mix of e3 with beta = 0.4."""
    q = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64, requires_grad=True)
    sim = q @ torch.eye(3, dtype=torch.float64).T
    # h  = normalize(0.25 e1 + 0.75 e2):  |.|^2 = 0.0625 + 0.5625 = 0.625
    # h' = normalize(0.4 q + 0.6 e3):     |.|^2 = 0.16 + 0.36 + 2 (0.4)(0.6)(q . e3 = 0) = 0.52
    r, r_q = math.sqrt(0.625), math.sqrt(0.52)
    mix = Mix(
        i=torch.tensor([[0, 2]]),
        j=torch.tensor([[1, 2]]),
        a=torch.tensor([[0.25 / r, 0.0]], dtype=torch.float64),
        c=torch.tensor([[0.75 / r, 0.6 / r_q]], dtype=torch.float64),
        d=torch.tensor([[0.0, 0.4 / r_q]], dtype=torch.float64),
    )
    got = mix.logits(q, sim)
    # q . h = (0.25 * 0.6 + 0.75 * 0.8) / sqrt(0.625);  q . h' = (0.4 * 1 + 0.6 * 0) / sqrt(0.52)
    torch.testing.assert_close(
        got, torch.tensor([[0.9486832980505138, 0.5547001962252291]], dtype=torch.float64), rtol=1e-14, atol=1e-14
    )
    # gradient to q: h + h' = (0.25, 0.75, 0) / sqrt(0.625) + (0.24, 0.32, 0.6) / sqrt(0.52)
    (grad,) = torch.autograd.grad(got.sum(), q)
    want = torch.tensor([[0.25 / r + 0.24 / r_q, 0.75 / r + 0.32 / r_q, 0.6 / r_q]], dtype=torch.float64)
    torch.testing.assert_close(grad, want, rtol=1e-14, atol=1e-14)


def test_mochi_of_the_single_hardest_by_hand():
    """N = 1: the one pair mixes the hardest with itself, so it is the hardest
    (cosine 0.8 here) whatever alpha; the query mixes' cosines follow from beta."""
    q = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    keys = torch.eye(3, dtype=torch.float64)
    pol = MoCHi(1, 1, 3, generator=torch.Generator().manual_seed(0))
    sel = pol(q @ keys.T, Candidates(keys=keys, queries=q), 0.0)
    assert sel.keep is None and float(sel.kept_per_query(3)) == 3 + 4
    got = sel.synthetic(q, q @ keys.T)
    torch.testing.assert_close(got[:, :1], torch.tensor([[0.8], [1.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    assert pol.last_mix["hard"].tolist() == [[1], [2]]
    # query 1's hardest is e3 = q itself: every query mix is q, cosine 1
    torch.testing.assert_close(got[1, 1:], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-15)
    # query 0: |b q + (1 - b) e2|^2 = b^2 + (1 - b)^2 + 2 b (1 - b) 0.8, q . h' = (b + 0.8 (1 - b)) / |.|
    for t, b in enumerate(pol.last_mix["beta"][0].tolist()):
        assert 0 <= b < 0.5
        want = (b + 0.8 * (1 - b)) / math.sqrt(b * b + (1 - b) ** 2 + 1.6 * b * (1 - b))
        assert float(got[0, 1 + t]) == pytest.approx(want, rel=1e-14)


# ------------------------------------------------------------------ the closed form


@pytest.mark.parametrize("k,n,s,s_query", [(6, 2, 3, 2), (40, 6, 10, 7), (300, 16, 64, 32), (50, 50, 5, 0)])
def test_closed_form_equals_the_reference_mixes(k, n, s, s_query):
    b, d = 5, 8
    q, keys = _unit(b, d, seed=k, dtype=torch.float64), _unit(k, d, seed=k + 1, dtype=torch.float64)
    sim = q @ keys.T
    pol = MoCHi(n, s, s_query, generator=torch.Generator().manual_seed(k))
    cand = Candidates(keys=keys, queries=q)
    sel = pol(sim, cand, 0.0)
    h = reference_mixes(pol, keys, q, sim)
    assert sel.keep is None and sel.mix.i.shape == (b, s + s_query)
    torch.testing.assert_close(sel.synthetic(q, sim), torch.einsum("bd,bsd->bs", q, h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pol.embeddings(cand), h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("real", ["all", "band", "random"])
def test_closed_form_loss_and_gradient_equal_the_materialised_mixes(real):
    """The loss and gradients (to the encoder's raw output and to q) of the
    closed form equal those of the plain InfoNCE with the mixes as detached
    embeddings, whatever real negatives come with them."""
    b, k, d = 3, 40, 8
    raw = torch.randn(b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    q = F.normalize(raw, dim=1)
    keys = _unit(k, d, seed=6, dtype=torch.float64)
    l_pos = (q * _unit(b, d, seed=7, dtype=torch.float64)).sum(1)
    sim = q @ keys.T
    pol = MoCHi(6, 10, 7, generator=torch.Generator().manual_seed(8))
    cand = Candidates(keys=keys, queries=q.detach())
    sel = pol(sim.detach(), cand, 0.0)
    h = reference_mixes(pol, keys, q.detach(), sim.detach())
    keep = {
        "all": None,
        "band": Band("drop", 80, 100)(sim.detach(), cand).keep,
        "random": torch.rand(b, k, generator=torch.Generator().manual_seed(9)) < 0.7,
    }[real]
    fast = info_nce(l_pos, sim, keep, 0.2, sel.synthetic(q, sim))
    plain = _with_embeddings(keep, h, q, l_pos, sim, 0.2)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(
        torch.autograd.grad(fast, [raw, q], retain_graph=True), torch.autograd.grad(plain, [raw, q]), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_mochi_pair_mixes_are_unit_and_in_the_cone_of_two_of_the_n_hardest():
    n = 5
    pol = MoCHi(n, 12, 0, generator=torch.Generator().manual_seed(1))
    q, keys, sim, sel, h_all = _mochi_step(pol)
    assert sel.keep is None  # every real negative is kept
    assert h_all.shape == (3, 12, 8) and not h_all.requires_grad
    assert torch.allclose(h_all.norm(dim=2), torch.ones(3, 12), atol=1e-6)
    torch.testing.assert_close(sel.synthetic(q, sim), torch.einsum("bd,bsd->bs", q, h_all))
    for row in range(3):
        hard = keys[torch.argsort(sim[row], descending=True)[:n]]  # the N hardest, the slow way
        for h in h_all[row]:
            # some pair (i, j) of the N hardest has h = x n_i + y n_j with x, y >= 0
            fits = []
            for i, j in itertools.combinations_with_replacement(range(n), 2):
                x, y, res = _cone_coefficients(h, hard[i], hard[j])
                fits.append(res < 1e-5 and (x + y > 0 if i == j else x >= -1e-6 and y >= -1e-6))
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
            x, y, res = min((_cone_coefficients(h, q[row], hard[j]) for j in range(n)), key=lambda t: t[2])
            assert res < 1e-5 and x >= -1e-6 and y > 0
            betas.append(x / (x + y))  # the query's weight before normalising
    betas = torch.tensor(betas)
    assert betas.max() < 0.5
    assert betas.max() > 0.45 and betas.min() < 0.05  # beta ~ U[0, 0.5), not a constant
    assert torch.allclose(pol.last_mix["beta"].flatten().double(), betas.double(), atol=1e-4)


# ------------------------------------------------------------------ draws


def test_mochi_draws_from_the_global_generator_deterministically():
    pol = MoCHi(6, 8, 4)
    torch.manual_seed(7)
    a, mix_a = _mochi_step(pol)[4], _mochi_step(pol)[3].mix
    torch.manual_seed(7)
    b, mix_b = _mochi_step(pol)[4], _mochi_step(pol)[3].mix
    torch.manual_seed(8)
    c = _mochi_step(pol)[4]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(torch.equal(getattr(mix_a, f), getattr(mix_b, f)) for f in "ijacd")


def test_mochi_draws_for_every_query_of_the_step_and_keeps_its_rows():
    """Across processes each holds some queries of the step (query_rows):
    its mixes are those rows of the mixes of the step in one process."""
    b, k, d = 8, 30, 6
    q, keys = _unit(b, d, seed=1), _unit(k, d, seed=2)
    sim = q @ keys.T
    whole = MoCHi(5, 4, 3, generator=torch.Generator().manual_seed(3))(sim, Candidates(keys=keys, queries=q))
    for first in (0, 2, 4, 6):
        rows = slice(first, first + 2)
        part = MoCHi(5, 4, 3, generator=torch.Generator().manual_seed(3))(
            sim[rows], Candidates(keys=keys, queries=q[rows], query_rows=(first, b))
        )
        for f in "ijacd":
            assert torch.equal(getattr(part.mix, f), getattr(whole.mix, f)[rows]), (first, f)


def test_mochi_mixes_are_detached_even_from_inputs_with_gradient():
    q = _unit(3, 8).requires_grad_(True)
    keys = _unit(30, 8, seed=1).requires_grad_(True)
    pol = MoCHi(4, 4, 4)
    cand = Candidates(keys=keys, queries=q)
    sel = pol(q.detach() @ keys.detach().T, cand, 0.0)
    assert all(not getattr(sel.mix, f).requires_grad for f in "acd")
    h = pol.embeddings(cand)
    assert not h.requires_grad and h.grad_fn is None


def test_mochi_warm_up_in_epochs():
    pol = parse_policy("mochi[4,2,2,3]").policy
    sim = torch.randn(2, 10)
    cand = Candidates(keys=_unit(10, 4), queries=_unit(2, 4, seed=1))
    with pytest.raises(PolicyError, match="start"):
        pol(sim, cand, 0.5)  # epochs unknown
    pol.start(10, num_candidates=10)
    steps = 7  # per epoch; progress = step / (7 * 10)
    before = pol(sim, cand, (3 * steps - 1) / (10 * steps))  # the last step of the third epoch
    assert before.mix is None and before.keep is None and float(before.kept_per_query(10)) == 10
    after = pol(sim, cand, (3 * steps) / (10 * steps))  # the first step of the fourth
    assert after.mix.i.shape == (2, 4) and float(after.kept_per_query(10)) == 14
    assert pol.embeddings(cand).shape == (2, 4, 4)
    assert parse_policy("mochi[4,2,2]").policy(sim, cand, 0.0).mix is not None  # no warm-up
    assert [pol.mixing(p) for p in (0.0, 0.29, 0.3 - 1e-12, 0.3, 1.0)] == [False, False, True, True, True]


def test_mochi_needs_the_embeddings():
    pol = MoCHi(2, 2, 0)
    with pytest.raises(PolicyError, match="embeddings"):
        pol(torch.randn(2, 5), Candidates())
    with pytest.raises(PolicyError, match="no mix drawn yet"):
        MoCHi(2, 2, 0).embeddings(Candidates(keys=_unit(5, 3), queries=_unit(2, 3)))


# ------------------------------------------------------------------ SimCLR and MoCo


def test_mochi_works_on_simclr_candidates_through_pool_index():
    """SimCLR: 2B views, each query's candidates are the other 2B-2 views
    (pool_index [2B, 2B-2]); mixes come from the query's own candidates."""
    b2, d, n = 6, 5, 2
    views = _unit(b2, d, seed=3)
    pool_index = candidate_index(b2 // 2)  # [2B, 2B-2]
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
            assert (
                min(
                    _cone_coefficients(h, own[0], own[1])[2],
                    _cone_coefficients(h, own[0], own[0])[2],
                    _cone_coefficients(h, own[1], own[1])[2],
                )
                < 1e-5
            )


def test_mochi_on_simclr_gives_the_gradient_of_detached_mixes():
    """SimCLR's candidates carry gradient; the synthetic negatives must not:
    the model's loss and gradient equal those with the materialised mixes."""
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).double()
    pol = MoCHi(3, 4, 3, generator=torch.Generator().manual_seed(4))
    model = SimCLR(enc, policy=pol, temperature=0.2)
    x1, x2 = torch.randn(4, 1, 2, 6, dtype=torch.float64), torch.randn(4, 1, 2, 6, dtype=torch.float64)
    labels = torch.arange(4)
    loss, stats = model(x1, x2, labels, labels)
    assert float(stats["kept"]) == 6 + 7
    grad = torch.autograd.grad(loss, list(enc.parameters()))
    z = F.normalize(enc(torch.cat([x1, x2])), dim=1)
    s = z @ z.T
    l_pos = s.gather(1, twin_index(4).unsqueeze(1)).squeeze(1)
    pool_index = candidate_index(4)
    h = pol.embeddings(Candidates(keys=z.detach(), queries=z.detach(), pool_index=pool_index))
    plain = _with_embeddings(None, h, z, l_pos, s.gather(1, pool_index), 0.2)
    torch.testing.assert_close(loss, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(grad, torch.autograd.grad(plain, list(enc.parameters())), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_moco_with_mochi_enqueues_only_keys_and_gives_no_key_encoder_gradient():
    torch.manual_seed(0)
    enc = build_encoder("small-cnn", 1, dim=8, width=4)
    queue = KeyQueue(40, 8, generator=torch.Generator().manual_seed(1))
    model = MoCo(enc, queue, parse_policy("mochi[8,4,4]").policy, momentum=0.9, temperature=0.2)
    before = model.queue.keys.clone()
    x = torch.randn(4, 1, 12, 12)
    loss, stats = model(x, x, torch.tensor([1, 2, 3, 4]), torch.tensor([7, 8, 9, 10]))
    assert torch.isfinite(loss) and float(stats["kept"]) == 40 + 8
    labels = model.queue.ordered()[1]
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


# ------------------------------------------------------------------ refusals


def test_mochi_bad_settings_are_policy_errors():
    with pytest.raises(PolicyError, match=r"N\*N = 16 pairs"):
        parse_policy("mochi[4,17,1]")
    parse_policy("mochi[4,16,1]")  # exactly N*N is fine
    with pytest.raises(PolicyError, match="warm-up of 10 epochs"):
        parse_policy("mochi[4,2,2,10]").validate(100, epochs=10)
    parse_policy("mochi[4,2,2,9]").validate(100, epochs=10)
    with pytest.raises(PolicyError, match="only 5 candidates"):
        parse_policy("mochi[8,4,4]").validate(5)
    with pytest.raises(PolicyError, match="only 5 candidates"):
        MoCHi(8, 4, 4)(torch.randn(2, 5), Candidates(keys=_unit(5, 3), queries=_unit(2, 3)))
    for bad in ("mochi[4,2]", "mochi[4,2,2,1,1]", "mochi[4,2.5,1]", "mochi[0,1,1]", "mochi[4,0,0]", "mochi(4,2,2)"):
        with pytest.raises(PolicyError, match="allowed"):
            parse_policy(bad)

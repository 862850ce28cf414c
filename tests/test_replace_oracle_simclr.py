"""Replace mode, the oracle class policies, SimCLR's candidates and the
comparison tables (Figure 3, Table 1, appendix A.2)."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ttest_ind

from negatives.analysis.figures import against_baseline
from negatives.methods.moco import MoCo
from negatives.methods.loss import ContrastiveLoss
from negatives.policies import (Candidates, PolicyError, Selection, Swap, parse_policy, replace_removed,
                                select, stand_ins)
from negatives.methods.simclr import SimCLR, candidate_index, twin_index

# ------------------------------------------------------------------ same-class masks

#                 candidate:  0  1  2  3  4   5
QUEUE_LABELS = torch.tensor([0, 1, 2, 0, 1, -1])
QUERY_LABELS = torch.tensor([0, 1, -1])
SIM = torch.tensor([
    [0.9, 0.1, 0.2, 0.3, 0.8, 0.7],   # query of class 0: same class at 0, 3
    [0.5, 0.6, 0.1, 0.2, 0.3, 0.9],   # class 1: same class at 1, 4
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # unknown class: never same or other
])
CANDS = Candidates(labels=QUEUE_LABELS, query_labels=QUERY_LABELS)


def test_drop_same_class_on_a_hand_made_queue():
    keep = parse_policy("drop-same-class")(SIM, CANDS).mask(SIM.shape)
    assert keep.int().tolist() == [[0, 1, 1, 0, 1, 1],
                                   [1, 0, 1, 1, 0, 1],
                                   [1, 1, 1, 1, 1, 1]]


def test_band_and_class_on_a_hand_made_queue():
    # hardest 50% = 3 of 6: row 0 -> {0, 4, 5}; row 1 -> {5, 1, 0}; row 2 -> {3, 4, 5}
    same = parse_policy("drop[50_100)&same-class")(SIM, CANDS).mask(SIM.shape)
    other = parse_policy("drop[50_100)&other-class")(SIM, CANDS).mask(SIM.shape)
    assert (~same).int().tolist() == [[1, 0, 0, 0, 0, 0],    # 0 is hard and class 0
                                      [0, 1, 0, 0, 0, 0],    # 1 is hard and class 1
                                      [0, 0, 0, 0, 0, 0]]
    assert (~other).int().tolist() == [[0, 0, 0, 0, 1, 0],   # 4 hard, class 1; 5 hard but unknown
                                       [1, 0, 0, 0, 0, 0],   # 0 hard, class 0; 5 unknown
                                       [0, 0, 0, 0, 0, 0]]   # unknown query: nothing is "other"
    # the same with per-query candidates (SimCLR's pool_index: here every row the whole pool, reversed)
    rev = torch.arange(5, -1, -1).expand(3, 6)
    pooled = Candidates(labels=QUEUE_LABELS, query_labels=QUERY_LABELS, pool_index=rev)
    for name, mask in (("drop[50_100)&same-class", same), ("drop[50_100)&other-class", other)):
        assert torch.equal(parse_policy(name)(SIM.flip(1), pooled).mask(SIM.shape), mask.flip(1))


def test_class_policies_are_marked_as_label_using():
    for name in ("drop-same-class", "drop[99.9_100)&same-class", "drop[99.9_100)&other-class@replace"):
        assert parse_policy(name).uses_labels
    for name in ("all", "keep[95_100)", "drop[99.9_100)@replace"):
        assert not parse_policy(name).uses_labels


def test_class_policy_without_labels_is_a_clear_error():
    with pytest.raises(PolicyError, match="class labels"):
        parse_policy("drop-same-class")(SIM, Candidates())


@pytest.mark.parametrize("text, canonical", [
    ("drop[99.9, 100) & same-class", "drop[99.9_100)&same-class"),
    ("drop-same-class @replace", "drop-same-class@replace"),
    ("drop[95_100)@replace", "drop[95_100)@replace"),
])
def test_canonical_names(text, canonical):
    assert parse_policy(text).name == canonical


@pytest.mark.parametrize("text, match", [
    ("keep[95_100)@replace", "applies to a removal policy"),
    ("all@replace", "applies to a removal policy"),
    ("drop[95_100)@swap", "unknown mode"),
    ("drop[100_95)&same-class", "a < b"),
    ("keep[95_100)&same-class", "malformed"),
    ("drop-other-class", "unknown policy"),
])
def test_bad_policies(text, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(text)


def test_empty_band_is_an_error_for_the_candidate_count():
    with pytest.raises(PolicyError, match="holds no negative"):
        parse_policy("drop[99.99_100)&same-class").validate(4096)   # round(0.41) = 0
    parse_policy("drop[99.99_100)&same-class").validate(65536)       # 7 negatives: fine
    with pytest.raises(PolicyError, match="every one"):
        parse_policy("drop[0_100)").validate(100)


# ------------------------------------------------------------------ replace mode

def test_replace_removed_takes_the_first_eligible_older_ones():
    keep = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)   # 2, 0, 4 removed
    eligible = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 1, 0]], dtype=torch.bool)
    got = replace_removed(keep, eligible)
    assert got.int().tolist() == [[1, 0, 1, 0, 0],
                                  [0, 0, 0, 0, 0],
                                  [1, 1, 0, 1, 0]]   # only 3 eligible of 4 needed: a shortfall of 1


def test_stand_ins_fill_the_removed_slots_with_the_first_eligible_older_ones():
    removed = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    eligible = torch.tensor([[0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]],
                            dtype=torch.bool)
    pos, found = stand_ins(removed, eligible)
    assert found.int().tolist() == [[0, 1, 1],
                                    [0, 0, 0],
                                    [1, 1, 0],      # 2 eligible for 3 removed: a shortfall of 1
                                    [0, 0, 0],      # none eligible
                                    [1, 1, 1]]      # every slot removed, more eligible than slots
    assert pos[found].tolist() == [1, 3, 2, 4, 0, 2, 3]   # in slot order: the 1st, 2nd, ... eligible column
    # the same older negatives as replace_removed picks for a mask with those removals
    keep = torch.ones(5, 6, dtype=torch.bool)
    keep[:, :3] = ~removed
    chosen = replace_removed(keep, eligible)
    for row in range(5):
        assert sorted(pos[row][found[row]].tolist()) == chosen[row].nonzero().flatten().tolist()


@pytest.mark.parametrize("name", ["drop[90_100)&other-class@replace", "drop[90_100)&same-class@replace"])
@pytest.mark.parametrize("far", [False, True])
def test_band_and_class_in_replace_mode_swap_in_the_same_stand_ins_as_the_mask_form(name, far):
    """The swap form (the band's related negatives out, the next older
    eligible ones in) is the selection of the general mask form: the K newest
    minus the removed plus replace_removed's stand-ins.  far: the stand-ins
    lie past the first 64 older columns per slot that the CPU looks at first."""
    k, extra, b = 40, 700, 24
    g = torch.Generator().manual_seed(5)
    sim = torch.rand(b, k + extra, generator=g)
    query_labels = torch.arange(b) % 3
    labels = torch.randint(0, 3, (k + extra,), generator=g)
    if far:
        # older negatives: every one of another class than any query's but 3, and those beyond 64 x 4 columns
        labels[k:] = 7 if name.endswith("other-class@replace") else 0
        labels[k + 300:k + 303] = torch.tensor([0, 1, 2]) if name.endswith("other-class@replace") else 7
        labels[k + 600:] = torch.arange(extra - 600) % 3 if name.endswith("other-class@replace") else 7
    cands = Candidates(labels=labels, query_labels=query_labels)
    policy = parse_policy(name)
    sel = select(policy, sim, cands, 0.0, window=k)
    assert isinstance(sel._swap, Swap) and sel._keep is None and sel._width == k   # the stored form
    assert sel._swap.at.shape == (b, 4)                                             # 10% of 40
    assert (~policy.inner(sim[:, :k], cands.rows(0, k))._swap.valid).all(1).any()   # a query loses all 4
    inner_keep = policy.inner(sim[:, :k], cands.rows(0, k)).mask((b, k))
    eligible = policy.eligible(cands.rows(k, k + extra)).expand(b, -1)
    want = torch.cat([inner_keep, replace_removed(inner_keep, eligible)], dim=1)
    got = sel.mask(sim.shape)
    assert torch.equal(got, want)
    if far:
        assert got[:, k + 64 * 4:].any()               # found only after the first look was widened
    assert (got.sum(1) == k).all() and torch.equal(sel.kept_per_query(k + extra), got.sum(1).float().mean())


def _moco(policy: str, k=8, extra=4, b=2, dim=4):
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, dim))
    return MoCo(enc, dim, k, momentum=0.9, temperature=0.2, policy=parse_policy(policy),
                generator=torch.Generator().manual_seed(0), queue_extra=extra)


def test_replace_mode_sees_exactly_k_negatives_all_older_than_the_removed():
    k, extra = 8, 4
    model = _moco("drop-same-class@replace", k, extra)
    q = model.queue
    # ages: put the keys so that newest_first() is slot order 11, 10, ..., 0
    q.ptr.fill_(0)
    # newest first: window [0, 2, 1, 2, 0, 1, 2, 2], older [2, 0, 2, 1]
    q.labels.copy_(torch.tensor([1, 2, 0, 2, 2, 2, 1, 0, 2, 1, 2, 0]))
    order = q.newest_first().tolist()
    assert order == [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    sim = torch.rand(2, k + extra, generator=torch.Generator().manual_seed(3))
    labels = q.labels[q.newest_first()]
    cands = Candidates(labels=labels, query_labels=torch.tensor([0, 1]))
    sel = select(model.policy, sim, cands, 0.0, window=k)
    assert sel._width == 11          # on CPU the mask stops at the last older column any query takes
    keep = sel.mask((2, k + extra))
    assert (keep.sum(1) == k).all()                                   # exactly K each
    for row, cls in enumerate((0, 1)):
        kept = keep[row].nonzero().flatten()
        assert (labels[kept] != cls).all()                            # no same-class negative
        # the K newest minus the removed ones, then the newest older stand-ins
        window_kept = [j for j in range(k) if labels[j] != cls]
        older = [j for j in range(k, k + extra) if labels[j] != cls]
        assert kept.tolist() == window_kept + older[: k - len(window_kept)]
        assert all(j >= k for j in kept.tolist()[len(window_kept):])  # stand-ins are older


def test_replace_mode_band_keeps_k_and_only_older_stand_ins():
    k, extra = 20, 8
    sim = torch.randn(3, k + extra, generator=torch.Generator().manual_seed(1))
    sel = select(parse_policy("drop[90_100)@replace"), sim, Candidates(), 0.0, window=k)
    assert sel._keep is None and sel._width == k + 2          # the stored form: the first K + 2 columns, no mask
    keep = sel.mask(sim.shape)
    assert (keep.sum(1) == k).all() and float(sel.kept_per_query(k + extra)) == k
    assert (keep[:, k:].sum(1) == 2).all()                          # 10% of 20 replaced
    assert keep[:, k:k + 2].all() and not keep[:, k + 2:].any()     # by the 2 next older
    hardest = sim[:, :k].topk(2, dim=1).indices
    assert not keep.gather(1, hardest).any()


@pytest.mark.parametrize("name", ["drop[90_100)@replace", "drop-same-class@replace",
                                  "drop[80_100)&other-class@replace", "drop[80_100)&same-class@replace"])
def test_replace_mode_loss_equals_the_full_mask_form(name):
    """The cheap forms (a band: the first K + r columns with r dropped; the
    class oracle on CPU: the mask cut after the last older column used; a
    band and a class: the swap) give the loss and gradient of the same
    selection as a [B, K + E] mask."""
    k, extra, tau = 40, 60, 0.2
    g = torch.Generator().manual_seed(2)
    q = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(k + extra, 8, generator=g), dim=1)
    cands = Candidates(labels=torch.randint(0, 3, (k + extra,), generator=g),
                       query_labels=torch.randint(0, 3, (5,), generator=g))
    policy = parse_policy(name)
    sel = select(policy, q @ keys.T, cands, 0.0, window=k)
    assert sel._width is not None and sel._width < k + extra                    # the cheap form was taken
    grads, losses = [], []
    for form in (sel, Selection.where(sel.mask((5, k + extra)))):
        qq = q.clone().requires_grad_(True)
        sim = qq @ keys.T
        loss = ContrastiveLoss(tau, policy.loss)((qq * qq.detach()).sum(1), sim, form, qq)
        loss.backward()
        losses.append(loss)
        grads.append(qq.grad)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_a_swap_reaches_a_policys_own_loss_as_the_mask_it_stands_for():
    """A loss other than InfoNCE gets a swap (replace mode's stand-ins past
    ``width`` included) as its [B, K + E] mask: the same loss and gradient
    as the fused InfoNCE term reading the swap itself."""
    from negatives.losses import info_nce

    k, extra, tau = 40, 60, 0.2
    g = torch.Generator().manual_seed(4)
    q = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(k + extra, 8, generator=g), dim=1)
    cands = Candidates(labels=torch.randint(0, 3, (k + extra,), generator=g),
                       query_labels=torch.randint(0, 3, (6,), generator=g))
    policy = parse_policy("drop[80_100)&other-class@replace")
    sel = select(policy, q @ keys.T, cands, 0.0, window=k)
    assert sel._swap is not None and bool((sel._swap.to >= k).any())           # stand-ins past width
    seen = []

    def own_loss(l_pos, neg, keep, temperature):
        seen.append(keep)
        return info_nce(l_pos, neg, keep, temperature)

    custom = parse_policy("drop[80_100)&other-class@replace")
    custom.loss = own_loss
    grads, losses = [], []
    for pol in (policy, custom):
        qq = q.clone().requires_grad_(True)
        loss = ContrastiveLoss(tau, pol.loss)((qq * qq.detach()).sum(1), qq @ keys.T, sel, qq)
        loss.backward()
        losses.append(loss)
        grads.append(qq.grad)
    assert len(seen) == 1 and torch.equal(seen[0], sel.mask((6, k + extra)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_replace_mode_moco_step_uses_k_negatives_and_a_longer_queue():
    model = _moco("drop[50_100)@replace", k=8, extra=4)
    assert model.queue.size == 12 and model.window == 8
    x = torch.randn(2, 3)
    loss, stats = model(x, x + 0.01, torch.tensor([0, 1]), torch.tensor([5, 6]))
    assert torch.isfinite(loss) and float(stats["kept"]) == 8
    assert model.queue.indices.tolist().count(5) == 1                  # enqueued like drop mode
    with pytest.raises(ValueError, match="queue_extra"):
        _moco("drop[50_100)@replace", extra=0)
    assert _moco("drop[50_100)", extra=4).queue.size == 8              # drop mode: no extra length


# ------------------------------------------------------------------ SimCLR

def test_simclr_candidates_exclude_the_view_and_its_positive():
    b = 3
    twins = twin_index(b)
    assert twins.tolist() == [3, 4, 5, 0, 1, 2]
    idx = candidate_index(b)
    assert idx.shape == (6, 4)
    for i in range(2 * b):
        assert sorted(idx[i].tolist()) == sorted(set(range(6)) - {i, int(twins[i])})


def test_simclr_loss_is_nt_xent_and_policies_apply():
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 4))
    model = SimCLR(enc, temperature=0.5)
    x1, x2 = torch.randn(4, 5), torch.randn(4, 5)
    loss, stats = model(x1, x2, torch.tensor([0, 1, 0, 1]), torch.arange(4))
    # NT-Xent by hand: cross-entropy over every other view, the twin as target
    z = F.normalize(enc(torch.cat([x1, x2])), dim=1)
    logits = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
    expected = F.cross_entropy(logits, twin_index(4))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert float(stats["kept"]) == 6
    same = SimCLR(enc, 0.5, parse_policy("drop-same-class"))
    _, stats = same(x1, x2, torch.tensor([0, 1, 0, 1]), torch.arange(4))
    # each view: 6 candidates; same class = the other image of its class, both views -> 2 removed
    assert float(stats["kept"]) == 4
    with pytest.raises(ValueError, match="replace mode"):
        SimCLR(enc, 0.5, parse_policy("drop-same-class@replace"))


# ------------------------------------------------------------------ comparison tables

def test_against_baseline_p_values_match_scipy():
    base = [70.1, 70.5, 69.8]
    drop = [70.9, 71.2, 70.6]
    rows = [dict(policy="all", temperature=0.2, seed=s, linear_top1=v, uses_labels=False) for s, v in enumerate(base)]
    rows += [dict(policy="drop[99.9_100)", temperature=0.2, seed=s, linear_top1=v, uses_labels=False)
             for s, v in enumerate(drop)]
    rows += [dict(policy="drop-same-class@replace", temperature=0.2, seed=s, linear_top1=v, uses_labels=True)
             for s, v in enumerate([71.0, 71.1])]
    table = against_baseline(pd.DataFrame(rows), {"drop[99.9_100)": "hardest 0.1%",
                                                  "drop-same-class@replace": "same class"})
    r = table.set_index("policy")
    assert r.loc["drop[99.9_100)", "p_value"] == pytest.approx(ttest_ind(drop, base).pvalue, rel=1e-12)
    assert r.loc["drop[99.9_100)", "delta"] == pytest.approx(np.mean(drop) - np.mean(base))
    assert r.loc["drop[99.9_100)", "std"] == pytest.approx(np.std(drop, ddof=1))
    assert r.loc["drop-same-class@replace", "n"] == 2 and r.loc["drop-same-class@replace", "uses_labels"]
    assert np.isnan(r.loc["all", "p_value"]) and r.loc["all", "delta"] == 0
    with pytest.raises(ValueError, match="missing"):
        against_baseline(pd.DataFrame(rows), {"drop[99_100)": "hardest 1%"})

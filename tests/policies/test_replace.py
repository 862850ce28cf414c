"""``<drop policy>@replace``: the removal among the K newest negatives, each
removed one replaced by the next older one the policy allows, so every query
sees exactly K; a mask over all K + E columns, the queue's keys newest first."""

import math

import pytest
import torch

from negatives.losses.info_nce import info_nce
from negatives.methods.moco import MoCo
from negatives.policies import (
    Band,
    Candidates,
    ClassFilter,
    PolicyError,
    Replace,
    parse_policy,
    replace_removed,
)
from negatives.policies.bands import band_ranks
from negatives.queues.fifo import KeyQueue


def reference_inner(name, sim, cand_labels, query_labels):
    """``[B, K]`` keep of a drop policy on ``sim [B, K]``, one query at a time
    (a full sort for the band; the class relation by its definition)."""
    b, k = sim.shape
    band, _, relation = name.partition("&")
    if name == "drop-same-class":
        lo, hi, relation = 0, k, "same-class"
    else:
        a, c = (float(x) for x in band[len("drop[") : -1].split("_"))
        lo, hi = band_ranks(k, a, c)
    keep = torch.ones(b, k, dtype=torch.bool)
    for i in range(b):
        rank = {j: r for r, j in enumerate(sorted(range(k), key=lambda j: float(sim[i, j])))}
        for j in range(k):
            q, c = int(query_labels[i]), int(cand_labels[j])
            related = {"": True, "same-class": q >= 0 and c == q, "other-class": q >= 0 and c >= 0 and c != q}[relation]
            keep[i, j] = not (related and lo <= rank[j] < hi)
    return keep


def reference_replace(name, sim, labels, query_labels, newest_first, k):
    """Replace mode one query at a time: the inner policy on the K newest
    slots, then the removed count filled by the older slots, newest first,
    that the policy allows (not of the removed relation); a ``[B, K + E]``
    mask in slot order."""
    window, older = newest_first[:k].tolist(), newest_first[k:].tolist()
    inner = reference_inner(name, sim[:, window], labels[window], query_labels)
    relation = name.partition("&")[2] or ("same-class" if name == "drop-same-class" else "")
    keep = torch.zeros_like(sim, dtype=torch.bool)
    for i in range(sim.shape[0]):
        q = int(query_labels[i])
        missing = k - int(inner[i].sum())
        for j, slot in enumerate(window):
            keep[i, slot] = bool(inner[i, j])
        for slot in older:
            c = int(labels[slot])
            removed_kind = {"": False, "same-class": q >= 0 and c == q, "other-class": q >= 0 and c >= 0 and c != q}[
                relation
            ]
            if missing and not removed_kind:
                keep[i, slot] = True
                missing -= 1
    return keep


def in_slot_order(policy, sim, newest, labels=None, query_labels=None):
    """The policy on the queue's keys newest first (the slots ``newest``), as
    MoCo hands them over, its mask put back in slot order."""
    cands = Candidates(labels=None if labels is None else labels[newest], query_labels=query_labels, age_ordered=True)
    keep = policy(sim[:, newest], cands).keep
    return torch.zeros_like(keep).index_copy_(1, newest, keep)


def started(name, k):
    policy = parse_policy(name).policy
    policy.start(1, num_candidates=k)
    return policy


# ------------------------------------------------------------------ replace_removed


def test_replace_removed_takes_the_first_eligible_older_ones():
    keep = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # 2, 0, 4 removed
    eligible = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 1, 0]], dtype=torch.bool)
    got = replace_removed(keep, eligible)
    assert got.int().tolist() == [
        [1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0],  # only 3 eligible of 4 needed: a shortfall of 1
    ]
    # every older one eligible, given as their count: the first ones, as many as removed (or all 3)
    assert replace_removed(keep, 3).int().tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert torch.equal(replace_removed(keep, 5), replace_removed(keep, torch.ones(3, 5, dtype=torch.bool)))


def test_stand_ins_are_the_first_eligible_older_ones_whatever_slots_were_removed():
    removed = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    eligible = torch.tensor(
        [[0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool
    )
    keep = torch.ones(5, 6, dtype=torch.bool)
    keep[:, :3] = ~removed
    chosen = replace_removed(keep, eligible)
    assert [row.nonzero().flatten().tolist() for row in chosen] == [
        [1, 3],  # two removed: the 1st and 2nd eligible older columns
        [],
        [2, 4],  # 2 eligible for 3 removed: a shortfall of 1
        [],  # none eligible
        [0, 2, 3],  # every slot removed, more eligible than slots
    ]
    assert (keep.sum(1) + chosen.sum(1)).tolist() == [6, 6, 5, 4, 6]


def test_replace_removed_equals_a_loop_over_queries():
    g = torch.Generator().manual_seed(0)
    for k, e in ((1, 1), (5, 3), (20, 40), (64, 7)):
        keep = torch.rand(9, k, generator=g) < 0.7
        eligible = torch.rand(9, e, generator=g) < 0.5
        got = replace_removed(keep, eligible)
        for i in range(9):
            missing = k - int(keep[i].sum())
            want = []
            for j in range(e):
                if eligible[i, j] and len(want) < missing:
                    want.append(j)
            assert got[i].nonzero().flatten().tolist() == want


# ------------------------------------------------------------------ Replace


def test_replace_by_hand_in_the_queues_slot_order():
    # K = 3 newest of a queue of 6: newest first the slots 4, 5, 0, then older 1, 2, 3
    policy = started("drop[60_100)@replace", 3)  # round(1.2) = 1: the hardest of the 3 newest
    newest = torch.tensor([4, 5, 0, 1, 2, 3])
    sim = torch.tensor(
        [
            [0.1, 0.5, 0.6, 0.7, 0.9, 0.2],  # newest 4, 5, 0 -> 0.9, 0.2, 0.1: slot 4 out
            [0.8, 0.0, 0.3, 0.4, 0.5, 0.6],  # newest -> 0.5, 0.6, 0.8: slot 0 out
        ]
    )
    keep = in_slot_order(policy, sim, newest)
    # each query: its 2 newest kept, and the newest older slot, 1, stands in
    assert keep.int().tolist() == [[1, 1, 0, 0, 0, 1], [0, 1, 0, 0, 1, 1]]
    # the same removal of the same-class oracle: stand-ins skip the query's own class
    policy = started("drop-same-class@replace", 3)
    keep = in_slot_order(policy, sim, newest, torch.tensor([0, 1, 0, 2, 0, 1]), torch.tensor([0, 1]))
    # query 0: slots 4, 0 are class 0, slots 1 and 3 stand in (2 is class 0);
    # query 1: slot 5 out, slot 2 stands in (1 is class 1)
    assert keep.int().tolist() == [[0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0]]


@pytest.mark.parametrize(
    "name",
    [
        "drop[90_100)@replace",
        "drop[50_100)@replace",
        "drop[0_30)@replace",
        "drop[40_60)@replace",
        "drop-same-class@replace",
        "drop[80_100)&same-class@replace",
        "drop[80_100)&other-class@replace",
        "drop[0_50)&other-class@replace",
    ],
)
@pytest.mark.parametrize("k,extra", [(5, 5), (20, 8), (40, 60)])
def test_replace_equals_the_reference(name, k, extra):
    g = torch.Generator().manual_seed(k + extra)
    b = 6
    sim = torch.rand(b, k + extra, generator=g)
    labels = torch.randint(-1, 3, (k + extra,), generator=g)
    query_labels = torch.tensor([0, 1, 2, -1, 0, 1])
    newest = torch.randperm(k + extra, generator=g)
    policy = started(name, k)
    keep = in_slot_order(policy, sim, newest, labels, query_labels)
    want = reference_replace(name.removesuffix("@replace"), sim, labels, query_labels, newest, k)
    assert torch.equal(keep, want)
    assert (keep.sum(1) <= k).all()


@pytest.mark.parametrize("name", ["drop[90_100)&other-class@replace", "drop[90_100)&same-class@replace"])
@pytest.mark.parametrize("far", [False, True])
def test_band_and_class_stand_ins_may_lie_far_back(name, far):
    """The K newest minus the removed plus the first eligible older ones,
    also when the first eligible ones lie hundreds of columns back."""
    k, extra, b = 40, 700, 24
    g = torch.Generator().manual_seed(5)
    sim = torch.rand(b, k + extra, generator=g)
    query_labels = torch.arange(b) % 3
    labels = torch.randint(0, 3, (k + extra,), generator=g)
    other = name.endswith("other-class@replace")
    if far:
        # older negatives: every one of the removed relation but 3, and those beyond column 600
        labels[k:] = 7 if other else 0
        labels[k + 300 : k + 303] = torch.tensor([0, 1, 2]) if other else 7
        labels[k + 600 :] = torch.arange(extra - 600) % 3 if other else 7
    newest = torch.arange(k + extra)
    policy = started(name, k)
    keep = policy(sim, Candidates(labels=labels, query_labels=query_labels, age_ordered=True)).keep
    inner = policy.inner(sim[:, :k], Candidates(labels=labels[:k], query_labels=query_labels)).keep
    assert (~inner).sum(1).max() == 4 and (~inner).sum(1).min() < 4  # 10% of 40: a query loses up to 4
    assert torch.equal(keep[:, :k], inner)
    assert torch.equal(keep, reference_replace(name.removesuffix("@replace"), sim, labels, query_labels, newest, k))
    if far:
        assert keep[:, k + 256 :].any()  # found only hundreds of columns back
    assert (keep.sum(1) == k).all()


def test_replace_mode_sees_exactly_k_negatives_all_older_than_the_removed():
    k, extra = 8, 4
    queue = KeyQueue(k + extra, 4, generator=torch.Generator().manual_seed(0), age_ordered=True)
    queue.enqueue(torch.eye(4).repeat(3, 1), torch.tensor([0, 1, 2, 0, 1, 2, 1, 0, 2, 1, 2, 0]), torch.arange(12))
    queue.ptr.fill_(0)  # the last batch ended at slot 11: newest first is 11, 10, ..., 0
    assert queue.newest_first().tolist() == [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    keys, labels, indices = queue.snapshot()  # as MoCo hands them to the policy: newest first
    assert indices.tolist() == list(range(11, -1, -1)) and torch.equal(keys, queue.keys.flip(0))
    # window [0, 2, 1, 2, 0, 1, 2, 1], older [0, 2, 1, 0]
    assert labels.tolist() == [0, 2, 1, 2, 0, 1, 2, 1, 0, 2, 1, 0]
    sim = torch.rand(2, k + extra, generator=torch.Generator().manual_seed(3))
    policy = started("drop-same-class@replace", k)
    keep = policy(sim, Candidates(labels=labels, query_labels=torch.tensor([0, 1]), age_ordered=True)).keep
    assert (keep.sum(1) == k).all()  # exactly K each
    kept = [row.nonzero().flatten().tolist() for row in keep]
    # query of class 0 loses the newest-first positions 0 and 4, gets 9 and 10 (8 is class 0)
    assert kept[0] == [1, 2, 3, 5, 6, 7, 9, 10]
    # query of class 1 loses positions 2, 5 and 7 and gets 8, 9, 11 (10 is class 1)
    assert kept[1] == [0, 1, 3, 4, 6, 8, 9, 11]


def test_replace_mode_band_keeps_k_and_only_the_next_older_stand_ins():
    k, extra = 20, 8
    sim = torch.randn(3, k + extra, generator=torch.Generator().manual_seed(1))
    policy = started("drop[90_100)@replace", k)
    sel = policy(sim, Candidates(age_ordered=True))
    keep = sel.keep
    assert (keep.sum(1) == k).all() and float(sel.kept_per_query(k + extra)) == k
    assert (keep[:, k:].sum(1) == 2).all()  # 10% of 20 replaced
    assert keep[:, k : k + 2].all() and not keep[:, k + 2 :].any()  # by the 2 next older
    hardest = sim[:, :k].topk(2, dim=1).indices
    assert not keep.gather(1, hardest).any() and keep[:, :k].sum(1).tolist() == [18, 18, 18]


def test_a_shortfall_of_eligible_older_negatives_shows_in_the_count():
    policy = started("drop-same-class@replace", 4)
    cands = Candidates(labels=torch.tensor([0, 0, 1, 2, 0, 0]), query_labels=torch.tensor([0]), age_ordered=True)
    sel = policy(torch.zeros(1, 6), cands)
    assert sel.keep.int().tolist() == [[0, 0, 1, 1, 0, 0]]  # two removed, no older one eligible
    assert float(sel.kept_per_query(6)) == 2


def test_replace_needs_its_start_and_the_queues_order():
    policy = parse_policy("drop[90_100)@replace").policy
    with pytest.raises(PolicyError, match=r"start\(epochs, K\)"):
        policy(torch.zeros(2, 12), Candidates(age_ordered=True))
    policy.start(1, num_candidates=10)
    with pytest.raises(PolicyError, match="queue newest first"):
        policy(torch.zeros(2, 12), Candidates())


def test_replace_wraps_removal_policies_only():
    for inner in (Band("keep", 90, 100), Replace(Band("drop", 90, 100))):
        with pytest.raises(PolicyError, match="applies to a removal policy"):
            Replace(inner)
    policy = Replace(ClassFilter("same-class", Band("drop", 99.9, 100)))
    assert policy.name == "drop[99.9_100)&same-class@replace" and policy.uses_labels
    with pytest.raises(PolicyError, match="holds no negative"):
        policy.validate(400)  # round(0.4) = 0


# ------------------------------------------------------------------ in MoCo


def _moco(name, k=8, extra=4, dim=4, loss=info_nce):
    torch.manual_seed(0)
    recipe = parse_policy(name)
    recipe.policy.start(1, num_candidates=k)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, dim))
    queue = recipe.make_queue(k, extra, dim, generator=torch.Generator().manual_seed(0))
    return MoCo(enc, queue, recipe.policy, loss, momentum=0.9, temperature=0.2)


def test_replace_mode_moco_step_uses_k_negatives_and_a_longer_queue():
    model = _moco("drop[50_100)@replace", k=8, extra=4)
    assert model.queue.size == 12
    x = torch.randn(2, 3)
    loss, stats = model(x, x + 0.01, torch.tensor([0, 1]), torch.tensor([5, 6]))
    assert torch.isfinite(loss) and float(stats["kept"]) == 8
    assert model.queue.indices.tolist().count(5) == 1  # enqueued like drop mode
    assert _moco("drop[50_100)", extra=4).queue.size == 8  # drop mode: no extra length


@pytest.mark.parametrize(
    "name",
    [
        "drop[90_100)@replace",
        "drop-same-class@replace",
        "drop[80_100)&other-class@replace",
        "drop[80_100)&same-class@replace",
    ],
)
def test_replace_mode_loss_is_info_nce_over_the_masks_columns(name):
    """The loss MoCo computes reads Replace's [B, K + E] mask over the queue's
    keys newest first: the InfoNCE of each query over exactly the reference's columns."""
    k, extra, tau = 8, 8, 0.2
    seen = []

    def recording(l_pos, sim, keep, temperature, synthetic=None):
        seen.append((l_pos.detach().clone(), sim.detach().clone(), keep))
        return info_nce(l_pos, sim, keep, temperature, synthetic)

    model = _moco(name, k, extra, loss=recording)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0])
    for step in range(4):  # fill the queue with labelled keys
        model(x + step, x + step, labels, torch.arange(4) + 4 * step)
    queue_labels, newest = model.queue.labels.clone(), model.queue.newest_first()
    query_labels = torch.tensor([2, 0, 1, 1])
    loss, stats = model(x, x + 0.01, query_labels, torch.arange(4) + 100)
    l_pos, sim, keep = seen[-1]
    # sim's columns are the queue's keys newest first
    age = torch.arange(newest.shape[0])
    want = reference_replace(name.removesuffix("@replace"), sim, queue_labels[newest], query_labels, age, k)
    assert torch.equal(keep, want)
    terms = []
    for i in range(4):
        cols = keep[i].nonzero().flatten().tolist()
        denominator = math.exp(l_pos[i] / tau) + sum(math.exp(sim[i, j] / tau) for j in cols)
        terms.append(-math.log(math.exp(l_pos[i] / tau) / denominator))
    assert float(loss.detach()) == pytest.approx(sum(terms) / 4, rel=1e-5)
    assert float(stats["kept"]) == float(keep.sum()) / 4


def test_replace_mode_without_older_keys_is_refused_when_the_queue_is_made():
    from negatives.policies import parse_policy

    with pytest.raises(ValueError, match=r"policy 'drop\[50_100\)@replace' needs pretrain\.queue_extra > 0"):
        parse_policy("drop[50_100)@replace").make_queue(8, 0, 4)
    assert parse_policy("drop[50_100)@replace").make_queue(8, 4, 4).size == 12
    assert parse_policy("drop[50_100)").make_queue(8, 0, 4).size == 8

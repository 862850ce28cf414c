"""The oracle class filters of Cai et al.'s Table 1: drop-same-class and a
band's negatives of the query's class (or of other classes)."""

import pytest
import torch

from negatives.policies import Band, Candidates, ClassFilter, PolicyError, parse_policy
from negatives.policies.bands import band_ranks

#                 candidate:  0  1  2  3  4   5
QUEUE_LABELS = torch.tensor([0, 1, 2, 0, 1, -1])
QUERY_LABELS = torch.tensor([0, 1, -1])
SIM = torch.tensor(
    [
        [0.9, 0.1, 0.2, 0.3, 0.8, 0.7],  # query of class 0: same class at 0, 3
        [0.5, 0.6, 0.1, 0.2, 0.3, 0.9],  # class 1: same class at 1, 4
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # unknown class: never same or other
    ]
)
CANDS = Candidates(labels=QUEUE_LABELS, query_labels=QUERY_LABELS)


def reference_filter(sim, cand_labels, query_labels, relation, band):
    """``[B, K]`` keep, one query and one candidate at a time: removed when
    related to the query (same class, or another known class) and, with a
    band ``(a, b)``, of rank ``[lo, hi)`` in the query's row (a full sort)."""
    b, k = sim.shape
    lo, hi = (0, k) if band is None else band_ranks(k, *band)
    keep = torch.ones(b, k, dtype=torch.bool)
    for i in range(b):
        q = int(query_labels[i])
        order = sorted(range(k), key=lambda j: float(sim[i, j]))
        rank = {j: r for r, j in enumerate(order)}
        for j in range(k):
            c = max(int(cand_labels[i, j]), -1)
            if relation == "same-class":
                related = q >= 0 and c == q
            else:
                related = q >= 0 and c >= 0 and c != q
            if related and lo <= rank[j] < hi:
                keep[i, j] = False
    return keep


def test_drop_same_class_on_a_hand_made_queue():
    keep = parse_policy("drop-same-class").policy(SIM, CANDS).keep
    assert keep.int().tolist() == [[0, 1, 1, 0, 1, 1], [1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]]


def test_band_and_class_on_a_hand_made_queue():
    # hardest 50% = 3 of 6: row 0 -> {0, 4, 5}; row 1 -> {5, 1, 0}; row 2 -> {3, 4, 5}
    same = parse_policy("drop[50_100)&same-class").policy(SIM, CANDS).keep
    other = parse_policy("drop[50_100)&other-class").policy(SIM, CANDS).keep
    assert (~same).int().tolist() == [
        [1, 0, 0, 0, 0, 0],  # 0 is hard and class 0
        [0, 1, 0, 0, 0, 0],  # 1 is hard and class 1
        [0, 0, 0, 0, 0, 0],
    ]
    assert (~other).int().tolist() == [
        [0, 0, 0, 0, 1, 0],  # 4 hard, class 1; 5 hard but unknown
        [1, 0, 0, 0, 0, 0],  # 0 hard, class 0; 5 unknown
        [0, 0, 0, 0, 0, 0],  # unknown query: nothing is "other"
    ]
    # narrow bands (the relation read at the band's positions only): the hardest one of 6
    hardest = parse_policy("drop[90_100)&same-class").policy(SIM, CANDS).keep
    assert (~hardest).int().tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    hardest = parse_policy("drop[90_100)&other-class").policy(SIM, CANDS).keep
    # the hardest: 0 (the query's own class), 5 (unknown), 5 (unknown query)
    assert (~hardest).int().tolist() == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    # the same with per-query candidates (SimCLR's pool_index: here every row the whole pool, reversed)
    rev = torch.arange(5, -1, -1).expand(3, 6)
    pooled = Candidates(labels=QUEUE_LABELS, query_labels=QUERY_LABELS, pool_index=rev)
    for name, mask in (("drop[50_100)&same-class", same), ("drop[50_100)&other-class", other)):
        assert torch.equal(parse_policy(name).policy(SIM.flip(1), pooled).keep, mask.flip(1))


def test_related_and_eligible_by_hand():
    labels = torch.tensor([0, 1, 2, 0, 1, -1, -3])  # -3: unknown like -1
    cands = Candidates(labels=labels, query_labels=torch.tensor([0, -1]))
    same, other = ClassFilter("same-class"), ClassFilter("other-class", Band("drop", 0, 50))
    assert same.related(cands).int().tolist() == [[1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]]
    assert other.related(cands).int().tolist() == [[0, 1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]]
    assert other.related(cands, torch.tensor([[1, 3], [2, 6]])).int().tolist() == [[1, 0], [0, 0]]
    # a stand-in (@replace) is never what the policy removes for the query's class
    assert torch.equal(same.eligible(cands), ~same.related(cands))
    assert torch.equal(other.eligible(cands), ~other.related(cands))


@pytest.mark.parametrize("k", [6, 40, 333])
@pytest.mark.parametrize(
    "relation,band",
    [("same-class", None)]
    + [
        (r, band)
        for r in ("same-class", "other-class")
        for band in ((99, 100), (90, 100), (50, 100), (10, 60), (0, 95))
    ],
)
@pytest.mark.parametrize("pooled", [False, True])
def test_class_filters_equal_the_reference(k, relation, band, pooled):
    g = torch.Generator().manual_seed(k)
    b = 5
    sim = torch.rand(b, k, generator=g)
    pool = torch.randint(-1, 3, (k + 3,), generator=g)
    query_labels = torch.tensor([0, 1, 2, -1, 0])
    if pooled:
        pool_index = torch.stack([torch.randperm(k + 3, generator=g)[:k] for _ in range(b)])
        cands = Candidates(labels=pool, query_labels=query_labels, pool_index=pool_index)
        cand_labels = pool[pool_index]
    else:
        cands = Candidates(labels=pool[:k], query_labels=query_labels)
        cand_labels = pool[:k].expand(b, -1)
    policy = ClassFilter(relation, None if band is None else Band("drop", *band))
    want = reference_filter(sim, cand_labels, query_labels, relation, band)
    assert torch.equal(policy(sim, cands).keep, want)


@pytest.mark.parametrize("relation", ["same-class", "other-class"])
@pytest.mark.parametrize("band", [(95, 100), (50, 100), (20, 70)])
def test_class_filters_under_ties_remove_only_related_negatives_of_a_band(relation, band):
    k = 40
    lo, hi = band_ranks(k, *band)
    g = torch.Generator().manual_seed(1)
    sim = (torch.rand(6, k, generator=g) * 3).round() / 3  # four values, many ties
    cands = Candidates(labels=torch.randint(0, 3, (k,), generator=g), query_labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    policy = ClassFilter(relation, Band("drop", *band))
    removed = ~policy(sim, cands).keep
    assert torch.equal(removed & ~policy.related(cands), torch.zeros_like(removed))
    assert torch.equal(~policy(sim.clone(), cands).keep, removed)  # deterministic
    for row, out in zip(sim, removed, strict=True):
        ordered = row.sort().values
        assert int(out.sum()) <= hi - lo
        assert (row[out] >= ordered[lo]).all() and (row[out] <= ordered[hi - 1]).all()


def test_class_policies_are_marked_as_label_using():
    for name in ("drop-same-class", "drop[99.9_100)&same-class", "drop[99.9_100)&other-class@replace"):
        assert parse_policy(name).uses_labels and parse_policy(name).policy.uses_labels
    for name in ("all", "keep[95_100)", "drop[99.9_100)@replace"):
        assert not parse_policy(name).uses_labels


def test_class_policy_without_labels_is_a_clear_error():
    with pytest.raises(PolicyError, match="needs the class labels"):
        parse_policy("drop-same-class").policy(SIM, Candidates())
    with pytest.raises(PolicyError, match="needs the class labels"):
        parse_policy("drop[90_100)&other-class").policy(SIM, Candidates(labels=QUEUE_LABELS))


def test_empty_band_is_an_error_for_the_candidate_count():
    with pytest.raises(PolicyError, match="holds no negative"):
        parse_policy("drop[99.99_100)&same-class").validate(4096)  # round(0.41) = 0
    parse_policy("drop[99.99_100)&same-class").validate(65536)  # 7 negatives: fine
    parse_policy("drop-same-class").validate(1)
    parse_policy("drop[0_100)&same-class").validate(10)  # removes only the same class
    with pytest.raises(PolicyError, match="every one"):
        parse_policy("drop[0_100)").validate(100)


def test_class_filter_constructor_refusals():
    with pytest.raises(PolicyError, match="'same-class' or 'other-class'"):
        ClassFilter("same-label")
    with pytest.raises(PolicyError, match="combine it with a band"):
        ClassFilter("other-class")
    with pytest.raises(PolicyError, match="combines with a drop band"):
        ClassFilter("same-class", Band("keep", 90, 100))
    assert ClassFilter("other-class", Band("drop", 90, 100)).name == "drop[90_100)&other-class"

"""Negative policies: exact band counts, the right negatives, the parser."""

import math

import pytest
import torch

from negatives.policies import All, Band, Candidates, PolicyError, band_ranks, parse_policy, top_k

NO_INFO = Candidates()


def _ranks(sim):
    """Rank of each candidate per row, 0 = easiest (the slow, obvious way)."""
    order = torch.argsort(sim, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(sim.shape[1]).expand_as(order))
    return ranks


@pytest.mark.parametrize("k", [10, 100, 1000, 4096, 4097, 65536])
@pytest.mark.parametrize("band", [(95, 100), (90, 95), (85, 90), (0, 95), (0, 90), (99.9, 100), (99, 100), (0, 50), (12.5, 37.5)])
def test_band_keeps_exactly_round_kw_negatives_per_query(k, band):
    a, b = band
    g = torch.Generator().manual_seed(k)
    sim = torch.rand(7, k, generator=g) * 2 - 1
    keep = Band("keep", a, b)(sim, NO_INFO).mask(sim.shape)
    drop = Band("drop", a, b)(sim, NO_INFO).mask(sim.shape)
    n = math.floor(k * (b - a) / 100 + 0.5)
    assert keep.dtype == torch.bool and keep.shape == sim.shape
    assert (keep.sum(1) == n).all()
    assert (drop.sum(1) == k - n).all()
    assert torch.equal(drop, ~keep)


@pytest.mark.parametrize("band", [(95, 100), (90, 95), (0, 95), (99.9, 100), (30, 40)])
def test_band_keeps_the_right_ranks(band):
    a, b = band
    k = 2000  # k*a/100 and k*b/100 are whole: the band is exactly a <= 100 r / k < b
    sim = torch.randn(5, k, generator=torch.Generator().manual_seed(1))
    keep = Band("keep", a, b)(sim, NO_INFO).mask(sim.shape)
    pct = 100.0 * _ranks(sim).double() / k
    expected = (pct >= a - 1e-9) & (pct < b - 1e-9)
    assert torch.equal(keep, expected)


def test_hardest_band_holds_the_largest_similarities():
    sim = torch.tensor([[0.1, 0.9, -0.5, 0.3, 0.95, 0.0, -0.9, 0.2, 0.5, 0.6]])
    keep = Band("keep", 80, 100)(sim, NO_INFO).mask(sim.shape)
    assert keep[0].nonzero().flatten().tolist() == [1, 4]
    easy = Band("keep", 0, 20)(sim, NO_INFO).mask(sim.shape)
    assert easy[0].nonzero().flatten().tolist() == [2, 6]
    middle = Band("keep", 40, 60)(sim, NO_INFO).mask(sim.shape)  # ranks 4, 5 -> values 0.2, 0.3
    assert middle[0].nonzero().flatten().tolist() == [3, 7]


def test_band_is_per_query():
    sim = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    keep = Band("keep", 75, 100)(sim, NO_INFO).mask(sim.shape)
    assert keep.tolist() == [[False, False, False, True], [True, False, False, False]]


@pytest.mark.parametrize("band", [(95, 100), (0, 95), (10, 90), (40, 60), (0, 50)])
def test_ties_keep_exact_counts_deterministically(band):
    sim = torch.zeros(3, 40)
    sim[:, ::2] = 0.5
    keep = Band("keep", *band)(sim, NO_INFO).mask(sim.shape)
    assert (keep.sum(1) == round(40 * (band[1] - band[0]) / 100)).all()
    assert torch.equal(keep, Band("keep", *band)(sim.clone(), NO_INFO).mask(sim.shape))
    constant = torch.ones(2, 40)  # every candidate tied
    assert (Band("keep", *band)(constant, NO_INFO).mask(constant.shape).sum(1) == round(40 * (band[1] - band[0]) / 100)).all()


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [0, 1, 37, 150, 299, 300])
def test_top_k_picks_the_k_extreme_positions_of_every_row(k, largest):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(16, 300, generator=g)      # distinct values: one right answer
    got = top_k(x, k, largest=largest)
    assert got.shape == (16, k) and got.dtype == torch.long
    want = torch.topk(x, k, dim=1, largest=largest).indices
    assert torch.equal(got.sort(1).values, want.sort(1).values)
    # float64, and a strided view (replace mode's newest K columns)
    assert torch.equal(top_k(x.double(), k, largest).sort(1).values, want.sort(1).values)
    wide = torch.cat([x, torch.randn(16, 50, generator=g)], dim=1)[:, :300]
    assert torch.equal(top_k(wide, k, largest).sort(1).values, want.sort(1).values)


def test_top_k_keeps_exact_counts_under_ties_on_every_path():
    x = torch.zeros(4, 64)
    x[:, ::3] = 1.0
    for t in (x, x.to(torch.bfloat16)):          # numpy's argpartition, torch.topk
        idx = top_k(t, 30)
        assert idx.shape == (4, 30) and all(len(set(r)) == 30 for r in idx.tolist())
        assert (t.gather(1, idx) == 1).sum(1).tolist() == [22] * 4     # all 22 ones, then 8 zeros
        assert torch.equal(idx, top_k(t.clone(), 30))                    # deterministic


def test_band_ranks_formula():
    assert band_ranks(4096, 95, 100) == (3891, 4096)   # round(204.8) = 205 hardest
    assert band_ranks(4096, 90, 95) == (3686, 3891)
    assert band_ranks(4096, 0, 95) == (0, 3891)
    assert band_ranks(1000, 99.9, 100) == (999, 1000)
    assert band_ranks(10, 85, 100) == (8, 10)           # round(1.5)=2 placed so it ends at K


def test_all_keeps_everything():
    assert All()(torch.randn(2, 5), NO_INFO).mask((2, 5)) is None


@pytest.mark.parametrize(
    "text,name",
    [("all", "all"), ("keep[95_100)", "keep[95_100)"), ("keep[95.0, 100)", "keep[95_100)"),
     ("drop[99.9_100)", "drop[99.9_100)"), (" keep[0_5) ", "keep[0_5)")],
)
def test_parse_canonical_names(text, name):
    assert parse_policy(text).name == name


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("hardest", "unknown policy"),
        ("keep[95,100]", "malformed"),
        ("keep[-5,10)", "[0, 100]"),
        ("keep[90_101)", "[0, 100]"),
        ("keep[50_50)", "a < b"),
        ("drop[60_40)", "a < b"),
        ("keep(5,10)", "unknown policy"),
    ],
)
def test_parse_rejects_bad_policies(text, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert fragment in str(e.value)
    assert "allowed" in str(e.value) or "band" in str(e.value)

"""Negative policies: exact band counts, the right negatives, the parser."""

import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from negatives.policies import (All, Band, Candidates, ClassFilter, PolicyError, Replace, band_ranks, parse_policy,
                                top_k)

NO_INFO = Candidates()


def _ranks(sim):
    """Rank of each candidate per row, 0 = easiest (the slow, obvious way)."""
    order = torch.argsort(sim, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(sim.shape[1]).expand_as(order))
    return ranks


REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["config.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))]


def _written_bands(policy) -> list[tuple[str, str]]:
    """The percentile bands ``(a, b)`` a policy counts, as decimal strings."""
    from negatives.policies.retention import RetainHard
    from negatives.policies.ring import Curriculum

    if isinstance(policy, Replace):
        return _written_bands(policy.inner)
    if isinstance(policy, ClassFilter):
        return [] if policy.band is None else _written_bands(policy.band)
    if isinstance(policy, Band):
        return [(repr(policy.lo_pct), repr(policy.hi_pct))]
    if isinstance(policy, Curriculum):
        return [(repr(policy.lo[i]), repr(policy.hi[i])) for i in (0, 1)]
    if isinstance(policy, RetainHard):
        return [(str(Decimal(100) - Decimal(repr(policy.hard_pct))), "100")]
    return []


def _config_bands() -> set[tuple[str, str]]:
    import yaml

    from negatives.config import _walk_policies

    bands = set()
    for name in CONFIGS:
        cfg = yaml.safe_load((REPO / name).read_text())
        for _, value in _walk_policies(cfg["figures"], "figures"):
            if isinstance(value, str) and not value.replace(".", "").isdigit():
                bands.update(_written_bands(parse_policy(value)))
    return bands


def test_every_config_band_is_counted_exactly_for_every_k_up_to_70000():
    bands = _config_bands()
    assert ("99.9", "100.0") in bands and ("0.0", "95.0") in bands and len(bands) >= 10
    k = np.arange(1, 70_001, dtype=np.int64)
    for a, b in sorted(bands):
        # the reference in integers: percentiles as written, scaled by 10^d to whole numbers
        d = max(len(x.partition(".")[2]) for x in (a, b))
        scale = 10 ** d
        lo_pct, hi_pct = (int(Decimal(x) * scale) for x in (a, b))
        n = (2 * k * (hi_pct - lo_pct) + 100 * scale) // (200 * scale)
        lo = np.minimum((2 * k * lo_pct + 100 * scale) // (200 * scale), k - n)
        got = np.array([band_ranks(int(x), float(a), float(b)) for x in k])
        assert np.array_equal(got[:, 1] - got[:, 0], n), (a, b, k[np.flatnonzero(got[:, 1] - got[:, 0] != n)][:5])
        assert np.array_equal(got[:, 0], lo), (a, b)


@pytest.mark.parametrize("k,band,n", [(500, (99.9, 100), 1), (1500, (99.9, 100), 2), (5, (99.9, 100), 0),
                                      (2000, (0, 99.975), 2000), (70_000, (99.999, 100), 1)])
def test_counts_that_end_in_a_half_round_up(k, band, n):
    # 500 x 0.1 / 100 = 0.5 exactly: binary floats made it 0.4999...97 and lost the negative;
    # 2000 x 99.975 / 100 = 1999.5
    assert 500 * (100 - 99.9) / 100 < 0.5
    lo, hi = band_ranks(k, *band)
    assert hi - lo == n


@pytest.mark.parametrize("k", [10, 100, 1000, 4096, 4097, 65536])
@pytest.mark.parametrize("band", [(95, 100), (90, 95), (85, 90), (0, 95), (0, 90), (99.9, 100), (99, 100), (0, 50), (12.5, 37.5)])
def test_band_keeps_exactly_round_kw_negatives_per_query(k, band):
    a, b = band
    g = torch.Generator().manual_seed(k)
    sim = torch.rand(7, k, generator=g) * 2 - 1
    keep = Band("keep", a, b)(sim, NO_INFO).mask(sim.shape)
    drop = Band("drop", a, b)(sim, NO_INFO).mask(sim.shape)
    n = math.floor(k * (Fraction(str(b)) - Fraction(str(a))) / 100 + Fraction(1, 2))
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

"""The paper's bands of difficulty: exact counts (band_ranks), the right
negatives (band_selection, rank_window, Band keep and drop), ties, validation."""

import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from negatives.config_files import read_config
from negatives.policies import (
    All,
    Band,
    Candidates,
    ClassFilter,
    PolicyError,
    Replace,
    Selection,
    parse_policy,
)
from negatives.policies.bands import band_ranks, band_selection, marked, rank_window
from negatives.policies.ring import Curriculum
from negatives.queues.retaining import RetainingQueue

NO_INFO = Candidates()
REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["config.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))]


def ranks_of(sim):
    """Rank of each candidate in its row, 0 = easiest (a full stable sort)."""
    order = torch.argsort(sim, dim=1, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(sim.shape[1]).expand_as(order))


def reference_band(sim, lo, hi):
    """``[B, K]`` bool: the ranks ``[lo, hi)`` of every row, from a full sort."""
    r = ranks_of(sim)
    return (r >= lo) & (r < hi)


def reference_count(k, a, b):
    """``round(K (b - a) / 100)`` half up, in exact decimals."""
    return math.floor(Fraction(k) * (Fraction(str(b)) - Fraction(str(a))) / 100 + Fraction(1, 2))


def assert_is_the_band_under_ties(sim, keep, lo, hi):
    """Ties: the kept values of each row are the row's sorted values ``[lo, hi)``."""
    for row, mask in zip(sim, keep, strict=True):
        assert torch.equal(row[mask].sort().values, row.sort().values[lo:hi])


# ------------------------------------------------------------------ band_ranks


def test_band_ranks_by_hand():
    assert band_ranks(4096, 95, 100) == (3891, 4096)  # round(204.8) = 205 hardest
    assert band_ranks(4096, 90, 95) == (3686, 3891)  # lo = round(3686.4), 205 of them
    assert band_ranks(4096, 0, 95) == (0, 3891)
    assert band_ranks(4096, 99.9, 100) == (4092, 4096)  # 4.096 -> 4
    assert band_ranks(1000, 99.9, 100) == (999, 1000)
    assert band_ranks(10, 85, 100) == (8, 10)  # round(1.5) = 2, placed so it ends at K
    assert band_ranks(10, 12, 37) == (1, 4)  # round(2.5) = 3 from round(1.2) = 1
    assert band_ranks(5, 99.9, 100) == (5, 5)  # 0.005 -> none
    assert band_ranks(1000, 0, 99.95) == (0, 1000)  # 999.5 -> 1000


@pytest.mark.parametrize(
    "k,band,n",
    [
        (500, (99.9, 100), 1),
        (1500, (99.9, 100), 2),
        (5, (99.9, 100), 0),
        (2000, (0, 99.975), 2000),
        (70_000, (99.999, 100), 1),
    ],
)
def test_counts_that_end_in_a_half_round_up(k, band, n):
    # 500 x 0.1 / 100 = 0.5 exactly: binary floats made it 0.4999...97 and lost the negative
    assert 500 * (100 - 99.9) / 100 < 0.5
    lo, hi = band_ranks(k, *band)
    assert hi - lo == n and hi <= k


def _written_bands(recipe) -> list[tuple[str, str]]:
    """The percentile bands ``(a, b)`` a policy name counts, as decimal strings."""
    policy = recipe.policy
    if isinstance(policy, Replace):
        policy = policy.inner
    if isinstance(policy, ClassFilter):
        policy = policy.band
    if isinstance(policy, Band):
        return [(repr(policy.lo_pct), repr(policy.hi_pct))]
    if isinstance(policy, Curriculum):
        return [(repr(policy.lo[i]), repr(policy.hi[i])) for i in (0, 1)]
    if getattr(recipe.queue, "func", None) is RetainingQueue:
        c = recipe.queue.keywords["hard_pct"]  # retain-hard's hardest c percent
        return [(str(Decimal(100) - Decimal(repr(c))), "100")]
    return []


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _config_bands() -> set[tuple[str, str]]:
    bands = set()
    for name in CONFIGS:
        # an overlay in configs/ layered on config.yaml, as Snakemake reads it
        cfg = read_config(*([] if name == "config.yaml" else [REPO / name]), base=REPO / "config.yaml")
        for value in _strings(cfg["figures"]):
            if not value.replace(".", "").isdigit():
                bands.update(_written_bands(parse_policy(value)))
    return bands


def test_every_config_band_is_counted_exactly_for_every_k_up_to_70000():
    bands = _config_bands()
    assert ("99.9", "100.0") in bands and ("0.0", "95.0") in bands and len(bands) >= 10
    k = np.arange(1, 70_001, dtype=np.int64)
    for a, b in sorted(bands):
        # the reference in integers: percentiles as written, scaled by 10^d to whole numbers
        d = max(len(x.partition(".")[2]) for x in (a, b))
        scale = 10**d
        lo_pct, hi_pct = (int(Decimal(x) * scale) for x in (a, b))
        n = (2 * k * (hi_pct - lo_pct) + 100 * scale) // (200 * scale)
        lo = np.minimum((2 * k * lo_pct + 100 * scale) // (200 * scale), k - n)
        got = np.array([band_ranks(int(x), float(a), float(b)) for x in k])
        assert np.array_equal(got[:, 1] - got[:, 0], n), (a, b, k[np.flatnonzero(got[:, 1] - got[:, 0] != n)][:5])
        assert np.array_equal(got[:, 0], lo), (a, b)


def test_retain_hard_counts_its_hardest_percent_as_the_band_does():
    for k in (20, 100, 4096, 65536):
        for c in (5, 2.5, 0.1, 20):
            lo, hi = band_ranks(k, 100 - Fraction(str(c)), 100)
            assert RetainingQueue.hard_count(k, c) == hi - lo == reference_count(k, 100 - Fraction(str(c)), 100)


# ------------------------------------------------------------------ which negatives


def test_hardest_band_holds_the_largest_similarities():
    sim = torch.tensor([[0.1, 0.9, -0.5, 0.3, 0.95, 0.0, -0.9, 0.2, 0.5, 0.6]])
    keep = Band("keep", 80, 100)(sim, NO_INFO).keep
    assert keep[0].nonzero().flatten().tolist() == [1, 4]
    easy = Band("keep", 0, 20)(sim, NO_INFO).keep
    assert easy[0].nonzero().flatten().tolist() == [2, 6]
    middle = Band("keep", 40, 60)(sim, NO_INFO).keep  # ranks 4, 5 -> values 0.2, 0.3
    assert middle[0].nonzero().flatten().tolist() == [3, 7]
    drop = Band("drop", 90, 100)(sim, NO_INFO).keep  # the hardest one (0.95) out
    assert drop[0].tolist() == [True, True, True, True, False, True, True, True, True, True]
    easiest = Band("keep", 0, 70)(sim, NO_INFO).keep  # all but the 3 hardest (0.95, 0.9, 0.6)
    assert (~easiest[0]).nonzero().flatten().tolist() == [1, 4, 9]


def test_band_is_per_query():
    sim = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    keep = Band("keep", 75, 100)(sim, NO_INFO).keep
    assert keep.tolist() == [[False, False, False, True], [True, False, False, False]]


@pytest.mark.parametrize("k", [10, 100, 1000, 4096, 4097, 65536])
@pytest.mark.parametrize(
    "band",
    [(95, 100), (90, 95), (85, 90), (0, 95), (0, 90), (99.9, 100), (99, 100), (0, 50), (12.5, 37.5), (3, 97), (0, 100)],
)
def test_band_keeps_the_reference_ranks(k, band):
    a, b = band
    g = torch.Generator().manual_seed(k)
    sim = torch.rand(7, k, generator=g, dtype=torch.float64) * 2 - 1  # distinct (float32 repeats at 65536)
    # the placement rule from its definition: n = round(K (b - a) / 100) from round(K a / 100), ending at K at most
    n = reference_count(k, a, b)
    lo = min(math.floor(k * Fraction(str(a)) / 100 + Fraction(1, 2)), k - n)
    assert band_ranks(k, a, b) == (lo, lo + n)
    want = reference_band(sim, lo, lo + n)
    keep = Band("keep", a, b)(sim, NO_INFO).keep
    drop = Band("drop", a, b)(sim, NO_INFO).keep
    assert keep.dtype == torch.bool and keep.shape == sim.shape
    assert torch.equal(keep, want) and torch.equal(drop, ~want)
    assert (keep.sum(1) == n).all()


@pytest.mark.parametrize("band", [(95, 100), (90, 95), (0, 95), (99.9, 100), (30, 40)])
def test_band_is_the_percentiles_a_le_p_lt_b_when_they_are_whole(band):
    a, b = band
    k = 2000  # k a / 100 and k b / 100 are whole: the band is exactly a <= 100 r / k < b
    sim = torch.randn(5, k, generator=torch.Generator().manual_seed(1))
    keep = Band("keep", a, b)(sim, NO_INFO).keep
    pct = 100.0 * ranks_of(sim).double() / k
    assert torch.equal(keep, (pct >= a - 1e-9) & (pct < b - 1e-9))


@pytest.mark.parametrize("band", [(95, 100), (0, 95), (10, 90), (40, 60), (0, 50), (85, 100)])
def test_ties_keep_exact_counts_deterministically(band):
    k = 40
    lo, hi = band_ranks(k, *band)
    sim = torch.zeros(3, k)
    sim[:, ::2] = 0.5
    g = torch.Generator().manual_seed(0)
    rounded = (torch.rand(4, k, generator=g) * 4).round() / 4  # five values, many ties
    for s in (sim, rounded, torch.ones(2, k)):
        keep = Band("keep", *band)(s, NO_INFO).keep
        drop = Band("drop", *band)(s, NO_INFO).keep
        assert (keep.sum(1) == hi - lo).all() and (drop.sum(1) == k - (hi - lo)).all()
        assert torch.equal(keep, Band("keep", *band)(s.clone(), NO_INFO).keep)
        assert_is_the_band_under_ties(s, keep, lo, hi)
        assert_is_the_band_under_ties(s, ~drop, lo, hi)


def test_band_selection_and_rank_window_are_every_rank_interval():
    g = torch.Generator().manual_seed(2)
    for k in (1, 2, 5, 9, 16):
        sim = torch.randn(4, k, generator=g)
        tied = (sim * 2).round()
        for lo in range(k + 1):
            for hi in range(lo, k + 1):
                want = reference_band(sim, lo, hi)
                assert torch.equal(band_selection(sim, lo, hi).keep, want), (k, lo, hi)
                index, mask = rank_window(sim, lo, hi)
                assert (index is None) != (mask is None)
                if index is not None:
                    assert index.shape == (4, hi - lo)
                    assert torch.equal(marked(sim, index, True), want)
                else:
                    assert torch.equal(mask, want)
                assert_is_the_band_under_ties(tied, band_selection(tied, lo, hi).keep, lo, hi)


def test_rank_window_by_hand():
    sim = torch.tensor([[0.3, 0.1, 0.9, 0.5, 0.7, 0.2]])  # ranks 2, 0, 5, 3, 4, 1
    assert band_selection(sim, 2, 4).keep[0].tolist() == [True, False, False, True, False, False]
    assert band_selection(sim, 1, 5).keep[0].tolist() == [True, False, False, True, True, True]
    assert band_selection(sim, 4, 6).keep[0].tolist() == [False, False, True, False, True, False]
    assert band_selection(sim, 0, 1).keep[0].tolist() == [False, True, False, False, False, False]
    assert not band_selection(sim, 3, 3).keep.any()
    index, _ = rank_window(sim, 4, 6)
    assert sorted(index[0].tolist()) == [2, 4]


def test_marked_by_hand():
    sim = torch.zeros(2, 4)
    index = torch.tensor([[0, 2], [3, 1]])
    assert marked(sim, index, True).int().tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    assert marked(sim, index, False).int().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]
    value = torch.tensor([[False, True], [True, False]])
    assert marked(sim, index, value).int().tolist() == [[0, 1, 1, 1], [1, 0, 1, 1]]


def test_all_keeps_everything():
    sel = All()(torch.randn(2, 5), NO_INFO)
    assert sel.keep is None and sel.mix is None and float(sel.kept_per_query(5)) == 5
    assert parse_policy("all").policy.name == "all"


def test_kept_per_query_is_the_mean_count():
    sel = Selection(keep=torch.tensor([[True, False, True], [False, False, True]]))
    assert float(sel.kept_per_query(3)) == 1.5
    sim = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    assert float(Band("drop", 90, 100)(sim, NO_INFO).kept_per_query(40)) == 36


# ------------------------------------------------------------------ refusals


def test_band_validation_names_the_empty_or_total_band():
    with pytest.raises(PolicyError, match=r"holds no negative out of 400 \(round\(400 x 0.1 / 100\) = 0\)"):
        Band("keep", 99.9, 100).validate(400)
    Band("keep", 99.9, 100).validate(500)  # 0.5 rounds up: one negative
    with pytest.raises(PolicyError, match="removes every one of the 100 negatives"):
        Band("drop", 0, 100).validate(100)
    Band("keep", 0, 100).validate(100)
    with pytest.raises(PolicyError, match="removes every one of the 3 negatives"):
        Band("drop", 0, 99.9).validate(3)  # round(2.997) = 3


def test_band_constructor_refusals():
    with pytest.raises(PolicyError, match="'keep' or 'drop'"):
        Band("hold", 0, 10)
    with pytest.raises(PolicyError, match=r"in \[0, 100\]"):
        Band("keep", -1, 10)
    with pytest.raises(PolicyError, match="a < b"):
        Band("drop", 10, 10)


@pytest.mark.parametrize(
    "name",
    [
        "keep[95_100)",
        "keep[90_95)",
        "keep[0_50)",
        "keep[40_60)",
        "ring[100->10_10_linear_50]",
        "ring[20_10]",
        "curriculum[0_100->95_100_linear]",
    ],
)
@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_a_bands_positions_are_the_candidates_its_mask_keeps_and_give_its_loss(name, progress):
    """The faster form: a band also answers its kept positions (``at``), which
    the method gathers instead of masking; they are exactly the mask's, and
    InfoNCE over them is InfoNCE over the mask (float64, to rounding)."""
    from negatives.losses.info_nce import info_nce
    from negatives.policies import parse_policy

    g = torch.Generator().manual_seed(3)
    sim = torch.rand(6, 200, generator=g, dtype=torch.float64) * 2 - 1
    l_pos = torch.rand(6, generator=g, dtype=torch.float64)
    policy = parse_policy(name).policy
    policy.start(4, 200)
    sel = policy(sim, NO_INFO, progress)
    if sel.at is None:  # a band inside the queue whose complement is cheaper: the mask alone
        assert sel.keep is not None
        return
    assert torch.equal(marked(sim, sel.at, True), sel.keep)
    assert (sel.keep.sum(1) == sel.at.shape[1]).all()
    neg, keep = sel.negatives(sim)
    assert keep is None and neg.shape == sel.at.shape
    torch.testing.assert_close(info_nce(l_pos, neg, keep, 0.2), info_nce(l_pos, sim, sel.keep, 0.2), rtol=1e-12, atol=0)

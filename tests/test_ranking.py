"""Ranking a query's candidates: the exact rational of a percent as written,
the exact count of a percent (half up), and the partial selection of the
hardest or easiest."""

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch

from negatives.ranking import exact, percent_of, top_k


def test_exact_reads_a_number_as_written():
    assert exact(99.9) == Fraction(999, 10) and exact(99.9) != Fraction(99.9)  # not the binary float
    assert exact(3) == Fraction(3) and isinstance(exact(3), Fraction)
    assert exact(Fraction(95, 3)) == Fraction(95, 3)
    assert exact(0.1) + exact(0.2) == exact(0.3)
    assert exact(12.3456789) == Fraction(123456789, 10_000_000)
    assert exact(1e-05) == Fraction(1, 100_000)
    assert exact(np.float64(99.975)) == Fraction(3999, 40)


@pytest.mark.parametrize(
    "k,pct,n",
    [
        (4096, 0.1, 4),
        (1000, 99.95, 1000),
        (500, 0.1, 1),
        (1500, 0.1, 2),
        (5, 0.1, 0),
        (2000, 99.975, 2000),
        (2000, 0.025, 1),
        (70_000, 0.001, 1),
        (10, 15, 2),
        (10, 5, 1),
        (10, 4.9, 0),
        (0, 50, 0),
        (7, 100, 7),
    ],
)
def test_percent_of_rounds_half_up_exactly(k, pct, n):
    # 500 x 0.1 / 100 = 0.5 exactly: with binary floats it is 0.4999...97 and would lose the negative
    assert percent_of(k, pct) == n


def test_the_float_product_would_lose_a_half():
    assert 500 * (100 - 99.9) / 100 < 0.5
    assert percent_of(500, 100 - exact(99.9)) == 1


def test_percent_of_is_round_half_up_of_the_decimal_product():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        k = int(rng.integers(0, 100_000))
        digits = int(rng.integers(0, 4))
        pct = round(float(rng.uniform(0, 100)), digits)
        want = int((Decimal(k) * Decimal(repr(pct)) / 100 + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))
        assert percent_of(k, pct) == want, (k, pct)


def _sorted_set(t):
    return t.sort(1).values


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [0, 1, 3, 4, 5, 37, 150, 299, 300])
def test_top_k_picks_the_k_extreme_positions_of_every_row(k, largest):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(16, 300, generator=g)  # distinct values: one right answer
    got = top_k(x, k, largest=largest)
    assert got.shape == (16, k) and got.dtype == torch.long
    # the reference: a full sort of every row, its first (or last) k positions
    order = torch.argsort(x, dim=1, descending=largest)
    want = _sorted_set(order[:, :k])
    assert torch.equal(_sorted_set(got), want)
    # float64 and a strided view (replace mode's columns)
    assert torch.equal(_sorted_set(top_k(x.double(), k, largest)), want)
    wide = torch.cat([x, torch.randn(16, 50, generator=g)], dim=1)[:, :300]
    assert torch.equal(_sorted_set(top_k(wide, k, largest)), want)


def test_top_k_by_hand():
    x = torch.tensor([[0.1, 0.9, 0.5, 0.7, -0.2, 0.3]])
    assert sorted(top_k(x, 2)[0].tolist()) == [1, 3]
    assert sorted(top_k(x, 2, largest=False)[0].tolist()) == [0, 4]
    assert sorted(top_k(x, 5)[0].tolist()) == [0, 1, 2, 3, 5]
    assert sorted(top_k(x, 5, largest=False)[0].tolist()) == [0, 2, 3, 4, 5]
    assert sorted(top_k(x, 6)[0].tolist()) == [0, 1, 2, 3, 4, 5]


def test_top_k_keeps_exact_counts_under_ties_on_every_path():
    x = torch.zeros(4, 64)
    x[:, ::3] = 1.0
    for t in (x, x.double(), x.to(torch.bfloat16)):  # numpy's argpartition on CPU floats, torch.topk for bf16
        for k, largest, ones in ((30, True, 22), (3, True, 3), (50, False, 8), (64, True, 22)):
            idx = top_k(t, k, largest)
            assert idx.shape == (4, k) and all(len(set(r)) == k for r in idx.tolist())
            assert (t.gather(1, idx) == 1).sum(1).tolist() == [ones] * 4  # all the extremes, then the ties
            assert torch.equal(idx, top_k(t.clone(), k, largest))  # deterministic


def test_top_k_multiset_equals_the_sorted_reference_with_ties():
    g = torch.Generator().manual_seed(3)
    for k in (1, 7, 20, 33):
        x = torch.randint(0, 5, (9, 40), generator=g).float()  # many ties
        for largest in (True, False):
            got = x.gather(1, top_k(x, k, largest)).sort(1).values
            want = x.sort(1, descending=largest).values[:, :k].sort(1).values
            assert torch.equal(got, want), (k, largest)


def test_percent_of_matches_math_for_whole_percents():
    for k in range(300):
        for pct in (0, 1, 5, 10, 12.5, 50, 95, 100):
            assert percent_of(k, pct) == math.floor(Fraction(k) * Fraction(str(pct)) / 100 + Fraction(1, 2))

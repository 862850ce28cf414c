"""Wu et al.'s Ring (and Ball) as their released code computes it, band
curricula, and the schedules that move them, counted exactly."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from negatives.losses.info_nce import info_nce
from negatives.policies import Band, Candidates, PolicyError, parse_policy
from negatives.policies.ring import Curriculum, Ring
from negatives.policies.schedules import Schedule, parse_schedule

NO_INFO = Candidates()
REPO = Path(__file__).resolve().parents[2]


def _policy(text):
    return parse_policy(text).policy


def _kept(pol, sim, progress):
    return pol(sim, NO_INFO, progress).keep


# --------------------------------------------------------------------------
# Wu et al.'s formula (mhw32/contrastive-ring-public, MoCoRing.get_loss with
# dynamic_inner, the only form their trainer runs), written from their code
# --------------------------------------------------------------------------


def _wu_ring(q, k, queue, t, thres_outer, thres_inner):
    """Their loss and kept negatives, in their float arithmetic: sort the
    [B, K] logits descending, keep ``sorted[int(i * outer) : outer)`` with
    ``outer = int(o * K)``, put the positive in the partition (their
    ``self_negative``)."""
    witness_pos = torch.sum(q * k, dim=1) / t
    all_dps = q @ queue.T / t
    sorted_dps, order = torch.sort(all_dps, dim=1, descending=True)
    outer_idx = int(thres_outer * queue.shape[0])
    inner_idx = int(thres_inner * outer_idx)
    ring_dps = sorted_dps[:, :outer_idx][:, inner_idx:]
    kept = torch.zeros_like(all_dps, dtype=torch.bool).scatter_(1, order[:, inner_idx:outer_idx], True)
    ring_dps = torch.cat((witness_pos.unsqueeze(1), ring_dps), dim=1)
    loss = -torch.mean(witness_pos - torch.logsumexp(ring_dps, dim=1))
    return loss, kept


def test_a_worked_example_by_hand():
    # K = 20 candidates with similarities 0..19 / 20 in a scrambled order; o = 50, i = 20:
    # outer = floor(20 x 50 / 100) = 10 hardest (values 10..19), inner = floor(10 x 20 / 100) = 2
    # hardest of them out (18, 19): the ring holds the values 10..17
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    sim = (perm.double() / 20).unsqueeze(0)
    pol = _policy("ring[50,20]")
    assert pol.balls(20, 0) == (10, 2) and pol.ranks(20, 0) == (10, 18)
    kept = sorted(int(v) for v in (sim[_kept(pol, sim, 0)] * 20).round())
    assert kept == list(range(10, 18))


@pytest.mark.parametrize("k", [100, 1000, 4096, 65536])
@pytest.mark.parametrize("outer,inner", [(10, 10), (100, 10), (55, 10), (10, 0), (37, 25)])
def test_ring_keeps_what_wu_et_al_keep_and_gives_their_loss(k, outer, inner):
    g = torch.Generator().manual_seed(k + outer)
    q = F.normalize(torch.randn(6, 16, generator=g, dtype=torch.float64), dim=1)
    pos = F.normalize(q + 0.3 * torch.randn(6, 16, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
    loss_wu, kept_wu = _wu_ring(q, pos, queue, 0.2, outer / 100, inner / 100)

    pol = _policy(f"ring[{outer},{inner}]")
    sim = q @ queue.T
    kept = _kept(pol, sim, 0.7)
    assert torch.equal(kept, kept_wu)
    loss = info_nce((q * pos).sum(1), sim, kept, 0.2)
    assert loss.item() == pytest.approx(loss_wu.item(), rel=1e-12)


def test_the_annealed_ring_follows_their_linear_schedule_over_half_of_training():
    # their LinearThresholdPolicy over a run of T steps annealing for M = T / 2 (max_anneal_epoch 100 of
    # 200): linspace(0.1, 1.0, M)[::-1] for the first M steps, then 0.1; inner 0.1 of the outer ball
    total, m, k = 200, 100, 4096
    theirs = np.concatenate([np.linspace(0.1, 1.0, m)[::-1], np.full(total - m + 1, 0.1)])
    pol = _policy("ring[100->10_10_linear_50]")
    for step in range(total):
        value = pol.schedule.value(*pol.outer, Fraction(step, total))  # percent of K, exact
        o = float(value) / 100
        # ours reaches 0.1 at step M, theirs at M - 1: at most one of their steps apart, equal at both ends
        assert abs(o - theirs[step]) <= 0.9 / (m - 1) + 1e-12, step
        if step == 0 or step >= m:
            assert o == pytest.approx(theirs[step], abs=1e-15)
        outer = math.floor(k * value / 100)
        assert pol.balls(k, Fraction(step, total)) == (outer, outer // 10), step


@pytest.mark.parametrize(
    "config",
    [
        "config.yaml",
        "configs/cifar10.yaml",
        "configs/cifar100.yaml",
        "configs/stl10.yaml",
        "configs/tiny-imagenet.yaml",
        "configs/imagenet-paper.yaml",
    ],
)
def test_fig_methods_ring_excludes_the_hardest_at_the_end_of_training(config):
    from negatives.config_files import read_config
    from negatives.methods import num_candidates

    # an overlay in configs/ layered on config.yaml, as Snakemake reads it
    cfg = read_config(*([] if config == "config.yaml" else [REPO / config]), base=REPO / "config.yaml")
    rings = [_policy(p) for p in cfg["figures"]["fig_methods"]["policies"] if p.startswith("ring")]
    method = cfg.get("method", "moco")
    pre = cfg["pretrain"]
    k = num_candidates(method, pre["queue_size"], pre["batch_size"])
    ring = [r for r in rings if r.inner > 0]
    assert ring, f"{config}: fig_methods runs no Ring with an inner ball"
    for r in ring:
        lo, hi = r.ranks(k, 1)
        assert 0 < lo < hi < k, (config, r.name, lo, hi)  # the hardest K - hi are out
        outer, inner = r.balls(k, 1)
        assert (outer, inner) == (int(0.1 * k), int(0.1 * int(0.1 * k)))  # Wu et al.'s o = i = 0.1


@pytest.mark.parametrize("k", [10, 37, 256])
@pytest.mark.parametrize(
    "text,progress",
    [
        ("ring[50,20]", 0),
        ("ring[100->10,10,linear]", Fraction(1, 3)),
        ("ring[100->10,25,step4,50]", Fraction(1, 4)),
        ("ring[30,0]", 0),
    ],
)
def test_ring_under_ties_keeps_the_values_of_wu_et_als_sorted_slice(k, text, progress):
    """Ties: the kept values of each row are those of their slice
    ``sorted_desc[inner:outer]`` (which ties they keep is theirs to choose)."""
    pol = _policy(text)
    sim = (torch.rand(5, k, generator=torch.Generator().manual_seed(k)) * 4).round() / 4  # five values
    o = pol.schedule.value(*pol.outer, progress)
    outer = math.floor(k * o / 100)
    inner = math.floor(outer * Fraction(repr(pol.inner)) / 100)
    kept = _kept(pol, sim, progress)
    for row, mask in zip(sim, kept, strict=True):
        want = row.sort(descending=True).values[inner:outer]
        assert torch.equal(row[mask].sort().values, want.sort().values)


def test_a_curriculum_by_hand():
    # K = 10, all -> the hardest half, linear: at p = 1/2 the band is [25, 100): round(7.5) = 8
    # negatives from round(2.5) = 3, moved down to 2 so that it ends at K: the ranks 2 .. 9
    pol = _policy("curriculum[0,100->50,100,linear]")
    assert pol.bounds(Fraction(1, 2)) == (25, 100) and pol.ranks(10, Fraction(1, 2)) == (2, 10)
    sim = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.0, 0.2, 0.8, 0.4, 0.6]])
    assert (~_kept(pol, sim, Fraction(1, 2)))[0].nonzero().flatten().tolist() == [1, 5]  # the 2 easiest out
    assert _kept(pol, sim, 1)[0].nonzero().flatten().tolist() == [0, 2, 4, 7, 9]  # the hardest 5
    assert _kept(pol, sim, 0).all()


@pytest.mark.parametrize("k", [7, 100, 509])
@pytest.mark.parametrize(
    "text", ["curriculum[0,100->95,100,linear]", "curriculum[10,100->60,90,step4]", "curriculum[0,50->50,100,exp3,50]"]
)
def test_curriculum_keeps_the_reference_ranks_at_every_step(k, text):
    """The band [a(p), b(p)) of a full sort of each row: n = round(K (b - a) / 100)
    from lo = round(K a / 100), moved down so it ends at K at the latest."""
    pol = _policy(text)
    g = torch.Generator().manual_seed(k)
    sim = torch.randn(4, k, generator=g)
    tied = (sim * 2).round()
    order = torch.argsort(sim, dim=1)
    for step in range(21):
        p = Fraction(step, 20)
        a, b = (Fraction(v) for v in pol.bounds(p))
        n = math.floor(k * (b - a) / 100 + Fraction(1, 2))
        lo = min(math.floor(k * a / 100 + Fraction(1, 2)), k - n)
        want = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, order[:, lo : lo + n], True)
        assert torch.equal(_kept(pol, sim, p), want), (text, step)
        for row, mask in zip(tied, _kept(pol, tied, p), strict=True):
            assert torch.equal(row[mask].sort().values, row.sort().values[lo : lo + n])


def test_inner_zero_is_their_ball():
    g = torch.Generator().manual_seed(3)
    sim = torch.randn(4, 500, generator=g, dtype=torch.float64)
    ball = _kept(_policy("ring[10,0]"), sim, 0)
    hardest = torch.zeros_like(ball).scatter_(1, torch.topk(sim, int(0.1 * 500), dim=1).indices, True)
    assert torch.equal(ball, hardest)


def test_exact_outer_ball_where_binary_floats_lose_one():
    # int(0.29 * 100) = int(28.999999999999996) = 28 in their float arithmetic; the ball is 29
    assert int(0.29 * 100) == 28
    assert _policy("ring[29,0]").balls(100, 0) == (29, 0)


@pytest.mark.parametrize(
    "policy,epoch,expected",
    [
        # K = 1000, 10 epochs; outer o -> floor(10 o), inner floor(outer / 10)
        ("ring[100->10,10,linear]", 0, 900),
        ("ring[100->10,10,linear]", 5, 495),
        ("ring[100->10,10,linear]", 10, 90),
        ("ring[100->10,10,linear,50]", 2, 576),
        ("ring[100->10,10,linear,50]", 5, 90),
        ("ring[100->10,10,linear,50]", 8, 90),
        ("ring[100->10,0,linear]", 1, 910),
        ("ring[100->10,0,linear]", 10, 100),
        # step5: o = 100, 77.5, 55, 32.5, 10 on [0, .2), [.2, .4), ... [.8, 1]
        ("ring[100->10,0,step5]", 1, 1000),
        ("ring[100->10,0,step5]", 2, 775),
        ("ring[100->10,0,step5]", 7, 325),
        ("ring[100->10,0,step5]", 10, 100),
        ("ring[100->10,0,exp5]", 5, 168),  # o = 100 - 90 (1 - e^-2.5) / (1 - e^-5) = 16.83
        ("ring[10,10]", 7, 90),
        # curriculum: all -> the hardest 5%
        ("curriculum[0,100->95,100,linear]", 0, 1000),
        ("curriculum[0,100->95,100,linear]", 4, 620),
        ("curriculum[0,100->95,100,linear]", 10, 50),
        ("curriculum[0,50->50,100,linear]", 3, 500),  # a window of constant width sliding up
        ("curriculum[0,100->95,100,linear,50]", 4, 240),  # 80% of the way: [76, 100)
    ],
)
def test_scheduled_windows_keep_the_expected_count_at_given_epochs(policy, epoch, expected):
    pol = _policy(policy)
    k, epochs, steps = 1000, 10, 3
    progress = Fraction(epoch * steps, epochs * steps)  # the trainer's step / total_steps
    sim = torch.randn(4, k, generator=torch.Generator().manual_seed(epoch))
    assert (_kept(pol, sim, progress).sum(1) == expected).all()


def test_schedules_by_definition():
    lin, const = Schedule("linear"), Schedule("constant")
    step, exp = parse_schedule("step4"), parse_schedule("exp2")
    assert [lin.value(0, 90, Fraction(e, 10)) for e in (0, 5, 10)] == [0, 45, 90]
    assert const.value(10, 10, 0.7) == 10
    # step4: stages 0, 30, 60, 90 held on [0, .25), [.25, .5), [.5, .75), [.75, 1]
    stages = [step.value(0, 90, p) for p in (0, 0.2, 0.25, 0.49, 0.5, 0.74, 0.75, 1.0)]
    assert stages == [0, 0, 30, 30, 60, 60, 90, 90]
    assert exp.value(0, 90, 0) == 0 and exp.value(0, 90, 1) == 90
    assert float(exp.value(0, 90, 0.5)) == pytest.approx(90 * (1 - math.exp(-1)) / (1 - math.exp(-2)), abs=1e-9)
    half = parse_schedule("linear", 50)
    assert [half.value(100, 10, p) for p in (0, 0.25, 0.5, 0.9)] == [100, 55, 10, 10]
    assert parse_schedule("step").name == "step10" and parse_schedule("exponential").name == "exp5"
    assert half.name == "linear_50" and parse_schedule("linear", 100).name == "linear"
    for bad in ("step1", "cosine"):
        with pytest.raises(PolicyError, match="allowed"):
            parse_schedule(bad)
    for until in (0, 150):
        with pytest.raises(PolicyError, match="share of training"):
            parse_schedule("linear", until)


def test_scheduled_values_are_exact_rationals_of_the_step():
    # SimCLR's K = 510 at a third of training: a = 95 / 3, K (100 - a) / 100 = 348.5 exactly, so 349 by
    # the half-up rule; the float bound (31.666666667 after rounding) gave 348
    pol = _policy("curriculum[0,100->95,100,linear]")
    assert pol.bounds(Fraction(1, 3)) == (Fraction(95, 3), 100)
    assert pol.ranks(510, Fraction(1, 3)) == (161, 510)
    assert math.floor(510 * (100 - round(95 / 3, 9)) / 100 + 0.5) == 348
    # every step of a 7-epoch run of 13 steps: the count from the exact rational bound, half up
    total = 7 * 13
    for k in (999, 1000, 4096):
        for step in range(total + 1):
            a = Fraction(95 * step, total)
            n = math.floor(k * (100 - a) / 100 + Fraction(1, 2))
            lo, hi = pol.ranks(k, Fraction(step, total))
            assert (hi - lo, hi) == (n, k), (k, step)


@pytest.mark.parametrize("progress", [0.0, 0.3, 0.55, 1.0])
def test_curriculum_keeps_the_same_negatives_as_the_fixed_band(progress):
    pol = _policy("curriculum[10,100->60,90,linear]")
    sim = torch.randn(5, 400, generator=torch.Generator().manual_seed(1))
    a, b = pol.bounds(progress)
    p = Fraction(repr(progress))
    assert (a, b) == (10 + 50 * p, 100 - 10 * p)
    assert torch.equal(_kept(pol, sim, progress), Band("keep", float(a), float(b))(sim, NO_INFO).keep)


@pytest.mark.parametrize(
    "text,name",
    [
        ("ring[100->10,10,linear,50]", "ring[100->10_10_linear_50]"),
        ("ring[ 100 -> 10.0 , 10 , step ]", "ring[100->10_10_step10]"),
        ("ring[10,10]", "ring[10_10]"),
        ("ring[10,10,linear]", "ring[10_10]"),
        ("ring[100->10,0,exponential2.5]", "ring[100->10_0_exp2.5]"),
        ("ring[100->10,10,linear,100]", "ring[100->10_10_linear]"),
        ("curriculum[0,100->95,100,linear]", "curriculum[0_100->95_100_linear]"),
        ("curriculum[0.0, 100 -> 95, 100, step4, 50]", "curriculum[0_100->95_100_step4_50]"),
    ],
)
def test_canonical_names(text, name):
    pol = _policy(text)
    assert pol.name == name and "/" not in pol.name
    assert parse_policy(pol.name).name == name  # the canonical name parses to itself
    assert not pol.uses_labels and isinstance(pol, (Ring, Curriculum))


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("ring[0->90,100,linear]", "outer ball at the start"),  # a band of percentiles is not a ring
        ("ring[100->0,10,linear]", "outer ball at the end"),
        ("ring[10,100]", "inner ball"),
        ("ring[120,10]", "outer ball"),
        ("ring[100->10,10,constant]", "constant"),
        ("ring[100->10,10]", "need a schedule"),
        ("ring[100->10,10,cosine]", "unknown schedule"),
        ("ring[100->10,10,linear,0]", "share of training"),
        ("ring[10]", "malformed ring"),
        ("ring[100->10,10,linear,50,3]", "malformed ring"),
        ("curriculum[0,100->95,90,linear]", "lower bound is not below the upper bound at the end"),
        ("curriculum[0,100,95,100,linear]", "malformed curriculum"),
    ],
)
def test_bad_policies_are_rejected(text, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert fragment in str(e.value) and "allowed" in str(e.value)


def test_an_empty_window_is_rejected_by_validate():
    with pytest.raises(PolicyError, match="start of training holds no negative"):
        parse_policy("ring[10,10]").validate(5)  # floor(0.5) = 0
    with pytest.raises(PolicyError, match="end of training holds no negative"):
        parse_policy("ring[100->1,0,linear]").validate(50)
    parse_policy("ring[100->1,0,linear]").validate(100)  # one negative at the end
    with pytest.raises(PolicyError, match="end of training holds no negative"):
        parse_policy("curriculum[0,100->99.99,100,linear]").validate(1000)
    parse_policy("curriculum[0,100->99.9,100,linear]").validate(1000)

"""Policy names: the one parser, canonical forms, refusals, and the Recipe a
name chooses (which candidates count, the loss, MoCo's queue)."""

import functools
import math

import pytest
import torch

from negatives.losses.info_nce import info_nce
from negatives.losses.reweighted import reweighted_nce
from negatives.policies import (
    PARSERS,
    POLICY_GRAMMAR,
    All,
    Band,
    ClassFilter,
    Curriculum,
    MoCHi,
    PolicyError,
    Recipe,
    Replace,
    Ring,
    band_names,
    classes,
    mixing,
    parse_policy,
    retention,
    reweighted,
    ring,
)
from negatives.queues.fifo import KeyQueue
from negatives.queues.retaining import RetainingQueue

FORMS = [
    "all",
    "keep[95_100)",
    "drop[99_100)&same-class",
    "mochi[4,2,2]",
    "ring[100->10,10,linear,50]",
    "curriculum[0,100->95,100,linear]",
    "debiased[0.1]",
    "hard[1,0.1]",
    "retain-hard[0.25]",
]


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "text,name",
    [
        ("all", "all"),
        ("keep[95_100)", "keep[95_100)"),
        ("keep[95.0, 100)", "keep[95_100)"),
        ("drop[99.9_100)", "drop[99.9_100)"),
        (" keep[0_5) ", "keep[0_5)"),
        ("drop[12.3456789,100)", "drop[12.3456789_100)"),
        ("drop[99.9, 100) & same-class", "drop[99.9_100)&same-class"),
        ("drop-same-class @replace", "drop-same-class@replace"),
        ("drop[95_100)@replace", "drop[95_100)@replace"),
        ("drop[0,5)&other-class @ replace", "drop[0_5)&other-class@replace"),
        ("mochi[1024, 512, 256]", "mochi[1024_512_256]"),
        ("mochi[64,32,16,0]", "mochi[64_32_16]"),
        ("mochi[64,32,16,2]", "mochi[64_32_16_2]"),
        ("ring[ 100 -> 10.0 , 10 , step ]", "ring[100->10_10_step10]"),
        ("curriculum[0.0, 100 -> 95, 100, step4, 50]", "curriculum[0_100->95_100_step4_50]"),
        ("debiased[0.10]", "debiased[0.1]"),
        ("debiased[1e-2]", "debiased[0.01]"),
        ("hard[1.0, 0.1]", "hard[1_0.1]"),
        ("retain-hard[0.25, 5]", "retain-hard[0.25]"),
        ("retain-hard[0.25,10]", "retain-hard[0.25_10]"),
    ],
)
def test_canonical_names(text, name):
    recipe = parse_policy(text)
    assert recipe.name == name and str(recipe) == name and "," not in name and "/" not in name
    assert parse_policy(name).name == name  # the canonical name parses to itself
    assert type(parse_policy(name).policy) is type(recipe.policy)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("hardest", "unknown policy"),
        ("keep(5,10)", "unknown policy"),
        ("drop-other-class", "unknown policy"),
        ("keep[95,100]", "malformed"),
        ("keep[95_100)&same-class", "malformed"),
        ("keep[-5,10)", "[0, 100]"),
        ("keep[90_101)", "[0, 100]"),
        ("keep[50_50)", "a < b"),
        ("drop[60_40)", "a < b"),
        ("drop[100_95)&same-class", "a < b"),
        ("drop[95_100)@swap", "unknown mode 'swap'"),
        ("drop[95_100)@replace@replace", "unknown mode 'replace@replace'"),
        ("debiased[1]", "[0, 1)"),
        ("debiased[-0.1]", "[0, 1)"),
        ("hard[-1,0.1]", "beta must be >= 0"),
        ("hard[1]", "malformed"),
        ("debiased", "malformed"),
        ("hard[1,0.1,2]", "malformed"),
        ("retain-hard[1]", "r must lie in (0, 1)"),
        ("retain-hard[0]", "r must lie in (0, 1)"),
        ("retain-hard[0.5,100]", "c must lie in (0, 100)"),
        ("retain-hard", "malformed"),
        ("keep[nan,100)", "nan is not a finite number"),
        ("debiased[inf]", "inf is not a finite number"),
        pytest.param("keep[0," + "9" * 400 + ")", "too large to be finite", id="400-digits"),
    ],
)
def test_bad_names_are_refused_naming_what_is_allowed(text, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert fragment in str(e.value)
    assert "allowed" in str(e.value) or "band" in str(e.value) or "finite" in str(e.value)


def test_a_name_that_is_not_a_string_is_refused():
    with pytest.raises(PolicyError, match="must be a string"):
        parse_policy(95)


@pytest.mark.parametrize(
    "text",
    [
        "keep[95_100)",
        "all",
        "mochi[4,2,2]",
        "ring[100->10,10,linear,50]",
        "ring[10,10]",
        "curriculum[0,100->95,100,linear]",
        "debiased[0.1]",
        "hard[1,0.1]",
        "retain-hard[0.25]",
    ],
)
def test_replace_is_refused_on_names_that_remove_nothing(text):
    with pytest.raises(PolicyError, match="applies to a removal policy") as e:
        parse_policy(text + "@replace")
    assert parse_policy(text).name.removesuffix("@replace") in str(e.value)


def test_each_form_is_claimed_by_one_family_in_the_registrys_order():
    """Asked in the registry's order, every family passes over the forms of
    the families after it (None, no error), and the first that answers is
    the one whose name parse_policy gives."""
    claimed = {family: [] for family in PARSERS}
    for form in FORMS[1:]:  # 'all' is the registry's own
        for family, parse in PARSERS.items():
            found = parse(form)
            if found is not None:
                assert found.name == parse_policy(form).name
                claimed[family].append(form)
                break
    assert all(claimed.values()), claimed
    assert sum(len(v) for v in claimed.values()) == len(FORMS) - 1
    for module in (band_names, classes, mixing, ring, reweighted, retention):
        assert module.parse in PARSERS.values() and module.GRAMMAR.split(" ")[0] in POLICY_GRAMMAR


# ------------------------------------------------------------------ what a name chooses


@pytest.mark.parametrize(
    "text,policy",
    [
        ("all", All),
        ("keep[95_100)", Band),
        ("drop[99_100)", Band),
        ("drop-same-class", ClassFilter),
        ("drop[0_5)&other-class", ClassFilter),
        ("mochi[4,2,2]", MoCHi),
        ("ring[10,10]", Ring),
        ("curriculum[0,100->95,100,linear]", Curriculum),
    ],
)
def test_policy_names_choose_info_nce_and_the_fifo_queue(text, policy):
    recipe = parse_policy(text)
    assert type(recipe.policy) is policy and recipe.policy.name == recipe.name
    assert recipe.loss is info_nce and recipe.queue is KeyQueue and recipe.check is None
    assert not recipe.replace and not recipe.needs_queue
    assert recipe.uses_labels == (policy is ClassFilter)
    queue = recipe.make_queue(40, 8, 4, generator=torch.Generator().manual_seed(0))
    assert type(queue) is KeyQueue and queue.size == 40  # no extra length without @replace


def test_replace_chooses_the_wrapper_and_a_longer_queue():
    recipe = parse_policy("drop[99_100)&same-class@replace")
    assert isinstance(recipe.policy, Replace) and recipe.policy.inner.name == "drop[99_100)&same-class"
    assert recipe.replace and recipe.needs_queue and recipe.uses_labels and recipe.loss is info_nce
    queue = recipe.make_queue(40, 8, 4)
    assert type(queue) is KeyQueue and queue.size == 48


def test_debiased_and_hard_choose_the_reweighted_loss():
    for text, keywords in (
        ("debiased[0.1]", {"tau_plus": 0.1}),
        ("hard[1,0.1]", {"tau_plus": 0.1, "beta": 1.0}),
        ("hard[0.5,0]", {"tau_plus": 0.0, "beta": 0.5}),
    ):
        recipe = parse_policy(text)
        assert isinstance(recipe.loss, functools.partial) and recipe.loss.func is reweighted_nce
        assert recipe.loss.keywords == keywords and not recipe.loss.args
        assert type(recipe.policy) is All and recipe.queue is KeyQueue
        assert not recipe.needs_queue and not recipe.uses_labels and not recipe.replace


def test_retain_hard_chooses_the_retaining_queue():
    recipe = parse_policy("retain-hard[0.25,10]")
    assert recipe.queue.func is RetainingQueue and recipe.queue.keywords == {"retain": 0.25, "hard_pct": 10.0}
    assert type(recipe.policy) is All and recipe.loss is info_nce
    assert recipe.needs_queue and not recipe.replace and not recipe.uses_labels
    queue = recipe.make_queue(40, 8, 4)
    assert isinstance(queue, RetainingQueue) and queue.size == 40 and queue.retained_slots == 10
    assert (queue.retain, queue.hard_pct) == (0.25, 10.0)
    recipe.validate(40)
    with pytest.raises(PolicyError, match="retains none"):
        parse_policy("retain-hard[0.01]").validate(50)
    with pytest.raises(PolicyError, match="no negative"):
        parse_policy("retain-hard[0.5,1]").validate(40)  # round(0.4) = 0


def test_validate_asks_the_policy_then_the_recipes_check():
    with pytest.raises(PolicyError, match="holds no negative"):
        parse_policy("keep[99.9_100)").validate(400)
    with pytest.raises(PolicyError, match="warm-up of 3 epochs"):
        parse_policy("mochi[4,2,2,3]").validate(100, epochs=3)
    calls = []
    Recipe("x", check=calls.append).validate(7)
    assert calls == [7]


def test_new_policies_do_not_read_labels_and_are_not_replace_mode():
    for text in (
        "mochi[4,2,2]",
        "ring[100->10,10,linear,50]",
        "curriculum[0,100->95,100,linear]",
        "debiased[0.1]",
        "hard[1,0.1]",
        "retain-hard[0.25]",
    ):
        recipe = parse_policy(text)
        assert recipe.uses_labels is False and recipe.replace is False


# ------------------------------------------------------------------ the losses debiased and hard choose


def reference_reweighted(l_pos, sims, t, tau_plus, beta):
    """Chuang et al. / Robinson et al., one query at a time, in plain floats:
    ``sims`` each query's kept negatives (the synthetic ones included)."""
    out = []
    for p, row in zip(l_pos, sims, strict=True):
        n = len(row)
        imp = [math.exp(beta * s / t) for s in row]
        reweighted_sum = sum(w * math.exp(s / t) for w, s in zip(imp, row, strict=True)) / (sum(imp) / n)
        ng = max((reweighted_sum - tau_plus * n * math.exp(p / t)) / (1 - tau_plus), n * math.exp(-1 / t))
        out.append(-math.log(math.exp(p / t) / (math.exp(p / t) + ng)))
    return sum(out) / len(out)


def test_debiased_and_hard_losses_by_hand():
    t1 = 1.0
    zero, both = torch.zeros(1), torch.zeros(1, 2)
    # debiased[0.5], p = 0, two negatives at 0, t = 1: Ng = (2 - 0.5 x 2 x 1) / 0.5 = 2, L = log 3
    assert float(parse_policy("debiased[0.5]").loss(zero, both, None, t1)) == pytest.approx(math.log(3), rel=1e-6)
    # the clamp: p = ln 2, Ng = (2 - 0.5 x 2 x 2) / 0.5 = 0 < 2 e^-1, so L = log(1 + 2 e^-1 / 2)
    p = torch.tensor([math.log(2)])
    assert float(parse_policy("debiased[0.5]").loss(p, both, None, t1)) == pytest.approx(math.log(1 + math.exp(-1)))
    # hard[1,0]: negatives 0 and ln 2, weights 1 and 2 (mean 1.5): Ng = (1 + 2 x 2) / 1.5 = 10/3
    sim = torch.tensor([[0.0, math.log(2)]], dtype=torch.float64)
    zero = zero.double()
    assert float(parse_policy("hard[1,0]").loss(zero, sim, None, t1)) == pytest.approx(math.log(13 / 3), rel=1e-12)
    # hard[1,0.25]: Ng = (10/3 - 0.25 x 2 x 1) / 0.75 = 34/9
    assert float(parse_policy("hard[1,0.25]").loss(zero, sim, None, t1)) == pytest.approx(math.log(43 / 9), rel=1e-12)
    # a removed negative is in no sum: hard[1,0.25] of the one kept negative ln 2: Ng = (2 - 0.25) / 0.75 = 7/3
    keep = torch.tensor([[False, True]])
    assert float(parse_policy("hard[1,0.25]").loss(zero, sim, keep, t1)) == pytest.approx(math.log(10 / 3), rel=1e-12)


@pytest.mark.parametrize(
    "text,tau_plus,beta",
    [
        ("debiased[0]", 0.0, 0.0),
        ("debiased[0.1]", 0.1, 0.0),
        ("debiased[0.3]", 0.3, 0.0),
        ("hard[1,0.1]", 0.1, 1.0),
        ("hard[0.5,0.05]", 0.05, 0.5),
        ("hard[2,0.3]", 0.3, 2.0),
    ],
)
@pytest.mark.parametrize("k", [1, 5, 64])
def test_debiased_and_hard_losses_equal_the_reference(text, tau_plus, beta, k):
    g = torch.Generator().manual_seed(k)
    b, t = 6, 0.5
    l_pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    sim = torch.rand(b, k, generator=g, dtype=torch.float64) * 2 - 1
    keep = torch.rand(b, k, generator=g) < 0.6
    keep[:, 0] = True
    synthetic = torch.rand(b, 3, generator=g, dtype=torch.float64) * 2 - 1
    loss = parse_policy(text).loss
    rows = sim.tolist()
    assert float(loss(l_pos, sim, None, t)) == pytest.approx(
        reference_reweighted(l_pos.tolist(), rows, t, tau_plus, beta), rel=1e-10
    )
    kept = [[s for s, m in zip(row, mask, strict=True) if m] for row, mask in zip(rows, keep.tolist(), strict=True)]
    assert float(loss(l_pos, sim, keep, t)) == pytest.approx(
        reference_reweighted(l_pos.tolist(), kept, t, tau_plus, beta), rel=1e-10
    )
    with_synthetic = [row + extra for row, extra in zip(kept, synthetic.tolist(), strict=True)]
    assert float(loss(l_pos, sim, keep, t, synthetic)) == pytest.approx(
        reference_reweighted(l_pos.tolist(), with_synthetic, t, tau_plus, beta), rel=1e-10
    )

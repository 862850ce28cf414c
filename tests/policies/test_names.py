"""Policy names: one number grammar for every family, canonical names that parse to themselves."""

import math
import random
import re
from decimal import Decimal
from pathlib import Path

import pytest

from negatives.config_files import read_config
from negatives.grid import ANALYSES
from negatives.policies import (
    All,
    Band,
    ClassFilter,
    Curriculum,
    MoCHi,
    PolicyError,
    Replace,
    Ring,
    Schedule,
    fmt_number,
    parse_policy,
)
from negatives.policies.grammar import moving, number
from negatives.policies.registry import PARSERS
from negatives.policies.retention import retain_hard
from negatives.policies.reweighted import debiased, hard

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "src" / "negatives" / "policies"

# -- the number reader --------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("0.1", 0.1),
        ("1e-1", 0.1),
        (".1", 0.1),
        (" 0.10 ", 0.1),
        ("10", 10.0),
        ("1e1", 10.0),
        ("1E1", 10.0),
        ("1e+1", 10.0),
        ("+10", 10.0),
        ("10.", 10.0),
        ("010", 10.0),
        ("-5", -5.0),
        ("-0", 0.0),
        ("99.9", 99.9),
        ("9.99e1", 99.9),
    ],
)
def test_a_number_reads_every_spelling_of_the_same_value(field, value):
    v = number(field, "p")
    assert v == value and math.copysign(1.0, v) == math.copysign(1.0, value)  # -0 reads as 0, not -0


@pytest.mark.parametrize(
    "field",
    [
        "",
        " ",
        ".",
        "1e",
        "e1",
        "1.2.3",
        "--1",
        "+-1",
        "1 0",
        "- 5",
        "1_0",
        "1,0",
        "0x10",
        "1e1.5",
        "ten",
        "\u0663",
        "1e--1",
        "1.e",
        "10%",
    ],
)
def test_anything_else_is_no_number(field):
    assert number(field, "p") is None


@pytest.mark.parametrize(
    "field,fragment",
    [
        ("nan", "nan is not a finite number"),
        ("-inf", "inf is not a finite number"),
        ("Infinity", "Infinity is not a finite number"),
        ("1e400", "the number 1e400 is too large to be finite"),
        ("9" * 400, "too large to be finite"),
    ],
)
def test_nan_and_infinity_are_refused_by_the_reader(field, fragment):
    with pytest.raises(PolicyError) as e:
        number(field, "ring[x_10]")
    assert fragment in str(e.value) and "policy 'ring[x_10]'" in str(e.value)


def test_a_moving_value_is_read_on_both_sides_of_the_arrow():
    assert moving("100->10", "p", "ring policy", "G") == (100.0, 10.0)
    assert moving(" 1e2 -> 1E1 ", "p", "ring policy", "G") == (100.0, 10.0)
    assert moving("5", "p", "ring policy", "G") == (5.0, 5.0)
    for bad, why in (
        ("100->", "'' is not a number"),
        ("->10", "'' is not a number"),
        ("100->10->5", "'10->5' is not a number"),
        ("100-10", "'100-10' is not a number"),
    ):
        with pytest.raises(PolicyError) as e:
            moving(bad, "p", "ring policy", "G")
        assert str(e.value) == f"policy 'p': malformed ring policy ({why}); allowed: G"


def test_the_grammar_has_one_number_pattern():
    # a digit class anywhere in the policies' source is a number pattern: only the shared reader holds one
    digits = re.compile(r"\[0-9\]|\\d")
    assert {p.name for p in POLICIES.glob("*.py") if digits.search(p.read_text())} == {"grammar.py"}
    grammar = (POLICIES / "grammar.py").read_text().splitlines()
    assert len([line for line in grammar if "re.compile" in line and digits.search(line)]) == 1


# -- canonical names, per family ---------------------------------------------

CANONICAL = {
    "bands": [
        ("keep[95_100)", "keep[95_100)"),
        ("keep[95,100)", "keep[95_100)"),
        ("keep[ 95 , 100 )", "keep[95_100)"),
        ("keep[9.5e1_1E2)", "keep[95_100)"),
        ("keep[95.0_100.)", "keep[95_100)"),
        ("keep[+0,.5)", "keep[0_0.5)"),
        ("keep[-0_5)", "keep[0_5)"),
        ("drop[99.9_100)", "drop[99.9_100)"),
        ("drop[9.99e+1, 1e2)", "drop[99.9_100)"),
        ("drop[1e-1_2.5e-1)", "drop[0.1_0.25)"),
    ],
    "classes": [
        ("drop-same-class", "drop-same-class"),
        ("drop[99.9_100)&same-class", "drop[99.9_100)&same-class"),
        ("drop[ 99.9 , 1E2 ) & other-class", "drop[99.9_100)&other-class"),
    ],
    "mixing": [
        ("mochi[1024_512_256]", "mochi[1024_512_256]"),
        ("mochi[1024, 512, 256]", "mochi[1024_512_256]"),
        ("mochi[1.024e3_5.12E2_2.56e+2]", "mochi[1024_512_256]"),
        ("mochi[64.0,32,16,0]", "mochi[64_32_16]"),
        ("mochi[ 256 _ 128 _ 64 _ 1e1 ]", "mochi[256_128_64_10]"),
        ("mochi[+8,4,2,1.]", "mochi[8_4_2_1]"),
    ],
    "ring": [
        ("ring[10_10]", "ring[10_10]"),
        ("ring[1e1_10]", "ring[10_10]"),
        ("ring[1E1,1e1]", "ring[10_10]"),
        ("ring[100->10_10_linear_50]", "ring[100->10_10_linear_50]"),
        ("ring[1e2 -> 1E1, 10, linear, 5e1]", "ring[100->10_10_linear_50]"),
        ("ring[100->10,0,exp1e-1]", "ring[100->10_0_exp0.1]"),
        ("ring[100->10_0_step1e1]", "ring[100->10_0_step10]"),
        ("ring[+100->.5_0_step]", "ring[100->0.5_0_step10]"),
        ("ring[10_-0]", "ring[10_0]"),
        ("ring[10->10_5_linear_50]", "ring[10_5]"),
        ("ring[100->10_10_exponential2.50_1e2]", "ring[100->10_10_exp2.5]"),
        ("curriculum[0_100->95_100_step10]", "curriculum[0_100->95_100_step10]"),
        ("curriculum[0,1e2->9.5e1,100,step]", "curriculum[0_100->95_100_step10]"),
        ("curriculum[ 0 , 100 -> 95 , 100 , linear , 50 ]", "curriculum[0_100->95_100_linear_50]"),
        ("curriculum[.5_1e2->.5_100]", "curriculum[0.5_100->0.5_100_constant]"),
    ],
    "reweighted": [
        ("debiased[0.1]", "debiased[0.1]"),
        ("debiased[1e-1]", "debiased[0.1]"),
        ("debiased[ .10 ]", "debiased[0.1]"),
        ("debiased[-0]", "debiased[0]"),
        ("hard[1_0.1]", "hard[1_0.1]"),
        ("hard[1e-1_0.1]", "hard[0.1_0.1]"),
        ("hard[ 1.0 , 1E-1 ]", "hard[1_0.1]"),
        ("hard[1e-20,0]", "hard[0.00000000000000000001_0]"),
    ],
    "retention": [
        ("retain-hard[0.25]", "retain-hard[0.25]"),
        ("retain-hard[2.5e-1, 5]", "retain-hard[0.25]"),
        ("retain-hard[0.25_1e1]", "retain-hard[0.25_10]"),
        ("retain-hard[ .25 _ 5.0 ]", "retain-hard[0.25]"),
    ],
}


@pytest.mark.parametrize("family,text,name", [(f, t, n) for f, rows in CANONICAL.items() for t, n in rows])
def test_every_spelling_parses_to_the_canonical_name(family, text, name):
    policy = parse_policy(text)
    assert policy.name == name and str(policy) == name
    assert PARSERS[family](text).name == name  # the family's own parser reads ',' and '_' alike
    again = parse_policy(name)
    assert str(again) == name and type(again) is type(policy)


@pytest.mark.parametrize(
    "text,name",
    [
        ("all", "all"),
        (" all ", "all"),
        ("drop[99.9, 100) & same-class @ replace", "drop[99.9_100)&same-class@replace"),
        ("drop[9.99e1_1e2)@replace", "drop[99.9_100)@replace"),
        ("drop-same-class@replace", "drop-same-class@replace"),
    ],
)
def test_all_and_replace_mode_have_canonical_names_too(text, name):
    assert str(parse_policy(text)) == name and str(parse_policy(name)) == name


def test_minus_zero_is_written_as_zero():
    # a policy built from -0.0 (not only one parsed from '-0') names the folder of the one built from 0
    assert fmt_number(-0.0) == "0" and fmt_number(-1e-300) == "-0." + "0" * 299 + "1"
    assert Band("keep", -0.0, 5).name == "keep[0_5)" and debiased(-0.0).name == "debiased[0]"


def test_str_is_the_name():
    assert str(All()) == "all" and f"{Replace(Band('drop', 99.9, 100))}" == "drop[99.9_100)@replace"
    assert str(Ring((100, 10), 10, Schedule("linear", until=50))) == "ring[100->10_10_linear_50]"


def test_every_policy_the_configs_name_is_written_canonically():
    names = set()

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            names.add(v)

    for path in [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]:
        figures = read_config(path, base=REPO / "config.yaml")["figures"]  # configs/ holds overlays
        walk({k: v for k, v in figures.items() if k not in ANALYSES})
    assert {"keep[95_100)", "drop[99.9_100)&same-class@replace", "ring[100->10_10_linear_50]"} <= names
    assert len(names) >= 15
    for name in sorted(names):
        assert str(parse_policy(name)) == name, name  # the folder name is the name as written


# -- the round trip over generated names ----------------------------------------


def _value(rng: random.Random, lo: float, hi: float) -> float:
    """A number in ``[lo, hi]``: whole, a few decimals, or every digit of a float."""
    while True:
        kind = rng.randrange(4)
        if kind == 0:
            if math.ceil(lo) > math.floor(hi):
                continue  # no whole number in the range
            v = float(rng.randint(math.ceil(lo), math.floor(hi)))
        elif kind == 1:
            v = round(rng.uniform(lo, hi), rng.randint(1, 4))
        elif kind == 2:
            v = rng.uniform(lo, hi)
        else:
            v = lo + (hi - lo) * 10.0 ** -rng.randint(1, 12)
        if lo <= v <= hi:
            return v


def _spell(rng: random.Random, v: float) -> str:
    """``v`` written in one of the many ways that read back as exactly ``v``."""
    short = fmt_number(v)
    kind = rng.randrange(7)
    if kind == 0:
        text = repr(v)
    elif kind == 1:
        text = format(Decimal(repr(v)), "e")  # shortest with an exponent: 9.99e+1
    elif kind == 2:
        text = f"{v:.16e}".replace("e", rng.choice("eE"))  # 17 digits: the same double
    elif kind == 3:
        text = "+" + short
    elif kind == 4:
        text = short[1:] if short.startswith("0.") else short + ("0" if "." in short else ".")
    else:
        text = short
    return " " * rng.randrange(2) + text + " " * rng.randrange(2)


def _generated(rng: random.Random):
    """``(written, policy)``: a valid policy of a random family, written with random spellings and separators."""

    def sep():
        return rng.choice([",", "_", " , ", "_ "])

    def sp(v):
        return _spell(rng, v)

    family = rng.randrange(8)
    if family <= 1:
        lo = _value(rng, 0, 99.99)
        hi = _value(rng, lo, 100)
        if hi == lo:
            hi = 100.0
        band = Band(rng.choice(["keep", "drop"]) if family == 0 else "drop", lo, hi)
        text = f"{band.action}[{sp(lo)}{sep()}{sp(hi)})"
        if family == 1:
            rel = rng.choice(["same-class", "other-class"])
            band, text = ClassFilter(rel, band), f"{text}{rng.choice(['&', ' & '])}{rel}"
        if band.name.startswith("drop") and rng.random() < 0.3:
            band, text = Replace(band), text + rng.choice(["@replace", " @ replace"])
        return text, band
    if family == 2:
        n = rng.randint(1, 2048)
        s, sq, w = rng.randint(0, min(n * n, 1024)), rng.randint(1, 512), rng.choice([0, 0, rng.randint(1, 50)])
        parts = [n, s, sq] + ([w] if w or rng.random() < 0.5 else [])
        return "mochi[" + sep().join(sp(float(p)) for p in parts) + "]", MoCHi(n, s, sq, w)
    if family in (3, 4):
        schedule = rng.choice(
            [
                Schedule("linear"),
                Schedule("step", float(rng.randint(2, 20))),
                Schedule("exp", _value(rng, 0.01, 20) or 5.0),
            ]
        )
        until = _value(rng, 0.5, 100)
        schedule = Schedule(schedule.kind, schedule.param, until)
        param = "" if schedule.param is None else sp(schedule.param).strip()
        sched = f"{schedule.kind}{param}{sep()}{sp(until)}"
        if family == 3:
            o0, o1, i = _value(rng, 0.01, 100), _value(rng, 0.01, 100), _value(rng, 0, 99.9)
            arrow = rng.choice(["->", " -> "])
            outer = f"{sp(o0)}{arrow}{sp(o1)}" if o0 != o1 or rng.random() < 0.5 else sp(o0)
            return f"ring[{outer}{sep()}{sp(i)}{sep()}{sched}]", Ring((o0, o1), i, schedule)
        a0, a1 = _value(rng, 0, 99), _value(rng, 0, 99)
        b0, b1 = _value(rng, a0 + 0.5, 100), _value(rng, a1 + 0.5, 100)
        text = f"curriculum[{sp(a0)}{sep()}{sp(b0)}->{sp(a1)}{sep()}{sp(b1)}{sep()}{sched}]"
        return text, Curriculum((a0, a1), (b0, b1), schedule)
    if family == 5:
        tau = _value(rng, 0, 0.99)
        if rng.random() < 0.5:
            return f"debiased[{sp(tau)}]", debiased(tau)
        beta = _value(rng, 0, 100)
        return f"hard[{sp(beta)}{sep()}{sp(tau)}]", hard(beta, tau)
    r, c = _value(rng, 0.001, 0.99), _value(rng, 0.01, 99.9)
    return f"retain-hard[{sp(r)}{sep()}{sp(c)}]", retain_hard(r, c)


def test_generated_names_of_every_family_parse_back_to_the_policy_they_name():
    rng = random.Random(20)
    seen = set()
    for _ in range(3000):
        text, policy = _generated(rng)
        name = policy.name
        assert str(parse_policy(name)) == name, name  # the canonical form parses to itself
        assert parse_policy(text).name == name, (text, name)  # every spelling names the same policy
        seen.add(re.match(r"[a-z-]+", name).group(0))
    assert seen == {"keep", "drop", "mochi", "ring", "curriculum", "debiased", "hard", "retain-hard"}


def test_any_accepted_text_round_trips():
    # random soup of the grammar's pieces: whatever parses names a policy whose name parses to the same name
    rng = random.Random(7)
    nums = [
        "0",
        "5",
        "95",
        "100",
        "99.9",
        "1e-1",
        "1E1",
        "-5",
        "+5",
        ".5",
        "5.",
        "-0",
        "1e2",
        "05",
        "1e-30",
        "x",
        "",
        "1e",
        "2.5",
        "10",
        "50",
        "3",
        "1024",
        "0.25",
        "0.1",
        "1",
        "7e1",
    ]
    forms = [
        ("keep[", [")"], 2),
        ("drop[", [")", ")&same-class", ") & other-class", ")@replace"], 2),
        ("mochi[", ["]"], 3),
        ("ring[", ["]"], 2),
        ("curriculum[", ["]"], 4),
        ("debiased[", ["]"], 1),
        ("hard[", ["]", "]@replace"], 2),
        ("retain-hard[", ["]"], 1),
    ]
    accepted = set()
    for _ in range(4000):
        head, tails, count = rng.choice(forms)
        body = [rng.choice(nums) for _ in range(count + rng.choice([0, 0, 0, 1, 2, -1]))]
        if rng.random() < 0.4:
            body.insert(rng.randint(0, len(body)), rng.choice(["linear", "step", "step4", "exp2.5", "exp1e-1"]))
        if body and rng.random() < 0.4:
            k = rng.randrange(len(body))
            body[k] = f"{body[k]}{rng.choice(['->', ' -> '])}{rng.choice(nums)}"
        text = (
            head + "".join(rng.choice([",", "_", " , "]) * (k > 0) + b for k, b in enumerate(body)) + rng.choice(tails)
        )
        try:
            policy = parse_policy(text)
        except PolicyError as e:
            assert "\n" not in str(e)
            continue
        accepted.add(text)
        again = parse_policy(str(policy))
        assert again.name == policy.name and str(again) == str(policy), text
    assert len(accepted) >= 150 and {t[: t.index("[") + 1] for t in accepted} == {f[0] for f in forms}


# -- refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("keep[1_0_5)", "malformed band (3 numbers, not 2)"),
        ("keep[1e_5)", "malformed band ('1e' is not a number)"),
        ("keep[1e1_1e1)", "band needs a < b"),
        ("keep[-1e1_5)", "band bounds must lie in [0, 100]"),
        ("drop[1 0_5)", "malformed band ('1 0' is not a number)"),
        ("mochi[1.5e0_2_3]", "N must be a whole number >= 0, got 1.5"),
        ("mochi[8_4_2_-1]", "w must be a whole number >= 0, got -1"),
        ("mochi[8_4]", "malformed mochi policy (2 numbers, not 3 or 4)"),
        ("ring[100->10->5_10_linear]", "malformed ring policy ('10->5' is not a number)"),
        ("ring[1e1]", "malformed ring policy (1 field, not 2 to 4)"),
        ("ring[1e3_10]", "policy 'ring[1000_10]': the outer ball at the start"),
        ("ring[100->10_10_step2.5]", "needs a whole number of stages"),
        ("ring[100->10_10_linear5]", "unknown schedule"),
        ("ring[100->10_10_exp0x1]", "unknown schedule 'exp0x1'"),
        ("ring[100->10_10_linear_1e3]", "share of training"),
        ("ring[1e2->1e1_10]", "moving bounds need a schedule"),
        ("curriculum[0,1e2->95,1E2]", "need a schedule"),
        ("curriculum[0,100,95,100,linear]", "malformed curriculum policy (no '->')"),
        ("curriculum[0,100->95,100,linear,50,1]", "malformed curriculum policy (5 fields after '->', not 2 to 4)"),
        ("debiased[\u0663]", "malformed debiased policy ('\u0663' is not a number)"),
        ("hard[1e-1]", "malformed hard policy (1 number, not 2)"),
        ("hard[1_1E0]", "policy 'hard[1_1]': tau_plus must lie in [0, 1), got 1"),
        ("retain-hard[1,2,3]", "malformed retain-hard policy (3 numbers, not 1 or 2)"),
        ("retain-hard[1e0]", "policy 'retain-hard[1]': r must lie in (0, 1), got 1"),
        ("hard[1e400_0.1]", "the number 1e400 is too large to be finite"),
        ("ring[1E400_10]", "too large to be finite"),
        ("keep[NaN_100)", "NaN is not a finite number"),
        ("ring[-inf->10_10_linear]", "inf is not a finite number"),
    ],
)
def test_refusals_are_one_line_and_name_what_is_allowed(text, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    message = str(e.value)
    assert fragment in message and "\n" not in message
    # the parser names the text as written; a policy's own range check names the policy (its canonical name)
    assert message.startswith((f"policy {text!r}: ", fragment))
    assert "allowed" in message or "refused" in message or "band" in message

"""SimCLR (negatives.methods.simclr): each view's candidates, NT-Xent by hand,
policies over the other 2B - 2 views, the authors' debiased and hard losses on
the encoder's views, MoCHi's mixes with gradient to the query only, and the
float32 loss under a bf16 autocast."""

import pytest
import torch
import torch.nn.functional as F
from losses.published import dcl_loss, hcl_loss

from negatives.methods import build_method
from negatives.methods.simclr import SimCLR, candidate_index, twin_index
from negatives.models import build_encoder
from negatives.policies import Candidates, parse_policy
from negatives.training.settings import PretrainSettings


def _linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 4)).double()


def _views(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(b, 5, generator=g, dtype=torch.float64)
    return x1, x1 + 0.5 * torch.randn(b, 5, generator=g, dtype=torch.float64)


def test_simclr_candidates_exclude_the_view_and_its_positive():
    assert twin_index(3).tolist() == [3, 4, 5, 0, 1, 2]
    idx = candidate_index(3)
    assert idx.shape == (6, 4)
    for i in range(6):
        assert idx[i].tolist() == sorted(set(range(6)) - {i, (i + 3) % 6})  # in order


def test_simclr_loss_is_nt_xent_and_policies_apply():
    enc = _linear()
    x1, x2 = _views()
    labels = torch.tensor([0, 1, 0, 1])
    model = SimCLR(enc, temperature=0.5)
    loss, stats = model(x1, x2, labels, torch.arange(4))
    # NT-Xent by hand: cross-entropy over every other view, the twin as target
    z = F.normalize(enc(torch.cat([x1, x2])), dim=1)
    expected = F.cross_entropy((z @ z.T / 0.5).fill_diagonal_(float("-inf")), twin_index(4))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert float(stats["kept"]) == 6
    same = SimCLR(enc, parse_policy("drop-same-class").policy, temperature=0.5)
    loss, stats = same(x1, x2, labels, torch.arange(4))
    # each view: 6 candidates; same class: both views of the other image of its class
    assert float(stats["kept"]) == 4
    other = (
        (labels.repeat(2).unsqueeze(0) != labels.repeat(2).unsqueeze(1))
        | torch.eye(8, dtype=torch.bool)
        | torch.eye(8, dtype=torch.bool).roll(4, 1)
    )  # the view and its twin: columns kept
    logits = (z @ z.T / 0.5).masked_fill(~other, float("-inf")).fill_diagonal_(float("-inf"))
    torch.testing.assert_close(loss, F.cross_entropy(logits, twin_index(4)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name,published",
    [
        ("debiased[0.1]", lambda a, b, t: dcl_loss(a, b, 0.1, t)),
        ("hard[1_0.1]", lambda a, b, t: hcl_loss(a, b, 0.1, 1.0, t)),
        ("hard[0.5_0]", lambda a, b, t: hcl_loss(a, b, 0.0, 0.5, t)),
    ],
)
def test_a_reweighted_simclr_step_is_the_authors_training_step(name, published):
    """The authors trained SimCLR: the step's loss and the encoder's gradient
    are their criterion's on the same encoder outputs."""
    recipe = parse_policy(name)
    enc = _linear()
    model = SimCLR(enc, recipe.policy, recipe.loss, temperature=0.5)
    x1, x2 = _views(b=6)
    loss, stats = model(x1, x2, torch.zeros(6, dtype=torch.long), torch.arange(6))
    want = published(F.normalize(enc(x1), dim=1), F.normalize(enc(x2), dim=1), 0.5)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    params = list(enc.parameters())
    for got, ref in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert float(stats["kept"]) == 10


def test_mochi_on_simclr_gives_the_gradient_of_detached_mixes():
    """MoCHi's mixes enter as detached embeddings: the step's loss and encoder
    gradient are those of InfoNCE over the 2B - 2 views (with gradient) and
    ``q . h`` for the materialised mixes ``h`` (no gradient to the views mixed)."""
    b = 6
    enc = _linear()
    model = SimCLR(enc, parse_policy("mochi[4_3_2]").policy, temperature=0.5)
    x1, x2 = _views(b=b)
    torch.manual_seed(7)
    loss, stats = model(x1, x2, torch.zeros(b, dtype=torch.long), torch.arange(b))
    assert float(stats["kept"]) == 2 * b - 2 + 5
    z = F.normalize(enc(torch.cat([x1, x2])), dim=1)
    s = z @ z.T
    pool = candidate_index(b)
    torch.manual_seed(7)
    sel = model.policy(s.detach().gather(1, pool), Candidates(keys=z.detach(), queries=z.detach(), pool_index=pool))
    h = model.policy.embeddings(Candidates(keys=z.detach(), queries=z.detach(), pool_index=pool))
    logits = torch.cat(
        [s.gather(1, twin_index(b).unsqueeze(1)), s.gather(1, pool), torch.einsum("bd,bsd->bs", z, h)], 1
    )
    want = F.cross_entropy(logits / 0.5, torch.zeros(2 * b, dtype=torch.long))
    assert sel.keep is None
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    params = list(enc.parameters())
    for got, ref in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_simclr_takes_a_policy_and_a_loss():
    seen = []

    def loss(l_pos, sim, keep, temperature, synthetic):
        seen.append((l_pos.shape, sim.shape, keep, temperature, synthetic))
        return sim.sum()

    model = SimCLR(_linear(), parse_policy("keep[50_100)").policy, loss, temperature=0.3)
    model(*_views(), torch.zeros(4, dtype=torch.long), torch.arange(4))
    ((pos_shape, shape, keep, temperature, synthetic),) = seen
    assert pos_shape == (8,) and shape == (8, 3) and keep is None  # a band: its 3 of the 6 columns, all kept
    assert temperature == 0.3 and synthetic is None


@pytest.mark.parametrize("policy", ["all", "keep[95_100)", "drop[90_100)&other-class", "mochi[16_8_4]", "hard[1_0.1]"])
def test_bf16_autocast_step_computes_the_loss_in_float32_close_to_the_float32_step(policy):
    """The GPU path's precision, on CPU: under a bf16 autocast only the encoder
    and the matmul run in bf16; the loss is float32 and the float32 step's
    within bf16's rounding (same weights and views)."""
    recipe = parse_policy(policy)
    recipe.policy.start(4, 62)
    torch.manual_seed(0)
    model = build_method(
        "simclr", build_encoder("small-cnn", 1, dim=16, num_splits=2, width=8), recipe, PretrainSettings(dim=16), 0.2
    )
    x = torch.rand(32, 1, 16, 16)
    views = (x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    labels, idx = torch.arange(32) % 4, torch.arange(32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = {}
    for precision in ("fp32", "bf16"):
        model.load_state_dict(state)
        torch.manual_seed(2)  # the same MoCHi draws
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses[precision], _ = model(*views, labels, idx, progress=0.5)
    assert losses["fp32"].dtype == losses["bf16"].dtype == torch.float32
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=5e-3, atol=5e-3)

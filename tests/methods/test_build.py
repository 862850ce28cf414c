"""How a run builds its method (negatives.methods): the candidates per query,
and from a policy name's Recipe the model, its policy, loss and MoCo's queue;
SimCLR refuses the names that need MoCo's queue."""

import functools

import pytest
import torch

from negatives.losses.info_nce import info_nce
from negatives.losses.reweighted import reweighted_nce
from negatives.methods import METHODS, build_method, num_candidates
from negatives.methods.moco import MoCo
from negatives.methods.simclr import SimCLR
from negatives.models import build_encoder
from negatives.policies import parse_policy
from negatives.queues.fifo import KeyQueue
from negatives.queues.retaining import RetainingQueue
from negatives.training.settings import PretrainSettings

SETTINGS = PretrainSettings(dim=8, queue_size=40, queue_extra=12, momentum=0.9, batch_size=4)


def _build(method, name, settings=SETTINGS, seed=3):
    recipe = parse_policy(name)
    recipe.policy.start(4, num_candidates(method, settings.queue_size, settings.batch_size))
    return build_method(
        method,
        build_encoder("small-cnn", 1, dim=settings.dim, width=4),
        recipe,
        settings,
        0.2,
        generator=torch.Generator().manual_seed(seed),
    )


def test_num_candidates_is_the_queue_or_the_other_views():
    assert num_candidates("moco", 4096, 256) == 4096
    assert num_candidates("simclr", 4096, 256) == 510
    with pytest.raises(ValueError, match="unknown method 'byol'; allowed: moco, simclr"):
        num_candidates("byol", 4096, 256)
    assert set(METHODS) == {"moco", "simclr"}


def test_an_unknown_method_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown method 'byol'; allowed: moco, simclr"):
        _build("byol", "all")


@pytest.mark.parametrize(
    "name,queue,size",
    [
        ("all", KeyQueue, 40),
        ("drop[90_100)", KeyQueue, 40),
        ("mochi[8_4_4]", KeyQueue, 40),
        ("debiased[0.1]", KeyQueue, 40),
        ("drop[90_100)@replace", KeyQueue, 52),
        ("drop-same-class@replace", KeyQueue, 52),
        ("retain-hard[0.25]", RetainingQueue, 40),
    ],
)
def test_the_queue_a_name_chooses(name, queue, size):
    """K keys; K + queue_extra for @replace; a retaining queue for retain-hard."""
    model = _build("moco", name)
    assert isinstance(model, MoCo) and type(model.queue) is queue
    assert model.queue.size == size and model.queue.keys.shape == (size, 8)
    assert model.momentum == 0.9 and model.temperature == 0.2


def test_the_retaining_queue_has_the_names_settings_and_its_state_is_saved():
    model = _build("moco", "retain-hard[0.25_10]")
    assert model.queue.retain == 0.25 and model.queue.hard_pct == 10
    assert model.queue.retained_slots == 10
    assert {"queue.keys", "queue.hard", "queue.seen", "queue.stamp", "queue.clock"} <= set(model.state_dict())
    x = torch.randn(4, 1, 12, 12)
    for i in range(3):
        loss, stats = model(x, x, torch.full((4,), i), torch.arange(4) + 4 * i)
        loss.backward()
        assert float(stats["kept"]) == 40
    assert int(model.queue.clock) == 12 and int(model.queue.seen.max()) > 0


def test_the_start_up_keys_come_from_the_generator():
    a, b, c = _build("moco", "all", seed=3), _build("moco", "all", seed=3), _build("moco", "all", seed=4)
    assert torch.equal(a.queue.keys, b.queue.keys) and not torch.equal(a.queue.keys, c.queue.keys)
    torch.testing.assert_close(a.queue.keys.norm(dim=1), torch.ones(40))
    assert torch.equal(a.queue.keys, KeyQueue(40, 8, generator=torch.Generator().manual_seed(3)).keys)


#: a name -> the loss it trains with
LOSSES = {
    "all": info_nce,
    "keep[95_100)": info_nce,
    "mochi[8_4_4]": info_nce,
    "debiased[0.1]": functools.partial(reweighted_nce, tau_plus=0.1),
    "hard[1_0.1]": functools.partial(reweighted_nce, tau_plus=0.1, beta=1.0),
}


@pytest.mark.parametrize("method", ["moco", "simclr"])
@pytest.mark.parametrize("name", LOSSES)
def test_the_model_takes_the_recipes_policy_and_loss(method, name):
    recipe = parse_policy(name)
    model = build_method(method, build_encoder("small-cnn", 1, dim=8, width=4), recipe, SETTINGS, 0.2)
    assert isinstance(model, MoCo if method == "moco" else SimCLR)
    assert model.policy is recipe.policy and model.loss is recipe.loss and model.temperature == 0.2
    l_pos, sim = torch.tensor([0.5, 0.1]), torch.tensor([[0.2, -0.4, 0.6], [0.3, 0.0, -1.0]])
    assert torch.equal(model.loss(l_pos, sim, None, 0.5), LOSSES[name](l_pos, sim, None, 0.5))


@pytest.mark.parametrize(
    "name", ["drop[90_100)@replace", "drop-same-class@replace", "drop[80_100)&other-class@replace", "retain-hard[0.25]"]
)
def test_simclr_refuses_the_names_that_need_moco_s_queue(name):
    with pytest.raises(ValueError) as e:
        _build("simclr", name)
    assert repr(parse_policy(name).name) in str(e.value) and "use method moco" in str(e.value)


def test_simclr_has_no_queue():
    model = _build("simclr", "drop-same-class")
    assert isinstance(model, SimCLR) and not hasattr(model, "queue")
    assert not any(k.startswith("queue") for k in model.state_dict())


def test_a_replace_step_sees_exactly_k_negatives_from_the_longer_queue():
    model = _build("moco", "drop[50_100)@replace", PretrainSettings(dim=4, queue_size=8, queue_extra=4, momentum=0.9))
    assert model.queue.size == 12
    x = torch.randn(2, 1, 12, 12)
    loss, stats = model(x, x + 0.01, torch.tensor([0, 1]), torch.tensor([5, 6]))
    assert torch.isfinite(loss) and float(stats["kept"]) == 8
    assert model.queue.indices.tolist().count(5) == 1 and int(model.queue.ptr) == 2

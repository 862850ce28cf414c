"""The queue that retains consistently hard keys (``retain-hard[r,c]``): it
counts each key's hard-frequency from the step's cosines and evicts the
oldest keys but the R hardest-so-far."""

import math
from fractions import Fraction

import pytest
import torch

from negatives.methods import build_method
from negatives.models import build_encoder
from negatives.policies import parse_policy
from negatives.queues.fifo import KeyQueue
from negatives.queues.retaining import RetainingQueue
from negatives.training.settings import PretrainSettings


def _fill(queue, batches, b=2):
    """Enqueue ``batches`` batches of ``b`` keys; key n has label n, index 100 + n."""
    for step in range(batches):
        ids = torch.arange(step * b, (step + 1) * b)
        angle = ids.float()
        keys = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        queue.enqueue(keys, ids, 100 + ids)


class ReferenceQueue:
    """The eviction rule of the module docstring, one key at a time in Python."""

    def __init__(self, size, retain, hard_pct):
        self.size, self.r = size, math.floor(retain * size + 1e-9)
        self.n = math.floor(Fraction(size) * Fraction(repr(hard_pct)) / 100 + Fraction(1, 2))
        self.label = [-1] * size
        self.stamp = list(range(-size, 0))
        self.hard, self.seen = [0] * size, [0] * size
        self.clock = 0

    def enqueue(self, labels, sim):
        for row in sim.tolist():
            for slot in sorted(range(self.size), key=lambda j: -row[j])[: self.n]:  # the query's n hardest
                self.hard[slot] += 1
        self.seen = [s + len(sim) for s in self.seen]
        freq = [Fraction(h, max(s, 1)) for h, s in zip(self.hard, self.seen, strict=True)]
        # the R highest frequencies above 0, ties: the newer key first
        ranked = sorted(range(self.size), key=lambda j: (-freq[j], -self.stamp[j]))[: self.r]
        retained = {j for j in ranked if freq[j] > 0}
        free = sorted((j for j in range(self.size) if j not in retained), key=lambda j: self.stamp[j])
        for i, slot in enumerate(free[: len(labels)]):  # oldest first, batch order
            self.label[slot], self.stamp[slot] = labels[i], self.clock + i
            self.hard[slot] = self.seen[slot] = 0
        self.clock += len(labels)


@pytest.mark.parametrize(
    "size,batch,retain,hard_pct",
    [(6, 2, 0.34, 20), (12, 4, 0.5, 10), (40, 8, 0.25, 5), (20, 5, 0.5, 30), (16, 2, 0.9, 50), (10, 2, 0.0, 20)],
)
def test_retaining_queue_equals_the_reference(size, batch, retain, hard_pct):
    g = torch.Generator().manual_seed(size)
    queue = RetainingQueue(size, 3, retain, hard_pct, generator=g)
    ref = ReferenceQueue(size, retain, hard_pct)
    for step in range(4 * size // batch):
        queries = int(torch.randint(1, 4, (1,), generator=g))
        sim = torch.rand(queries, size, generator=g)
        # a few keys hard for most queries: they should stay
        sim[:, :2] += 0.5 * (torch.rand(queries, 2, generator=g) < 0.8)
        labels = torch.arange(step * batch, (step + 1) * batch)
        queue.enqueue(torch.randn(batch, 3, generator=g), labels, 1000 + labels, sim=sim)
        ref.enqueue(labels.tolist(), sim)
        assert queue.labels.tolist() == ref.label, step
        assert queue.stamp.tolist() == ref.stamp and queue.hard.tolist() == ref.hard
        assert queue.seen.tolist() == ref.seen and int(queue.clock) == ref.clock
        assert queue.labels[queue.newest_first()].tolist() == [
            ref.label[j] for j in sorted(range(size), key=lambda j: -ref.stamp[j])
        ]
    if retain:
        assert min(ref.stamp) < ref.clock - size  # some key outlived its FIFO turn


def test_retaining_queue_with_nothing_to_retain_is_fifo():
    for retain in (0.0, 0.5):  # 0.5: nothing is hard yet, so nothing is retained
        a = KeyQueue(6, 2, generator=torch.Generator().manual_seed(0))
        r = RetainingQueue(6, 2, retain, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.keys, r.keys)
        for n in range(1, 6):
            _fill(a, 1), _fill(r, 1)
            a.enqueue(a.keys[:2] * 0 + n, torch.tensor([n, n]), torch.tensor([n, n]))
            r.enqueue(r.keys[:2] * 0 + n, torch.tensor([n, n]), torch.tensor([n, n]))
            for x, y in zip(a.ordered(), r.ordered(), strict=True):
                assert torch.equal(x, y)
            assert torch.equal(a.keys, r.keys) and torch.equal(a.newest_first(), r.newest_first())


def test_retaining_queue_keeps_the_hard_keys_on_a_hand_made_example():
    recipe = parse_policy("retain-hard[0.34,20]")  # K = 6: R = floor(2.04) = 2; hardest round(1.2) = 1
    queue = recipe.make_queue(6, 0, 2, generator=torch.Generator().manual_seed(0))
    assert isinstance(queue, RetainingQueue) and queue.retained_slots == 2 and queue.hard_count(6, 20) == 1
    _fill(queue, 3)  # slots 0..5 hold keys 0..5 (key n in slot n)
    assert queue.labels.tolist() == [0, 1, 2, 3, 4, 5]

    def cosines(hardest_slots):
        """Two queries; query i's hardest candidate is the slot ``hardest_slots[i]``."""
        sim = torch.zeros(2, 6)
        sim[0, hardest_slots[0]] = 1.0
        sim[1, hardest_slots[1]] = 1.0
        return sim

    queue.record(torch.tensor([[0], [1]]))  # keys 0, 1: hard for 1 of 2 queries each
    assert queue.frequency().tolist() == [0.5, 0.5, 0, 0, 0, 0]
    assert queue.retained().tolist() == [True, True, False, False, False, False]
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([6, 7]), torch.tensor([106, 107]))
    # FIFO would evict keys 0 and 1; they are retained, the next oldest (2, 3) go
    assert queue.labels.tolist() == [0, 1, 6, 7, 4, 5]
    assert queue.seen.tolist() == [2, 2, 0, 0, 2, 2] and queue.hard.tolist() == [1, 1, 0, 0, 0, 0]

    # key 6 (slot 2) hard for both queries, counted by the enqueue itself: frequency 1
    queue.enqueue(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([8, 9]), torch.tensor([108, 109]), sim=cosines([2, 2])
    )
    # retained: key 6 (1.0) and, of the tie 0/1 at 0.25, the newer key 1; key 0 is now the oldest
    # non-retained key and is evicted with key 4 (next oldest)
    assert queue.labels.tolist() == [8, 1, 6, 7, 9, 5]
    assert queue.hard.tolist() == [0, 1, 2, 0, 0, 0] and queue.seen.tolist() == [0, 4, 2, 2, 0, 4]
    _, labels, indices = queue.ordered()
    assert labels.tolist() == [1, 5, 6, 7, 8, 9]  # oldest first, by insertion
    assert indices.tolist() == [101, 105, 106, 107, 108, 109]
    assert queue.labels[queue.newest_first()].tolist() == [9, 8, 7, 6, 5, 1]


def test_record_counts_each_querys_hardest_slots():
    queue = RetainingQueue(5, 2, 0.4)
    queue.record(torch.tensor([[0, 3], [3, 4], [1, 3]]))
    assert queue.hard.tolist() == [1, 1, 0, 3, 1] and queue.seen.tolist() == [3] * 5
    assert queue.frequency().tolist() == [1 / 3, 1 / 3, 0, 1, 1 / 3]
    # R = 2: key 3, then of the tie at 1/3 the newest (start-up stamps -5 .. -1: slot 4)
    assert queue.retained().tolist() == [False, False, False, True, True]
    # only keys that have been hard are retained, even with room for more
    fresh = RetainingQueue(5, 2, 0.4)
    assert not fresh.retained().any()
    fresh.record(torch.tensor([[2]]))
    assert fresh.retained().tolist() == [False, False, True, False, False]


def test_retaining_queue_refusals_leave_it_unchanged():
    queue = RetainingQueue(6, 2, 0.5)
    with pytest.raises(ValueError, match="does not fit in the 3 non-retained slots"):
        queue.enqueue(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="sim has 5 columns, the queue 6 slots"):
        queue.enqueue(
            torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), sim=torch.zeros(1, 5)
        )
    assert queue.labels.tolist() == [-1] * 6 and queue.seen.tolist() == [0] * 6 and int(queue.clock) == 0
    with pytest.raises(ValueError, match=r"retain must lie in \[0, 1\)"):
        RetainingQueue(6, 2, 1.0)


def test_moco_works_through_the_queue_the_name_chooses():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 12, 12)
    settings = PretrainSettings(dim=8, queue_size=40, queue_extra=8, momentum=0.9)
    plain = build_method("moco", build_encoder("small-cnn", 1, dim=8, width=4), parse_policy("all"), settings, 0.2)
    assert type(plain.queue) is KeyQueue and plain.queue.size == 40
    model = build_method(
        "moco", build_encoder("small-cnn", 1, dim=8, width=4), parse_policy("retain-hard[0.5]"), settings, 0.2
    )
    assert isinstance(model.queue, RetainingQueue) and model.queue.size == 40 and model.queue.retain == 0.5
    for i in range(3):
        loss, stats = model(x, x, torch.full((4,), i), torch.arange(4) + 4 * i)
        loss.backward()
        assert float(stats["kept"]) == 40  # every negative counts
    # each step counted 4 queries x round(40 x 5 / 100) = 2 hardest keys
    assert int(model.queue.hard.sum()) > 0 and int(model.queue.clock) == 12
    assert {"queue.hard", "queue.seen", "queue.stamp", "queue.clock"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="works through MoCo's queue"):
        build_method(
            "simclr", build_encoder("small-cnn", 1, dim=8, width=4), parse_policy("retain-hard[0.5]"), settings, 0.2
        )

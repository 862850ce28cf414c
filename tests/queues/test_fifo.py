"""MoCo's FIFO queue of keys: the newest batch overwrites the oldest keys."""

import pytest
import torch

from negatives.queues.fifo import KeyQueue


def test_fifo_by_hand():
    queue = KeyQueue(4, 2, generator=torch.Generator().manual_seed(0))
    assert queue.size == 4 and queue.labels.tolist() == [-1] * 4 and queue.indices.tolist() == [-1] * 4
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(4))  # random unit start-up keys
    start = queue.keys.clone()
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 5]), torch.tensor([0, 1]))
    assert queue.labels.tolist() == [3, 5, -1, -1] and int(queue.ptr) == 2
    assert queue.newest_first().tolist() == [1, 0, 3, 2]
    keys, labels, indices = queue.ordered()
    assert labels.tolist() == [-1, -1, 3, 5] and indices.tolist() == [-1, -1, 0, 1]
    assert torch.equal(keys[:2], start[2:]) and keys[2:].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    queue.enqueue(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), torch.tensor([7, 8]), torch.tensor([2, 3]))
    assert queue.labels.tolist() == [3, 5, 7, 8] and int(queue.ptr) == 0
    assert queue.newest_first().tolist() == [3, 2, 1, 0]
    queue.enqueue(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), torch.tensor([9, 4]), torch.tensor([4, 5]))
    assert queue.labels.tolist() == [9, 4, 7, 8] and int(queue.ptr) == 2  # the oldest two overwritten
    assert queue.ordered()[1].tolist() == [7, 8, 9, 4]
    assert queue.ordered()[2].tolist() == [2, 3, 4, 5]
    assert queue.newest_first().tolist() == [1, 0, 3, 2]


@pytest.mark.parametrize("age_ordered", [False, True])
def test_a_snapshot_is_a_copy_in_slot_order_or_newest_first(age_ordered):
    queue = KeyQueue(4, 2, generator=torch.Generator().manual_seed(0), age_ordered=age_ordered)
    queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 5]), torch.tensor([0, 1]))
    keys, labels, indices = queue.snapshot()
    if age_ordered:  # slots 1, 0, then the start-up keys 3, 2
        assert labels.tolist() == [5, 3, -1, -1] and indices.tolist() == [1, 0, -1, -1]
        assert torch.equal(keys, queue.keys[[1, 0, 3, 2]])
    else:
        assert labels.tolist() == [3, 5, -1, -1] and indices.tolist() == [0, 1, -1, -1]
        assert torch.equal(keys, queue.keys)
    before = keys.clone(), labels.clone(), indices.clone()
    queue.enqueue(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), torch.tensor([7, 8]), torch.tensor([2, 3]))
    assert all(torch.equal(a, b) for a, b in zip(before, (keys, labels, indices)))  # not a view


@pytest.mark.parametrize("size,batch", [(4, 1), (6, 2), (12, 4), (40, 8), (8, 8)])
def test_fifo_equals_a_list_of_the_last_keys(size, batch):
    """The reference: a Python list, each batch appended and the oldest cut."""
    g = torch.Generator().manual_seed(size + batch)
    queue = KeyQueue(size, 3, generator=g)
    start_keys = queue.keys.clone()
    entries = [(start_keys[i], -1, -1) for i in range(size)]  # oldest first
    for step in range(3 * size // batch + 1):
        keys = torch.randn(batch, 3, generator=g)
        ids = torch.arange(step * batch, (step + 1) * batch)
        queue.enqueue(keys, ids % 5, 1000 + ids, sim=torch.randn(batch, size, generator=g))  # sim: unused
        entries = (entries + [(keys[i], int(ids[i]) % 5, 1000 + int(ids[i])) for i in range(batch)])[-size:]
        keys_o, labels_o, indices_o = queue.ordered()
        assert torch.equal(keys_o, torch.stack([e[0] for e in entries]))
        assert labels_o.tolist() == [e[1] for e in entries] and indices_o.tolist() == [e[2] for e in entries]
        newest = queue.newest_first()
        assert sorted(newest.tolist()) == list(range(size))
        assert queue.indices[newest].tolist() == [e[2] for e in reversed(entries)]
        assert int(queue.ptr) == ((step + 1) * batch) % size


def test_fifo_refuses_a_batch_that_does_not_divide_the_queue():
    queue = KeyQueue(6, 2)
    with pytest.raises(ValueError, match="queue size 6 must be a multiple of the batch size 4"):
        queue.enqueue(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    assert queue.labels.tolist() == [-1] * 6 and int(queue.ptr) == 0  # nothing changed


def test_fifo_start_up_keys_follow_the_generator_and_live_in_the_state_dict():
    a, b = (KeyQueue(8, 4, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.keys, b.keys) and not torch.equal(a.keys, KeyQueue(8, 4).keys)
    assert set(a.state_dict()) == {"keys", "labels", "indices", "ptr"}
    a.enqueue(torch.ones(4, 4), torch.arange(4), torch.arange(4))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.keys, a.keys) and int(b.ptr) == 4 and torch.equal(b.newest_first(), a.newest_first())

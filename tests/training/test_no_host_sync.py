"""No host synchronisation inside a training step, checked without a GPU.

Two kinds of call stall a CUDA stream inside a step:

* a host read of a device value -- ``t.item()``, ``bool(t)``, ``int(t)``,
  ``float(t)``, ``t.tolist()``, ``t.cpu()``, ``t.numpy()``, and the ops whose
  output size depends on the values (``nonzero``, boolean-mask indexing,
  ``unique``, ``bincount``, ``masked_select``);
* a blocking host-to-device copy -- ``torch.tensor(data, device=cuda)``, a
  ``.to(cuda)`` or ``copy_`` of a CPU tensor without ``non_blocking=True``,
  a CPU tensor handed to a device op (an index, ``index_put_``'s value).

A whole step (both augmentations with colour jitter, hue and grayscale, both
encoders, the policy's selection, the loss, backward, the optimiser, the
trainer's stop vote) runs on the ``meta`` device, which has shapes and no
values, under :func:`no_host_sync`: a ``TorchFunctionMode`` that sees the
Python-level calls (on ``meta``, ``torch.tensor(data, device=...)`` never
reaches the dispatcher, and a CPU -> meta copy reads nothing, so neither
fails by itself) and a ``TorchDispatchMode`` that sees every aten op, both
recording and failing on each of the forms above.  Every form is planted in
the check once (``test_the_check_catches``), so it cannot pass by seeing
nothing.  Several processes: the same step as rank 0 of two under PyTorch's
fake process group, so the methods' collectives run (no DDP: the query
encoder is called directly).  On a GPU, ``benchmarks/gpu_epoch.py`` checks
the same with ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from fractions import Fraction
from numbers import Number

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from negatives.data.augment import MoCoV2Augment
from negatives.methods import build_method, num_candidates
from negatives.models import build_encoder
from negatives.optim import SGD
from negatives.policies import mixing, parse_policy
from negatives.policies.grammar import SEP
from negatives.policies.registry import PARSERS
from negatives.runtime import distributed
from negatives.runtime.transfer import to_device_async
from negatives.training.settings import PretrainSettings
from negatives.training.step import train_step

POLICIES = [
    "all",
    "keep[95_100)",
    "keep[0_95)",
    "keep[40_60)",
    "drop[99_100)",
    "drop-same-class",
    "drop[95_100)&same-class",
    "drop[99_100)@replace",
    "drop-same-class@replace",
    "drop[95_100)&other-class@replace",
    "mochi[16_8_4]",
    "ring[100->10_10_linear_50]",
    "ring[50->10_0_linear]",
    "curriculum[0_100->90_100_linear]",
    "debiased[0.1]",
    "hard[1_0.1]",
    "retain-hard[0.1]",
]

CHANNELS, SIDE, BATCH, QUEUE, EXTRA, DIM, STEPS = 3, 16, 32, 256, 64, 16, 2

aten = torch.ops.aten


# ------------------------------------------------------------------ the check


class HostSync(AssertionError):
    """A host read or a blocking host-to-device copy inside :func:`no_host_sync`."""


def _on_device(t) -> bool:
    return isinstance(t, Tensor) and t.device.type != "cpu"


def _on_host(t) -> bool:
    return isinstance(t, Tensor) and t.device.type == "cpu"


def _tensors(*trees) -> list[Tensor]:
    return [t for t in tree_flatten(trees)[0] if isinstance(t, Tensor)]


class _Found:
    """Where both modes record what they see; each finding also raises at once."""

    def __init__(self):
        self.items: list[str] = []

    def fail(self, what: str):
        self.items.append(what)
        raise HostSync(what)


#: Tensor methods that read a value back to the host
_READS = {
    Tensor.item: "item()",
    Tensor.tolist: "tolist()",
    Tensor.__bool__: "bool()",
    Tensor.__int__: "int()",
    Tensor.__float__: "float()",
    Tensor.__index__: "__index__()",
    Tensor.cpu: "cpu()",
    Tensor.numpy: "numpy()",
}


class _PythonCalls(TorchFunctionMode):
    """The forms the dispatcher does not show on ``meta``: tensors made from
    Python data on a device, the host reads as the Python method called, and
    an advanced-index assignment of a Python number (on a GPU the number
    becomes a CPU tensor that ``index_put_`` copies with a blocking copy)."""

    def __init__(self, found: _Found):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray, Tensor.new_tensor):
            data = args[0] if func is not Tensor.new_tensor else args[1]
            device = kwargs.get("device", args[0].device if func is Tensor.new_tensor else None)
            if func is torch.as_tensor and len(args) > 2:
                device = args[2]
            if device is not None and torch.device(device).type != "cpu" and not isinstance(data, Tensor):
                self.found.fail(f"torch.{func.__name__} of Python data onto {device} (a blocking copy)")
        elif func in _READS and _on_device(args[0]):
            self.found.fail(f"{_READS[func]} of a {args[0].device} tensor (a host read)")
        elif func is Tensor.__setitem__ and _on_device(args[0]) and isinstance(args[2], Number):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, Tensor) and i.dtype != torch.bool for i in index):
                self.found.fail("t[index tensor] = a Python number (index_put_ copies it from the host, blocking)")
        return func(*args, **kwargs)


#: ops whose output size depends on the values (a host read on a GPU)
_DATA_DEPENDENT = {
    aten.nonzero,
    aten.argwhere,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.bincount,
    aten.masked_select,
    aten.equal,
    aten.is_nonzero,
    aten.allclose,
    aten._local_scalar_dense,
}
_COPIES = {aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize}
_INDEX_PUTS = {aten.index_put_, aten.index_put, aten._index_put_impl_}


class _Ops(TorchDispatchMode):
    """Every aten op: copies between the host and a device, the ops that
    read values back, and CPU tensors in a device op."""

    def __init__(self, found: _Found):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = func.overloadpacket
        if op in _COPIES:
            self._copy(op, args, kwargs)
        elif op in _DATA_DEPENDENT and any(_on_device(t) for t in _tensors(args, kwargs)):
            self.found.fail(f"{op.__name__} of a device tensor (a host read)")
        elif op is aten.repeat_interleave and _on_device(args[0]) and kwargs.get("output_size") is None:
            self.found.fail("repeat_interleave without output_size (a host read)")
        else:
            tensors = _tensors(args, kwargs)
            if any(_on_device(t) for t in tensors):
                if op is aten.index and any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1:])):
                    self.found.fail("boolean-mask indexing of a device tensor (a host read)")
                if op in _INDEX_PUTS and _on_host(args[2]):
                    self.found.fail("index_put_ of a CPU value into a device tensor (a blocking copy)")
                if any(_on_host(t) and t.dim() > 0 for t in tensors):
                    self.found.fail(f"{op.__name__} of a CPU tensor and a device tensor (a blocking copy)")
        return func(*args, **kwargs)

    def _copy(self, op, args, kwargs):
        if op is aten._to_copy:
            src, dst = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            non_blocking = kwargs.get("non_blocking", False)
        else:
            # copy_(self=dst, src); _copy_from(self=src, dst)
            dst_t, src_t = (args[0], args[1]) if op is aten.copy_ else (args[1], args[0])
            src, dst = src_t.device, dst_t.device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        if src.type == "cpu" and dst.type != "cpu" and not non_blocking:
            self.found.fail(f"{op.__name__}: a blocking copy from the host to {dst}")
        if src.type != "cpu" and dst.type == "cpu":
            self.found.fail(f"{op.__name__}: a copy from {src} to the host (a host read)")


@contextlib.contextmanager
def no_host_sync():
    """Fail (:class:`HostSync`) on any host read of a device tensor or
    blocking host-to-device copy inside the block (module docstring)."""
    found = _Found()
    try:
        with _PythonCalls(found), _Ops(found):
            yield found
    except BaseException as e:
        if found.items and not isinstance(e, HostSync):  # raised, then wrapped or swallowed on the way
            raise HostSync("; ".join(found.items)) from e
        raise
    if found.items:
        raise HostSync("; ".join(found.items))


# ------------------------------------------------------------ the step checked


@contextlib.contextmanager
def _processes(world: int):
    """A run of ``world`` processes as seen by rank 0 (the fake process group:
    collectives return at once, leaving their outputs as they are)."""
    if world == 1:
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        assert distributed.world_size() == world and distributed.rank() == 0
        yield
    finally:
        distributed.destroy()


def _steps(method: str, policy: str, device: torch.device, cropped: bool = False):
    """The trainer's steps (``training/loop.py``: the stop vote, the batch
    sent to the device, :func:`~negatives.training.step.train_step`, the
    epoch's sums) on this process's rows, set up outside the check and run
    inside it.  ``cropped``: the two views arrive cropped as they were decoded
    (a streamed folder)."""
    world = distributed.world_size()
    recipe = parse_policy(policy)
    recipe.policy.start(4, num_candidates(method, QUEUE, BATCH))
    enc = build_encoder("small-cnn", CHANNELS, dim=DIM, num_splits=2 // world, width=8)
    settings = PretrainSettings(dim=DIM, queue_size=QUEUE, queue_extra=EXTRA, momentum=0.99)
    model = build_method(method, enc, recipe, settings, 0.2).to(device)
    aug = MoCoV2Augment(SIDE, CHANNELS, [0.5] * CHANNELS, [0.25] * CHANNELS).to(device)
    opt = SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    rows = model.image_rows(BATCH)
    # this process's images as the loader hands them over: on the host
    shape = (BATCH, 2, CHANNELS, SIDE, SIDE) if cropped else (BATCH, CHANNELS, SIDE, SIDE)
    batch = (torch.zeros(shape, dtype=torch.uint8)[rows], (torch.arange(BATCH) % 4)[rows], torch.arange(BATCH)[rows])
    model.train()
    loss_sum, kept_sum, shares_sum = torch.zeros((), device=device), 0.0, 0.0
    with no_host_sync():
        for step in range(STEPS):
            assert not distributed.any_rank(False, device)  # the stop vote
            x, y, idx = (t.to(device, non_blocking=True) for t in batch)
            loss, stats = train_step(model, aug, opt, x, y, idx, progress=Fraction(1 + step, 4), split=(BATCH, rows))
            loss_sum += loss
            kept_sum = kept_sum + stats["kept"]
            shares_sum = stats["shares"].double() + shares_sum  # the gradient shares, caught in backward
    return loss, stats


@pytest.mark.parametrize("world", [1, 2], ids=["1 process", "2 processes"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_a_training_step_has_no_host_sync(method, policy, world):
    if method == "simclr" and parse_policy(policy).needs_queue:
        pytest.skip("queue policies are MoCo's")
    with _processes(world):
        loss, stats = _steps(method, policy, torch.device("meta"))
    assert loss.device.type == "meta" and loss.shape == ()
    assert stats.pop("shares").shape == (7,) and all(v.shape == () for v in stats.values())


@pytest.mark.parametrize("world", [1, 2], ids=["1 process", "2 processes"])
@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_a_step_on_views_cropped_as_decoded_has_no_host_sync(method, world):
    with _processes(world):
        loss, _ = _steps(method, "all", torch.device("meta"), cropped=True)
    assert loss.device.type == "meta"


def test_every_policy_family_is_checked():
    bases = [p.replace(SEP, ",").partition("@")[0] for p in POLICIES]  # as parse_policy reads them
    families = {name for name, parse in PARSERS.items() if any(parse(b) for b in bases if b != "all")}
    assert families == set(PARSERS)


# ------------------------------------------------------------- the check works


def _grad_read(dev):
    class Read(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            g.sum().item()
            return g

    Read.apply(torch.zeros(3, device=dev, requires_grad=True)).sum().backward()


#: every form the check must catch, each planted in a tiny function
PLANTED = {
    "torch.tensor onto the device": lambda dev: torch.tensor([5.0, 3.0, 1.0], device=dev),
    "torch.as_tensor onto the device": lambda dev: torch.as_tensor([1, 2], device=dev),
    "new_tensor on the device": lambda dev: torch.zeros(2, device=dev).new_tensor([1.0, 2.0]),
    "blocking .to of a CPU tensor": lambda dev: torch.randperm(4).to(dev),
    "blocking copy_ from the host": lambda dev: torch.empty(4, device=dev).copy_(torch.arange(4.0)),
    "a CPU index into a device tensor": lambda dev: torch.zeros(4, device=dev)[torch.tensor([0, 2])],
    "a number assigned at an index tensor": lambda dev: torch.zeros(4, device=dev).__setitem__(
        torch.zeros(2, dtype=torch.long, device=dev), 0
    ),
    "item()": lambda dev: torch.zeros(3, device=dev).sum().item(),
    "tolist()": lambda dev: torch.zeros(3, device=dev).tolist(),
    "bool()": lambda dev: bool(torch.zeros((), device=dev)),
    "int()": lambda dev: int(torch.zeros((), device=dev)),
    "float()": lambda dev: float(torch.zeros((), device=dev)),
    "cpu()": lambda dev: torch.zeros(3, device=dev).cpu(),
    ".to('cpu')": lambda dev: torch.zeros(3, device=dev).to("cpu"),
    "numpy()": lambda dev: torch.zeros(3, device=dev).numpy(),
    "nonzero": lambda dev: torch.zeros(3, device=dev).nonzero(),
    "boolean-mask indexing": lambda dev: torch.zeros(3, device=dev)[torch.zeros(3, device=dev) > 0],
    "unique": lambda dev: torch.zeros(3, device=dev).unique(),
    "bincount": lambda dev: torch.zeros(3, dtype=torch.long, device=dev).bincount(),
    "torch.equal": lambda dev: torch.equal(torch.zeros(3, device=dev), torch.zeros(3, device=dev)),
    "a read in backward": _grad_read,
}


@pytest.mark.parametrize("form", PLANTED)
def test_the_check_catches(form):
    with pytest.raises(HostSync):
        with no_host_sync():
            PLANTED[form](torch.device("meta"))


def test_the_check_catches_a_read_that_is_swallowed():
    with pytest.raises(HostSync):
        with no_host_sync():
            try:
                torch.zeros(3, device="meta").sum().item()
            except HostSync:
                pass


#: what a step may do: queued copies, host work on host tensors, device-side fills
ALLOWED = {
    "non-blocking .to": lambda dev: torch.arange(4).to(dev, non_blocking=True),
    "to_device_async": lambda dev: to_device_async(torch.randperm(4), dev),
    "non-blocking copy_": lambda dev: torch.empty(4, device=dev).copy_(torch.arange(4.0), non_blocking=True),
    "host reads of host tensors": lambda dev: (
        torch.randperm(4).tolist(),
        torch.ones(()).item(),
        bool(torch.ones(())),
        torch.arange(3).numpy(),
    ),
    "factories on the device": lambda dev: (
        torch.full((2,), 3.0, device=dev),
        torch.arange(3, device=dev),
        torch.ones((), device=dev),
    ),
    "a CPU scalar operand": lambda dev: torch.zeros(3, device=dev) * torch.tensor(2.0),
    "a number assigned to a slice": lambda dev: torch.zeros(3, 3, device=dev).__setitem__((slice(None), 0), 1.0),
    "index_fill_ of a number": lambda dev: torch.zeros(4, device=dev).index_fill_(
        0, torch.zeros(2, dtype=torch.long, device=dev), 0
    ),
    "the stop vote in one process": lambda dev: distributed.any_rank(False, dev),
}


@pytest.mark.parametrize("form", ALLOWED)
def test_the_check_allows(form):
    with no_host_sync():
        ALLOWED[form](torch.device("meta"))


def test_mochi_draws_of_a_cpu_generator_reach_the_device_without_a_blocking_copy():
    g = torch.Generator().manual_seed(0)
    with no_host_sync():
        draws = mixing._uniform((4, 2), torch.device("meta"), g), mixing._randint(8, (4, 2), torch.device("meta"), g)
    assert all(d.device.type == "meta" for d in draws)


def test_to_device_async_keeps_the_values():
    t = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    assert to_device_async(t, "cpu") is t
    assert to_device_async(t, torch.device("meta")).device.type == "meta"


# ---------------------------------------------- the stop vote on an NCCL-like group


def _vote(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    launch = distributed.Launch(rank, world, rank, "127.0.0.1", port, "spawn")
    # no CPU backend in the default group, as NCCL's: the vote takes the gloo group
    distributed.init_launched(launch, "cuda:gloo")
    try:
        group = distributed.host_group()
        votes = [distributed.any_rank(rank == 1, torch.device("cpu")), distributed.any_rank(False)]
        np.save(f"{out}/rank{rank}.npy", np.array(votes + [group is not dist.group.WORLD]))
    finally:
        distributed.destroy()


def test_the_stop_vote_of_a_group_without_a_cpu_backend_runs_over_gloo(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_vote, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        assert np.load(os.path.join(tmp_path, f"rank{rank}.npy")).tolist() == [True, False, True]

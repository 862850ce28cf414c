"""negatives.optim: SGD bit-identical to torch.optim.SGD, and no torch._dynamo import."""

import subprocess
import sys

import pytest
import torch

from negatives.optim import SGD


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    )


@pytest.mark.parametrize("momentum,wd", [(0.9, 5e-4), (0.0, 0.0), (0.9, 0.0), (0.0, 1e-3)])
def test_sgd_is_bit_identical_to_torch_sgd_over_steps_with_a_changing_lr(momentum, wd):
    ours, ref = _model(0), _model(0)
    o = SGD(ours.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    r = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(5, 2, 8, 8, generator=g)
        for model, opt in ((ours, o), (ref, r)):
            for group in opt.param_groups:
                group["lr"] = 0.1 * (0.5**step)
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    if momentum:
        for a, b in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(o.state[a]["momentum_buffer"], r.state[b]["momentum_buffer"])


def test_sgd_state_dict_is_torch_sgds_both_ways():
    ours, ref = _model(0), _model(0)
    o = SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    r = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(3, 2, 8, 8)
    for model, opt in ((ours, o), (ref, r)):
        model(x).sum().backward()
        opt.step()
    so, sr = o.state_dict(), r.state_dict()
    assert so["param_groups"] == sr["param_groups"]
    assert all(torch.equal(so["state"][i]["momentum_buffer"], sr["state"][i]["momentum_buffer"]) for i in sr["state"])
    # a checkpoint written by either resumes in the other, and the next step agrees
    o2, r2 = SGD(ours.parameters(), lr=1.0, momentum=0.9), torch.optim.SGD(ref.parameters(), lr=1.0, momentum=0.9)
    o2.load_state_dict(sr)
    r2.load_state_dict(so)
    for model, opt in ((ours, o2), (ref, r2)):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_sgd_skips_parameters_without_gradient_and_rejects_sparse():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = SGD([a, b], lr=0.5, momentum=0.9)
    a.grad = torch.tensor([1.0, 2.0])
    opt.step()
    assert torch.equal(a.detach(), torch.tensor([0.5, 0.0])) and torch.equal(b.detach(), torch.ones(2))
    assert b not in opt.state or "momentum_buffer" not in opt.state[b]
    a.grad = torch.tensor([1.0, 2.0])
    opt.step()  # b = 0.9 * b + g = [1.9, 3.8]
    assert torch.allclose(a.detach(), torch.tensor([0.5 - 0.95, 0.0 - 1.9]))
    e = torch.nn.Parameter(torch.ones(3))
    opt = SGD([e], lr=0.1)
    e.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


_TRAIN = """
from negatives.optim import SGD
m = torch.nn.Linear(4, 3)
opt = SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
for _ in range(2):
    opt.zero_grad(set_to_none=True)
    m(torch.randn(8, 4)).sum().backward()
    opt.step()
opt.load_state_dict(opt.state_dict())
"""
_PROBE = """
from negatives.evaluation.probes import linear_probe
x, y = torch.randn(40, 4), torch.arange(40) % 3
linear_probe(x, y, x, 3)
"""


@pytest.mark.parametrize("code", [_TRAIN, _PROBE], ids=["sgd", "lbfgs-probe"])
def test_training_and_the_fast_probe_do_not_import_the_compiler(code):
    """Each in a fresh process (the check is about what a job's process imports)."""
    code = "import sys, torch\n" + code + "print('dynamo' if 'torch._dynamo' in sys.modules else 'clean')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean", out.stderr

"""Optimisers that keep ``torch._dynamo`` out of processes that never compile.

``torch.optim`` marks its optimisers' methods for the compiler:
``add_param_group`` (called by every constructor), ``zero_grad``,
``state_dict`` and ``load_state_dict`` are wrapped in
``torch._disable_dynamo``, and ``SGD.step`` in a wrapper that calls
``torch._dynamo.graph_break()``; either imports ``torch._dynamo`` on first
use.  That import costs about as long as ``import torch`` itself
(benchmarks/job_time.py), and every pretraining and evaluation job of the
workflow paid it.

* :func:`avoid_dynamo_import` records each wrapped method as already
  resolved to itself (the attribute where the wrapper caches its disabled
  version), so the wrapper calls the method directly.  The methods do what
  they did; only the "do not trace" marker is skipped, which matters to
  nobody in a process that never calls ``torch.compile``.  A no-op once
  ``torch._dynamo`` is imported, and harmless if a torch release changes
  these internals (the wrapper then imports as before).
* :class:`SGD` is ``torch.optim.SGD`` (momentum, weight decay) with ``step``
  written out in ``torch._foreach`` ops: the same arithmetic, operation for
  operation, as torch's own step (its per-tensor loop on CPU, its foreach
  path on GPU), so the parameters and momentum buffers are bit-identical
  (``tests/training/test_optim.py``), and the same ``state_dict``.

``torch.optim.LBFGS`` (the fast linear probe) needs only the first.
"""

from __future__ import annotations

import sys

import torch

__all__ = ["avoid_dynamo_import", "SGD"]

_CACHE = "__dynamo_disable"  # where torch._compile._disable_dynamo caches the disabled function
_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def avoid_dynamo_import() -> None:
    """Let ``torch.optim`` optimisers' bookkeeping methods run without
    importing ``torch._dynamo`` (see the module docstring).  Only for
    processes that never compile."""
    if "torch._dynamo" in sys.modules:
        return
    for name in _METHODS:
        fn = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if fn is not None and getattr(fn, _CACHE, None) is None:
            setattr(fn, _CACHE, fn)


class SGD(torch.optim.SGD):
    """SGD with momentum and weight decay, exactly as ``torch.optim.SGD``
    (no dampening, no Nesterov), with a step that does not import the
    compiler::

        g <- grad + weight_decay * p
        b <- g (first step), else momentum * b + g
        p <- p - lr * b
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        avoid_dynamo_import()
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("negatives.optim.SGD does not take sparse gradients")
            wd, m, lr = group["weight_decay"], group["momentum"], group["lr"]
            grads = [p.grad for p in params]
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if m != 0:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                old = [i for i, b in enumerate(bufs) if b is not None]
                if old:
                    running = [bufs[i] for i in old]
                    torch._foreach_mul_(running, m)
                    torch._foreach_add_(running, [grads[i] for i in old], alpha=1.0)
                for i, b in enumerate(bufs):
                    if b is None:
                        bufs[i] = self.state[params[i]]["momentum_buffer"] = grads[i].detach().clone()
                grads = bufs
            torch._foreach_add_(params, grads, alpha=-lr)
        return loss

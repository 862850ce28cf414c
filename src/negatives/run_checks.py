"""Checks of one training run, before any work: the ``pretrain`` section's
sizes, a method with a policy, and GPU sharing.  :func:`negatives.config.check_config`
runs them on every run a config plans; the entry points that start a run by
hand (``python -m negatives pretrain``, :func:`negatives.training.pretrain.pretrain`)
run them on theirs.  Every error names the key and what is allowed.
"""

from __future__ import annotations

from .defaults import ConfigError, config_value
from .policies.grammar import PolicyError
from .policies.registry import parse_policy

__all__ = ["check_pretrain_sizes", "check_run", "check_gpu_sharing"]


def check_pretrain_sizes(pretrain: dict) -> None:
    """The ``pretrain`` section's sizes fit each other: the queue a multiple of
    the batch, the batch a multiple of the batch-norm splits."""
    cfg = {"pretrain": pretrain}
    batch = config_value(cfg, "pretrain.batch_size", int)
    queue = config_value(cfg, "pretrain.queue_size", int)
    splits = config_value(cfg, "pretrain.bn_splits", int)
    if batch < 1:
        raise ConfigError(f"pretrain.batch_size: must be at least 1, got {batch}")
    if queue < batch or queue % batch:
        raise ConfigError(
            f"pretrain.queue_size: {queue} must be a multiple of pretrain.batch_size ({batch}) "
            f"and at least as large; allowed: {batch}, {2 * batch}, {3 * batch}, ..."
        )
    if splits < 1 or batch % splits:
        raise ConfigError(f"pretrain.bn_splits: {splits} must divide pretrain.batch_size ({batch})")
    epochs = pretrain.get("epochs")
    late = [e for e in pretrain.get("dynamics_epochs") or () if isinstance(epochs, int) and not 1 <= e <= epochs]
    if late:
        raise ConfigError(
            f"pretrain.dynamics_epochs: {late[0]} is no epoch of the run; allowed: 1 to pretrain.epochs ({epochs})"
        )
    processes = _world(pretrain)
    if processes > 1 and splits % processes:
        raise ConfigError(
            f"pretrain.processes: {_world_text(pretrain)} must divide pretrain.bn_splits ({splits}): "
            "each process normalises whole batch-norm splits of its slice of the batch"
        )


def _world(pretrain: dict) -> int:
    """How many processes train a run: ``processes`` on each of ``nodes``."""
    return pretrain.get("processes", 1) * pretrain.get("nodes", 1)


def _world_text(pretrain: dict) -> str:
    nodes = pretrain.get("nodes", 1)
    return (
        str(pretrain.get("processes", 1))
        if nodes == 1
        else f"{pretrain.get('processes', 1)} x pretrain.nodes {nodes} = {_world(pretrain)}"
    )


def check_run(method: str, policy: str, pretrain: dict, has_labels: bool = True, where: str = ""):
    """Check that one run makes sense and return its parsed policy: the policy
    keeps at least one negative out of the method's candidates, reads labels
    only where the dataset has them, and needs a queue (replace mode,
    ``retain-hard``) only with MoCo and a queue that has room for it.
    ``where`` prefixes the message (the config key)."""
    from .methods import METHODS, num_candidates  # lazily: torch only when needed

    if method not in METHODS:
        raise ConfigError(f"{where}method {method!r}; allowed: {', '.join(METHODS)}")
    epochs, batch = pretrain["epochs"], pretrain["batch_size"]
    queue, extra = pretrain["queue_size"], pretrain.get("queue_extra", 0)
    key = f"{where}policy {policy!r}"
    try:
        pol = parse_policy(policy)
        pol.validate(num_candidates(method, queue, batch), epochs)
    except PolicyError as e:
        what = f"{queue} queued negatives" if method == "moco" else f"2 x {batch} - 2 in-batch negatives"
        raise ConfigError(f"{key} with {method} ({what}): {e}") from None
    if pol.uses_labels and not has_labels:
        raise ConfigError(
            f"{key} removes negatives by class, but the pretraining images include unlabeled ones; "
            "use a label-free policy or a labeled split"
        )
    if pol.needs_queue and method != "moco":
        if pol.replace:
            raise ConfigError(
                f"{key}: replace mode needs MoCo's queue of older negatives; {method} has none (use the drop form)"
            )
        raise ConfigError(f"{key} works through MoCo's queue of negatives; {method} has none (use method moco)")
    processes = _world(pretrain)
    if method == "simclr" and processes % 2 and processes > 1:
        raise ConfigError(
            f"pretrain.processes: SimCLR across {_world_text(pretrain)} processes: half of them "
            "train on the first views, half on the second, so their number must be even (or 1)"
        )
    if pol.replace and (extra <= 0 or extra % batch):
        raise ConfigError(
            f"pretrain.queue_extra: {extra} must be a positive multiple of pretrain.batch_size "
            f"({batch}) for the replace-mode policy {policy!r}" + (f" of {where.rstrip(': ')}" if where else "")
        )
    return pol


def check_gpu_sharing(jobs_per_gpu: int, pretrain: dict) -> None:
    """Runs of several processes on GPUs take a GPU each (NCCL refuses two
    processes of one run on one device), so they cannot share GPUs."""
    if jobs_per_gpu > 1 and _world(pretrain) > 1 and pretrain.get("device") in ("cuda", "auto"):
        raise ConfigError(
            f"jobs_per_gpu: {jobs_per_gpu} jobs sharing a GPU are for small runs of one process; "
            f"this config trains each run on {_world_text(pretrain)} processes, one GPU each: set "
            "jobs_per_gpu: 1, or pretrain.processes: 1"
        )

"""MoCo's queues of negatives: the FIFO queue of the paper, and one that
retains consistently hard keys (``retain-hard[r]``)."""

from .fifo import KeyQueue
from .retaining import RetainingQueue

__all__ = ["KeyQueue", "RetainingQueue"]

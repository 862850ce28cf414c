"""The kNN line of the training log: a cheap look at how the encoder
separates the classes while it trains, never read by the training itself
(``pretrain.knn_monitor`` and ``knn_monitor_every`` are log only)."""

from __future__ import annotations

import torch

from ..data.sources import open_source, read_images
from ..features import extract_features, knn_classify, topk_accuracy

__all__ = ["KnnMonitor"]


class KnnMonitor:
    """kNN accuracy on a fixed slice of the data (cheap, once an epoch, or
    every ``every`` epochs and after the last; NaN in the log otherwise)."""

    def __init__(self, data: dict, n: int, device, every: int = 1, epochs: int = 0):
        self.n = n
        self.every = max(1, int(every))
        self.epochs = epochs
        if n <= 0:
            return
        # the first n images of each split, in memory (decoded once, for a streamed dataset)
        train, test = open_source(data, "train"), open_source(data, "test")
        self.xtr, self.ytr = read_images(train, torch.arange(min(n, train.num_images)))
        self.xte, self.yte = read_images(test, torch.arange(min(n, test.num_images)))
        self.mean, self.std = data["mean"], data["std"]
        self.num_classes = len(data["classes"])

    def due(self, epoch: int) -> bool:
        """Whether the monitor runs after (0-based) ``epoch``."""
        return self.n > 0 and ((epoch + 1) % self.every == 0 or epoch + 1 >= self.epochs)

    def __call__(self, encoder, epoch: int | None = None) -> float:
        if self.n <= 0 or (epoch is not None and not self.due(epoch)):
            return float("nan")
        was_training = encoder.training
        ftr = extract_features(encoder, self.xtr, self.mean, self.std)
        fte = extract_features(encoder, self.xte, self.mean, self.std)
        encoder.train(was_training)
        scores = knn_classify(ftr, self.ytr, fte, self.num_classes, k=200, temperature=0.1)
        return float(topk_accuracy(scores, self.yte, ks=(1,))[1])

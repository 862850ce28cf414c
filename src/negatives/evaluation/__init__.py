"""Downstream evaluation of a frozen encoder: the fast and few-label linear
probes that write ``probe.json`` (:mod:`.probes`), and the paper's augmented
SGD probe (:mod:`.faithful`); the features and kNN they share with the
trainer's monitor are :mod:`negatives.features`."""

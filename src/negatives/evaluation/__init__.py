"""Downstream evaluation of a frozen encoder: features and kNN
(:mod:`.features`), the fast and few-label linear probes that write
``probe.json`` (:mod:`.probes`), and the paper's augmented SGD probe
(:mod:`.faithful`)."""

"""negatives: which negatives matter in contrastive instance discrimination.

The library behind the Snakemake workflow that rebuilds Cai et al. 2020,
"Are all negatives created equal in contrastive instance discrimination?".
Modules: ``policies`` (which negatives a query sees), ``moco`` (queue, loss,
momentum encoder), ``models``, ``augment``, ``data``, ``train``,
``evaluate``, ``figures``, ``grid`` and ``config``; ``python -m negatives``
is the command line the rules call.
"""

__version__ = "0.1.0"

"""negatives: which negatives matter in contrastive instance discrimination.

The library behind the Snakemake workflow that rebuilds Cai et al. 2020,
"Are all negatives created equal in contrastive instance discrimination?".
Laid out by concept: ``queue`` (MoCo's key queue), ``losses`` (InfoNCE and
the reweighted losses), ``policies`` (which negatives a query sees),
``methods`` (MoCo, SimCLR, and the glue from a selection to the loss),
``models``, ``features`` (a frozen encoder's features and kNN), ``data``,
``training``, ``evaluation``, ``analysis`` (Section 4 and every figure),
``runtime`` (checkpoints, atomic writes, GPU locks);
``config``, ``grid`` and ``defaults`` serve the workflow, and
``python -m negatives`` is the command line its rules call.
"""

__version__ = "0.1.0"

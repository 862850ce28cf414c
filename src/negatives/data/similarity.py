"""How alike two classes are: the depth of their lowest common hypernym in
WordNet's noun hierarchy (WordNet itself is found and read by
:mod:`negatives.data.wordnet`).

Similarity of two classes (:func:`lch_depth`, :func:`similarity_matrix`) is
the depth of their lowest common hypernym, counted as ``max_depth()``: the
number of edges from ``entity.n.01`` along the *longest* hypernym path.  This
is the depth NLTK's ``lowest_common_hypernyms`` itself ranks candidates by
(``use_min_depth=False``), so "lowest" and "depth" agree; a class with itself
scores its own depth.  The class-by-class matrix is computed once per dataset
(``wordnet_similarity.tsv``) and the analysis only indexes into it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..runtime.atomic import atomic_write
from .tables import read_classes, read_similarity
from .wordnet import check_synsets, load_wordnet

__all__ = ["lch_depth", "read_similarity", "similarity_matrix", "write_similarity"]


def _synset(x, wn):
    if isinstance(x, str):
        return (wn if wn is not None else load_wordnet()).synset(x)
    return x


def lch_depth(a, b, wn=None) -> int:
    """Depth (``max_depth()``, edges from ``entity.n.01`` on the longest path)
    of the lowest common hypernym of synsets ``a`` and ``b`` (Synsets, or
    names like ``'dog.n.01'`` looked up in ``wn``).  ``a == b``: its own depth.
    dog.n.01 and cat.n.01 meet at carnivore.n.01, depth 11."""
    a, b = _synset(a, wn), _synset(b, wn)
    return max(s.max_depth() for s in a.lowest_common_hypernyms(b))


def similarity_matrix(synset_names: list[str], wn=None) -> np.ndarray:
    """``[C, C]`` int64: ``lch_depth`` of every pair of classes.

    Equal to calling :func:`lch_depth` per pair, but each synset's ancestors
    and each ancestor's depth are computed once (1000 classes take seconds)."""
    wn = wn if wn is not None else load_wordnet()
    synsets = [wn.synset(n) for n in synset_names]
    depth: dict = {}
    ancestors = []
    for s in synsets:
        anc = set(s.closure(lambda x: x.hypernyms() + x.instance_hypernyms())) | {s}
        for x in anc:
            if x not in depth:
                depth[x] = x.max_depth()
        ancestors.append(anc)
    c = len(synsets)
    m = np.zeros((c, c), dtype=np.int64)
    for i in range(c):
        for j in range(i, c):
            m[i, j] = m[j, i] = max(depth[x] for x in ancestors[i] & ancestors[j])
    return m


def write_similarity(classes_tsv: str | os.PathLike, out_tsv: str | os.PathLike, wn=None) -> Path:
    """``classes.tsv`` (index, name, synset) -> ``wordnet_similarity.tsv``: a
    header ``class`` + the class names, then one row per class (its name, then
    its C depths).  Checks every synset first; written atomically."""
    names, synsets = read_classes(classes_tsv)
    wn = wn if wn is not None else load_wordnet()
    check_synsets(synsets, wordnet=wn)
    m = similarity_matrix(synsets, wn)
    text = "\t".join(["class", *names]) + "\n"
    text += "".join("\t".join([n, *map(str, row)]) + "\n" for n, row in zip(names, m.tolist()))
    return atomic_write(out_tsv, lambda tmp: tmp.write_text(text))

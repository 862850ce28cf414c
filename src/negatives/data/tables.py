"""The text tables between the stages: ``classes.tsv`` (index, name and
WordNet synset of each class, written by ``prepare``) and
``wordnet_similarity.tsv`` (the depth of the lowest common hypernym of every
pair of classes).  A missing, damaged, empty, malformed or binary file is one
error naming it, its line where there is one, and how to rebuild it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..runtime.atomic import verify

__all__ = ["read_table", "read_classes", "read_similarity"]


def read_classes(classes_tsv: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``classes.tsv -> (class names, synset names)``."""
    what, rebuild = "class list (classes.tsv)", f"prepare the dataset again (snakemake {classes_tsv})"
    rows = read_table(classes_tsv, what, rebuild)
    if rows[0] != ["index", "name", "synset"]:
        raise ValueError(
            f"{classes_tsv}: its first line is not the header 'index<TAB>name<TAB>synset' of a {what}; {rebuild}"
        )
    for n, r in enumerate(rows[1:], 2):
        if len(r) != 3 or not all(r):
            raise ValueError(f"{classes_tsv}:{n}: {len(r)} columns, expected 3 (index, name, synset); {rebuild}")
    if len(rows) < 2:
        raise ValueError(f"{classes_tsv}: a {what} that lists no classes; {rebuild}")
    return [r[1] for r in rows[1:]], [r[2] for r in rows[1:]]


def read_similarity(tsv: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``wordnet_similarity.tsv -> (class names, [C, C] int64 matrix)``."""
    what, rebuild = "class similarity table", f"build it again (snakemake {tsv})"
    rows = read_table(tsv, what, rebuild)
    names = rows[0][1:]
    if rows[0][0] != "class" or not names:
        raise ValueError(f"{tsv}: its first line is not the header 'class' + the class names of a {what}; {rebuild}")
    if [r[0] for r in rows[1:]] != names:
        raise ValueError(
            f"{tsv}: the rows' class names differ from the header's ({len(rows) - 1} rows for "
            f"{len(names)} classes); {rebuild}"
        )
    for n, r in enumerate(rows[1:], 2):
        if len(r) != len(names) + 1:
            raise ValueError(
                f"{tsv}:{n}: {len(r) - 1} values after the class name, expected {len(names)} (one per class); {rebuild}"
            )
        bad = next((v for v in r[1:] if not v.isdigit()), None)
        if bad is not None:
            raise ValueError(f"{tsv}:{n}: {bad!r} is not a whole number (a WordNet depth); {rebuild}")
    return names, np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)


def read_table(path: str | os.PathLike, what: str, rebuild: str) -> list[list[str]]:
    """The non-blank lines of the tab-separated ``path``, split; a file that
    is not there, damaged, empty or not text is a ``ValueError`` (or
    ``FileNotFoundError``) naming it, ``what`` it should be and how to ``rebuild`` it."""
    verify(path, what, rebuild)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file, so not a {what}; {rebuild}") from None
    rows = [line.rstrip("\r").split("\t") for line in text.splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: empty, not a {what}; {rebuild}")
    return rows

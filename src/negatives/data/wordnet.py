"""WordNet 3.0 through NLTK, offline first.

The analysis measures how far apart two classes are in WordNet's noun
hierarchy, so every class map (``resources/{dataset}.tsv``) names a WordNet
3.0 noun synset per class.  WordNet is read with NLTK's
:class:`~nltk.corpus.reader.wordnet.WordNetCorpusReader`, from the first of
these sources that has it:

1. Debian's packages ``wordnet-base`` and ``wordnet-sense-index``
   (``/usr/share/wordnet``).  They lack the ``lexnames`` file NLTK's reader
   needs; it is generated from :data:`LEXNAMES` (the table of the
   ``lexnames(5WN)`` manual page).
2. An NLTK data directory that already holds ``corpora/wordnet``.
3. ``nltk.download('wordnet')``, only when downloads are allowed
   (``download=True``, or the environment variable ``NEGATIVES_DOWNLOAD=1``,
   which ``./run.sh`` sets when it could not install the Debian packages).

When none works, :class:`WordNetNotFound` says what to install.

The similarity of two classes, the depth of their lowest common hypernym,
is computed from it by :mod:`negatives.data.similarity`.

Recent NLTK releases only read corpora below a directory on
``nltk.data.path`` and refuse symbolic and hard links, so the Debian files
are *copied* (about 36 MB, once) into a directory of our own next to the
generated ``lexnames``, and that directory is added to ``nltk.data.path``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DEBIAN_DIR",
    "DEBIAN_PACKAGES",
    "DOWNLOAD_HINT",
    "LEXNAMES",
    "READER_FILES",
    "WordNetNotFound",
    "check_synsets",
    "downloads_allowed",
    "lexnames_text",
    "load_wordnet",
    "wordnet_dir",
]

#: Where Debian's ``wordnet-base`` and ``wordnet-sense-index`` put the database.
DEBIAN_DIR = Path("/usr/share/wordnet")
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")

#: What to tell a user when neither the Debian packages nor a download worked.
DOWNLOAD_HINT = (
    "install Debian packages dataset-fashion-mnist wordnet-base wordnet-sense-index (as root), "
    "or allow internet access for torchvision/NLTK downloads"
)

#: The files NLTK's WordNetCorpusReader opens (its ``_FILES``).
READER_FILES = (
    "cntlist.rev",
    "lexnames",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)
#: Which Debian package ships each file (``lexnames`` is generated).
_PACKAGE_OF = {
    f: ("wordnet-sense-index" if f == "index.sense" else "wordnet-base") for f in READER_FILES if f != "lexnames"
}

#: The lexicographer files of WordNet 3.0, from the lexnames(5WN) manual page:
#: (file number, name, syntactic category: 1 noun, 2 verb, 3 adjective, 4 adverb).
LEXNAMES: tuple[tuple[int, str, int], ...] = (
    (0, "adj.all", 3),
    (1, "adj.pert", 3),
    (2, "adv.all", 4),
    (3, "noun.Tops", 1),
    (4, "noun.act", 1),
    (5, "noun.animal", 1),
    (6, "noun.artifact", 1),
    (7, "noun.attribute", 1),
    (8, "noun.body", 1),
    (9, "noun.cognition", 1),
    (10, "noun.communication", 1),
    (11, "noun.event", 1),
    (12, "noun.feeling", 1),
    (13, "noun.food", 1),
    (14, "noun.group", 1),
    (15, "noun.location", 1),
    (16, "noun.motive", 1),
    (17, "noun.object", 1),
    (18, "noun.person", 1),
    (19, "noun.phenomenon", 1),
    (20, "noun.plant", 1),
    (21, "noun.possession", 1),
    (22, "noun.process", 1),
    (23, "noun.quantity", 1),
    (24, "noun.relation", 1),
    (25, "noun.shape", 1),
    (26, "noun.state", 1),
    (27, "noun.substance", 1),
    (28, "noun.time", 1),
    (29, "verb.body", 2),
    (30, "verb.change", 2),
    (31, "verb.cognition", 2),
    (32, "verb.communication", 2),
    (33, "verb.competition", 2),
    (34, "verb.consumption", 2),
    (35, "verb.contact", 2),
    (36, "verb.creation", 2),
    (37, "verb.emotion", 2),
    (38, "verb.motion", 2),
    (39, "verb.perception", 2),
    (40, "verb.possession", 2),
    (41, "verb.social", 2),
    (42, "verb.stative", 2),
    (43, "verb.weather", 2),
    (44, "adj.ppl", 3),
)

_DONE = ".complete"  # written last into a prepared directory


class WordNetNotFound(FileNotFoundError):
    """No WordNet 3.0 could be found or fetched; the message says what to install."""


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line, 45 lines."""
    return "".join(f"{n:02d}\t{name}\t{pos}\n" for n, name, pos in LEXNAMES)


def downloads_allowed() -> bool:
    """Whether the environment allows fetching WordNet (``NEGATIVES_DOWNLOAD=1``)."""
    return os.environ.get("NEGATIVES_DOWNLOAD", "").strip().lower() in {"1", "true", "yes", "on"}


# ------------------------------------------------------------------ sources


def _missing_debian_files(debian_dir: Path) -> list[str]:
    return [f for f in _PACKAGE_OF if not (debian_dir / f).is_file()]


def _nltk_wordnet():
    """NLTK's own ``corpora/wordnet`` (a directory or zip pointer), or ``None``."""
    import nltk

    for resource in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            return nltk.data.find(resource)
        except LookupError:
            pass
    return None


def _download_nltk_wordnet():
    import nltk

    try:
        ok = nltk.download("wordnet", quiet=True, raise_on_error=True)
    except Exception as e:  # network, proxy or permission errors alike
        raise WordNetNotFound(f"WordNet 3.0: nltk.download('wordnet') failed ({e}); {DOWNLOAD_HINT}") from e
    found = _nltk_wordnet()
    if not ok or found is None:
        raise WordNetNotFound(f"WordNet 3.0: nltk.download('wordnet') did not fetch it; {DOWNLOAD_HINT}")
    return found


def _not_found(debian_dir: Path) -> WordNetNotFound:
    missing = _missing_debian_files(debian_dir)
    packages = sorted({_PACKAGE_OF[f] for f in missing})
    return WordNetNotFound(
        f"WordNet 3.0 not found: {debian_dir} lacks {', '.join(missing)} "
        f"(Debian package{'s' if len(packages) > 1 else ''} {' '.join(packages)}) and NLTK has no "
        "corpora/wordnet. Install them as root (apt-get install wordnet-base wordnet-sense-index), "
        "or allow the NLTK download (NEGATIVES_DOWNLOAD=1, which ./run.sh sets when it cannot "
        "install the Debian packages) on a machine with internet access."
    )


def _source(download: bool | None, debian_dir: Path):
    """The first WordNet source: ``("debian", Path)`` or ``("nltk", PathPointer)``."""
    if not _missing_debian_files(debian_dir):
        return "debian", debian_dir
    found = _nltk_wordnet()
    if found is not None:
        return "nltk", found
    if download is None:
        download = downloads_allowed()
    if download:
        return "nltk", _download_nltk_wordnet()
    raise _not_found(debian_dir)


# ------------------------------------------------------------ prepared dirs


def _complete(path: Path) -> bool:
    return (path / _DONE).is_file() and all((path / f).is_file() for f in READER_FILES)


def _populate(tmp: Path, kind: str, source) -> None:
    for name in READER_FILES:
        if kind == "debian":
            if name == "lexnames":
                (tmp / name).write_text(lexnames_text())
            else:
                shutil.copyfile(source / name, tmp / name)  # a copy: NLTK refuses links
        else:  # an NLTK PathPointer, a directory or a member of wordnet.zip
            with source.join(name).open() as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    (tmp / _DONE).write_text(f"{kind}: {source}\n")


def wordnet_dir(
    results_root: str | os.PathLike, *, download: bool | None = None, debian_dir: str | os.PathLike = DEBIAN_DIR
) -> Path:
    """Prepare ``{results_root}/wordnet/`` once and return it.

    It holds copies of the files NLTK's reader opens (from Debian's packages,
    else from NLTK's data, else from an NLTK download when ``download`` -- by
    default ``NEGATIVES_DOWNLOAD=1`` -- allows it) and, for the Debian files,
    the generated ``lexnames``.  The directory is built under a temporary name
    and renamed, so parallel jobs and killed jobs never see half of it.
    Raises :class:`WordNetNotFound` naming what to install.
    """
    dest = Path(results_root) / "wordnet"
    if _complete(dest):
        return dest
    kind, source = _source(download, Path(debian_dir))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=dest.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's is private
        _populate(tmp, kind, source)
        if dest.exists() and not _complete(dest):
            shutil.rmtree(dest)  # a stale, incomplete one (written by hand?)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _complete(dest):  # not a lost race with another job
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "negatives"


# ------------------------------------------------------------------ reading


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        # NLTK >= 3.9 maps every WordNet other than its own corpus named
        # "wordnet" onto that corpus at load time (for the multilingual data),
        # which needs NLTK's copy to be installed.  Ours *is* WordNet 3.0, the
        # version NLTK's corpus is, so the map is the identity.
        def map_wn(self, version="wordnet"):
            if version == "wordnet" and self.get_version() == "3.0":
                return None
            return super().map_wn(version)

    return _Reader


@functools.lru_cache(maxsize=4)
def _load(root: str):
    import nltk

    if root not in nltk.data.path:
        nltk.data.path.append(root)  # NLTK >= 3.10 reads corpora only below nltk.data.path
    with warnings.catch_warnings():
        # "The multilingual functions are not available with this Wordnet version"
        warnings.simplefilter("ignore", UserWarning)
        return _reader_class()(root, None)


def load_wordnet(path: str | os.PathLike | None = None, *, download: bool | None = None):
    """An NLTK ``WordNetCorpusReader`` over WordNet 3.0 (cached per directory).

    ``path``: a directory prepared by :func:`wordnet_dir` (or any directory
    holding all of :data:`READER_FILES`).  ``None``: the first source that has
    WordNet -- Debian's files (prepared once under
    ``$XDG_CACHE_HOME/negatives/wordnet``), NLTK's data, an NLTK download if
    allowed -- or :class:`WordNetNotFound` naming what to install.
    """
    if path is None:
        path = wordnet_dir(_cache_root(), download=download)
    path = Path(path).resolve()
    missing = [f for f in READER_FILES if not (path / f).is_file()]
    if missing:
        raise WordNetNotFound(
            f"{path} is not a WordNet directory for NLTK: it lacks {', '.join(missing)} "
            "(prepare one with negatives.wordnet.wordnet_dir)"
        )
    return _load(str(path))


def check_synsets(names: Iterable[str], wordnet=None) -> None:
    """Raise ``ValueError`` naming every name that is not a WordNet noun synset
    (``lemma.n.NN``).  ``wordnet``: a reader; by default :func:`load_wordnet`."""
    names = list(names)
    wn = wordnet if wordnet is not None else load_wordnet()
    bad = []
    for name in names:
        try:
            ok = wn.synset(name).pos() == "n"
        except Exception:  # WordNetError, or ValueError/AttributeError for malformed names
            ok = False
        if not ok:
            bad.append(name)
    if bad:
        raise ValueError(
            f"not WordNet 3.0 noun synsets: {', '.join(repr(b) for b in bad)} (expected names like 'dog.n.01')"
        )


def synset_from_wnid(wnid: str, wordnet=None) -> str:
    """ImageNet / Tiny-ImageNet class id -> synset name: ``'n02084071'`` ->
    ``'dog.n.01'`` (a wnid is ``n`` + the 8-digit WordNet 3.0 noun offset).
    Raises ``ValueError`` naming the wnid when it is malformed or unknown."""
    if not (isinstance(wnid, str) and len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()):
        raise ValueError(f"{wnid!r} is not an ImageNet wnid (expected 'n' and 8 digits, e.g. 'n02084071')")
    wn = wordnet if wordnet is not None else load_wordnet()
    try:
        return wn.synset_from_pos_and_offset("n", int(wnid[1:])).name()
    except Exception as e:
        raise ValueError(f"wnid {wnid!r} is not a WordNet 3.0 noun synset") from e

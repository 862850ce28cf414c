"""WordNet offline through NLTK: the generated lexnames, the class maps, the fallbacks, the classes' similarity."""

import gzip
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

nltk = pytest.importorskip("nltk")

from negatives.data import similarity as simmod  # noqa: E402
from negatives.data import wordnet as wnmod  # noqa: E402

RESOURCES = Path(wnmod.__file__).parent / "resources"
MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
DEBIAN = wnmod.DEBIAN_DIR

needs_debian = pytest.mark.skipif(
    bool(wnmod._missing_debian_files(DEBIAN)),
    reason=f"Debian's WordNet is not installed in {DEBIAN} "
    "(apt-get install wordnet-base wordnet-sense-index, which ./test.sh does as root)",
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """``results/wordnet`` prepared from Debian's files, in a scratch results root."""
    if wnmod._missing_debian_files(DEBIAN):
        pytest.skip(
            f"Debian's WordNet is not installed in {DEBIAN} "
            "(apt-get install wordnet-base wordnet-sense-index, which ./test.sh does as root)"
        )
    return wnmod.wordnet_dir(tmp_path_factory.mktemp("results"), download=False)


@pytest.fixture(scope="module")
def wn(prepared):
    return wnmod.load_wordnet(prepared)


# ----------------------------------------------------------------- lexnames


def test_lexnames_are_the_45_lexicographer_files():
    lines = wnmod.lexnames_text().splitlines()
    assert len(lines) == 45
    category = {"noun": "1", "verb": "2", "adj": "3", "adv": "4"}
    for i, line in enumerate(lines):
        number, name, pos = line.split("\t")
        assert number == f"{i:02d}"
        assert pos == category[name.split(".")[0]]
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"


@pytest.mark.skipif(not MAN_PAGE.exists(), reason=f"{MAN_PAGE} (Debian's wordnet-base) is not installed")
def test_lexnames_match_the_manual_page():
    table = []
    for line in gzip.open(MAN_PAGE, "rt").read().splitlines():
        m = re.match(r"^(\d\d)\t([a-z]+\.\w+)\s*\t", line)
        if m:
            table.append((m.group(1), m.group(2)))
    assert len(table) == 45
    ours = [tuple(line.split("\t")[:2]) for line in wnmod.lexnames_text().splitlines()]
    assert ours == table


def test_prepared_dir_has_every_reader_file(prepared):
    for name in wnmod.READER_FILES:
        assert (prepared / name).is_file() and not (prepared / name).is_symlink()
    text = (prepared / "lexnames").read_text()
    assert text == wnmod.lexnames_text() and len(text.splitlines()) == 45
    # prepared once: a second call returns the same directory untouched
    mtime = (prepared / "data.noun").stat().st_mtime_ns
    assert wnmod.wordnet_dir(prepared.parent, download=False) == prepared
    assert (prepared / "data.noun").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------ lookups


def test_dog_and_cat_meet_at_carnivore(wn):
    assert wn.get_version() == "3.0"
    dog, cat = wn.synset("dog.n.01"), wn.synset("cat.n.01")
    assert dog.lowest_common_hypernyms(cat) == [wn.synset("carnivore.n.01")]
    assert dog.lexname() == "noun.animal"


def test_loader_is_cached(prepared, wn):
    assert wnmod.load_wordnet(prepared) is wn


def _class_maps():
    return sorted(RESOURCES.glob("*.tsv"))


def test_fashion_mnist_class_map_is_kept():
    assert (RESOURCES / "fashion-mnist.tsv").is_file()


@pytest.mark.parametrize("tsv", _class_maps(), ids=lambda p: p.name)
def test_class_map_synsets_are_nouns(wn, tsv):
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["index", "name", "synset"]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    names = [r[2] for r in rows]
    wnmod.check_synsets(names, wordnet=wn)
    for name in names:  # stored under NLTK's own name for the synset, so lookups round-trip
        assert wn.synset(name).name() == name


def test_fashion_mnist_synsets_mean_the_classes(wn):
    rows = [line.split("\t") for line in (RESOURCES / "fashion-mnist.tsv").read_text().splitlines()[1:]]
    by_class = {name: wn.synset(syn) for _, name, syn in rows}
    assert "T-shirt" in [lemma.name() for lemma in by_class["T-shirt/top"].lemmas()]
    assert "sneaker" in [lemma.name() for lemma in by_class["Sneaker"].lemmas()]
    assert "handbag" in [lemma.name() for lemma in by_class["Bag"].lemmas()]
    footwear = wn.synset("footwear.n.02")
    for cls in ("Sandal", "Sneaker", "Ankle boot"):
        assert footwear in by_class[cls].closure(lambda s: s.hypernyms()), cls
    clothing = wn.synset("clothing.n.01")
    for cls in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"):
        assert clothing in by_class[cls].closure(lambda s: s.hypernyms()), cls


def test_bad_names_raise_naming_them(wn):
    with pytest.raises(ValueError, match="nosuch.n.01") as err:
        wnmod.check_synsets(["dog.n.01", "nosuch.n.01", "run.v.01", "garbage"], wordnet=wn)
    assert "run.v.01" in str(err.value) and "garbage" in str(err.value)
    assert "dog.n.01" not in str(err.value).split("(expected")[0]
    wnmod.check_synsets(["dog.n.01", "cat.n.01"], wordnet=wn)


# ---------------------------------------------------------------- fallbacks


@pytest.fixture
def no_nltk_data(monkeypatch, tmp_path):
    """NLTK sees only an empty data directory; no download can happen."""
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    monkeypatch.delenv("NEGATIVES_DOWNLOAD", raising=False)

    def refuse(*a, **k):
        raise AssertionError("nltk.download must not be called")

    monkeypatch.setattr(nltk, "download", refuse)
    return empty


def test_missing_everywhere_says_what_to_install(no_nltk_data, tmp_path):
    with pytest.raises(wnmod.WordNetNotFound) as err:
        wnmod.wordnet_dir(tmp_path / "results", debian_dir=tmp_path / "no-wordnet")
    msg = str(err.value)
    assert "wordnet-base" in msg and "wordnet-sense-index" in msg and "NEGATIVES_DOWNLOAD" in msg
    assert not (tmp_path / "results" / "wordnet").exists()


def test_failed_download_says_what_to_install(no_nltk_data, tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(nltk, "download", offline)
    monkeypatch.setenv("NEGATIVES_DOWNLOAD", "1")
    with pytest.raises(wnmod.WordNetNotFound) as err:
        wnmod.wordnet_dir(tmp_path / "results", debian_dir=tmp_path / "no-wordnet")
    assert wnmod.DOWNLOAD_HINT in str(err.value)
    assert "install Debian packages dataset-fashion-mnist wordnet-base wordnet-sense-index" in str(err.value)


def test_load_rejects_a_directory_without_the_files(tmp_path):
    with pytest.raises(wnmod.WordNetNotFound, match="lexnames"):
        wnmod.load_wordnet(tmp_path)


@needs_debian
@pytest.mark.parametrize("zipped", [False, True], ids=["dir", "zip"])
def test_falls_back_to_nltk_data(no_nltk_data, prepared, tmp_path, zipped):
    """Without Debian's files, NLTK's corpora/wordnet (a directory or the zip
    nltk.download leaves) is copied into results/wordnet."""
    corpora = no_nltk_data / "corpora"
    corpora.mkdir()
    if zipped:
        with zipfile.ZipFile(corpora / "wordnet.zip", "w") as z:
            for name in wnmod.READER_FILES:
                z.write(prepared / name, f"wordnet/{name}")
    else:
        (corpora / "wordnet").mkdir()
        for name in wnmod.READER_FILES:
            shutil.copyfile(prepared / name, corpora / "wordnet" / name)
    out = wnmod.wordnet_dir(tmp_path / "results", debian_dir=tmp_path / "no-wordnet")
    assert "nltk" in (out / ".complete").read_text()
    for name in ("lexnames", "data.noun", "index.sense"):
        assert (out / name).read_bytes() == (prepared / name).read_bytes()


# --------------------------------------------------------------- similarity

CLASSES = {  # torchvision's `classes`, in order
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "stl10": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"],
}


def _rows(name):
    return [line.split("\t") for line in (RESOURCES / f"{name}.tsv").read_text().splitlines()[1:] if line.strip()]


def test_new_class_maps_list_torchvisions_classes():
    for name, classes in CLASSES.items():
        assert [r[1] for r in _rows(name)] == classes, name
    c100 = [r[1] for r in _rows("cifar100")]
    assert len(c100) == 100 == len(set(c100)) and c100 == sorted(c100)  # CIFAR-100's fine labels are alphabetical
    assert c100[:10] == [
        "apple",
        "aquarium_fish",
        "baby",
        "bear",
        "beaver",
        "bed",
        "bee",
        "beetle",
        "bicycle",
        "bottle",
    ]
    assert c100[-3:] == ["wolf", "woman", "worm"]
    assert len({r[2] for r in _rows("cifar100")}) == 100  # no two classes share a synset


def test_lch_depth_dog_and_cat_meet_at_carnivore(wn):
    carnivore = wn.synset("carnivore.n.01")
    assert simmod.lch_depth("dog.n.01", "cat.n.01", wn) == carnivore.max_depth() == 11
    assert simmod.lch_depth(wn.synset("cat.n.01"), wn.synset("dog.n.01")) == 11
    assert simmod.lch_depth("dog.n.01", "dog.n.01", wn) == wn.synset("dog.n.01").max_depth() == 13
    # longest path, not shortest: dog.n.01 is 8 edges below entity on its shortest path
    assert wn.synset("dog.n.01").min_depth() == 8
    assert simmod.lch_depth("dog.n.01", "airplane.n.01", wn) == wn.synset("whole.n.02").max_depth()


def test_similarity_matrix_matches_per_pair_lookups(wn):
    for name in ("cifar10", "stl10", "fashion-mnist", "cifar100"):
        names = [r[2] for r in _rows(name)]
        if name == "cifar100":
            names = names[::7]  # 15 classes from across the list
        m = simmod.similarity_matrix(names, wn)
        assert m.shape == (len(names), len(names)) and np.issubdtype(m.dtype, np.integer)
        assert (m == m.T).all()
        ref = np.array([[simmod.lch_depth(a, b, wn) for b in names] for a in names])
        assert np.array_equal(m, ref), name


def test_cifar_synsets_mean_the_classes(wn):
    c10 = {r[1]: wn.synset(r[2]) for r in _rows("cifar10")}
    names = list(c10)
    m = simmod.similarity_matrix([c10[n].name() for n in names], wn)
    at = {n: i for i, n in enumerate(names)}
    assert m[at["cat"], at["dog"]] == 11  # carnivore.n.01
    assert m[at["automobile"], at["truck"]] == wn.synset("motor_vehicle.n.01").max_depth()
    assert m[at["cat"], at["dog"]] > m[at["cat"], at["frog"]] > m[at["cat"], at["ship"]]
    c100 = {r[1]: wn.synset(r[2]) for r in _rows("cifar100")}
    superclasses = {  # CIFAR-100 superclasses whose members WordNet also puts under one hypernym
        "carnivore.n.01": "bear leopard lion tiger wolf",
        "person.n.01": "baby boy girl man woman",
        "tree.n.01": "maple_tree oak_tree palm_tree pine_tree willow_tree",
        "reptile.n.01": "crocodile dinosaur lizard snake turtle",
        "furniture.n.01": "bed chair couch table wardrobe",
        "produce.n.01": "apple mushroom orange pear sweet_pepper",
        "invertebrate.n.01": "crab lobster snail spider worm",
        "fish.n.01": "flatfish ray shark trout",
    }
    for hypernym, members in superclasses.items():
        h = wn.synset(hypernym)
        for cls in members.split():
            assert h in c100[cls].closure(lambda s: s.hypernyms()), (cls, hypernym)
    assert c100["aquarium_fish"] == wn.synset("fish.n.01")  # many species: the class is "fish"


def test_similarity_tsv_round_trip_through_the_cli(prepared, tmp_path, monkeypatch):
    from negatives.cli import main

    monkeypatch.setattr(simmod, "load_wordnet", lambda *a, **k: wnmod._load(str(prepared.resolve())))
    out = tmp_path / "data" / "wordnet_similarity.tsv"
    main(["similarity", "--classes", str(RESOURCES / "cifar10.tsv"), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["class", *CLASSES["cifar10"]] and len(lines) == 11
    names, m = simmod.read_similarity(out)
    assert names == CLASSES["cifar10"]
    wn = wnmod.load_wordnet(prepared)
    assert np.array_equal(m, simmod.similarity_matrix([r[2] for r in _rows("cifar10")], wn))
    assert m[3, 5] == 11 and not list(out.parent.glob("*.tmp"))  # no temporary file left


def test_similarity_rejects_bad_synsets(wn, tmp_path):
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("index\tname\tsynset\n0\tdog\tdog.n.01\n1\tnothing\tnosuch.n.01\n")
    with pytest.raises(ValueError, match="nosuch.n.01"):
        simmod.write_similarity(tsv, tmp_path / "sim.tsv", wn=wn)


def test_wnids_map_to_synsets(wn):
    from negatives.data.wordnet import synset_from_wnid

    assert synset_from_wnid("n02084071", wn) == "dog.n.01"
    assert synset_from_wnid("n02121808", wn) == "domestic_cat.n.01"
    for bad in ("n0208407", "x02084071", "n99999999"):
        with pytest.raises(ValueError, match=bad):
            synset_from_wnid(bad, wn)

"""negatives.config.check_config and the config schema: every bad value gives
an error that names its key (and the allowed values) before any job starts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import fake_fashion_mnist
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from negatives.config import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture
def cfg(tmp_path):
    """The default config, with the data root pointing at a fake dataset."""
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    c["datasets"]["fashion-mnist"]["root"] = str(fake_fashion_mnist(tmp_path / "fmnist"))
    return c


def test_default_config_passes(cfg):
    check_config(cfg)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def _set(key):
    """A mutator setting the dotted ``key`` (``a.b[1]``) to a value."""

    def mutate(c, value):
        *parents, last = key.replace("[", ".[").split(".")
        for p in parents:
            c = c[int(p[1:-1])] if p.startswith("[") else c[p]
        if last.startswith("["):
            c[int(last[1:-1])] = value
        else:
            c[last] = value

    return mutate


BAD = [
    # (key, value, substrings of the message)
    ("figures.fig2.segments[0]", "bogus", ["figures.fig2.segments[0]", "unknown policy", "keep[a,b)"]),
    ("figures.fig2.segments[1]", "keep[95_101)", ["figures.fig2.segments[1]", "[0, 100]"]),
    ("figures.fig2.easiest[0]", "keep[-5,90)", ["figures.fig2.easiest[0]"]),
    ("figures.fig2.easiest[1]", "keep[50_50)", ["figures.fig2.easiest[1]", "a < b"]),
    ("figures.fig2.easiest[1]", "drop[60_40)", ["figures.fig2.easiest[1]", "a < b"]),
    ("figures.fig2.segments[2]", 95, ["figures.fig2.segments[2]", "must be a string"]),
    ("pretrain.queue_size", 128, ["pretrain.queue_size", "pretrain.batch_size", "256, 512"]),
    ("pretrain.queue_size", 4000, ["pretrain.queue_size", "multiple"]),
    ("pretrain.batch_size", "256", ["pretrain.batch_size", "must be int"]),
    ("pretrain.bn_splits", 3, ["pretrain.bn_splits", "divide"]),
    ("temperatures[0]", 0, ["temperatures[0]", "positive"]),
    ("temperatures[0]", -0.1, ["temperatures[0]", "positive"]),
    ("temperatures[0]", True, ["temperatures[0]", "must be number"]),
    ("temperatures[0]", 0.1234567, ["temperatures[0]", "significant digits"]),
    ("temperatures", [], ["temperatures", "at least one"]),
    ("temperatures[0]", "t0.2", ["temperatures[0]", "must be number"]),
    ("temperatures[0]", "0.2", ["temperatures[0]", "must be number"]),
    ("figures.fig3.removed[0]", "drop[99.9_100)&elsewhere", ["figures.fig3.removed[0]", "malformed band"]),
    ("figures.table1.removed[0]", "keep[95_100)@replace", ["figures.table1.removed[0]", "removal policy"]),
    ("dataset", "cifar11", ["dataset", "unknown dataset 'cifar11'", "allowed: fashion-mnist"]),
    ("datasets.fashion-mnist.root", "/nonexistent/fmnist", ["datasets.fashion-mnist.root", "does not exist"]),
    ("analysis.queries", 7000, ["analysis.queries", "8000 training images", "datasets.fashion-mnist.train_images"]),
    ("analysis.negatives", "2000", ["analysis.negatives", "must be int"]),
    ("figures.fig4.hard_cut", 99.99, ["figures.fig4.hard_cut", "leaves 0 of the 2000 negatives", "hard"]),
    ("figures.fig4.hard_cut", "95", ["figures.fig4.hard_cut", "must be number"]),  # not taken for a policy
    ("figures.fig6.hard_cut", 100, ["figures.fig6.hard_cut", "(0, 100)"]),
    ("figures.fig5.inset_percentile", 0.01, ["figures.fig5.inset_percentile", "allowed: 0.05 to 10"]),
    ("figures.fig5.inset_percentile", 20, ["figures.fig5.inset_percentile", "allowed: 0.05 to 10"]),
]


@pytest.mark.parametrize("key,value,needles", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_names_key(cfg, key, value, needles):
    if isinstance(value, list):
        cfg[key] = value
    else:
        _set(key)(cfg, value)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert message.startswith(key.split("[")[0]), message
    for needle in needles:
        assert needle in message, message


def test_second_temperature_is_named(cfg):
    cfg["temperatures"] = [0.2, -1.0]
    with pytest.raises(ConfigError, match=r"^temperatures\[1\]"):
        check_config(cfg)


def test_unknown_dataset_under_datasets(cfg):
    cfg["datasets"]["mnist-3d"] = {"root": "/x", "download": True, "train_images": 0, "test_images": 0}
    with pytest.raises(ConfigError, match=r"^datasets\.mnist-3d: unknown dataset .*allowed: fashion-mnist"):
        check_config(cfg)


def test_dataset_without_an_entry(cfg, monkeypatch):
    import negatives.data

    monkeypatch.setitem(negatives.data.DATASETS, "cifar10", (None, None))
    cfg["dataset"] = "cifar10"
    with pytest.raises(ConfigError, match=r"^dataset: 'cifar10' has no entry under datasets \(has: fashion-mnist\)"):
        check_config(cfg)


def test_data_directory_lacking_files(cfg):
    root = Path(cfg["datasets"]["fashion-mnist"]["root"])
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"^datasets\.fashion-mnist\.root: .*t10k-labels-idx1-ubyte"):
        check_config(cfg)


def test_missing_data_directory_is_fine_when_downloading(cfg, tmp_path):
    cfg["datasets"]["fashion-mnist"].update(root=str(tmp_path / "later"), download=True)
    check_config(cfg)


def test_missing_key_is_named(cfg):
    del cfg["pretrain"]["queue_size"]
    with pytest.raises(ConfigError, match=r"^pretrain\.queue_size: missing"):
        check_config(cfg)


def test_numbers_in_figures_are_not_policies(cfg):
    cfg["figures"]["fig2"]["queries"] = 2000  # a number setting, not a policy
    check_config(cfg)


@pytest.mark.parametrize("bad", [[5], [2, 9]])
def test_a_snapshot_epoch_after_the_last_is_refused(cfg, bad):
    cfg["pretrain"].update(epochs=4, dynamics_epochs=bad)
    with pytest.raises(ConfigError, match=r"^pretrain\.dynamics_epochs: (5|9) is no epoch of the run; allowed: 1 to "):
        check_config(cfg)


def test_the_dynamics_images_fit_the_split(cfg):
    cfg["analysis"].update(dynamics_queries=5000, dynamics_negatives=3001)
    with pytest.raises(ConfigError, match=r"^analysis\.dynamics_queries: 5000 queries \+ 3001 negatives"):
        check_config(cfg)


def test_analysis_fits_the_whole_split(cfg):
    """train_images 0 (all): the analysis cannot be checked against it here."""
    cfg["datasets"]["fashion-mnist"]["train_images"] = 0
    cfg["analysis"].update(queries=50_000, negatives=50_000)
    check_config(cfg)


# ------------------------------------------------------------------- schema


def _validate(c):
    validate(c, str(SCHEMA))  # fills defaults in place
    return c


def test_schema_accepts_default_config():
    _validate(yaml.safe_load((ROOT / "config.yaml").read_text()))


def test_schema_defaults_are_config_yaml():
    """A config naming only its dataset gets exactly config.yaml's values."""
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    minimal = {"dataset": default["dataset"], "datasets": copy.deepcopy(default["datasets"])}
    assert _validate(minimal) == default


@pytest.mark.parametrize(
    "patch",
    [
        {"pretrain": {"backbone": "vgg16"}},
        {"pretrain": {"device": "tpu"}},
        {"pretrain": {"mode": "drop"}},  # removed: the mode is part of the policy (@replace)
        {"pretrain": {"queue_extra": -256}},
        {"method": "simclr-v2"},
        {"temperatures": ["0.2"]},
        {"figures": {"fig3": {"removed": "drop[99_100)"}}},  # a list, not a string
        {"pretrain": {"epochs": 0}},
        {"pretrain": {"learning_rate": 0.1}},  # unknown key
        {"evaluate": {"probe": "slow"}},
        {"method": "byol"},
        {"seeds": [0, 0]},
        {"temperatures": [0.0]},
        {"figures": {"fig9": {}}},
        {"analysis": {"queries": 0}},
        {"analysis": {"threads": 2}},  # unknown key
        {"figures": {"fig4": {"hard_cut": 100}}},
        {"figures": {"fig5": {"inset_percentile": 0}}},
        {"figures": {"fig6": {"null_seed": -1}}},
        {"figures": {"tables_a4_a6": {"rows": 0}}},
        {"datasets": {"fashion-mnist": {"root": "/x", "train_images": -1}}},
        {"colour": "blue"},
    ],
    ids=repr,
)
def test_schema_rejects(patch):
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(c.get(key), dict):
            c[key].update(value)
        else:
            c[key] = value
    with pytest.raises(WorkflowError, match="Error validating config file"):
        _validate(c)


@pytest.mark.parametrize(
    "section,key,value",
    [("analysis", "negatives", 0), ("fig4", "hard_cut", 0), ("fig6", "hard_cut", 100.5), ("tables_a4_a6", "rows", 1.5)],
)
def test_schema_error_names_the_key(section, key, value):
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    (c if section == "analysis" else c["figures"])[section][key] = value
    with pytest.raises(WorkflowError, match=f"'{section}'.*'{key}'"):
        _validate(c)


def _runs_error(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    return str(err.value)


def test_band_combination_that_is_empty_for_the_queue(cfg):
    cfg["figures"]["table1"]["removed"] = ["drop[99.99_100)&same-class@replace"]  # round(4096 x 0.01%) = 0
    msg = _runs_error(cfg)
    assert msg.startswith("figures.table1") and "holds no negative" in msg and "4096" in msg


def test_band_that_is_empty_for_simclr_batch(cfg):
    cfg["figures"]["simclr"]["policies"] = ["keep[99.95_100)"]  # 0.05% of 2 x 256 - 2 = 510: round(0.255) = 0
    msg = _runs_error(cfg)
    assert msg.startswith("figures.simclr") and "510" in msg and "holds no negative" in msg


def test_policy_removing_everything(cfg):
    cfg["figures"]["fig3"]["removed"] = ["drop[0_100)"]
    assert "removes every one" in _runs_error(cfg)


def test_label_policy_on_a_dataset_without_labels(cfg, tmp_path):
    """STL-10 with its unlabeled split: the oracle policies of Table 1 cannot run."""
    from conftest import fake_stl10

    fake_stl10(tmp_path / "stl10")
    cfg["dataset"] = "stl10"
    cfg["datasets"] = {"stl10": {"root": str(tmp_path / "stl10"), "download": False, "unlabeled": True}}
    msg = _runs_error(cfg)
    assert msg.startswith("figures.table1") and "unlabeled" in msg and "drop-same-class@replace" in msg
    cfg["datasets"]["stl10"]["unlabeled"] = False
    check_config(cfg)


def test_replace_mode_needs_room_in_the_queue(cfg):
    cfg["pretrain"]["queue_extra"] = 0
    msg = _runs_error(cfg)
    assert msg.startswith("pretrain.queue_extra") and "multiple of pretrain.batch_size (256)" in msg
    cfg["pretrain"]["queue_extra"] = 1000
    assert _runs_error(cfg).startswith("pretrain.queue_extra")


def test_replace_mode_with_simclr(cfg):
    cfg["figures"]["simclr"]["policies"] = ["drop[95_100)@replace"]
    msg = _runs_error(cfg)
    assert msg.startswith("figures.simclr") and "replace mode" in msg


@pytest.mark.parametrize(
    "policy, needles",
    [
        ("mochi[16_300_8]", ["s = 300", "16"]),  # more mixes than pairs of the 16 hardest
        ("mochi[256_128_64_8]", ["warm-up", "8"]),  # warm-up as long as training (8 epochs)
        ("curriculum[60_40->50_90_linear]", ["lower", "upper"]),  # a band upside down
        ("ring[100->0.01_10_linear]", ["end of training", "no negative"]),  # floor(4096 x 0.01 / 100) = 0
    ],
    ids=["mochi-s-over-N2", "mochi-warmup", "curriculum-inverted", "ring-empty"],
)
def test_method_settings_that_make_no_sense(cfg, policy, needles):
    cfg["figures"]["fig_methods"]["policies"] = [policy]
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    msg = str(err.value)
    assert msg.startswith("figures.fig_methods"), msg
    for needle in needles:
        assert needle in msg, msg

"""benchmarks/device_all.sh, the one command for a lent GPU machine, and the
bundle it installs (benchmarks/device_bundle.sh): built here for this
Python, installed into a fresh environment that holds only what the GPU
machine's image has (benchmarks/device_packages.txt), then every part in its
CPU smoke mode. A package missing from the bundle, a renamed option or a
broken import shows here and not in a short, costly GPU lease."""

import os
import re
import subprocess
import sys
import tarfile
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_names() -> set[str]:
    lines = (line.split("#")[0].strip() for line in (BENCH / "device_packages.txt").read_text().splitlines())
    return {norm(line.partition("==")[0]) for line in lines if line}


def clean_env(**extra) -> dict:
    """This process's environment without its Python's paths (the test runs inside .venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def expose(names: set[str], into: Path) -> list[str]:
    """A folder of links to exactly these installed distributions (and their own
    dependencies that the image has) of this Python: their top-level modules,
    package folders, .libs and .dist-info, as listed in their RECORD files. A
    top-level folder shared with a distribution left out (a namespace) is made
    here and linked one level down. Returns the distributions linked."""
    image = image_names()
    dists = {norm(d.metadata["Name"]): d for d in metadata.distributions() if d.metadata["Name"]}
    chosen, todo = set(), [n for n in names if n in dists]
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen.add(name)
        for r in dists[name].requires or []:
            req = Requirement(r)
            if (not req.marker or req.marker.evaluate({"extra": ""})) and norm(req.name) in image:
                todo.append(norm(req.name))
    site = Path(dists["torch"].locate_file(""))
    owners: dict[tuple, set] = {}
    for name, dist in dists.items():
        for f in dist.files or []:
            parts = Path(f).parts
            if parts and parts[0] != ".." and parts[0] != "__pycache__":
                for depth in (1, 2):
                    if len(parts) >= depth:
                        owners.setdefault(parts[:depth], set()).add(name)
    into.mkdir(parents=True)
    for top in sorted({k for k in owners if len(k) == 1 and owners[k] & chosen}):
        if owners[top] <= chosen:
            (into / top[0]).symlink_to(site / top[0])
            continue
        (into / top[0]).mkdir()
        for sub in sorted(k for k in owners if len(k) == 2 and k[0] == top[0] and owners[k] <= chosen):
            (into / sub[0] / sub[1]).symlink_to(site / sub[0] / sub[1])
    return sorted(chosen)


def pypi_reachable() -> str:
    try:
        urllib.request.urlopen("https://pypi.org/simple/snakemake/", timeout=15).close()
        return ""
    except OSError as e:
        return str(e)


def members(tar_gz: Path) -> dict[str, bytes]:
    with tarfile.open(tar_gz) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_device_all_smoke_on_the_bundle_in_a_fresh_environment(tmp_path):
    """The bundle for this Python, a venv without system site packages that sees
    only the image's packages the project needs, then `device_all.sh --smoke`:
    both parts succeed in time, and at most 8 files come back."""
    why = pypi_reachable()
    if why:
        pytest.skip(f"PyPI is unreachable ({why}): device_bundle.sh downloads the wheels from it")
    wheels = tmp_path / "whl"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    build = subprocess.run(
        ["bash", str(BENCH / "device_bundle.sh"), "--python-version", pyver, "--dest", str(wheels), "--no-data"],
        env=clean_env(NEGATIVES_BUNDLE_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "==> sizes: wheels" in build.stdout
    manifest = (wheels / "bundle.txt").read_text().splitlines()
    bundled = [line.split()[1] for line in manifest if line.startswith("bundled ")]
    provided = {line.split()[1] for line in manifest if line.startswith("provided ")}
    assert any(b.startswith("snakemake==") for b in bundled) and len(list(wheels.glob("*.whl"))) == len(bundled)
    assert not image_names() & {norm(b.partition("==")[0]) for b in bundled}
    assert {"torch", "pandas", "pyyaml"} <= provided

    # the image's share: what the project and the bundle rely on it for, pip (device_all installs with it)
    # and pillow (torchvision's), from this Python's site-packages
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=clean_env())
    linked = expose(provided | {"pip", "pillow"}, tmp_path / "image")
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    Path(purelib, "gpu_image.pth").write_text(f"{tmp_path / 'image'}\n")
    probe = subprocess.run(
        [str(py), "-c", "import torch, pandas, pip\nimport snakemake"], capture_output=True, text=True, env=clean_env()
    )
    assert "No module named 'snakemake'" in probe.stderr, (linked, probe.stderr[-2000:])  # only through the bundle

    summary, out = smoke(tmp_path, py, wheels)
    assert f"bundle: {len(bundled)} wheels of {wheels} installed" in summary, summary
    check_smoke(summary, out)


def test_device_all_smoke_without_network(tmp_path):
    """Where PyPI is out of reach (no bundle can be made), the same command
    and checks on this Python's own packages, with an empty .whl."""
    why = pypi_reachable()
    if not why:
        pytest.skip("PyPI is reachable: the test above runs device_all.sh --smoke on the bundle")
    (tmp_path / "whl").mkdir()
    summary, out = smoke(tmp_path, Path(sys.executable), tmp_path / "whl")
    assert "bundle: none in" in summary, summary
    check_smoke(summary, out)


def smoke(tmp_path: Path, py: Path, wheels: Path) -> tuple[str, Path]:
    """`device_all.sh --smoke` with this python and these wheels on fake Fashion-MNIST:
    (summary.txt, the output folder); fails with the summary when the exit status is not 0."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import fake_fashion_mnist

    data = fake_fashion_mnist(tmp_path / "fmnist", n_train=1220, n_test=200)
    out = tmp_path / "out"
    env = clean_env(
        NEGATIVES_GPU_PYTHON=str(py),
        NEGATIVES_WHEELS=str(wheels),
        NEGATIVES_GPU_SITE=str(tmp_path / "site"),
        NEGATIVES_FASHION_MNIST=str(data),
    )
    run = subprocess.run(
        ["bash", str(BENCH / "device_all.sh"), "--smoke", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else "(no summary.txt)"
    assert run.returncode == 0, summary + "\n--- output:\n" + run.stdout[-3000:] + run.stderr[-2000:]
    return summary, out


def check_smoke(summary: str, out: Path) -> None:
    """Both parts succeeded in time; at most 8 files came back; what each part wrote."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files), files
    assert "imports: ok" in summary and "device: CPU" in summary
    assert re.search(r"^checks: ok \(exit 0\) in \d+ s", summary, re.M), summary
    assert re.search(r"^figure2: ok \(exit 0\) in \d+ s", summary, re.M), summary
    assert "cut after" not in summary and summary.rstrip().endswith(
        "exit status: 0 (failed or cut: the bundle's install, the imports, the parts)"
    )
    for ext in ("png", "pdf", "csv"):
        assert (out / f"fig2.{ext}").stat().st_size > 0

    # gpu_checks.sh: every step ran, and said what it measured
    logs = members(out / "logs.tar.gz")
    assert "==> 0 failed step(s)" in logs["logs/checks.log"].decode()
    texts = {name: logs[f"checks/{name}.txt"].decode() for name in ("env", "epoch", "throughput", "bands", "shares")}
    assert "torch" in texts["env"]
    assert "images/s, epoch" in texts["epoch"]
    assert "ours / reference, each at its best setting" in texts["throughput"]
    assert "worst overhead over all" in texts["bands"] and "mochi[16_8_4]" in texts["bands"]
    assert "slowest against share_queries 0" in texts["shares"] and "keep[95_100)" in texts["shares"]
    for name, text in texts.items():
        assert f"==> {name}: exit 0" in text
    assert "images/s, epoch" in summary and "ours / reference, each" in summary
    # a missed goal's profile of one step (--smoke takes every such path)
    assert re.search(r"^fig2_profile: ok \(exit 0\)", summary, re.M), summary
    for name in ("epoch", "bands", "fig2"):
        assert "one step, top 10 by" in logs[f"checks/{name}_profile.txt"].decode(), name

    # gpu_figure2.sh: the GPU config's Figure 2 through snakemake, its summary and job logs
    fig = logs["figure2/summary.txt"].decode()
    assert "device: CPU" in fig and "mode: smoke" in fig and "snakemake exit status: 0" in fig
    assert int(fig.split("wall time: ")[1].split(" s")[0]) > 0
    assert "fig2 -s" in fig and "--resources gpu=2 --configfile" in fig
    assert any(name.startswith("figure2/logs/") and name.endswith("pretrain.log") for name in logs)
    assert "figure2/snakemake.log" in logs


FAKE_SLOW = """#!/usr/bin/env bash
# a part that overruns: a child that sleeps on, and itself
sleep 300 &
echo $! >"{pid}"
sleep 300
"""
FAKE_FIGURE = """#!/usr/bin/env bash
out="${{@: -1}}"
mkdir -p "$out"
printf 'png' >"$out/fig2.png"
printf 'wall time: 1 s\\nsnakemake exit status: 0\\n' >"$out/summary.txt"
echo "figure2 ran"
"""


def test_a_part_that_overruns_is_cut_with_its_children_and_the_next_still_runs(tmp_path):
    """--checks-limit 2 against a part that sleeps: cut after 2 s, the whole
    process group killed, reported; the figure part runs after it; exit 1.
    No bundle (an empty .whl): nothing is installed."""
    slow, figure, pid = tmp_path / "slow.sh", tmp_path / "figure.sh", tmp_path / "child.pid"
    slow.write_text(FAKE_SLOW.format(pid=pid))
    figure.write_text(FAKE_FIGURE.format())
    (tmp_path / "whl").mkdir()
    out = tmp_path / "out"
    env = clean_env(
        NEGATIVES_GPU_PYTHON=sys.executable,
        NEGATIVES_WHEELS=str(tmp_path / "whl"),
        NEGATIVES_CHECKS_SCRIPT=str(slow),
        NEGATIVES_FIGURE_SCRIPT=str(figure),
        OUT=str(out),
    )
    env.pop("NEGATIVES_GPU_SITE", None)
    run = subprocess.run(
        ["bash", str(BENCH / "device_all.sh"), "--checks-limit", "2", "--figure-limit", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = (out / "summary.txt").read_text()
    assert run.returncode == 1, summary
    assert re.search(r"^checks: cut after [23] s \(limit 2 s\)$", summary, re.M), summary
    assert re.search(r"^figure2: ok \(exit 0\) in \d+ s \(limit 60 s\)$", summary, re.M), summary
    assert "bundle: none in" in summary and "mode: GPU" in summary
    assert "exit status: 1 " in summary and "wall time: 1 s" in summary
    assert (out / "fig2.png").read_text() == "png"
    assert "figure2 ran" in members(out / "logs.tar.gz")["logs/figure2.log"].decode()
    child = int(pid.read_text())
    try:  # gone, or a zombie left for init to reap
        state = Path(f"/proc/{child}/status").read_text()
        assert "\nState:\tZ" in state, f"the cut part's child {child} still runs"
    except FileNotFoundError:
        pass

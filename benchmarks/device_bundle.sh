#!/usr/bin/env bash
# What a bare GPU machine lacks to run this project, made here (with PyPI at
# hand) to travel with the working tree to a machine that reaches no index:
#
#   bash benchmarks/device_bundle.sh [--python-version 3.12] [--dest DIR] [--data DIR | --no-data]
#                                    [--platform TAG]... [--max-mib 64]
#
#   .whl/*.whl            one wheel of each package that pyproject.toml's dependencies need at run time
#                         (theirs included) and the machine's image lacks (benchmarks/device_packages.txt),
#                         for CPython 3.12 on manylinux x86_64 (--python-version: another CPython)
#   .whl/bundle.txt       what was bundled (name==version), what the image is relied on for, what was left out
#   .data/fashion-mnist/  the four Fashion-MNIST IDX .gz files, from Debian's dataset-fashion-mnist
#
# Both folders are git-ignored: the device tool carries them when asked (carry: .whl, .data), and
# `bash benchmarks/device_all.sh` installs the one and reads the other. The set is pip's own answer:
# a dry-run install of the dependencies, each image package standing in as an empty wheel of its
# version (so that pip neither downloads nor follows torch and its kind), then `pip download --no-deps`
# of what is left, at the versions installed here where they exist for the target. The tree, the
# wheels and the data must fit in what a GPU machine receives (--max-mib, 64 MiB): the sizes are
# printed, and the exit status is 1 with one line saying so when they do not fit.
#
# pip is the one of NEGATIVES_BUNDLE_PYTHON, else .venv/bin/python, else python3; its versions of
# the packages are the pins. The downloads go through pip's cache.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || exit 1

# Left out although pyproject.toml lists them: nothing a GPU run reaches imports them, and a
# machine without them fails only the commands that do.
#   kornia (and its Rust part, kornia_rs): only the faithful linear probe (evaluate.probe: faithful)
#     imports it; configs/fashion-mnist-gpu.yaml and the benchmarks use the fast probe.
#   nltk: only the WordNet analyses (Figures 4-6, Tables A4-A6) and image folders' synsets import it,
#     and they need the WordNet files, which do not travel; Fashion-MNIST's classes are built in.
#   pulp (16 MB: the CBC solver built for six platforms): snakemake's ILP scheduler only;
#     benchmarks/gpu_figure2.sh runs snakemake with the greedy one.
skip=(kornia nltk pulp)

pyver=3.12
dest="$root/.whl"
data="$root/.data/fashion-mnist"
max_mib=64
# The image's torch is a manylinux_2_28 wheel, so its glibc is 2.28 or newer: any older tag installs.
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) pyver="${2:?--python-version X.Y}"; shift 2 ;;
        --dest) dest="${2:?--dest DIR}"; shift 2 ;;
        --data) data="${2:?--data DIR}"; shift 2 ;;
        --no-data) data=""; shift ;;
        --platform) platforms+=("${2:?--platform TAG}"); shift 2 ;;
        --max-mib) max_mib="${2:?--max-mib N}"; shift 2 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
dest="$(realpath -m "$dest")"  # given from the caller's folder
[ -n "$data" ] && data="$(realpath -m "$data")"
cd "$root" || exit 1
if [ -n "${NEGATIVES_BUNDLE_PYTHON:-}" ]; then
    py="$NEGATIVES_BUNDLE_PYTHON"
elif [ -x .venv/bin/python ]; then
    py="$root/.venv/bin/python"
else
    py=python3
fi
"$py" -m pip --version >/dev/null 2>&1 || { echo "error: $py has no pip (set NEGATIVES_BUNDLE_PYTHON)" >&2; exit 1; }
mkdir -p "$dest" || exit 1
scratch="$(mktemp -d "${TMPDIR:-/tmp}/device_bundle.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

echo "==> wheels for CPython $pyver (${platforms[0]} and older) into $dest," \
    "with $("$py" -m pip --version | cut -d' ' -f1-2)"
start=$SECONDS
plat_args=()
for p in "${platforms[@]}"; do plat_args+=(--platform "$p"); done
# pip's notes about the local index folders it skips are noise
PIP_NO_INPUT=1 "$py" - "$root" "$pyver" "$scratch" "$dest" "${skip[*]}" "${plat_args[@]}" <<'PY' 2>&1 \
    | sed -u '/^WARNING: Location .* is ignored: it is neither a file nor a directory\.$/d'
import datetime, importlib.metadata as md, json, os, re, subprocess, sys, tomllib, zipfile
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement

root, pyver, scratch, dest, skip, *plat_args = sys.argv[1:]
skip = {re.sub(r"[-_.]+", "-", s).lower() for s in skip.split()}
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
target = ["--python-version", pyver, "--implementation", "cp", *plat_args]

# the image: name -> version read there, else the one installed here (the likeliest), else None
image = {}
for line in open(f"{root}/benchmarks/device_packages.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, _, version = line.partition("==")
        image[norm(name)] = version or None
local = {norm(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}
stubs = os.path.join(scratch, "stubs")
os.makedirs(stubs)
pins = []
for name, version in image.items():
    version = (version or local.get(name, "")).split("+")[0]
    if not version:
        continue  # not here either: only a marker false here could ask for it (then it is left out below)
    version += "+device"  # a version only the stub has, so that pip never picks PyPI's wheel of it
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(f"{stubs}/{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: device_bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    pins.append(f"{name}=={version}")
tested = [f"{n}=={v}" for n, v in local.items() if n not in image and n != "negatives"]

wanted = tomllib.load(open(f"{root}/pyproject.toml", "rb"))["project"]["dependencies"]
env = {**default_environment(), "python_version": pyver, "python_full_version": f"{pyver}.0",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def resolve(requirements, constraints):
    """pip's dry-run install for this interpreter, the image's packages installed as stubs: the
    report's items. (pip resolves for a foreign Python only from wheels, and some of snakemake's
    dependencies ship none: the markers are read again for the target below.)"""
    with open(f"{scratch}/constraints.txt", "w") as f:
        f.write("\n".join(constraints) + "\n")
    report = f"{scratch}/report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", report,
           "--find-links", stubs, "-c", f"{scratch}/constraints.txt", *requirements]
    if subprocess.run(cmd).returncode != 0:
        return None
    return {norm(i["metadata"]["name"]): i["metadata"] for i in json.load(open(report))["install"]}


def closure(items):
    """What the target needs, markers read for the target's Python (pip reads them for its own):
    (bundled names, image names relied on, requirements pip was not asked for)."""
    need, provided, missing = {}, set(), []
    todo = [(Requirement(r), ("",)) for r in wanted]
    while todo:
        req, extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue
        name = norm(req.name)
        if name in skip:
            continue
        if name in image:
            provided.add(name)
        elif name not in items:
            missing.append(f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}")
        elif name not in need or not set(req.extras) <= need[name]:
            need[name] = need.get(name, set()) | set(req.extras)
            todo += [(Requirement(r), ("", *need[name])) for r in items[name].get("requires_dist") or []]
    return need, provided, missing


extra, constraints = [], pins + tested
for _ in range(4):
    items = resolve(wanted + extra, constraints)
    if items is None and constraints != pins:
        print("==> the versions installed here do not resolve together: resolving without them", flush=True)
        constraints = pins
        items = resolve(wanted + extra, constraints)
    if items is None:
        sys.exit("error: pip could not resolve the dependencies for the target (see above)")
    need, provided, missing = closure(items)
    if not missing:
        break
    extra += missing  # needed by a marker true on the target only
else:
    sys.exit(f"error: the requirements do not settle for CPython {pyver}: {missing}")

bundled = sorted(f"{items[n]['name']}=={items[n]['version']}" for n in need)
# a wheel for the target where one exists; else the sdist, built here into a wheel, which must then be
# pure Python (connection_pool ships only an sdist)
wheels = f"{scratch}/wheels"
cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--prefer-binary", *target, "-d", wheels,
       *bundled]
if subprocess.run(cmd).returncode != 0:
    sys.exit(f"error: pip download failed (see above): a version installed here may have no wheel for CPython {pyver}")
for sdist in [f for f in os.listdir(wheels) if not f.endswith(".whl")]:
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, f"{wheels}/{sdist}"]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"error: {sdist} has no wheel for CPython {pyver} and does not build into one (see above)")
    os.remove(f"{wheels}/{sdist}")
got = sorted(os.listdir(wheels))
impure = [g for g in got if not g.endswith("-none-any.whl") and f"-cp{pyver.replace('.', '')}-" not in g
          and "-abi3-" not in g]
if impure:
    sys.exit(f"error: {impure} do not install on CPython {pyver} (built here from an sdist?)")
if len(got) != len(bundled):
    sys.exit(f"error: pip download gave {got} for {bundled}")
for old in os.listdir(dest):
    if old.endswith(".whl") or old == "bundle.txt":
        os.remove(os.path.join(dest, old))
for g in got:
    os.replace(f"{wheels}/{g}", f"{dest}/{g}")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
with open(f"{dest}/bundle.txt", "w") as f:
    f.write(f"# benchmarks/device_bundle.sh, {now}: CPython {pyver}, {' '.join(plat_args[1::2])}\n"
            "# bundled: the wheels here; provided: relied on from the GPU image (benchmarks/device_packages.txt);\n"
            "# skipped: needed by pyproject.toml, imported by nothing a GPU run reaches (see the script)\n")
    f.writelines(f"bundled {b}\n" for b in bundled)
    f.writelines(f"provided {p}\n" for p in sorted(provided))
    f.writelines(f"skipped {s}\n" for s in sorted(skip))
print(f"==> {len(bundled)} wheels: {' '.join(bundled)}")
print(f"==> relied on from the image: {' '.join(sorted(provided))}")
PY
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || exit "$status"
echo "==> wheels in $((SECONDS - start)) s"

if [ -n "$data" ]; then
    src=/usr/share/datasets/fashion-mnist
    files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
    have() { local f; for f in "${files[@]}"; do [ -f "$src/$f" ] || return 1; done; }
    if ! have; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "==> installing Debian's dataset-fashion-mnist (apt-get)"
            { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends dataset-fashion-mnist; } >&2
        fi
        have || { echo "error: $src lacks the Fashion-MNIST .gz files: install Debian's dataset-fashion-mnist" \
            "(as root: apt-get install dataset-fashion-mnist), or pass --no-data" >&2; exit 1; }
    fi
    mkdir -p "$data" && cp "${files[@]/#/$src/}" "$data/" || exit 1
fi

# What the device tool copies: the tracked files and the untracked ones git does not ignore, plus these.
"$py" - "$dest" "$data" "$max_mib" <<'PY'
import os, subprocess, sys
dest, data, max_mib = sys.argv[1], sys.argv[2], float(sys.argv[3])
listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                        capture_output=True, check=True).stdout.decode().split("\0")
tree = sum(os.lstat(f).st_size for f in listed if f and os.path.lexists(f))
folder = lambda d: sum(os.lstat(os.path.join(p, f)).st_size for p, _, fs in os.walk(d) for f in fs) if d else 0
wheels, images = folder(dest), folder(data)
mib = lambda b: f"{b / 2**20:.1f} MiB"
total = tree + wheels + images
print(f"==> sizes: wheels {mib(wheels)} ({dest}), data {mib(images)} ({data or 'none'}), tree {mib(tree)}: "
      f"{mib(total)} of {max_mib:g} MiB")
if total > max_mib * 2**20:
    sys.exit(f"error: the tree, the wheels and the data come to {mib(total)}, "
             f"over the {max_mib:g} MiB a GPU machine receives")
PY

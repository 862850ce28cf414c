# shellcheck shell=bash
# Set-up shared by ./run.sh and ./test.sh (sourced, under `set -euo pipefail`).
#
#   bootstrap run|test
#
# 1. a virtual environment at ${NEGATIVES_VENV:-<repo>/.venv} (python3 -m venv;
#    as root with apt-get, Debian's python3-venv is installed when venv is missing);
# 2. the dependencies into it, only when pyproject.toml, the lock file, the
#    checkout or the Python changed since the last install (a stamp file in the
#    venv): where requirements/<os>-<arch>-<python>.txt exists for this platform
#    (made by workflow/scripts/lock.sh), its exact versions, every file checked
#    against its hashes (pip install --require-hashes -r LOCK), then the project
#    itself (pip install --no-deps --no-build-isolation -e .); elsewhere, or with
#    NEGATIVES_LOCK=none, `pip install -e '.[test]'` from pyproject.toml's ranges;
# 3. the data: Debian's dataset-fashion-mnist, wordnet-base and
#    wordnet-sense-index, installed with apt-get when missing and we are root;
#    otherwise, for `run`, torchvision's download of Fashion-MNIST (a config
#    override) and NLTK's of WordNet (NEGATIVES_DOWNLOAD=1).
# Then the venv's bin/ is first on PATH, so rules find its python.
#
# Knobs: NEGATIVES_VENV (venv path), NEGATIVES_PYTHON (interpreter that makes
# it, default python3), NEGATIVES_PIP_ARGS (extra `pip install` arguments,
# e.g. "--extra-index-url https://download.pytorch.org/whl/cpu" for a CPU-only torch,
# with NEGATIVES_LOCK=none: the lock's hashes are PyPI's builds), NEGATIVES_LOCK=none
# (pyproject.toml's ranges even where a lock file exists).
# After it, NEGATIVES_SNAKEMAKE_ARGS holds the extra snakemake arguments and
# NEGATIVES_DOWNLOADS is 1 when the jobs will download data.

NEGATIVES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NEGATIVES_VENV="${NEGATIVES_VENV:-$NEGATIVES_ROOT/.venv}"
NEGATIVES_CACHE="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/negatives"
NEGATIVES_SNAKEMAKE_ARGS=()
NEGATIVES_DOWNLOADS=0  # 1 when the data will be downloaded by the jobs

_NEG_PY="${NEGATIVES_PYTHON:-python3}"
_NEG_FMNIST=/usr/share/datasets/fashion-mnist
_NEG_WORDNET=/usr/share/wordnet
_NEG_HINT="install Debian packages dataset-fashion-mnist wordnet-base wordnet-sense-index (as root), or allow internet access for torchvision/NLTK downloads"
_NEG_APT_UPDATED=0

# For run.sh: a failed workflow that relied on downloads ends with what to install.
neg_download_failure_note() {
    [ "$NEGATIVES_DOWNLOADS" = 1 ] || return 0
    say "the workflow failed, and it relied on downloads (see the job logs above); if a download failed: $_NEG_HINT"
}

say() { printf '==> %s\n' "$*" >&2; }

# For run.sh, before anything is installed: every config file named after
# --configfile exists (snakemake's own message is a traceback). Snakemake reads
# every word after --configfile up to the next option as a config file, so a
# target written after it is named here too. Paths are read from the checkout.
neg_check_configfiles() {
    local arg file reading=0
    for arg in "$@"; do
        case "$arg" in
            --configfile=* | --configfiles=*) file="${arg#*=}" ;;
            --configfile | --configfiles) reading=1; continue ;;
            -*) reading=0; continue ;;
            *) [ "$reading" = 1 ] || continue; file="$arg" ;;
        esac
        (cd "$NEGATIVES_ROOT" && [ -e "$file" ]) || die "--configfile $file: no such file (relative paths are read from $NEGATIVES_ROOT; a target goes before --configfile, which takes every word after it)"
        (cd "$NEGATIVES_ROOT" && [ ! -d "$file" ]) || die "--configfile $file: a folder, not a config file; give a YAML file (e.g. $file/config.yaml)"
        (cd "$NEGATIVES_ROOT" && [ -f "$file" ] && [ -r "$file" ]) || die "--configfile $file: not a readable file; give a YAML config file"
        (cd "$NEGATIVES_ROOT" && _neg_is_text "$file") || die "--configfile $file: binary data, not a YAML config file (YAML is UTF-8 text); give the config's .yaml file"
    done
}

# True when the file holds text: no NUL byte, and valid UTF-8 where iconv can tell.
_neg_is_text() {
    [ "$(tr -d '\000' <"$1" | wc -c)" = "$(wc -c <"$1")" ] || return 1
    ! command -v iconv >/dev/null 2>&1 || iconv -f UTF-8 -t UTF-8 "$1" >/dev/null 2>&1
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

_neg_can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

# apt-get install, after one `apt-get update` per run; fails softly (returns 1).
_neg_apt_install() {
    say "installing Debian packages: $* (apt-get, as root)"
    if [ "$_NEG_APT_UPDATED" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
        _NEG_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# ------------------------------------------------------------------- python

_neg_check_python() {
    command -v "$_NEG_PY" >/dev/null 2>&1 \
        || die "$_NEG_PY not found: install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)"
    "$_NEG_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$_NEG_PY" -V 2>&1) is too old: negatives needs Python 3.11 or newer (set NEGATIVES_PYTHON to one)"
}

_neg_venv_works() {
    [ -f "$NEGATIVES_VENV/pyvenv.cfg" ] && "$NEGATIVES_VENV/bin/python" -c '' >/dev/null 2>&1
}

_neg_make_venv() {
    say "creating the virtual environment $NEGATIVES_VENV ($_NEG_PY -m venv)"
    if "$_NEG_PY" -m venv "$NEGATIVES_VENV"; then
        return 0
    fi
    rm -rf "$NEGATIVES_VENV"  # a half-made one: python but no pip
    if _neg_can_apt; then
        # Debian's python3 ships venv and ensurepip in a separate package
        _neg_apt_install python3-venv || die "could not install Debian's python3-venv; install it (as root), then rerun"
        "$_NEG_PY" -m venv "$NEGATIVES_VENV" || die "$_NEG_PY -m venv failed even with python3-venv installed"
    else
        die "$_NEG_PY -m venv failed: install Debian package python3-venv (as root: apt-get install python3-venv), then rerun"
    fi
}

_neg_ensure_venv() {
    if _neg_venv_works; then
        return 0
    fi
    if [ -e "$NEGATIVES_VENV" ]; then
        if [ -f "$NEGATIVES_VENV/pyvenv.cfg" ]; then
            say "removing the broken virtual environment $NEGATIVES_VENV"
            rm -rf "$NEGATIVES_VENV"
        elif [ -n "$(ls -A "$NEGATIVES_VENV" 2>/dev/null)" ]; then
            die "$NEGATIVES_VENV exists and is not a virtual environment (set NEGATIVES_VENV elsewhere)"
        fi
    fi
    _neg_make_venv
}

# This platform's name in requirements/: os-arch-python, e.g. linux-x86_64-cp311.
neg_platform_key() {
    "${1:-$NEGATIVES_VENV/bin/python}" -c 'import platform, sys
impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
print(f"{platform.system()}-{platform.machine()}-{impl}{sys.version_info[0]}{sys.version_info[1]}".lower())'
}

# The lock file the venv installs from; empty for pyproject.toml's ranges.
_neg_lock_file() {
    [ "${NEGATIVES_LOCK:-}" = none ] && return 0
    local lock
    lock="$NEGATIVES_ROOT/requirements/$(neg_platform_key).txt"
    if [ -f "$lock" ]; then printf '%s\n' "$lock"; fi
}

_neg_lock_platforms() {
    local f names=()
    for f in "$NEGATIVES_ROOT"/requirements/*.txt; do
        if [ -f "$f" ]; then names+=("$(basename "$f" .txt)"); fi
    done
    printf '%s' "${names[*]:-none}"
}

# What the installed environment was made from: when it changes, reinstall.
_neg_stamp() {
    "$NEGATIVES_VENV/bin/python" - "$NEGATIVES_ROOT" "${NEGATIVES_PIP_ARGS:-}" "$1" <<'PY'
import hashlib, sys
root, pip_args, lock = sys.argv[1:]
def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
print(f"pyproject.toml sha256 {sha(f'{root}/pyproject.toml')}")
print(f"lock {lock} sha256 {sha(lock)}" if lock else "lock none (pyproject.toml's ranges)")
print(f"checkout {root}\npython {sys.version.split()[0]}\npip args {pip_args}")
PY
}

# pip install ARGS... into the venv; pip's notes about local index folders it
# skips are noise, everything else passes.
_neg_pip_install() {
    # shellcheck disable=SC2086  # NEGATIVES_PIP_ARGS is a list of words
    PIP_NO_INPUT=1 "$NEGATIVES_VENV/bin/python" -m pip install ${NEGATIVES_PIP_ARGS:-} "$@" 2>&1 \
        | sed -u '/^WARNING: Location .* is ignored: it is neither a file nor a directory\.$/d' >&2
}

_neg_ensure_installed() {
    local stamp_file="$NEGATIVES_VENV/.negatives-installed" want lock rel
    lock="$(_neg_lock_file)"
    want="$(_neg_stamp "$lock")"
    if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ]; then
        return 0
    fi
    rm -f "$stamp_file"
    if ! "$NEGATIVES_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        say "the virtual environment $NEGATIVES_VENV has no pip (half-made?): making it again"
        rm -rf "$NEGATIVES_VENV"
        _neg_make_venv
    fi
    local start=$SECONDS
    if [ -n "$lock" ]; then
        rel="${lock#"$NEGATIVES_ROOT"/}"
        say "installing the locked dependencies into $NEGATIVES_VENV: pip install --require-hashes -r $rel (exact versions: torch, torchvision, snakemake, pytest, ...), then negatives itself: pip install --no-deps --no-build-isolation -e ."
        _neg_pip_install --require-hashes -r "$lock" \
            || die "pip install --require-hashes -r $rel failed (see above); it needs PyPI (or a mirror set in pip's config) to be reachable; NEGATIVES_LOCK=none installs from pyproject.toml's ranges instead"
        # the build backend (setuptools) comes from the lock too, not from an unchecked build env
        _neg_pip_install --no-deps --no-build-isolation -e "$NEGATIVES_ROOT" \
            || die "pip install --no-deps --no-build-isolation -e . failed (see above)"
    else
        if [ "${NEGATIVES_LOCK:-}" = none ]; then
            say "NEGATIVES_LOCK=none: installing from pyproject.toml's version ranges, not a lock file"
        else
            say "no lock file for this platform, $(neg_platform_key) (requirements/ has locks for: $(_neg_lock_platforms)): installing from pyproject.toml's version ranges, so versions may differ from the tested ones (bash workflow/scripts/lock.sh makes a lock for it)"
        fi
        say "installing negatives and its dependencies into $NEGATIVES_VENV: pip install ${NEGATIVES_PIP_ARGS:-}${NEGATIVES_PIP_ARGS:+ }-e '.[test]' (torch, torchvision, snakemake, pytest, ...)"
        _neg_pip_install -e "${NEGATIVES_ROOT}[test]" \
            || die "pip install -e '.[test]' failed (see above); it needs PyPI (or a mirror set in pip's config) to be reachable"
    fi
    printf '%s\n' "$want" >"$stamp_file"
    say "installed in $((SECONDS - start)) s"
}

# --------------------------------------------------------------------- data

_neg_fmnist_ok() {
    local f
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -f "$_NEG_FMNIST/$f.gz" ] || [ -f "$_NEG_FMNIST/$f" ] || return 1
    done
}

_neg_wordnet_base_ok() {
    local f
    for f in data.adj data.adv data.noun data.verb index.adj index.adv index.noun index.verb \
             adj.exc adv.exc noun.exc verb.exc cntlist.rev; do
        [ -f "$_NEG_WORDNET/$f" ] || return 1
    done
}

_neg_wordnet_sense_ok() { [ -f "$_NEG_WORDNET/index.sense" ]; }

_neg_missing_packages() {
    local missing=()
    _neg_fmnist_ok || missing+=(dataset-fashion-mnist)
    _neg_wordnet_base_ok || missing+=(wordnet-base)
    _neg_wordnet_sense_ok || missing+=(wordnet-sense-index)
    printf '%s\n' "${missing[@]+"${missing[@]}"}"
}

_neg_ensure_data() {
    local mode="$1" missing
    missing="$(_neg_missing_packages | xargs)"
    [ -z "$missing" ] && return 0
    if _neg_can_apt; then
        # shellcheck disable=SC2086
        _neg_apt_install $missing || say "apt-get could not install $missing; falling back to downloads"
        missing="$(_neg_missing_packages | xargs)"
        [ -z "$missing" ] && return 0
    else
        say "Debian packages $missing are not installed, and installing them needs root and apt-get"
    fi
    if [ "$mode" = test ]; then
        say "the tests that read them are skipped; to run them, install Debian packages $missing (as root)"
        return 0
    fi
    NEGATIVES_DOWNLOADS=1
    if ! _neg_fmnist_ok; then
        local root="$NEGATIVES_CACHE/fashion-mnist" override="$NEGATIVES_CACHE/download.yaml"
        mkdir -p "$NEGATIVES_CACHE"
        printf '# written by workflow/scripts/bootstrap.sh: %s lacks Fashion-MNIST\ndatasets:\n  fashion-mnist:\n    root: "%s"\n    download: true\n' \
            "$_NEG_FMNIST" "$root" >"$override"
        NEGATIVES_SNAKEMAKE_ARGS+=("--configfile=$override")  # "=": the arguments after it stay targets
        say "Fashion-MNIST: torchvision downloads it into $root (snakemake --configfile $override); if that fails: $_NEG_HINT"
    fi
    if ! { _neg_wordnet_base_ok && _neg_wordnet_sense_ok; }; then
        export NEGATIVES_DOWNLOAD=1
        say "WordNet: NLTK downloads it (nltk.download('wordnet')) unless NLTK already has it; if that fails: $_NEG_HINT"
    fi
}

# --------------------------------------------------------------------- main

bootstrap() {
    local mode="${1:?bootstrap run|test}"
    _neg_check_python
    _neg_ensure_venv
    _neg_ensure_installed
    _neg_ensure_data "$mode"
    export VIRTUAL_ENV="$NEGATIVES_VENV"
    export PATH="$NEGATIVES_VENV/bin:$PATH"
    cd "$NEGATIVES_ROOT" || die "cannot cd to $NEGATIVES_ROOT"
}

#!/usr/bin/env bash
# Refreshes the lock file that ./run.sh and ./test.sh install from:
#
#   bash workflow/scripts/lock.sh            # every pin to the newest version allowed
#   bash workflow/scripts/lock.sh -P kornia  # arguments go to pip-compile instead of
#                                            # --upgrade: here, only kornia moves
#
# pip-compile (pip-tools) resolves pyproject.toml's dependencies, its `test`
# extra and its build backend for the Python that runs it, and writes every
# package with its exact version and the sha256 of each of its files to
# requirements/<os>-<arch>-<python>.txt (linux-x86_64-cp311 for CPython 3.11 on
# x86-64 Linux): the lock is for the platform it is made on. The resolver sees
# what `pip install` sees here: pip's configured indexes and constraint files
# (a cap such as torch<=2.14.1 in pip's config holds the lock to it).
# pip-tools lives in its own venv under ~/.cache/negatives, apart from .venv.
# Knobs: NEGATIVES_PYTHON (the interpreter, default python3).
set -euo pipefail
# shellcheck source=workflow/scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

PIP_TOOLS_VERSION=7.7.0  # a known pip-compile, so a refresh does not change with it
tools="$NEGATIVES_CACHE/lock-tools"

_neg_check_python
if ! [ -x "$tools/bin/pip-compile" ] || ! "$tools/bin/pip-compile" --version 2>/dev/null | grep -q " $PIP_TOOLS_VERSION\$"; then
    say "installing pip-tools $PIP_TOOLS_VERSION into $tools"
    rm -rf "$tools"
    "$_NEG_PY" -m venv "$tools" || die "$_NEG_PY -m venv failed (Debian: apt-get install python3-venv)"
    PIP_NO_INPUT=1 "$tools/bin/python" -m pip install -q "pip-tools==$PIP_TOOLS_VERSION" 2>&1 \
        | sed -u '/^WARNING: Location .* is ignored: it is neither a file nor a directory\.$/d' >&2
fi

key="$(neg_platform_key "$tools/bin/python")"
out="requirements/$key.txt"

# pip-compile does not apply the constraint files of pip's config; pass them on
constraints=()
while read -r file; do
    [ -n "$file" ] && [ -f "$file" ] && constraints+=(-c "$file")
done < <("$tools/bin/python" -m pip config list 2>/dev/null \
    | sed -n "s/^[^=]*\.constraint='\(.*\)'\$/\1/p" | tr ' ' '\n' | sort -u)

[ "$#" -gt 0 ] || set -- --upgrade
cd "$NEGATIVES_ROOT"
mkdir -p requirements
say "pip-compile for $key into $out, with pip's constraint files: ${constraints[*]:-none}"
# the header names this script, the command that remakes the file
CUSTOM_COMPILE_COMMAND="bash workflow/scripts/lock.sh" PIP_NO_INPUT=1 \
    "$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --extra test --build-deps-for editable \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    "${constraints[@]+"${constraints[@]}"}" --output-file "$out" "$@" pyproject.toml 2>&1 \
    | sed -u '/^WARNING: Location .* is ignored: it is neither a file nor a directory\.$/d' >&2
say "wrote $out ($(grep -c '^[a-z0-9]' "$out") packages); ./test.sh installs it into .venv on its next run"

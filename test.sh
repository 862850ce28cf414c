#!/usr/bin/env bash
# The tests: installs what is missing (see workflow/scripts/bootstrap.sh),
# then runs pytest (slow tests are deselected by pyproject.toml). Extra
# arguments go to pytest, e.g. ./test.sh tests/data/test_wordnet.py -q
set -euo pipefail
# shellcheck source=workflow/scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/workflow/scripts/bootstrap.sh"
bootstrap test
say "python -m pytest $*"
exec python -m pytest "$@"

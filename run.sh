#!/usr/bin/env bash
# The main job: installs what is missing (see workflow/scripts/bootstrap.sh),
# then runs the workflow on the default config. Extra arguments go to
# snakemake, e.g. ./run.sh -n (dry run) or ./run.sh fig3.
set -euo pipefail
# shellcheck source=workflow/scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/workflow/scripts/bootstrap.sh"
neg_check_configfiles "$@"
bootstrap run
set -- --cores all "${NEGATIVES_SNAKEMAKE_ARGS[@]+"${NEGATIVES_SNAKEMAKE_ARGS[@]}"}" "$@"
say "snakemake $*"
status=0
snakemake "$@" || status=$?
[ "$status" = 0 ] || neg_download_failure_note
exit "$status"

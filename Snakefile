# Rebuilds Cai et al. 2020, "Are all negatives created equal in contrastive
# instance discrimination?".  `snakemake --profile profiles/local` builds every
# figure; `snakemake fig2` builds one.  The science is in src/negatives; the
# rules only call `python -m negatives ...` (docs/INTERFACES.md).
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# the workflow and its jobs use this checkout's library, installed or not
# (a conda env from envs/ holds only the dependencies)
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
shell.prefix(f'set -euo pipefail; export PYTHONPATH={shlex.quote(SRC)}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')

from negatives.config import ConfigError, check_config, check_finite
from negatives.config_files import base_config, check_config_file, numbers_as_numbers, schema_message
from negatives.figure_registry import check_records

# every figure record has its caption and its section in the schema, and
# every section a record (negatives.figure_registry)
try:
    check_records(workflow.basedir)
except ValueError as e:
    raise WorkflowError(f"invalid figure records: {e}") from None

# every --configfile is an overlay, merged onto config.yaml key by key (lists
# replace): the working directory's config.yaml, else this workflow's own, so
# an overlay keeps its base wherever it runs
BASE = base_config(workflow.basedir)
# config files read strictly first: a YAML error names its line, a key written
# twice is refused (YAML would keep the last silently), a key the schema does
# not know is named with its file (after merging, no file would be named)
CONFIG_FILES = [*([BASE] if BASE else []), *workflow.overwrite_configfiles]
try:
    for path in CONFIG_FILES:
        check_config_file(path)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None


configfile: str(BASE or "config.yaml")


# the whole config is checked once, before any job starts; 1e-3 is a number,
# and NaN or infinity (.nan, 1e400) is named before the schema, whose ranges let NaN through
numbers_as_numbers(config)
try:
    check_finite(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None
try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as e:  # its own message prints the schema of the key: hundreds of lines for a section
    raise WorkflowError(f"invalid config: {schema_message(e)}") from None
try:
    check_config(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None

# an edit that would change a finished (or interrupted) run is refused before
# any job is planned (negatives.training.identity); jobs skip it
if workflow.is_main_process:
    from negatives.training.identity import check_planned_runs

    try:
        check_planned_runs(config)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset=NAME,
    method=NAME,
    policy=NAME,
    seed=SEED,
    temperature=TEMPERATURE,


rule all:
    default_target: True
    input:
        [path for figure in grid.FIGURES for path in figure_outputs(figure)],


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/figures.smk"

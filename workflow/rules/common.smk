# Helpers shared by the rules. Which runs a figure needs is decided in one
# place, negatives.grid; the rules only turn its answers into file names.
import json
import os
import shlex

from snakemake.rules import Rule

from negatives import grid
from negatives.figure_registry import REGISTRY as FIGURE_RECORDS
from negatives.defaults import speed_only
from negatives.runtime.atomic import verify_existing
from negatives.runtime.launch import pretrain_resources
from negatives.training.settings import run_identity

R = config["results"]  # results root (docs/INTERFACES.md: results/...)

# wildcard values (policy names like "keep[95,100)" contain no "/")
NAME = r"[^/]+"
SEED = r"\d+"
TEMPERATURE = r"\d+(?:\.\d+)?(?:e[-+]\d+)?"  # format(t, "g"): 0.2, 0.07, 1e-05


# A run's identity is what changes its weights (negatives.training.identity):
# Snakemake reruns a job whose params changed, so a pretraining job's params
# hold its identity and nothing else; the settings outside it (log only, and
# device, compared as the device type it resolves to) reach the job as
# resources (`--device {resources.device}`, ...), which Snakemake never
# compares, and the untrained encoder's params hold only the architecture.
# Every other section leaves out its speed-only keys (bit-identical:
# evaluate.threads, jobs_per_gpu), passed as `--threads {threads}` and
# `--jobs-per-gpu {resources.jobs_per_gpu}`.
SPEED_ONLY = {section: speed_only(section) for section in ("pretrain", "evaluate")}


def _results_only(section):
    return {k: v for k, v in config[section].items() if k not in SPEED_ONLY.get(section, ())}


def settings(section, leave_out=()):
    """The JSON the library gets as --settings: one config section, less the
    keys ``leave_out`` (another job's: a change to them reruns no job of this rule)."""
    return json.dumps({k: v for k, v in _results_only(section).items() if k not in leave_out}, sort_keys=True)


def identity(untrained=False):
    """The JSON a pretraining job gets as --settings: the run's identity."""
    return json.dumps(run_identity(config["pretrain"], untrained), sort_keys=True)


def config_json():
    """The whole config as JSON (for the figures), speed-only settings left out."""
    top = {k: v for k, v in config.items() if k not in speed_only()}
    return json.dumps({**top, **{section: _results_only(section) for section in ("pretrain", "evaluate")}},
                      sort_keys=True)


def dataset_option(key):
    """Params function: config.datasets[{dataset}][key]."""
    return lambda wildcards: config["datasets"][wildcards.dataset][key]


# one job on a GPU when the config asks for CUDA; "auto" and "cpu" ask for none
# (snakemake --resources gpu=N caps them; negatives.runtime.gpus gives each its own GPU,
# or, with jobs_per_gpu K, one of the K slots of a GPU: then --resources gpu=GPUs x K)
GPUS = 1 if config["pretrain"]["device"] == "cuda" else 0


def may_stream(dataset):
    """Whether storage auto may choose to stream this dataset (image folders only)."""
    from negatives.data.datasets import dataset_spec

    entry = config["datasets"][dataset]
    return entry.get("storage", "auto") == "auto" and dataset_spec(dataset).is_folder


def per_attempt(base):
    """A resource that grows with each retry (base, 2 base, 3 base, ...): a job
    killed for memory or time gets more when it is submitted again."""
    return lambda wildcards, attempt: base * attempt


def cpus(wildcards, threads):
    """cpus_per_task: the rule's threads (sbatch --cpus-per-task)."""
    return threads


# a pretraining run's GPUs, and on SLURM its nodes and tasks (negatives.runtime.launch)
PRETRAIN_RESOURCES = {"cpus_per_task": cpus, **pretrain_resources(config["pretrain"])}


def figure_outputs(figure):
    return grid.figure_outputs(config, figure)


# Figure 2 first: its runs, their probes and the random-init ones, and the figure get priority 1, so that a
# long run shows one figure early.  Not --prioritize: that makes its target part of every run, even
# `snakemake fig3`.  A priority given by a function needs a recent Snakemake 9 (else every job is equal).
FIRST_FIGURE = "fig2"
_FIRST_PROBES = frozenset(grid.figure_probes(config, FIRST_FIGURE)) if FIRST_FIGURE in grid.FIGURES else frozenset()


def _first_figure_priority(wildcards):
    w = dict(wildcards.items())  # a job of evaluate names its run; of pretrain, policy, temperature and seed
    trained = f"{w['policy']}/t{w['temperature']}" if "policy" in w else "random-init"
    run = w.get("run") or f"{trained}/seed{w['seed']}"
    return int(f"{R}/{w['dataset']}/{w['method']}/{run}/probe.json" in _FIRST_PROBES)


FIRST_FIGURE_PRIORITY = _first_figure_priority if hasattr(Rule, "expand_priority") else 0


def shown_line(figure):
    """The terminal's line for a finished figure, quoted for the shell: its heading and its image (or first file)."""
    paths = dict(zip(figure.extensions, figure_outputs(figure.name)))
    return shlex.quote(f"{figure.category}: {paths.get('png', next(iter(paths.values())))}")
def figure_dynamics(figure):
    """The analysis/dynamics.csv of every trained run a figure uses (rule dynamics)."""
    return grid.figure_dynamics(config, figure)


def figure_caption(record):
    """A figure record's report caption, as a path Snakemake reads from anywhere."""
    return os.path.join(workflow.basedir, record.caption)


def figure_inputs(figure):
    """A figure's inputs; those that exist are checked against the check files
    written with them now, while the workflow is planned: a damaged one
    stops it before any job, so the figure keeps its previous outputs
    (Snakemake deletes a job's outputs before the job runs).  A job runs the
    same check when it reads them; job processes skip it here."""
    paths = grid.figure_inputs(config, figure)
    if workflow.is_main_process:
        try:
            verify_existing(paths, rebuild="run the workflow again to rebuild it")
        except ValueError as e:
            raise WorkflowError(str(e)) from None
    return paths


# Once the jobs are planned and before any is submitted (the executor is
# known only then): runs that span machines need SLURM; on SLURM, SLURM
# answers from this machine, and the sacct status command is refused where
# the cluster keeps no accounting (the executor would wait forever). A dry
# run runs no hook: it plans without SLURM.
onstart:
    from negatives.runtime.launch import check_executor

    try:
        check_executor(config["pretrain"], getattr(workflow.executor_plugin, "name", None))
    except ValueError as e:
        raise WorkflowError(str(e)) from None
    if getattr(workflow.executor_plugin, "name", None) == "slurm":
        from negatives.runtime.cluster import check_status_command, slurm_config

        try:
            check_status_command(getattr(workflow.executor_settings, "status_command", None), slurm_config())
        except RuntimeError as e:
            raise WorkflowError(str(e)) from None

"""``python -m negatives <command>``: what the workflow's rules call, and how a
user runs one piece by hand.  See docs/INTERFACES.md for the contract."""

from __future__ import annotations

import argparse
import json
import os
import sys


class _Object(dict):
    """A JSON object as read, with the keys it wrote more than once (JSON keeps the last silently)."""

    twice: tuple[str, ...] = ()


def _object(pairs) -> _Object:
    out = _Object(pairs)
    keys = [k for k, _ in pairs]
    out.twice = tuple(dict.fromkeys(k for k in keys if keys.count(k) > 1))
    return out


def _json(text: str) -> dict:
    try:  # NaN and Infinity are read as Python reads them, so the section's check names their key
        value = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _written_twice(value, key: str) -> str | None:
    """The first key (dotted, under ``key``) that a ``--settings`` object wrote twice."""
    if isinstance(value, list):
        return next((k for i, v in enumerate(value) if (k := _written_twice(v, f"{key}[{i}]"))), None)
    if not isinstance(value, dict):
        return None
    if getattr(value, "twice", ()):
        return f"{key}.{value.twice[0]}" if key else value.twice[0]
    return next((k for name, v in value.items() if (k := _written_twice(v, f"{key}.{name}" if key else name))), None)


#: the config section each command's ``--settings`` is
SECTIONS = {
    "pretrain": "pretrain",
    "init": "pretrain",
    "evaluate": "evaluate",
    "analyze": "analysis",
    "dynamics": "analysis",
}
#: keys the Python API takes that the config refuses: ``max_steps`` stops a run
#: early and writes its checkpoint.pt as if it were finished
LIBRARY_ONLY = {"pretrain": ("max_steps",)}


def _plain(value):
    """``value`` with every :class:`_Object` a plain dict (what the library keeps and pickles)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _check_settings(a) -> None:
    """What the workflow refuses in a config, refused in ``--settings`` and
    ``--config-json`` before any work: a key written twice, a library-only key."""
    from .config import ConfigError

    for option, name in (("--settings", "settings"), ("--config-json", "config_json")):
        section = SECTIONS.get(a.command, f"datasets.{getattr(a, 'dataset', '')}" if a.command == "prepare" else "")
        twice = _written_twice(getattr(a, name, None), section if option == "--settings" else "")
        if twice:
            raise ConfigError(f"{twice}: written twice in {option} (JSON would keep only the last); write it once")
        if hasattr(a, name):
            setattr(a, name, _plain(getattr(a, name)))
    for key in LIBRARY_ONLY.get(SECTIONS.get(a.command), ()):
        if key in a.settings:
            raise ConfigError(
                f"pretrain.{key}: not a config key (the Python API's step limit for tests and "
                f"benchmarks): a run it stops would be written as finished; leave it out"
            )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _log(msg: str) -> None:
    print(msg, flush=True)


def cmd_prepare(a) -> None:
    from .data.prepare import prepare

    path = prepare(a.dataset, a.root, a.out, a.train_images, a.test_images, download=bool(a.download), **a.settings)
    _log(f"wrote {path}")


def _with_threads(a) -> dict:
    """``--settings`` with ``--threads``, ``--compile``, ``--device``, ... applied:
    how the workflow passes the settings outside a run's identity, which its
    jobs' params leave out (negatives.training.identity)."""
    compile_ = getattr(a, "compile", None)
    apart = {
        "threads": a.threads,
        "compile": None if compile_ is None else bool(compile_),
        **{
            k: getattr(a, k, None)
            for k in ("processes", "nodes", "device", "knn_monitor", "knn_monitor_every", "share_queries", "log_every")
        },
    }
    out = {**a.settings, **{k: v for k, v in apart.items() if v is not None}}
    if hasattr(a, "dynamics_epochs"):  # given: null (the default points) is a value too
        out["dynamics_epochs"] = a.dynamics_epochs
    return out


def cmd_pretrain(a) -> None:
    from .run_checks import check_gpu_sharing
    from .training.pretrain import pretrain

    check_gpu_sharing(int(os.environ.get("NEGATIVES_JOBS_PER_GPU", 1)), _with_threads(a))  # main() set it from the flag
    path = pretrain(a.data, a.method, a.policy, a.temperature, a.seed, _with_threads(a), a.out, log=_log)
    _log(f"wrote {path}")


def cmd_init(a) -> None:
    from .training.pretrain import init_checkpoint

    _log(f"wrote {init_checkpoint(a.data, a.method, a.seed, _with_threads(a), a.out)}")


def cmd_evaluate(a) -> None:
    from .evaluation.probes import evaluate_checkpoint

    result = evaluate_checkpoint(a.checkpoint, a.data, _with_threads(a), a.out)
    _log(json.dumps(result))


def cmd_figure(a) -> None:
    from .config import check_partial
    from .defaults import schema
    from .figure_registry import build

    # the config's values as the workflow checks them (its keys are the figure's to name)
    check_partial({k: v for k, v in a.config_json.items() if k in schema()["properties"]})
    _log(f"drawing {a.name} from {len(a.probes)} files")
    build(a.name, a.probes, a.out, a.config_json)
    _log(f"wrote {a.out}.{{pdf,png,csv}}")


def cmd_similarity(a) -> None:
    from .data.similarity import write_similarity

    _log(f"wrote {write_similarity(a.classes, a.out)}")


def cmd_analyze(a) -> None:
    from .evaluation.analyze import analyze_checkpoint

    _log(f"wrote {analyze_checkpoint(a.checkpoint, a.data, a.similarity, a.settings, a.out)}")


def cmd_dynamics(a) -> None:
    from .evaluation.dynamics import dynamics_of_run

    _log(f"wrote {dynamics_of_run(a.checkpoint, a.data, a.similarity, a.settings, a.out, log=_log)}")


def _epoch_list(text: str):
    """``--dynamics-epochs``: a JSON list of epochs, or ``null``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if value is not None and not (isinstance(value, list) and all(type(v) is int for v in value)):
        raise argparse.ArgumentTypeError(f"expected a JSON list of epochs or null, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per kind of job the workflow's rules run."""
    p = argparse.ArgumentParser(prog="negatives", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_run(sub, "pretrain", cmd_pretrain, "pretrain one run")
    _add_run(sub, "init", cmd_init, "write the random-init encoder of a seed")
    _add_evaluate(sub)
    _add_figure(sub)
    _add_similarity(sub)
    _add_analyze(sub)
    _add_dynamics(sub)
    return p


def _add_prepare(sub) -> None:
    q = sub.add_parser("prepare", help="read a dataset from disk into results/data/NAME")
    q.add_argument("--dataset", required=True)
    q.add_argument("--root", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--train-images", type=int, default=0)
    q.add_argument("--test-images", type=int, default=0)
    q.add_argument(
        "--download",
        type=int,
        choices=(0, 1),
        nargs="?",
        const=1,
        default=0,
        help="fetch missing files where the format allows (alone or 1; 0: no)",
    )
    q.add_argument(
        "--settings",
        type=_json,
        default={},
        help="JSON of the dataset's other keys in datasets.NAME (storage, stream_above_gb, labels, ...)",
    )
    q.set_defaults(func=cmd_prepare)


def _add_run(sub, name: str, func, help_: str) -> None:
    """``pretrain`` or ``init``: the options of one run (``init`` takes no policy, temperature or launch options)."""
    q = sub.add_parser(name, help=help_)
    q.add_argument("--data", required=True)
    q.add_argument("--method", default="moco")
    if name == "pretrain":
        q.add_argument("--policy", required=True)
        q.add_argument("--temperature", type=float, required=True)
    q.add_argument("--seed", type=int, required=True)
    q.add_argument("--settings", type=_json, default={}, help="JSON of the config's pretrain section")
    q.add_argument(
        "--threads",
        type=int,
        help="torch threads of the run, shared by its processes (pretrain.threads; part of the run)",
    )
    if name == "pretrain":
        _add_launch(q)
        _jobs_per_gpu(q)
    q.add_argument("--out", required=True, help="run directory")
    q.set_defaults(func=func)


def _add_launch(q) -> None:
    """The pretrain options the workflow passes outside a run's identity: its processes, device and monitor."""
    q.add_argument(
        "--processes",
        type=int,
        help="processes that train the run together, one per GPU "
        "(pretrain.processes, on each machine; part of the run)",
    )
    q.add_argument("--nodes", type=int, help="machines the run spans (pretrain.nodes; part of the run)")
    q.add_argument(
        "--compile",
        type=int,
        choices=(0, 1),
        help="1: torch.compile the encoders (pretrain.compile; part of the run)",
    )
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), help="pretrain.device")
    q.add_argument("--knn-monitor", type=int, help="pretrain.knn_monitor (the log's kNN line)")
    q.add_argument("--knn-monitor-every", type=int, help="pretrain.knn_monitor_every")
    q.add_argument("--share-queries", type=int, help="pretrain.share_queries (the log's gradient shares)")
    q.add_argument("--log-every", type=float, help="pretrain.log_every (seconds between progress lines; 0: off)")
    q.add_argument(
        "--dynamics-epochs",
        type=_epoch_list,
        default=argparse.SUPPRESS,
        help="pretrain.dynamics_epochs as JSON: epochs after which the query encoder is saved (null: 4 points)",
    )


def _add_evaluate(sub) -> None:
    q = sub.add_parser("evaluate", help="linear probe, few-label probe and kNN of a checkpoint")
    q.add_argument("--data", required=True)
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--settings", type=_json, default={}, help="JSON of the config's evaluate section")
    q.add_argument("--threads", type=int, help="torch threads (evaluate.threads; speed only)")
    _jobs_per_gpu(q)
    q.add_argument("--out", required=True, help="probe.json")
    q.set_defaults(func=cmd_evaluate)


def _add_figure(sub) -> None:
    q = sub.add_parser("figure", help="draw one figure from probe.json files")
    q.add_argument("name")
    q.add_argument("--probes", nargs="+", required=True)
    q.add_argument("--config-json", type=_json, default={})
    q.add_argument("--out", required=True, help="output prefix (writes .pdf, .png, .csv)")
    q.set_defaults(func=cmd_figure)


def _add_similarity(sub) -> None:
    q = sub.add_parser(
        "similarity", help="WordNet similarity (depth of the lowest common hypernym) of every class pair"
    )
    q.add_argument("--classes", required=True, help="classes.tsv (index, name, synset)")
    q.add_argument("--out", required=True, help="wordnet_similarity.tsv")
    q.set_defaults(func=cmd_similarity)


def _add_analyze(sub) -> None:
    q = sub.add_parser("analyze", help="difficulty, percentile, class and WordNet similarity of query/negative pairs")
    q.add_argument("--data", required=True)
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--similarity", required=True, help="wordnet_similarity.tsv")
    q.add_argument("--settings", type=_json, default={}, help="JSON of the config's analysis section")
    _jobs_per_gpu(q)
    q.add_argument("--out", required=True, help="pairs.parquet")
    q.set_defaults(func=cmd_analyze)


def _add_dynamics(sub) -> None:
    q = sub.add_parser("dynamics", help="Section 4 measures at every saved epoch of a run (analysis/dynamics.csv)")
    q.add_argument("--data", required=True)
    q.add_argument("--checkpoint", required=True, help="the run's checkpoint.pt (its snapshots/ beside it)")
    q.add_argument("--similarity", required=True, help="wordnet_similarity.tsv")
    q.add_argument("--settings", type=_json, default={}, help="JSON of the config's analysis section")
    _jobs_per_gpu(q)
    q.add_argument("--out", required=True, help="dynamics.csv")
    q.set_defaults(func=cmd_dynamics)


def _jobs_per_gpu(q) -> None:
    q.add_argument("--jobs-per-gpu", type=_positive, help="jobs that may share one GPU (jobs_per_gpu; speed only)")


#: what a bad input or a file problem raises: one line on stderr, exit status 2
#: (anything else is a bug and keeps its traceback)
USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)
#: exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .runtime.memory import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: steps reuse freed memory (no page faults)
    if getattr(args, "jobs_per_gpu", None):  # the GPU locks' slots (negatives.runtime.gpus), for spawned workers too
        os.environ["NEGATIVES_JOBS_PER_GPU"] = str(args.jobs_per_gpu)
    try:
        _check_settings(args)
        args.func(args)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"negatives {args.command}: error: {message}", file=sys.stderr, flush=True)
        return 2
    except (MemoryError, RuntimeError) as e:  # an allocation the checks before the work did not foresee
        if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate" in str(e)):
            raise
        print(
            f"negatives {args.command}: error: out of memory ({(str(e).strip().splitlines() or ['-'])[-1][:160]}); "
            "lower the sizes in its settings, or run it where there is more memory",
            file=sys.stderr,
            flush=True,
        )
        return 2
    except KeyboardInterrupt:
        again = " to resume from its last checkpoint" if args.command == "pretrain" else ""
        print(
            f"negatives {args.command}: interrupted; nothing more was written: run the same command again{again}",
            file=sys.stderr,
            flush=True,
        )
        return INTERRUPTED
    except SystemExit as e:  # the trainer's stop on Ctrl-C, after saving (its message says where)
        if e.code != INTERRUPTED:
            raise
        message = getattr(e, "message", "interrupted; run the same command again to resume")
        print(f"negatives {args.command}: {message}", file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

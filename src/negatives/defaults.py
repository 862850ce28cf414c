"""The defaults of every config key, read from the one place they are written:
the config schema (``workflow/schemas/config.schema.yaml``, shipped with the
package as ``negatives/config.schema.yaml``).  Snakemake's validation fills
them into the workflow's config; the library's settings classes take theirs
from here, so a run started by hand gets the same values as one the workflow
starts.

A key marked ``speed_only: true`` in the schema changes how fast a job runs,
not what it computes, bit for bit (tests/training/test_speed_only.py shows it for each
one): a finished run is never redone when it changes.
:func:`check_partial` checks the part of a config an entry point was given
by hand against the same schema, as Snakemake's validation checks the whole;
:func:`config_value` reads one key by its dotted name, its type checked."""

from __future__ import annotations

import copy
import functools
import math
from numbers import Real
from pathlib import Path

__all__ = [
    "SCHEMA",
    "ConfigError",
    "schema",
    "schema_defaults",
    "speed_only",
    "log_only",
    "check_finite",
    "check_partial",
    "check_section",
    "check_integers",
    "check_subset_size",
    "not_an_integer",
    "config_value",
    "check_type",
]

SCHEMA = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A config value that is wrong; the message names the key."""


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The config schema as a dict."""
    import yaml

    if not SCHEMA.is_file():
        raise FileNotFoundError(f"the config schema {SCHEMA} is missing; reinstall the package")
    return yaml.safe_load(SCHEMA.read_text())


def _resolve(node: dict, root: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def schema_defaults(*section: str) -> dict:
    """``{key: default}`` of the keys of a config section, e.g.
    ``schema_defaults("pretrain")`` or ``schema_defaults("evaluate", "faithful")``
    (a key without a default is left out; a copy, safe to change).

    >>> schema_defaults("pretrain")["queue_size"]
    4096
    """
    root = schema()
    node = root
    for name in section:
        node = _resolve(node, root)["properties"][name]
    props = _resolve(node, root).get("properties", {})
    return {
        key: copy.deepcopy(_resolve(spec, root)["default"])
        for key, spec in props.items()
        if "default" in _resolve(spec, root)
    }


def speed_only(section: str | None = None) -> tuple[str, ...]:
    """The keys of a config section (``None``: the top level) marked
    ``speed_only`` in the schema.

    >>> speed_only("evaluate")
    ('threads',)
    >>> speed_only("pretrain")
    ()
    >>> speed_only()
    ('jobs_per_gpu',)
    """
    return _marked("speed_only", section)


def log_only(section: str) -> tuple[str, ...]:
    """The keys of a config section marked ``log_only`` in the schema: they
    change what the training log shows, never the weights, so they are no
    part of a run's identity either.

    >>> log_only("pretrain")
    ('knn_monitor_every', 'knn_monitor', 'share_queries', 'log_every', 'dynamics_epochs')
    """
    return _marked("log_only", section)


def _marked(mark: str, section: str | None) -> tuple[str, ...]:
    """The keys of a config section (``None``: the top level) that carry ``mark: true`` in the schema."""
    root = schema()
    props = (root if section is None else _resolve(root["properties"][section], root)).get("properties", {})
    return tuple(key for key, spec in props.items() if spec.get(mark))


def check_finite(value, key: str = "") -> None:
    """Raise :class:`ConfigError` naming the key of the first NaN or infinity
    in ``value`` (a config or part of one): no key takes them, and a JSON
    schema's ranges let NaN through (every comparison with it is false)."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key or 'value'}: must be a finite number, got {value!r} (NaN and infinity are refused)")


@functools.lru_cache(maxsize=1)
def _strict_validator():
    """Draft 2020-12 whose ``integer`` is an int only: 16.0 is refused (the
    draft's own accepts it, and a float size fails deep inside a job)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    ints = base.TYPE_CHECKER.redefine("integer", lambda checker, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, type_checker=ints)


def _wants_integer(e) -> bool:
    """Whether a validation error is (or, under oneOf, holds) an ``integer`` type error."""
    if e.validator == "type":
        return "integer" in (e.validator_value if isinstance(e.validator_value, list) else [e.validator_value])
    return any(_wants_integer(c) for c in e.context or ())


def not_an_integer(value: float) -> str:
    """The integer rule, for a whole float such as 16.0 given to an integer key."""
    return f"{value!r} is not an integer (integer keys take whole numbers written without a point: {int(value)})"


def config_value(cfg: dict, key: str, kind: type | tuple[type, ...]):
    """The value of ``cfg`` at dotted ``key``, which must exist and be of type ``kind``."""
    value = cfg
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"{key}: missing")
        value = value[part]
    check_type(key, value, kind)
    return value


def check_type(key: str, value, kind) -> None:
    """Raise :class:`ConfigError` unless ``value`` of ``key`` is of type ``kind`` (a type or a tuple of them)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, never to a config
    if int in kinds and isinstance(value, float) and value.is_integer() and float not in kinds:
        raise ConfigError(f"{key}: {not_an_integer(value)}")
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("number" if k is Real else k.__name__ for k in kinds)
        raise ConfigError(f"{key}: must be {names}, got {value!r}")


def _float_for_integer(e) -> bool:
    """Whether a validation error is a whole float (16.0) given to an integer key."""
    return isinstance(e.instance, float) and e.instance.is_integer() and _wants_integer(e)


def _message(e) -> str:
    """jsonschema's message, with the integer rule spelled out for a float such as 16.0."""
    return not_an_integer(e.instance) if _float_for_integer(e) else e.message


def check_partial(fragment: dict, library_only: dict[str, tuple[str, ...]] | None = None) -> None:
    """Check the part of a config an entry point was given by hand (e.g.
    ``{"seeds": [seed], "datasets": {name: entry}}``) against the config
    schema, as the workflow's validation does: unknown keys, types and ranges
    of what is there (``library_only``: per section, keys the library takes
    that are not config keys).  NaN, infinity and a float for an integer key
    (16.0) are refused too.  Raises :class:`ConfigError` naming the key."""
    check_finite(fragment)
    library_only = library_only or {}
    fragment = {
        section: {k: v for k, v in value.items() if k not in library_only[section]}
        if section in library_only and isinstance(value, dict)
        else value
        for section, value in fragment.items()
    }
    errors = _errors(fragment)
    if errors:
        e = errors[0]
        key = _key(e, fragment)
        if e.validator == "additionalProperties":  # e.schema: the mapping's own schema
            allowed = sorted(e.schema.get("properties", {})) + list(library_only.get(str(e.absolute_path[0]), ()))
            raise ConfigError(f"{key}: {e.message}; allowed: {', '.join(allowed)}")
        raise ConfigError(f"{key}: {_message(e)}")


def _errors(fragment: dict) -> list:
    """The schema's errors of ``fragment`` (top-level keys: config keys), integers strict, in key order."""
    root = schema()
    properties = {section: root["properties"][section] for section in fragment}
    validator = _strict_validator()({"type": "object", "properties": properties, "$defs": root["$defs"]})
    return sorted(validator.iter_errors(fragment), key=lambda e: [str(p) for p in e.absolute_path])


def _key(e, fragment: dict) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".") or next(
        iter(fragment)
    )


def check_integers(fragment: dict) -> None:
    """Only the integer rule of :func:`check_partial`: raise
    :class:`ConfigError` naming the first integer key given a float (16.0),
    which a validator that reads the draft as written lets through."""
    for e in _errors(fragment):
        if _float_for_integer(e):
            raise ConfigError(f"{_key(e, fragment)}: {not_an_integer(e.instance)}")


def check_subset_size(key: str, n: int, classes: int) -> None:
    """A class-balanced subset of ``n`` images (0: all) holds at least one image of each of ``classes``."""
    if 0 < n < classes:
        raise ConfigError(
            f"{key}: {n} images are fewer than the {classes} classes: a class-balanced subset holds "
            f"at least one of each; allowed: 0 (all) or at least {classes}"
        )


def check_section(section: str, settings: dict, library_only: tuple[str, ...] = ()) -> None:
    """Check a ``pretrain``, ``evaluate`` or ``analysis`` section given by hand
    (:func:`check_partial` of ``{section: settings}``)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(settings).__name__}")
    check_partial({section: settings}, {section: library_only})

"""The defaults of every config key, read from the one place they are written:
the config schema (``workflow/schemas/config.schema.yaml``, shipped with the
package as ``negatives/config.schema.yaml``).  Snakemake's validation fills
them into the workflow's config; the library's settings classes take theirs
from here, so a run started by hand gets the same values as one the workflow
starts.

A key marked ``speed_only: true`` in the schema changes how fast a job runs,
not what it computes, bit for bit (tests/test_speed_only.py shows it for each
one): a finished run is never redone when it changes.
:func:`check_partial` checks the part of a config an entry point was given
by hand against the same schema, as Snakemake's validation checks the whole."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

__all__ = ["SCHEMA", "ConfigError", "schema", "schema_defaults", "speed_only", "log_only", "check_partial", "check_section"]

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
    return {key: copy.deepcopy(_resolve(spec, root)["default"]) for key, spec in props.items()
            if "default" in _resolve(spec, root)}


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
    root = schema()
    props = (root if section is None else _resolve(root["properties"][section], root)).get("properties", {})
    return tuple(key for key, spec in props.items() if spec.get("speed_only"))


def log_only(section: str) -> tuple[str, ...]:
    """The keys of a config section marked ``log_only`` in the schema: they
    change what the training log shows, never the weights, so they are no
    part of a run's identity either.

    >>> log_only("pretrain")
    ('knn_monitor_every', 'knn_monitor')
    """
    root = schema()
    props = _resolve(root["properties"][section], root).get("properties", {})
    return tuple(key for key, spec in props.items() if spec.get("log_only"))


def check_partial(fragment: dict, library_only: dict[str, tuple[str, ...]] | None = None) -> None:
    """Check the part of a config an entry point was given by hand (e.g.
    ``{"seeds": [seed], "datasets": {name: entry}}``) against the config
    schema, as the workflow's validation does: unknown keys, types and ranges
    of what is there (``library_only``: per section, keys the library takes
    that are not config keys).  Raises :class:`ConfigError` naming the key."""
    import jsonschema

    root = schema()
    library_only = library_only or {}
    fragment = {section: {k: v for k, v in value.items() if k not in library_only[section]}
                if section in library_only and isinstance(value, dict) else value for section, value in fragment.items()}
    properties = {section: root["properties"][section] for section in fragment}
    validator = jsonschema.Draft202012Validator({"type": "object", "properties": properties, "$defs": root["$defs"]})
    errors = sorted(validator.iter_errors(fragment), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        key = ".".join(map(str, e.absolute_path)) or next(iter(fragment))
        if e.validator == "additionalProperties":  # e.schema: the mapping's own schema
            allowed = sorted(e.schema.get("properties", {})) + list(library_only.get(str(e.absolute_path[0]), ()))
            raise ConfigError(f"{key}: {e.message}; allowed: {', '.join(allowed)}")
        raise ConfigError(f"{key}: {e.message}")


def check_section(section: str, settings: dict, library_only: tuple[str, ...] = ()) -> None:
    """Check a ``pretrain``, ``evaluate`` or ``analysis`` section given by hand
    (:func:`check_partial` of ``{section: settings}``)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(settings).__name__}")
    check_partial({section: settings}, {section: library_only})

"""The defaults of every config key, read from the one place they are written:
the config schema (``workflow/schemas/config.schema.yaml``, shipped with the
package as ``negatives/config.schema.yaml``).  Snakemake's validation fills
them into the workflow's config; the library's settings classes take theirs
from here, so a run started by hand gets the same values as one the workflow
starts.

A key marked ``speed_only: true`` in the schema changes how fast a job runs,
not what it computes: a finished run is never redone when it changes."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

__all__ = ["SCHEMA", "schema", "schema_defaults", "speed_only"]

SCHEMA = Path(__file__).with_name("config.schema.yaml")


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


def speed_only(section: str) -> tuple[str, ...]:
    """The keys of a config section marked ``speed_only`` in the schema.

    >>> speed_only("pretrain")
    ('threads', 'compile')
    """
    root = schema()
    props = _resolve(root["properties"][section], root).get("properties", {})
    return tuple(key for key, spec in props.items() if spec.get("speed_only"))

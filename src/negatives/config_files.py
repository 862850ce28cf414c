"""Reading config files strictly, before Snakemake's loader can hide a mistake:
a YAML error names the file and line, a key written twice in one mapping is
an error (YAML keeps the last one silently), a key the schema does not know is
named with its file, and numbers written with an exponent (``1e-3``, which
YAML 1.1 reads as a string) are numbers.

A config file is an overlay: ``snakemake --configfile F`` starts from the
Snakefile's ``configfile:`` (:func:`base_config`: the working directory's
config.yaml, else the workflow's own) and merges F on top (nested mappings key
by key, lists and other values replaced); the schema fills in what none of
them names.  :func:`read_config` layers files the same way for the library and
the benchmarks."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["base_config", "check_config_file", "merge_config", "numbers_as_numbers", "read_config", "schema_message"]

#: the checkout this package is part of (src/negatives/..): the workflow's own config.yaml is there
_CHECKOUT = Path(__file__).resolve().parents[2]
#: read_config's default: the base the workflow picks
_PICK = object()

#: a number with an exponent and no dot before it, as YAML 1.1 leaves it a string
_EXPONENT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


def _strict_loader():
    import yaml

    class Strict(yaml.SafeLoader):
        """SafeLoader that refuses a key written twice in one mapping."""

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); "
                        "YAML would keep only the last one: merge the two",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return Strict


def check_config_file(path: str | Path) -> dict:
    """The mapping in the config file ``path``; raise :class:`ConfigError`
    naming ``path`` (and the line) when it is not valid YAML, writes a key twice
    in one mapping, is not a mapping of config keys, or names a key the schema
    does not know (a typo would otherwise be caught only after merging, with no
    file to look in)."""
    import yaml

    from .config import ConfigError

    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_strict_loader())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"{path}: holds {held}, not a mapping of config keys "
            "(a config file writes keys such as 'pretrain: {epochs: 10}')"
        )
    unknown = _unknown_key(data)
    if unknown is not None:
        raise ConfigError(f"{path}: {schema_message(unknown)}")
    return data


def _unknown_key(data: dict):
    """The schema's first error about a key it does not know in ``data``
    (one file: a part of the config, so its missing keys are not errors)."""
    import jsonschema

    from .defaults import schema

    errors = jsonschema.Draft202012Validator(schema()).iter_errors(data)
    unknown = [e for e in errors if e.validator == "additionalProperties"]
    return min(unknown, key=lambda e: [str(p) for p in e.absolute_path], default=None)


def merge_config(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay`` merged on top, as Snakemake merges a
    ``--configfile`` onto the Snakefile's ``configfile:``: a mapping in both
    merges key by key, anything else (a list included) replaces.  A new dict;
    neither argument is changed."""
    import copy

    out = copy.deepcopy(base)
    for key, value in overlay.items():
        current = out.get(key, {})
        if not isinstance(value, dict):
            out[key] = copy.deepcopy(value)
        elif isinstance(current, dict):
            out[key] = merge_config(current, value)
        elif value:  # a mapping replaces a value that is not one (an empty mapping leaves it, as Snakemake does)
            out[key] = merge_config({}, value)
    return out


def base_config(workflow_dir: str | Path | None = None) -> Path | None:
    """The config file every overlay is layered on: ``config.yaml`` of the
    working directory (Snakemake's ``configfile:``), else the workflow's own in
    ``workflow_dir`` (default: the checkout holding this package), so that an
    overlay never loses its base when run from another directory; None when
    neither is there."""
    for path in (Path("config.yaml"), Path(workflow_dir or _CHECKOUT) / "config.yaml"):
        if path.is_file():
            return path
    return None


def read_config(*overlays: str | Path, base=_PICK) -> dict:
    """The config ``snakemake --configfile OVERLAYS...`` gets before its
    schema fills the defaults: ``base`` (default :func:`base_config`; None:
    none), then each overlay merged on top in order.  Every file is read
    strictly (:func:`check_config_file`); numbers written ``1e-3`` are numbers."""
    from .config import ConfigError

    base = base_config() if base is _PICK else base
    files = [*([base] if base is not None else []), *overlays]
    if not files:
        raise ConfigError("no config file: config.yaml is not in the working directory nor in the workflow")
    config: dict = {}
    for path in files:
        config = merge_config(config, check_config_file(path))
    return numbers_as_numbers(config)


def numbers_as_numbers(value):
    """``value`` (a loaded config) with every string that is a number written
    with an exponent (``"1e-3"``) turned into that float, in place for dicts
    and lists; returns it."""
    if isinstance(value, dict):
        for k, v in value.items():
            value[k] = numbers_as_numbers(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            value[i] = numbers_as_numbers(v)
    elif isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    return value


_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _allowed(schema: dict) -> str:
    """What a (sub)schema allows, in a few words."""
    if "$ref" in schema:  # "#/$defs/NAME" of the config schema
        from .defaults import schema as config_schema

        schema = {
            **config_schema()["$defs"][schema["$ref"].rsplit("/", 1)[-1]],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    if "properties" in schema and schema.get("additionalProperties") is False:
        return "the keys " + ", ".join(sorted(schema["properties"]))
    parts = [" or ".join(schema["type"]) if isinstance(schema.get("type"), list) else schema.get("type", "")]
    parts += [f"{op} {schema[k]}" for k, op in _BOUNDS.items() if k in schema]
    for alt in ("oneOf", "anyOf"):
        if alt in schema:
            parts.append(" | ".join(_allowed(s) for s in schema[alt]))
    return " ".join(p for p in parts if p) or schema.get("description", "") or "see the schema"


def schema_message(error) -> str:
    """One line of a failed schema validation (Snakemake's ``WorkflowError``
    around a jsonschema ``ValidationError``, or that error itself): the key,
    its value and what is allowed -- not the error's print of the schema."""
    import jsonschema

    # Snakemake's WorkflowError keeps only the text; the error it was raised in handling is its context
    found = next(
        (x for x in (error, error.__cause__, error.__context__) if isinstance(x, jsonschema.ValidationError)), None
    )
    if found is None:
        return (str(error).strip().splitlines() or ["the config does not match its schema"])[0]
    e = found
    key = ".".join(map(str, e.absolute_path)) or "top level"
    message = e.message if len(e.message) <= 200 else e.message[:200] + "..."
    if e.validator == "additionalProperties":
        allowed = ", ".join(sorted(e.schema.get("properties", {})))
    elif e.validator in _BOUNDS or e.validator in ("type", "enum"):
        allowed = _allowed(e.schema)
    elif e.validator == "required":
        allowed = "a mapping with " + ", ".join(map(str, e.validator_value))
    else:
        allowed = _allowed(e.schema)
    return f"{key}: {message}; allowed: {allowed}"

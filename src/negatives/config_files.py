"""Reading config files strictly, before Snakemake's loader can hide a mistake:
a YAML error names the file and line, a key written twice in one mapping is
an error (YAML keeps the last one silently), and numbers written with an
exponent (``1e-3``, which YAML 1.1 reads as a string) are numbers."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["check_config_file", "numbers_as_numbers", "schema_message"]

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
                        None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); "
                        "YAML would keep only the last one: merge the two", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return Strict


def check_config_file(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` and the line when the file is not
    valid YAML or writes a key twice in one mapping."""
    import yaml

    from .config import ConfigError

    path = Path(path)
    try:
        yaml.load(path.read_text(), Loader=_strict_loader())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


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

        schema = {**config_schema()["$defs"][schema["$ref"].rsplit("/", 1)[-1]],
                  **{k: v for k, v in schema.items() if k != "$ref"}}
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
    found = next((x for x in (error, error.__cause__, error.__context__) if isinstance(x, jsonschema.ValidationError)),
                 None)
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

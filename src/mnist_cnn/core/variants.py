"""Model variants as data: a TOML file of tables, or ``--variant "KEY: field=value, ..."``.

A variant of the specification's family states only what differs from Model_A (32 filters);
any other network is a list of layers (core.network)::

    [F16]
    filters = 16
    [AD]
    dropout = 0.5
    name = "Model_A_dropout"   # optional; default Model_<KEY>
    [KERAS_IO]
    layers = ["conv 32 3", "pool 2", "conv 64 3", "pool 2", "flatten", "dropout 0.5"]
    optimizer = "adam"

Every mistake (an unknown field or layer, a wrong type, an impossible shape, a key defined twice
or clashing with a built-in) is a one-line ``ConfigError`` naming the field or layer, and for a
file the file and line, raised before anything loads or trains.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tomllib

from mnist_cnn.core.config import MODEL_VARIANTS, ModelSpec
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.network import LayerError

# What every variant starts from: the specification's Model_A.
BASE_VARIANT = MODEL_VARIANTS["A"]


def variant_from_fields(key: str, fields: dict[str, Any]) -> ModelSpec:
    """Model_A with ``fields`` changed, under ``key`` (capitalised) and ``name`` (default Model_<KEY>)."""
    if "key" in fields:
        raise ConfigError("a variant's key is its table name (or what stands before ':'), not a field")
    key = key.strip().upper()
    # A network written as layers starts from nothing; the family fields start from Model_A's.
    base = {} if "layers" in fields else BASE_VARIANT.to_json()
    values = {**base, "key": key, "name": f"Model_{key}", **fields}
    return ModelSpec.from_json(values)


def read_variants_file(path: Path) -> tuple[ModelSpec, ...]:
    """Every table of a TOML variants file as a spec, in file order."""
    return tuple(spec for spec, _ in read_variants_with_lines(path))


def read_variants_with_lines(path: Path) -> list[tuple[ModelSpec, str]]:
    """Every table of a TOML variants file as a spec, with 'FILE:LINE' of its table, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"variants file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read variants file {path} ({error})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # Its message names the line and column.
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    if not document:
        raise ConfigError(f"{path} defines no variant: write a table such as [F16] with filters = 16 below it")
    specs = []
    for key, table in document.items():
        line = table_line(text, key)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}:{field_line(text, None, key)}: {key} is not a variant table: write [{key}] "
                              "and its fields below it")  # fmt: skip
        try:
            specs.append((variant_from_fields(key, table), f"{path}:{line}"))
        except LayerError as error:  # The line of the layer's own string.
            where = string_line(text, key, error.text) or field_line(text, key, "layers")
            raise ConfigError(f"{path}:{where}: variant {key}: {error}") from None
        except ConfigError as error:
            field = next((name for name in table if name in str(error)), None)
            where = field_line(text, key, field) if field else line
            raise ConfigError(f"{path}:{where}: variant {key}: {error}") from None
    return specs


def table_line(text: str, key: str) -> int:
    """The line of ``[key]`` in a TOML text (1 when it cannot be found)."""
    pattern = re.compile(rf"^\s*\[\s*[\"']?{re.escape(key)}[\"']?\s*\]")
    return next((number for number, line in enumerate(text.splitlines(), 1) if pattern.match(line)), 1)


def field_line(text: str, key: str | None, field: str | None) -> int:
    """The line of ``field = ...`` inside table ``key`` (top level when ``key`` is None)."""
    lines = text.splitlines()
    start = table_line(text, key) if key else 1
    assignment = re.compile(rf"^\s*[\"']?{re.escape(field or '')}[\"']?\s*=")
    for number in range(start, len(lines) + 1):
        line = lines[number - 1]
        if number > start and line.lstrip().startswith("["):
            break
        if field and assignment.match(line):
            return number
    return start


def string_line(text: str, key: str, string: str) -> int | None:
    """The first line at or below ``[key]`` that holds ``string`` in quotes (a layer of a list)."""
    lines = text.splitlines()
    start = table_line(text, key)
    for number in range(start, len(lines) + 1):
        if f'"{string}"' in lines[number - 1] or f"'{string}'" in lines[number - 1]:
            return number
    return None


def parse_inline_variant(text: str) -> ModelSpec:
    """``"D: filters=32, dropout=0.5, dense_units=[64, 32]"`` as a spec (values written as in TOML)."""
    key, colon, rest = text.partition(":")
    if not colon or not key.strip():
        raise ConfigError(f"--variant {text!r}: write KEY: field=value, ... (e.g. 'D: filters=32, dropout=0.5')")
    fields: dict[str, Any] = {}
    for item in split_outside_brackets(rest):
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise ConfigError(f"--variant {text!r}: {item.strip()!r} is not field=value")
        fields[name.strip()] = toml_value(value.strip())
    try:
        return variant_from_fields(key, fields)
    except ConfigError as error:
        raise ConfigError(f"--variant {key.strip()}: {error}") from None


def split_outside_brackets(text: str) -> list[str]:
    """Split at commas that are not inside [...] (a list value holds commas of its own)."""
    parts, depth, current = [], 0, ""
    for character in text:
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += character
    parts.append(current)
    return [part for part in parts if part.strip()]


def toml_value(text: str) -> Any:
    """A value as TOML reads it (16, 0.5, [64, 32], "adam"); a bare word stays a string (adam)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def gather_variants(files: Sequence[Path], inline: Sequence[str]) -> tuple[ModelSpec, ...]:
    """The variants of every file and ``--variant``, checked together: no key twice, none a built-in's."""
    specs = [found for path in files for found in read_variants_with_lines(path)]
    specs += [(parse_inline_variant(text), f"--variant {text!r}") for text in inline]
    check_keys(specs)
    return tuple(spec for spec, _ in specs)


def check_keys(specs: Iterable[tuple[ModelSpec, str]]) -> None:
    """Each (spec, where it is defined): a key clashing with a built-in, or defined twice, is an
    error naming where (the file and line, or the --variant)."""
    seen: dict[str, str] = {}
    for spec, where in specs:
        if spec.key in MODEL_VARIANTS:
            raise ConfigError(
                f"{where}: variant {spec.key!r} clashes with the built-in Model_{spec.key}: give it another key"
            )
        if spec.key in seen:
            raise ConfigError(f"{where}: variant {spec.key!r} is defined twice (first at {seen[spec.key]})")
        seen[spec.key] = where

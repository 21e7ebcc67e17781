"""Recipes: YAML files composed by ``include:``, loaded into typed dataclasses.

A recipe is the only place a hyperparameter lives. Every stage declares one
dataclass (its ``Recipe``); fields have no defaults unless the value is truly
structural, so a value the recipe does not show cannot silently steer a run
("the code never hides a default the recipe does not show").

Composition::

    # recipes/tiny/ltve.yaml
    include: [../paper/ltve.yaml]      # paths relative to this file, merged in order
    output_dir: runs/tiny/ltve          # this file's keys override the includes
    train: {num_steps: 200}

Command-line overrides (``key.sub=value``) are applied last.

Errors name the key, the file it came from and the accepted keys, e.g.::

    RecipeError: unknown key 'trian' in recipes/tiny/ltve.yaml (top level).
      Accepted keys: include, output_dir, data, train, ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

__all__ = ["MISSING", "UserError", "RecipeError", "load_recipe", "structure", "recipe_hash", "recipe_to_dict",
           "help_field"]


class UserError(ValueError):
    """An input a person can fix (a path, a column, a value, a folder from another run); the message
    names it and the fix, and the CLI prints it without a traceback (exit code 2)."""


class RecipeError(UserError):
    """A recipe is malformed: unknown key, wrong type, missing value or bad include."""


def help_field(help: str, default: Any = MISSING, **kwargs: Any) -> Any:
    """A dataclass field with a one-line help string (shown by ``aigp <stage> --help``)."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


# ---------------------------------------------------------------------------
# Loading and composition
# ---------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}. "
                          "Check the path (includes are relative to the including file).")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path} is not a text file ({err.reason} at byte {err.start}); a recipe is YAML text.") \
            from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)  # str(err) is a multi-line excerpt; the position says it in one
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}. "
                          f"Fix the file there.") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must hold a mapping of keys to values at top level, got {type(data).__name__}.")
    return data


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """The (source name, mapping) layers of a recipe, includes first, in merge order."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(f"include cycle: {chain}. Remove one of the includes.")
    data = _read_yaml(path)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise RecipeError(f"'include' in {path} must be a path or a list of paths, got {includes!r}.")
    layers: list[tuple[str, dict]] = []
    for inc in includes:
        layers += _layers(path.parent / inc, (*seen, path))
    layers.append((_display(path), data))
    return layers


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parse_overrides(overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value (e.g. train.num_steps=100).")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise RecipeError(f"cannot parse overrides {overrides}: {err}") from err


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _source_of(dotted: str, layers: list[tuple[str, dict]]) -> str:
    """The last layer that sets ``dotted`` (the one whose value won)."""
    for name, data in reversed(layers):
        node: Any = data
        for part in dotted.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                break
        else:
            return name
    return "the recipe"


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _check_keys(schema: type, data: dict, prefix: str, layers: list[tuple[str, dict]]) -> None:
    """Reject unknown keys before OmegaConf sees them, naming file and accepted keys."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            where = prefix.rstrip(".") or "top level"
            accepted = ", ".join(fields)
            raise RecipeError(
                f"unknown key '{dotted}' in {_source_of(dotted, layers)} ({where}). "
                f"Accepted keys of {schema.__name__}: {accepted}. Fix the spelling or remove the key."
            )
        sub = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            _check_keys(sub, value, f"{dotted}.", layers)


def load_recipe(path: str | Path, schema: type[T], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``path`` (with its includes and ``overrides``) into an instance of ``schema``."""
    layers = _layers(Path(path))
    if overrides:
        layers.append(("command-line overrides", _parse_overrides(list(overrides))))
    merged: dict = {}
    for _, data in layers:
        merged = _deep_merge(merged, data)
    return _typed(schema, merged, layers, "", f"{_display(Path(path))} leaves {{}} unset; every value must be in "
                  f"the recipe (or an included one) or given as key=value.")


def structure(schema: type[T], data: dict, prefix: str) -> T:
    """An untyped block of a loaded recipe (``data``, found at ``prefix``, e.g. ``backend.scripted.``) as an
    instance of ``schema``, under the same checks as ``load_recipe``: unknown and unset keys, types, finite
    numbers, no negative counts; every message names the key with its prefix."""
    nested: dict = data
    for part in reversed(prefix.rstrip(".").split(".") if prefix else []):
        nested = {part: nested}
    layers = [("the recipe", nested)]
    return _typed(schema, data, layers, prefix, f"{prefix.rstrip('.') or 'the recipe'} leaves {{}} unset; set them "
                  f"in the recipe.")


def _typed(schema: type[T], data: dict, layers: list[tuple[str, dict]], prefix: str, unset: str) -> T:
    """``data`` checked and typed as ``schema``; ``unset`` is the message for unset keys (``{}``: their names)."""
    _check_keys(schema, data, prefix, layers)
    try:
        structured = OmegaConf.structured(schema)
        cfg = OmegaConf.merge(structured, data)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise RecipeError(unset.format(", ".join(f"{prefix}{k}" for k in missing)))
        _check_finite(OmegaConf.to_container(cfg, resolve=True), prefix, layers)  # after typing: "inf" is a float
        recipe = OmegaConf.to_object(cfg)
        _check_not_negative(recipe, prefix, layers)
        return recipe  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = prefix + str(getattr(err, "full_key", None) or "?")
        raise RecipeError(
            f"bad value for '{key}' (set in {_source_of(key, layers)}): {_first_line(err)}. "
            f"Expected the type declared in {schema.__name__}."
        ) from None


def _check_finite(data: Any, prefix: str, layers: list[tuple[str, dict]]) -> None:
    """Refuse NaN and ±inf anywhere in a recipe, by key: no recipe value means "unbounded", and inf
    passes every "> 0" check downstream only to overflow later without naming its key."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"'{dotted}' is {value} (set in {_source_of(dotted, layers)}); recipe values must be "
                              f"finite numbers: give the bound you mean.")
        if isinstance(value, (dict, list)):
            _check_finite(value, f"{dotted}.", layers)


def _check_not_negative(recipe: Any, prefix: str, layers: list[tuple[str, dict]]) -> None:
    """Refuse a negative integer (a count, size, length or day span) unless the field's help gives a
    negative value a meaning ("-1: the epochs decide"): ``max_prompts=-5`` read as "all", or
    ``review_max_chars=-1`` cutting every review to nothing, are wrong runs that look right."""
    for f in dataclasses.fields(recipe):
        value, dotted = getattr(recipe, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_not_negative(value, f"{dotted}.", layers)
        elif isinstance(value, dict):
            for key, item in value.items():
                if dataclasses.is_dataclass(item):
                    _check_not_negative(item, f"{dotted}.{key}.", layers)
        elif type(value) is int and value < 0 and "-1" not in f.metadata.get("help", ""):
            raise RecipeError(f"'{dotted}' is {value} (set in {_source_of(dotted, layers)}); it is a count or a size "
                              f"and must be >= 0 ({f.metadata.get('help', 'see aigp <stage> --help')}).")


def _first_line(err: OmegaConfBaseException) -> str:
    """OmegaConf's message without the full_key / object_type lines it appends (the key is named already)."""
    return str(getattr(err, "msg", None) or err).splitlines()[0]


# ---------------------------------------------------------------------------
# Resolved form and hash
# ---------------------------------------------------------------------------


def recipe_to_dict(recipe: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(recipe), resolve=True)  # type: ignore[return-value]


def recipe_hash(recipe: Any) -> str:
    """sha256 of the canonical JSON of the resolved recipe; stable across key order."""
    blob = json.dumps(recipe_to_dict(recipe), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def field_help(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every field, nested dataclasses flattened."""
    rows = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            rows += field_help(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", getattr(tp, "__name__", str(tp)), f.metadata.get("help", "")))
    return rows

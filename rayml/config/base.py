"""Strict pydantic base model and a YAML loader whose errors name the file, key and expected value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message is ready to show a user."""


class StrictModel(BaseModel):
    """Base for every config schema: unknown keys are errors and values never change after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the sub-model that holds ``loc[-1]``, or None when it cannot be resolved."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields is not None else None


_UNION_TAGS = {"bool", "int", "float", "str", "bytes", "none", "dict", "list", "tuple", "set", "date", "datetime"}


def _key_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the union-member tags pydantic inserts (``literal['auto']``, ``bool``, ...)."""
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))


def format_validation_error(source: str, model: type[BaseModel], error: ValidationError) -> str:
    """One line per problem: ``<source>: key 'a.b': <what is wrong> (got <value>)``.

    Errors of the alternatives of one union field are merged into one line ("... or ...").
    """
    lines: dict[str, str] = {}
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in loc) or "<root>"
            allowed = _allowed_keys(model, loc)
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines[key] = f"{source}: unknown key '{key}'{hint}"
            continue
        key = ".".join(str(p) for p in _key_path(loc)) or "<root>"
        if item["type"] == "missing":
            lines[key] = f"{source}: key '{key}' is required"
        elif key in lines:
            head, _, got = lines[key].rpartition(" (got ")
            lines[key] = f"{head} or {item['msg'][0].lower()}{item['msg'][1:]} (got {got}"
        else:
            lines[key] = f"{source}: key '{key}': {item['msg']} (got {item.get('input')!r})"
    return "\n".join(lines.values())


def load_config(path: str | Path, model: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Load ``path`` as YAML and validate it into ``model``.

    Args:
        path: YAML file.
        model: the schema; unknown keys are rejected when it derives from :class:`StrictModel`.
        overrides: top-level keys that replace the file's values (e.g. from CLI flags).

    Raises:
        ConfigError: the file is missing, is not a YAML mapping, or does not match the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), model, exc)) from None

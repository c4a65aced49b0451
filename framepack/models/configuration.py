"""Model configs: frozen dataclasses named like the checkpoint's config.json fields."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every model config.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``…) and the keys a
    subclass lists in ``ignored_keys`` (fields of the real config.json that do not change
    the computation) are accepted and dropped; any other unknown key is an error, so a
    config written for another model is caught before weights are read. Every value must have
    its field's annotated type (a bool is not an int; an int is a float), as JSON gives them.
    """

    ignored_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a dict of config fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if not k.startswith("_") and k not in fields and k not in cls.ignored_keys)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown config field(s) {unknown}; accepted fields are {sorted(fields)}"
            )
        kwargs = {k: _freeze(v) for k, v in data.items() if k in fields}
        hints = typing.get_type_hints(cls)
        for name, value in kwargs.items():
            if not _has_type(value, hints[name]):
                raise ConfigError(
                    f"{cls.__name__}: field {name!r} expects {_type_name(hints[name])}, got {value!r} ({type(value).__name__})"
                )
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        )
        if missing:
            raise ConfigError(f"{cls.__name__}: config is missing required field(s) {missing}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[ConfigT], path: str | Path) -> ConfigT:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"{cls.__name__}: config file {path} does not exist") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{cls.__name__}: cannot read config file {path}: {e}") from e
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _freeze(value: Any) -> Any:
    """JSON lists become tuples so that configs stay hashable and immutable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _has_type(value: Any, annotation: Any) -> bool:
    """Whether a JSON value (lists already tuples) fits ``annotation``: int, float, bool, str,
    None, X | Y, tuple[X, ...], Mapping[str, X], dict, Any."""
    if annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        # A NaN or infinite eps or scale computes NaN everywhere: refused like a wrong type.
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, dict):
            return False
        key, item = args or (Any, Any)
        return all(_has_type(k, key) and _has_type(v, item) for k, v in value.items())
    raise TypeError(f"config annotation {annotation!r} has no JSON type check")  # a new annotation: add it above


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")

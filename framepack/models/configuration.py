"""Model configs: frozen dataclasses named like the checkpoint's config.json fields."""

from __future__ import annotations

import dataclasses
import json
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
    config written for another model is caught before weights are read.
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
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
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

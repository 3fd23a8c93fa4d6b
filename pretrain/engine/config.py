"""The apps' resolved config as the engine reads it: YAML holds every default, code only checks what it gets.

An app resolves its Hydra config to plain containers and wraps them in :class:`Settings`, a ``dict`` whose
missing keys raise :class:`MissingSettingError` with the key's full name (``trainer.max_steps``), so a config
group that lacks a key fails where it is read, saying which key, instead of falling back to a default in code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

Config = TypeVar("Config")


class MissingSettingError(KeyError):
    """A key that the config does not define (every config group must define the keys its code reads)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Settings(dict):
    """A config section: a plain ``dict`` (JSON-serializable) whose missing keys name their full path."""

    path: str = ""

    def __missing__(self, key: str) -> Any:
        name = f"{self.path}.{key}" if self.path else key
        raise MissingSettingError(
            f"config key {name} is not set: add it to the config group's YAML file under conf/ or pass {name}=VALUE"
        )


def settings(config: Mapping[str, Any], path: str = "") -> Settings:
    """``config`` (nested mappings and lists) as :class:`Settings` at every level."""
    wrapped = Settings({key: _wrap(value, f"{path}.{key}" if path else str(key)) for key, value in config.items()})
    wrapped.path = path
    return wrapped


def _wrap(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return settings(value, path)
    if isinstance(value, list):
        return [_wrap(item, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def plain(config: Any) -> Any:
    """Plain dicts and lists again, for loggers and YAML writers that do not know ``dict`` subclasses."""
    if isinstance(config, Mapping):
        return {key: plain(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [plain(item) for item in config]
    return config


# Keys that name where and how a run is kept, not what it computes: two runs differing only here hash alike.
UNHASHED_KEYS = ("run_dir", "resume", "overwrite", "logger")


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable fingerprint of what a resolved config computes, recorded in checkpoints, exports and results."""
    kept = {key: value for key, value in config.items() if key not in UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def from_settings(cls: type[Config], section: Mapping[str, Any], name: str, **computed: Any) -> Config:
    """The dataclass ``cls`` from config ``section`` (named ``name`` in errors) plus values the code computed.

    A field the section lacks, or a key that is no field, fails with the key's full name.
    """
    field_names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(section) - set(field_names))
    if unknown:
        raise MissingSettingError(
            f"config keys {', '.join(f'{name}.{key}' for key in unknown)} are not options of {name}; "
            f"its options: {', '.join(field_names)}"
        )
    overlap = sorted(set(section) & set(computed))
    if overlap:
        raise MissingSettingError(
            f"config keys {', '.join(f'{name}.{key}' for key in overlap)} are computed by the app and cannot be set"
        )
    values = {**section, **computed}
    missing = [key for key in field_names if key not in values]
    if missing:
        raise MissingSettingError(
            f"config keys {', '.join(f'{name}.{key}' for key in missing)} are not set: add them to the config "
            "group's YAML file under conf/"
        )
    return cls(**values)


def optional_group(config: Mapping[str, Any], name: str) -> Any:
    """A config group the defaults list may leave out (``- model: null``): its value, or None when absent."""
    return config[name] if name in config else None

"""Config <-> plain dict / YAML, and ``--set a.b=c`` overrides, all checked against the schema.

Every value is checked against the dataclass field's annotated type, so a typo or a wrong type
fails with a message that names the key and lists the valid ones, instead of being ignored; a mode
(a ``Literal`` field) names the allowed values, so an unknown one is refused here. A
single value where a list of any length is expected is a list of one (``train.steps=500`` is
``(500,)``); a fixed-length list (``input.pixel_std``) must be given whole.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from instaseg.config.schema import Config, mode_error
from instaseg.errors import ConfigError

__all__ = ["config_to_dict", "config_from_dict", "apply_overrides", "load_yaml", "save_yaml", "RENAMED_KEYS"]

# Keys renamed since configs were first saved (checkpoints and run folders hold the old ones):
# old dotted key -> (new dotted key, old value -> new value). Read under either name.
RENAMED_KEYS: dict[str, tuple[str, dict[Any, Any]]] = {
    "train.amp": ("train.precision", {"none": "float32"}),
}


def _rename(key: str, value: Any) -> tuple[str, Any]:
    """``(key, value)`` under the schema's current name for ``key``."""
    if key not in RENAMED_KEYS:
        return key, value
    new_key, values = RENAMED_KEYS[key]
    return new_key, values.get(value, value) if isinstance(value, str) else value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as nested plain dicts/lists (JSON and YAML safe)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def _union_members(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def _default_arch(cls: type) -> str | None:
    """The default of a dataclass's ``arch`` field (model configs), else None."""
    for f in dataclasses.fields(cls):
        if f.name == "arch":
            return f.default if isinstance(f.default, str) else None
    return None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert lists to tuples / dicts to dataclasses."""
    members = _union_members(hint)
    if members is not None:
        if value is None and type(None) in members:
            return None
        errors = []
        arch = value.get("arch") if isinstance(value, dict) else None
        if arch is not None:  # model configs: pick the member by its ``arch`` discriminator
            archs = {_default_arch(m): m for m in members if dataclasses.is_dataclass(m) and _default_arch(m)}
            if archs and arch not in archs:
                raise ConfigError(mode_error(f"{key}.arch", arch, tuple(archs)))
            if archs:
                return _coerce(value, archs[arch], key)
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be None")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {hint.__name__}, got {value!r}")
        return _dataclass_from_dict(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        free_length = len(args) == 2 and args[1] is Ellipsis
        if free_length and not isinstance(value, (list, tuple, dict)):
            value = [value]  # --set input.min_size_train=320 means (320,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if free_length:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 2e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if origin is typing.Literal:  # a mode (instaseg.config.schema): one of the named values
        choices = typing.get_args(hint)
        if value is None and "none" in choices:  # --set turns "none" into None; here it is the mode
            value = "none"
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(mode_error(key, value, choices))
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover - schema bug


# A number in exponent notation that YAML 1.1 leaves a string ("2e-3", "1E5"); words are not numbers.
_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    data = dict(_rename(f"{prefix}.{k}" if prefix else k, v) for k, v in data.items())
    data = {k.rsplit(".", 1)[-1]: v for k, v in data.items()}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]}; valid keys here: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts; missing keys take their defaults."""
    return _dataclass_from_dict(Config, data, "")


def _set_path(node: Any, path: list[str], value: Any, full_key: str) -> Any:
    cls = type(node)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(node)]
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key {full_key!r}: {head!r} is not one of {', '.join(names)}")
    hint = hints[head]
    if len(path) == 1:
        return dataclasses.replace(node, **{head: _coerce(value, hint, full_key)})
    child = getattr(node, head)
    if child is None:  # setting a field of an optional part switches that part on
        members = _union_members(hint) or (hint,)
        part = next((m for m in members if dataclasses.is_dataclass(m)), None)
        if part is None:
            raise ConfigError(f"{full_key}: {head} has no sub-keys")
        child = part()
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"{full_key}: {head} has no sub-keys")
    return dataclasses.replace(node, **{head: _set_path(child, path[1:], value, full_key)})


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``["model.rpn.nms_thresh=0.6", "train.steps=[100,200]"]``; values are parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {error}") from None
        if isinstance(value, str) and value.lower() in {"none", "null"} and key not in RENAMED_KEYS:
            value = None
        key, value = _rename(key, value)
        config = _set_path(config, key.split("."), value, key)
    return config


def save_yaml(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def load_yaml(path: str | Path) -> Config:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return config_from_dict(data)

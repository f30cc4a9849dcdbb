"""Typed, validated configuration: plain dicts (parsed TOML) into frozen dataclasses.

Every config section is a frozen dataclass whose fields are declared with
:func:`option`, which records a one-line doc and the allowed values. :func:`parse`
walks a dict against such a dataclass and fails on the first problem with a
:class:`ConfigError` that names the file, the key, the value and what is allowed.
:func:`describe` lists every key with its type, default and doc (the README's
config table is generated from it, and a test checks the two agree).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "option", "parse", "load_toml", "describe", "to_dict", "settings_rows",
           "reference_markdown"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def option(default: Any = dataclasses.MISSING, doc: str = "", *, choices: tuple | None = None,
           min: float | None = None, max: float | None = None, min_exclusive: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a doc string and validation metadata.

    Parameters
    ----------
    default : the default value (omit for a required key).
    doc : one line for the README's config table.
    choices : the allowed values, for strings and numbers.
    min, max : inclusive bounds for numbers (``min_exclusive`` makes ``min`` strict).
    default_factory : for mutable defaults (lists).
    """
    metadata = {"doc": doc, "choices": choices, "min": min, "max": max,
                "min_exclusive": min_exclusive}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if dataclasses.is_dataclass(tp):
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _fail(source: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{source}: key '{key}' has value {value!r}; allowed: {allowed}")


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(arg, value, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise _fail(source, key, value, _type_name(tp))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, value, _type_name(tp))
        (item_tp, *_) = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        return tuple(_convert(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _fail(source, key, value, f"a table of {tp.__name__} keys")
        return parse(tp, value, source=source, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(source, key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, key, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(source, key, value, "a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_bounds(f: dataclasses.Field, value: Any, source: str, key: str) -> None:
    meta = f.metadata
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None or dataclasses.is_dataclass(v):
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise _fail(source, key, value, "one of " + ", ".join(repr(c) for c in meta["choices"]))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and (v < lo or (meta.get("min_exclusive") and v == lo)):
                rel = ">" if meta.get("min_exclusive") else ">="
                bound = f"{rel} {lo}" + (f" and <= {hi}" if hi is not None else "")
                raise _fail(source, key, value, f"a number {bound}")
            if hi is not None and v > hi:
                raise _fail(source, key, value, f"a number <= {hi}" + (f" and >= {lo}" if lo is not None else ""))


def parse(cls: type, data: Mapping[str, Any], *, source: str = "config", prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from ``data``, validating every key.

    Raises
    ------
    ConfigError
        On an unknown key, a missing required key, a wrong type or a value out of range;
        the message names ``source`` (the file), the dotted key, the value and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{source}: unknown key '{key}'; allowed keys here: "
                          + ", ".join(prefix + k for k in fields))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: required key '{key}' is missing ({f.metadata.get('doc', '')})")
            continue
        raw = data[name]
        if f.default_factory is not dataclasses.MISSING and isinstance(raw, Mapping):
            default = f.default_factory()
            if dataclasses.is_dataclass(default):  # a partial table overrides the default table's keys
                raw = {**to_dict(default), **raw}
        value = _convert(hints[name], raw, source, key)
        _check_bounds(f, value, source, key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # cross-field checks in __post_init__
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {exc}") from exc


def load_toml(cls: type, text: str, *, source: str) -> Any:
    """Parse TOML ``text`` and validate it into ``cls`` (one :class:`ConfigError` naming ``source`` on a problem)."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return parse(cls, data, source=source)


def to_dict(obj: Any) -> Any:
    """The plain-dict (TOML-shaped) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def describe(cls: type, prefix: str = "", instance: Any = None) -> list[dict[str, str]]:
    """One row per key: dotted key, type, default, allowed values, doc (for the README).

    Nested tables report the defaults of their default instance (e.g. a field whose
    default_factory builds ``StepResources(gpu=1)`` shows ``gpu`` defaulting to 1).
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        sub = [a for a in (typing.get_args(tp) or ()) if dataclasses.is_dataclass(a)]
        if instance is not None:
            default_value = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default_value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default_value = f.default_factory()
        else:
            default_value = dataclasses.MISSING
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + ".", None if default_value is dataclasses.MISSING else default_value))
            continue
        if sub:  # list of tables
            rows.extend(describe(sub[0], key + "[]."))
            continue
        default = "(required)" if default_value is dataclasses.MISSING else repr(to_dict(default_value))
        meta = f.metadata
        allowed = []
        if meta.get("choices"):
            allowed.append(" / ".join(str(c) for c in meta["choices"]))
        if meta.get("min") is not None:
            allowed.append((">" if meta.get("min_exclusive") else ">=") + f" {meta['min']}")
        if meta.get("max") is not None:
            allowed.append(f"<= {meta['max']}")
        rows.append({"key": key, "type": _type_name(tp), "default": default,
                     "allowed": ", ".join(allowed), "doc": meta.get("doc", "")})
    return rows


def settings_rows(settings: Mapping[str, Any]) -> list[list[str]]:
    """``[dotted key, repr(value)]`` for every leaf of a validated settings dict (the start steps' cards)."""
    rows: list[list[str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            rows.append([prefix, repr(value)])

    walk("", settings)
    return rows


def reference_markdown(cls: type) -> str:
    """The README's configuration table for ``cls``, generated from its fields' docs."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in describe(cls):
        cells = [f"`{row['key']}`", row["type"], f"`{row['default']}`", row["allowed"], row["doc"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)

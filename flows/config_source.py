"""The one config loader of both flows: TOML -> typed, validated settings, before any step runs.

Each flow declares ``Config("config", default=..., parser=config_parser(GrowthConfig, DEFAULT))``.
Metaflow calls the parser when the flow starts (``run``, ``show``, ``package``...), so a bad
file fails in seconds with one clean line naming the file, the key, the value and what is
allowed, and no run is created. The ``start`` step then applies the run's parameters
(``--seed``, ...) once with :func:`validated_settings` and stores the result as the plain
dict artifact ``settings``; every later step reads its typed config back with
:func:`settings_of`, without validating again.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any


def config_source_name(default: str, argv: list[str] | None = None) -> str:
    """The config file this command reads: the path after ``--config config``, else ``default``."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return argv[i + 2]
    return default


def config_parser(cls: type, default: str) -> Callable[[str], dict]:
    """A Metaflow ``Config`` parser: TOML text -> the validated, defaults-filled dict of ``cls``.

    A :class:`libs.schema.ConfigError` is shown to the user as one line without a traceback.
    """

    def parse(text: str) -> dict:
        from metaflow.exception import MetaflowException

        from libs.schema import ConfigError, load_toml, to_dict

        try:
            return to_dict(load_toml(cls, text, source=config_source_name(default)))
        except ConfigError as exc:
            raise MetaflowException(f"Invalid configuration: {exc}") from exc

    parse.__name__ = f"parse_{cls.__name__}"
    return parse


def validated_settings(cls: type, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """The run's settings: the parsed config with the run's parameters applied, validated once.

    ``overrides`` maps dotted keys to values (``{"seed": 3, "select.budget": 0.1}``).
    """
    from libs.schema import parse, to_dict

    data = to_dict(parse(cls, dict(config), source="config"))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    names = ", ".join(f"--{k.split('.')[-1]}" for k in overrides)
    return to_dict(parse(cls, data, source=f"run parameters ({names})"))


def settings_of(cls: type, settings: Mapping[str, Any]) -> Any:
    """The typed config behind a ``settings`` artifact (already validated by ``start``)."""
    return _build(cls, settings)


def _build(cls: type, data: Any) -> Any:
    import typing

    if not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value = hints[f.name], data[f.name]
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if dataclasses.is_dataclass(tp):
            value = _build(tp, value)
        elif typing.get_origin(tp) in (tuple, list):
            item = args[0] if args else None
            value = tuple(_build(item, v) if dataclasses.is_dataclass(item) else v for v in value)
        kwargs[f.name] = value
    return cls(**kwargs)

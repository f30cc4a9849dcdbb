"""Parse and validate GrowthFlow's config file when the flow starts, before any step runs."""

from __future__ import annotations

import sys
import tomllib

DEFAULT_CONFIG = "config/default.toml"


def config_source_name(argv: list[str] | None = None) -> str:
    """The config file this command reads: the path after ``--config config``, else the default."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return argv[i + 2]
    return DEFAULT_CONFIG


def parse_growth_config(text: str) -> dict:
    """Metaflow ``Config`` parser: TOML text -> validated, defaults-filled dict.

    Raises ``ConfigError`` naming the file, the key, the value and what is allowed.
    """
    from libs.schema import ConfigError, to_dict
    from steps.config import load_config

    from metaflow.exception import MetaflowException

    source = config_source_name()
    try:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
        return to_dict(load_config(data, source=source))
    except ConfigError as exc:  # shown to the user as one clear line, without a traceback
        raise MetaflowException(f"Invalid configuration: {exc}") from exc

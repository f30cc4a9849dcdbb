"""GapZooFlow's whole configuration: the zoo (``steps.train_shard``), the fit (``steps.fit_predictors``), resources.

A config file (``config/gap_zoo/*.toml``) maps key for key onto :class:`GapZooConfig`; the flow
reads it through the shared loader (``flows/config_source.py``) and every stage receives only its
own section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libs.schema import ConfigError, load_toml, option, parse, reference_markdown
from steps.config import StepResources
from steps.fit_predictors import FitConfig
from steps.train_shard import ZooConfig

__all__ = ["GapZooConfig", "load_gap_zoo_config", "load_gap_zoo_config_file", "describe_run",
           "config_reference_markdown", "ConfigError"]


@dataclasses.dataclass(frozen=True)
class GapZooConfig:
    """Everything a GapZooFlow run needs."""

    seed: int = option(0, "seeds the tasks, the networks and the predictors", min=0)
    zoo: ZooConfig = option(doc="the zoo of networks", default_factory=ZooConfig)
    fit: FitConfig = option(doc="predictors and evaluation", default_factory=FitConfig)
    resources: StepResources = option(doc="remote-compute resources of each train_shard branch",
                                      default_factory=lambda: StepResources(cpu=2, memory=4000))


def load_gap_zoo_config(data: Mapping[str, Any], *, source: str = "config") -> GapZooConfig:
    """Validate a parsed config dict into a :class:`GapZooConfig` (raises ``ConfigError``)."""
    return parse(GapZooConfig, data, source=source)


def load_gap_zoo_config_file(path: str | Path) -> GapZooConfig:
    """Read and validate a GapZooFlow TOML config file (config/gap_zoo/*.toml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are in config/gap_zoo/")
    return load_toml(GapZooConfig, path.read_text(), source=str(path))


def describe_run(settings: Mapping[str, Any], shards: list[list[int]]) -> list:
    """The start step's card: the zoo's size, its shards and every validated setting."""
    from libs.report import settings_card

    zoo = settings["zoo"]
    n_networks = zoo["n_tasks"] * len(zoo["depths"]) * len(zoo["widths"]) * zoo["networks_per_architecture"]
    return settings_card(f"GapZooFlow run, seed {settings['seed']}",
                         f"{n_networks} networks ({zoo['n_tasks']} spiral tasks x {len(zoo['depths'])} depths x "
                         f"{len(zoo['widths'])} widths x {zoo['networks_per_architecture']} settings) in {len(shards)} "
                         f"shards of up to {zoo['tasks_per_shard']} tasks. The configuration was validated before any "
                         "work started.", settings)


def config_reference_markdown() -> str:
    """The README's table of config/gap_zoo keys, generated from the dataclasses' docs."""
    return reference_markdown(GapZooConfig)


if __name__ == "__main__":
    print(config_reference_markdown())

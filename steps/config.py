"""GrowthFlow's whole configuration: one typed section per stage.

A config file (``config/*.toml``) maps key for key onto :class:`GrowthConfig`; every
stage receives only its own section. :func:`load_config` validates before any work
starts and names the file, the key, the value and what is allowed on a problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libs.schema import ConfigError, load_toml, option, parse, reference_markdown, to_dict
from steps.embed import EmbedConfig
from steps.grow import GrowConfig
from steps.predict_gap import GapConfig
from steps.prepare import PrepareConfig
from steps.pretrain_small import PretrainSmallConfig
from steps.select_data import SelectConfig
from steps.train_large import TrainLargeConfig

__all__ = ["GrowthConfig", "StepResources", "ResourcesConfig", "load_config", "load_config_file",
           "ConfigError", "to_dict"]


@dataclasses.dataclass(frozen=True)
class StepResources:
    """What a step asks of remote compute (`@resources`; ignored by local runs)."""

    cpu: int = option(2, "CPU cores", min=1)
    memory: int = option(8000, "memory in MB", min=256)
    gpu: int = option(0, "GPUs", min=0)


@dataclasses.dataclass(frozen=True)
class ResourcesConfig:
    """Per-step resources for Kubernetes / AWS Batch (`--with kubernetes`)."""

    embed: StepResources = option(doc="the embed step", default_factory=lambda: StepResources(cpu=4, memory=8000))
    select: StepResources = option(doc="the select step", default_factory=StepResources)
    pretrain_small: StepResources = option(doc="each pretrain_small branch",
                                           default_factory=lambda: StepResources(cpu=4, memory=16000, gpu=0))
    train_large: StepResources = option(doc="each train_large branch",
                                        default_factory=lambda: StepResources(cpu=8, memory=32000, gpu=1))


@dataclasses.dataclass(frozen=True)
class GrowthConfig:
    """Everything a GrowthFlow run needs."""

    seed: int = option(0, "seeds every stage (same config + seed = same selection and metrics)", min=0)
    prepare: PrepareConfig = option(doc="corpus, chunking, split, tokenizer", default_factory=PrepareConfig)
    embed: EmbedConfig = option(doc="document embeddings", default_factory=EmbedConfig)
    select: SelectConfig = option(doc="data selection", default_factory=SelectConfig)
    pretrain_small: PretrainSmallConfig = option(doc="small models", default_factory=PretrainSmallConfig)
    grow: GrowConfig = option(doc="growth operator", default_factory=GrowConfig)
    train_large: TrainLargeConfig = option(doc="large-model training", default_factory=TrainLargeConfig)
    predict_gap: GapConfig = option(doc="generalization-gap prediction", default_factory=GapConfig)
    resources: ResourcesConfig = option(doc="remote-compute resources per step", default_factory=ResourcesConfig)


def load_config(data: Mapping[str, Any], *, source: str = "config") -> GrowthConfig:
    """Validate a parsed config dict into a :class:`GrowthConfig` (raises :class:`ConfigError`)."""
    return parse(GrowthConfig, data, source=source)


def load_config_file(path: str | Path) -> GrowthConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing TOML file "
                          "(the shipped ones are in config/)")
    return load_toml(GrowthConfig, path.read_text(), source=str(path))


def describe_run(settings: Mapping[str, Any]) -> list:
    """The start step's card: the validated settings, one row per key."""
    from libs.report import settings_card

    return settings_card(f"GrowthFlow run, seed {settings['seed']}", "The configuration was validated before any "
                         "work started; every key below is documented in the README's configuration table.", settings)


def config_reference_markdown() -> str:
    """The README's configuration table, generated from the dataclasses' docs."""
    return reference_markdown(GrowthConfig)


if __name__ == "__main__":
    print(config_reference_markdown())

"""LMZooFlow's whole configuration: the corpus (GrowthFlow's prepare section), the zoo grid, the fit.

The ``prepare`` section is GrowthFlow's own :class:`steps.prepare.PrepareConfig`: with the same
prepare settings and seed the zoo trains on the very tokens and tokenizer of a GrowthFlow run,
and both runs carry the same ``data_fingerprint`` (:func:`libs.fingerprint.data_fingerprint`),
which is how ``predict_gap`` finds a zoo that matches its run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from libs.gap_predictors import PREDICTORS
from libs.schema import option, reference_markdown
from steps.config import StepResources
from steps.prepare import PrepareConfig

__all__ = ["ZooGridConfig", "ZooFitConfig", "LMZooConfig", "describe_run", "config_reference_markdown"]


@dataclasses.dataclass(frozen=True)
class ZooGridConfig:
    """Which small language models the zoo trains, how long, and how every checkpoint is measured."""

    widths: tuple[int, ...] = option(doc="hidden widths (multiples of head_dim); reach the large arms' width",
                                     min=8, default_factory=lambda: (24, 48, 96))
    head_dim: int = option(24, "width of an attention head (heads = width / head_dim; GrowthFlow's default small "
                           "and grown models use 24)", min=4)
    depths: tuple[int, ...] = option(doc="transformer blocks; reach the large arms' depth", min=1,
                                     default_factory=lambda: (1, 2))
    lrs: tuple[float, ...] = option(doc="peak learning rates (AdamW, warmup then cosine)", min=0.0,
                                    min_exclusive=True, default_factory=lambda: (1e-3, 3e-3))
    train_fractions: tuple[float, ...] = option(doc="fractions of the training rows a model trains on (nested "
                                                "subsets); include GrowthFlow's select.budget", min=0.0, max=1.0,
                                                min_exclusive=True, default_factory=lambda: (0.01, 0.02))
    seeds: tuple[int, ...] = option(doc="model seeds added to the run's seed (one model per seed and grid point)",
                                    min=0, default_factory=lambda: (0,))
    epochs: float = option(4.0, "passes over its own training rows each model makes; at least the large arms' "
                           "epochs counting the grown arm's pretraining", min=0.0, min_exclusive=True)
    n_checkpoints: int = option(4, "checkpoints per model, evenly spaced; each is one zoo row", min=1)
    batch_size: int = option(32, "examples per optimizer step", min=1)
    warmup_fraction: float = option(0.05, "linear warmup as a fraction of a model's steps", min=0.0, max=1.0)
    train_eval_rows: int = option(256, "the fixed training-evaluation subset (drawn from the smallest training "
                                  "subset, shared by every model): the gap's training loss", min=8)
    val_rows: int = option(0, "validation rows every gap is measured on: 0 = every one (GrowthFlow's recipe; "
                           "needed for predict_gap to use the zoo); n > 0 = one fixed seeded subset of n rows "
                           "shared by every model (a cheaper zoo for benchmarks, never pooled with GrowthFlow's)",
                           min=0)
    feature_rows: int = option(64, "training-evaluation rows the features are computed on", min=4)
    gc_probes: int = option(2, "Hutchinson probes of the geometric complexity (0 = exact; tiny models only)",
                            min=0)
    n_shards: int = option(2, "foreach branches the models are split over (one per core or per remote task)",
                           min=1)
    threads: int = option(0, "torch threads per branch; 0 = the cores split over the parallel branches", min=0)

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "lrs", "train_fractions", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"zoo.{name} is empty; list at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"zoo.{name} lists a value twice: {list(values)}")
        bad = [w for w in self.widths if w % self.head_dim]
        if bad:
            raise ValueError(f"zoo.widths {bad} are not multiples of zoo.head_dim={self.head_dim} "
                             "(heads = width / head_dim)")
        if self.feature_rows > self.train_eval_rows:
            raise ValueError(f"zoo.feature_rows={self.feature_rows} exceeds zoo.train_eval_rows="
                             f"{self.train_eval_rows}; features are computed on training-evaluation rows")


@dataclasses.dataclass(frozen=True)
class ZooFitConfig:
    """How the zoo's predictors are scored."""

    predictors: tuple[str, ...] = option(doc="predictors to score: linear (Jiang), mlp (Yak's DNN), gbm",
                                         choices=PREDICTORS, default_factory=lambda: PREDICTORS)
    min_models: int = option(8, "fewest distinct models before a best predictor is named", min=2)


@dataclasses.dataclass(frozen=True)
class LMZooConfig:
    """Everything an LMZooFlow run needs."""

    seed: int = option(0, "seeds prepare (match the GrowthFlow run's seed), the data subsets and the models",
                       min=0)
    prepare: PrepareConfig = option(doc="corpus, chunking, split, tokenizer: GrowthFlow's prepare section",
                                    default_factory=PrepareConfig)
    zoo: ZooGridConfig = option(doc="the zoo's models and measurements", default_factory=ZooGridConfig)
    fit: ZooFitConfig = option(doc="predictor scoring", default_factory=ZooFitConfig)
    resources: StepResources = option(doc="remote-compute resources per shard",
                                      default_factory=lambda: StepResources(cpu=1, memory=4000))


def describe_run(settings: Mapping[str, Any], n_models: int) -> list:
    """The start step's card: the validated settings."""
    from libs.report import settings_card

    return settings_card(f"LM zoo run, seed {settings['seed']}: {n_models} models",
                         "The configuration was validated before any work started.", settings)


def config_reference_markdown() -> str:
    """The README's configuration table for LMZooFlow."""
    return reference_markdown(LMZooConfig)


if __name__ == "__main__":
    print(config_reference_markdown())

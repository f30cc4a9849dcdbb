"""GapZooFlow: train a zoo of spiral MLPs, then fit and score generalization-gap predictors on it.

    USER=me python flows/gap_zoo_flow.py run                                  # config/gap_zoo/default.toml
    USER=me python flows/gap_zoo_flow.py --config config config/gap_zoo/tiny.toml run --seed 1
    USER=me python flows/gap_zoo_flow.py run --max-workers 2                  # one shard per core

start ─► train_shard (foreach shard of spiral tasks) ─► fit_predictors ─► end

Each step reads its stage's config from the ``settings`` artifact, calls ``steps.<stage>.run``,
keeps what it returns as plain artifacts and draws its card. The logic lives in ``steps/`` and
``libs/``.
"""

import os

from metaflow import Config, FlowSpec, Parameter, card, config_expr, resources, step

from config_source import config_parser, settings_of, validated_settings  # flows/ is the script's folder
from project_code import ship_project_code
from steps.gap_zoo_config import GapZooConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _settings(flow) -> GapZooConfig:
    """The run's typed config, from the ``settings`` artifact that ``start`` validated once."""
    return settings_of(GapZooConfig, flow.settings)


def _shard_threads(cfg, n_shards: int) -> int:
    """Torch threads of one train_shard branch: ``zoo.threads``, else the cores split over parallel branches."""
    if cfg.zoo.threads:
        return cfg.zoo.threads
    return max(1, min(cfg.resources.cpu, (os.cpu_count() or 1) // max(n_shards, 1)))


@ship_project_code
class GapZooFlow(FlowSpec):
    """A zoo of spiral MLPs and the gap predictors fitted on it (after Yak, Gonzalvo & Mazzawi 2019, scaled down)."""

    config = Config("config", default=os.path.join(_ROOT, "config", "gap_zoo", "default.toml"),
                    parser=config_parser(GapZooConfig, "config/gap_zoo/default.toml"))
    seed = Parameter("seed", type=int, default=config_expr("config.seed"),
                     help="seeds the tasks, the networks and the predictors; the same config and seed give the "
                          "same zoo")

    @card(type="blank")
    @step
    def start(self):
        """Validate the configuration and plan the shards before any work starts."""
        from flow_cards import render
        from steps.gap_zoo_config import describe_run
        from steps.train_shard import shard_plan

        self.settings = validated_settings(GapZooConfig, self.config, {"seed": self.seed})
        self.shards = shard_plan(_settings(self).zoo)
        render(describe_run(self.settings, self.shards))
        self.next(self.train_shard, foreach="shards")

    @card(type="blank")
    @resources(cpu=config_expr("config.resources.cpu"), memory=config_expr("config.resources.memory"),
               gpu=config_expr("config.resources.gpu"))
    @step
    def train_shard(self):
        """Train and measure every network of this shard's spiral tasks."""
        import torch

        from flow_cards import render
        from steps import train_shard

        cfg = _settings(self)
        torch.set_num_threads(_shard_threads(cfg, len(self.shards)))
        result = train_shard.run(cfg.zoo, self.input, seed=cfg.seed)
        self.shard_rows = result.rows                          # list of plain dicts, one per kept network
        self.shard_n_networks = result.n_networks
        self.shard_n_diverged = result.n_diverged
        self.shard_n_collapsed = result.n_collapsed
        self.shard_seconds = result.seconds
        render(train_shard.report(result, self.input))
        self.next(self.fit_predictors)

    @card(type="blank")
    @step
    def fit_predictors(self, inputs):
        """Merge the shards' rows; score every predictor on every split; ablate; fit each on the whole zoo."""
        from flow_cards import render
        from steps import fit_predictors

        self.merge_artifacts(inputs, include=["settings", "shards"])
        cfg = _settings(self)
        self.zoo_rows = fit_predictors.merge_shards([inp.shard_rows for inp in inputs])
        self.n_trained = sum(inp.shard_n_networks for inp in inputs)
        self.n_diverged = sum(inp.shard_n_diverged for inp in inputs)
        self.n_collapsed = sum(inp.shard_n_collapsed for inp in inputs)
        self.train_seconds = sum(inp.shard_seconds for inp in inputs)       # summed over the shards
        result = fit_predictors.run(cfg.fit, self.zoo_rows, seed=cfg.seed)
        self.r2_table = result.r2_table
        self.ablation = result.ablation
        self.permutation_check = result.permutation_check
        self.predictors = result.predictors    # bytes: pickled {name: ZooPredictor}; libs.spiral_predictors.load_predictors
        self.feature_names = result.feature_names
        self.best = result.best
        self.scatter = result.scatter
        self.importances = result.importances
        self.n_networks = result.n_networks
        self.target = result.target
        self.fit_seconds = result.seconds
        self.out_of_distribution = fit_predictors.out_of_distribution_summary(result.r2_table)
        render(fit_predictors.report(result))
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        """One table: the best held-out R² per split, and the ablation's best R² per feature set."""
        from flow_cards import render
        from steps.fit_predictors import summary

        render(summary(self.r2_table, self.ablation, n_networks=self.n_networks, n_trained=self.n_trained,
                       n_diverged=self.n_diverged, n_collapsed=self.n_collapsed, train_seconds=self.train_seconds,
                       fit_seconds=self.fit_seconds))
        print(f"GapZooFlow: {self.n_networks} networks; best held-out R² per split: "
              + ", ".join(f"{s} {p}" for s, p in self.best.items()))
        for split, b in self.out_of_distribution.items():
            print(f"  {split}: {b['best_predictor']} R² = {b['r2']:.3f} "
                  f"[{b['r2_ci_family_bootstrap'][0]:.3f}, {b['r2_ci_family_bootstrap'][1]:.3f}]")


if __name__ == "__main__":
    import sys

    from cli_checks import check_command_line  # flows/cli_checks.py: a wrong command fails in one line, no run made

    sys.argv = check_command_line(sys.argv, "GapZooFlow", config_cls=GapZooConfig,
                                  default_config=os.path.join(_ROOT, "config", "gap_zoo", "default.toml"),
                                  parameters={"seed": "seed"})
    GapZooFlow()

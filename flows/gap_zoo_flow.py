"""GapZooFlow: train a zoo of spiral MLPs, then fit and score generalization-gap predictors on it.

    USER=me python flows/gap_zoo_flow.py run                                  # config/gap_zoo/default.toml
    USER=me python flows/gap_zoo_flow.py --config config config/gap_zoo/tiny.toml run --seed 1
    USER=me python flows/gap_zoo_flow.py run --max-workers 2                  # one shard per core

start ─► train_shard (foreach shard of spiral tasks) ─► fit_predictors ─► end

Each step builds its stage's config, calls ``steps.gap_zoo``, keeps what it returns as
artifacts and draws its card. The logic lives in ``steps/gap_zoo.py`` and ``libs/``.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from metaflow import Config, FlowSpec, Parameter, card, config_expr, resources, step  # noqa: E402

from project_code import ship_project_code  # noqa: E402  (flows/ is on sys.path)

DEFAULT_CONFIG = os.path.join("config", "gap_zoo", "default.toml")


def _config_source_name(argv=None) -> str:
    """The config file this command reads: the path after ``--config config``, else the default."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return argv[i + 2]
    return DEFAULT_CONFIG


def parse_gap_zoo_config(text: str) -> dict:
    """Metaflow ``Config`` parser: TOML text -> validated, defaults-filled dict (errors before any step runs)."""
    import tomllib

    sys.path.insert(0, _ROOT)
    from metaflow.exception import MetaflowException

    from libs.schema import ConfigError, to_dict
    from steps.gap_zoo import load_gap_zoo_config

    source = _config_source_name()
    try:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
        return to_dict(load_gap_zoo_config(data, source=source))
    except ConfigError as exc:  # shown to the user as one clear line, without a traceback
        raise MetaflowException(f"Invalid configuration: {exc}") from exc


def _settings(flow):
    """The run's validated config, with the seed taken from the run's ``--seed`` parameter."""
    from libs.schema import to_dict
    from steps.gap_zoo import load_gap_zoo_config

    data = dict(to_dict(load_gap_zoo_config(dict(flow.config), source="config")), seed=flow.seed)
    return load_gap_zoo_config(data, source="run parameters (--seed)")


def _shard_threads(cfg, n_shards: int) -> int:
    """Torch threads of one train_shard branch: ``zoo.threads``, else the cores split over parallel branches."""
    if cfg.zoo.threads:
        return cfg.zoo.threads
    return max(1, min(cfg.resources.cpu, (os.cpu_count() or 1) // max(n_shards, 1)))


@ship_project_code
class GapZooFlow(FlowSpec):
    """A zoo of spiral MLPs and the gap predictors fitted on it (Yak, Gonzalvo & Mazzawi 2019, scaled down)."""

    config = Config("config", default=os.path.join(_ROOT, DEFAULT_CONFIG), parser=parse_gap_zoo_config)
    seed = Parameter("seed", type=int, default=config_expr("config.seed"),
                     help="seeds the tasks, the networks and the predictors; the same config and seed give the "
                          "same zoo")

    @card(type="blank")
    @step
    def start(self):
        """Validate the configuration and plan the shards before any work starts."""
        from flow_cards import render
        from libs.schema import to_dict
        from steps.gap_zoo import describe_zoo, shard_plan

        cfg = _settings(self)
        self.settings = to_dict(cfg)
        self.shards = shard_plan(cfg.zoo)
        render(describe_zoo(cfg, self.shards))
        self.next(self.train_shard, foreach="shards")

    @card(type="blank")
    @resources(cpu=config_expr("config.resources.cpu"), memory=config_expr("config.resources.memory"))
    @step
    def train_shard(self):
        """Train and measure every network of this shard's spiral tasks."""
        import torch

        from flow_cards import render
        from steps import gap_zoo

        cfg = _settings(self)
        torch.set_num_threads(_shard_threads(cfg, len(self.shards)))
        result = gap_zoo.run_shard(cfg.zoo, self.input, seed=cfg.seed)
        self.shard = result                                    # ShardResult: rows, counts, seconds
        render(gap_zoo.report_shard(result, self.input))
        self.next(self.fit_predictors)

    @card(type="blank")
    @step
    def fit_predictors(self, inputs):
        """Merge the shards' rows; score every predictor on every split; fit each on the whole zoo."""
        from flow_cards import render
        from steps import gap_zoo

        self.merge_artifacts(inputs, exclude=["shard"])
        cfg = _settings(self)
        shards = [inp.shard for inp in inputs]
        self.zoo_rows = gap_zoo.merge_shards([r.rows for r in shards])
        self.n_trained = sum(r.n_networks for r in shards)
        self.n_diverged = sum(r.n_diverged for r in shards)
        self.n_collapsed = sum(r.n_collapsed for r in shards)
        self.train_seconds = sum(r.seconds for r in shards)                 # summed over the shards
        result = gap_zoo.fit(cfg.fit, self.zoo_rows, seed=cfg.seed)
        self.r2_table = result.r2_table
        self.predictors = result.predictors                    # pickled {name: ZooPredictor} fitted on all rows
        self.feature_names = result.feature_names
        self.best = result.best
        self.importances = result.importances
        self.n_networks = result.n_networks
        self.target = result.target
        self.fit_seconds = result.seconds
        self.yak_comparison = gap_zoo.compare_to_yak(result.r2_table)
        render(gap_zoo.report(result))
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        """One table: the best held-out R² per split beside Yak et al.'s figures."""
        from flow_cards import render
        from steps.gap_zoo import report_summary

        render(report_summary(self.yak_comparison, n_networks=self.n_networks, n_trained=self.n_trained,
                              n_diverged=self.n_diverged, n_collapsed=self.n_collapsed, train_seconds=self.train_seconds,
                              fit_seconds=self.fit_seconds))


if __name__ == "__main__":
    GapZooFlow()

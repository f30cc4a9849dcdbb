"""LMZooFlow: a zoo of small language models on GrowthFlow's corpus and tokenizer, for gap prediction.

    USER=me python flows/lm_zoo_flow.py run                                   # config/lm_zoo/default.toml
    USER=me python flows/lm_zoo_flow.py --config config config/lm_zoo/tiny.toml run --seed 1
    USER=me python flows/lm_zoo_flow.py run --max-workers 2                   # one shard per core

start ─► prepare ─► train_zoo_shard (foreach shard of models) ─► fit_zoo ─► end

``prepare`` is GrowthFlow's own stage: with the same prepare settings and seed the zoo has the
same tokens and the same ``data_fingerprint`` as a GrowthFlow run, whose ``predict_gap`` then
finds this run through the Client API. The logic lives in ``steps/`` and ``libs/``.
"""

import os

from metaflow import Config, FlowSpec, Parameter, card, config_expr, resources, step

from config_source import config_parser, settings_of, validated_settings  # flows/ is the script's folder
from project_code import ship_project_code
from steps.lm_zoo_config import LMZooConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _settings(flow) -> LMZooConfig:
    return settings_of(LMZooConfig, flow.settings)


@ship_project_code
class LMZooFlow(FlowSpec):
    """Small LMs of several widths, depths, learning rates and data sizes, checkpointed; gap predictors scored."""

    config = Config("config", default=os.path.join(_ROOT, "config", "lm_zoo", "default.toml"),
                    parser=config_parser(LMZooConfig, "config/lm_zoo/default.toml"))
    seed = Parameter("seed", type=int, default=config_expr("config.seed"),
                     help="seeds prepare (use the GrowthFlow run's seed), the data subsets and the models")

    @card(type="blank")
    @step
    def start(self):
        """Validate the configuration before any work starts."""
        from flow_cards import render
        from libs.lm_zoo import zoo_grid
        from steps.lm_zoo_config import describe_run

        self.settings = validated_settings(LMZooConfig, self.config, {"seed": self.seed})
        zoo = _settings(self).zoo
        n_models = len(zoo_grid(zoo.widths, zoo.depths, zoo.lrs, zoo.train_fractions, zoo.seeds, head_width=zoo.head_dim))
        render(describe_run(self.settings, n_models))
        self.next(self.prepare)

    @card(type="blank")
    @step
    def prepare(self):
        """GrowthFlow's prepare stage; the data fingerprint; the shards of models."""
        from flow_cards import render
        from libs.fingerprint import data_fingerprint, settings_fingerprint
        from steps import prepare, train_zoo_shard

        cfg = _settings(self)
        result = prepare.run(cfg.prepare, seed=cfg.seed)
        for name in ("tokenizer_json", "train_tokens", "train_lengths", "val_tokens", "val_lengths", "train_sources",
                     "vocab_size", "seq_len", "bos_id", "eos_id"):
            setattr(self, name, getattr(result, name))
        self.data_fingerprint = data_fingerprint(result.tokenizer_json, result.train_tokens, result.train_lengths,
                                                 result.val_tokens, result.val_lengths)
        self.measurement_fingerprint = train_zoo_shard.zoo_measurement_fingerprint(cfg.zoo)
        self.zoo_key = settings_fingerprint({"zoo": self.settings["zoo"], "seed": cfg.seed,
                                             "data": self.data_fingerprint})
        self.shards = train_zoo_shard.plan(cfg.zoo, n_train=len(result.train_tokens), seed=cfg.seed)
        render(prepare.report(result))
        self.next(self.train_zoo_shard, foreach="shards")

    @card(type="blank")
    @resources(cpu=config_expr("config.resources.cpu"), memory=config_expr("config.resources.memory"),
               gpu=config_expr("config.resources.gpu"))
    @step
    def train_zoo_shard(self):
        """Train this shard's models; one gap-zoo row per checkpoint."""
        import torch

        from flow_cards import render
        from libs.token_data import TokenData
        from steps import train_zoo_shard

        cfg = _settings(self)
        torch.set_num_threads(cfg.zoo.threads or max(1, (os.cpu_count() or 1) // len(self.shards)))
        result = train_zoo_shard.run(cfg.zoo, self.input, data=TokenData.from_attrs(self), seed=cfg.seed,
                                     key_prefix=f"{self.zoo_key}:")
        self.shard = result
        render(train_zoo_shard.report(result))
        self.next(self.fit_zoo)

    @card(type="blank")
    @step
    def fit_zoo(self, inputs):
        """Merge the shards' rows; score every predictor by leave-one-model-out R²."""
        from flow_cards import render
        from steps import fit_zoo

        self.merge_artifacts(inputs, exclude=["shard"])
        cfg = _settings(self)
        shards = [inp.shard for inp in inputs]
        self.zoo_rows = [row for s in shards for row in s.rows]
        self.n_models = sum(s.n_models for s in shards)
        self.train_seconds = sum(s.seconds for s in shards)
        result = fit_zoo.run(cfg.fit, self.zoo_rows, seed=cfg.seed)
        self.fit = result
        render(fit_zoo.report(result))
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        """What this zoo is for: its fingerprints and its held-out score."""
        from flow_cards import render
        from steps.fit_zoo import report_summary

        render(report_summary(self.fit, data_fingerprint=self.data_fingerprint,
                              measurement_fingerprint=self.measurement_fingerprint, train_seconds=self.train_seconds))


if __name__ == "__main__":
    LMZooFlow()

"""LMZooFlow stage: train one shard of the zoo's language models and measure every checkpoint.

:func:`plan` (called once, after ``prepare``) lists the zoo's models and splits them into
shards of similar cost; :func:`run` trains a shard's models one after the other on their
nested training subsets (:func:`libs.lm_zoo.nested_subsets`) and returns every checkpoint's
gap-zoo row, measured on every validation row and on the fixed training-evaluation subset
(:func:`zoo_probe`), the same for every model of the zoo.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from libs.gap_features import GapProbe, measurement_fingerprint, shared_train_eval_rows
from libs.lm_zoo import ZooModel, nested_subsets, shard_models, train_zoo_model, zoo_grid
from libs.progress import Progress
from libs.report import Markdown, Table
from libs.token_data import TokenData

__all__ = ["ShardResult", "plan", "zoo_probe", "zoo_measurement_fingerprint", "run", "report"]


@dataclasses.dataclass(frozen=True)
class ShardResult:
    rows: list[dict]
    n_models: int
    model_seconds: dict[str, float]
    seconds: float


def _models(cfg, seed: int) -> list[ZooModel]:
    return zoo_grid(cfg.widths, cfg.depths, cfg.lrs, cfg.train_fractions, [seed + s for s in cfg.seeds],
                    head_width=cfg.head_dim)


def plan(cfg, *, n_train: int, seed: int) -> list[list[dict]]:
    """The zoo's models (dicts of :class:`libs.lm_zoo.ZooModel` fields) split into ``cfg.n_shards`` shards."""
    return shard_models(_models(cfg, seed), cfg.n_shards, n_train, cfg.epochs, cfg.batch_size)


def zoo_probe(cfg, data: TokenData, *, seed: int) -> tuple[GapProbe, dict[float, np.ndarray], np.ndarray]:
    """(the zoo's GapProbe, fraction -> training rows, the training-evaluation rows)."""
    subsets = nested_subsets(data.n_train, cfg.train_fractions, seed)
    rows = shared_train_eval_rows(subsets[min(subsets)], cfg.train_eval_rows, seed)
    val = np.arange(data.n_val)
    if cfg.val_rows:
        val = np.sort(np.random.default_rng([seed, 13]).choice(data.n_val, min(cfg.val_rows, data.n_val),
                                                               replace=False))
    probe = GapProbe(train_eval_tokens=data.train_tokens[rows], train_eval_lengths=data.train_lengths[rows],
                     val_tokens=data.val_tokens[val], val_lengths=data.val_lengths[val],
                     unique_train_tokens=int((data.train_lengths[rows].astype(np.int64) - 1).sum()),
                     n_feature_rows=cfg.feature_rows)
    return probe, subsets, rows


def zoo_measurement_fingerprint(cfg) -> str:
    """How this zoo's rows are measured (GrowthFlow's rows must carry the same one to be pooled)."""
    return measurement_fingerprint(cfg.train_eval_rows, cfg.feature_rows, cfg.val_rows)


def run(cfg, shard: list[dict], *, data: TokenData, seed: int, key_prefix: str = "",
        progress: bool = True) -> ShardResult:
    """Train every model of ``shard`` (a list from :func:`plan`); one row per checkpoint."""
    t0 = time.perf_counter()
    probe, subsets, _ = zoo_probe(cfg, data, seed=seed)
    rows, seconds = [], {}
    bar = Progress(total=len(shard), label="train_zoo_shard", unit="models", every_s=0.0) if progress else None
    for plan_dict in shard:
        model = ZooModel(**plan_dict)
        model_rows, secs = train_zoo_model(
            model, train_tokens=data.train_tokens, train_lengths=data.train_lengths,
            rows=subsets[model.train_fraction], probe=probe, epochs=cfg.epochs, n_checkpoints=cfg.n_checkpoints,
            batch_size=cfg.batch_size, warmup_fraction=cfg.warmup_fraction, vocab_size=data.vocab_size,
            seq_len=data.seq_len, bos_token_id=data.bos_id, eos_token_id=data.eos_id, key_prefix=key_prefix,
            n_probes=cfg.gc_probes)
        rows.extend(model_rows)
        seconds[model.name] = secs
        if bar is not None:
            last = model_rows[-1]
            bar.update(1, note=f"{model.name}: {secs:.0f} s, final gap {last['gap']:.3f} "
                               f"after {last['features']['epochs']:.1f} epochs")
    return ShardResult(rows=rows, n_models=len(shard), model_seconds=seconds, seconds=time.perf_counter() - t0)


def report(result: ShardResult) -> list:
    final = {}
    for r in result.rows:
        final[r["model"]] = r
    return [
        Markdown(f"## Zoo shard: {result.n_models} models, {len(result.rows)} checkpoints, "
                 f"{result.seconds:.0f} s"),
        Table(["model", "seconds", "epochs", "train loss", "val loss", "gap"],
              [[name, f"{result.model_seconds[name]:.0f}", f"{r['features']['epochs']:.2f}", f"{r['train_loss']:.4f}",
                f"{r['val_loss']:.4f}", f"{r['gap']:.4f}"] for name, r in final.items()],
              title="Final checkpoint of each model"),
    ]

"""A zoo of small language models for gap prediction: the grid, the nested data subsets, one model's rows.

Every zoo model trains on a prefix of one fixed permutation of the training rows (its
``train_fraction`` of them), so the smallest subset is inside every model's training data: the
fixed training-evaluation subset that every gap is measured against is drawn from it
(:func:`libs.gap_features.shared_train_eval_rows`). A model checkpoints ``n_checkpoints`` times
evenly over its ``epochs`` passes; each checkpoint is one zoo row
(:func:`libs.gap_features.checkpoint_row`: features, covariates, the gap on every validation row).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

__all__ = ["ZooModel", "zoo_grid", "nested_subsets", "model_steps", "shard_models", "train_zoo_model"]


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One zoo model: shape, learning rate, data fraction and seed (``name`` says all of them)."""

    n_layer: int
    n_embd: int
    n_head: int
    lr: float
    train_fraction: float
    seed: int

    @property
    def name(self) -> str:
        return (f"d{self.n_layer}_w{self.n_embd}_lr{self.lr:g}_f{self.train_fraction:g}_s{self.seed}")


def zoo_grid(widths, depths, lrs, train_fractions, seeds, head_width: int = 24) -> list[ZooModel]:
    """Every combination, heads = max(1, width // head_width)."""
    models = []
    for seed in seeds:
        for frac in train_fractions:
            for depth in depths:
                for width in widths:
                    for lr in lrs:
                        heads = max(1, width // head_width)
                        if width % heads:
                            raise ValueError(f"zoo width {width} is not divisible by its {heads} heads; use "
                                             f"multiples of the head width {head_width}")
                        models.append(ZooModel(depth, width, heads, float(lr), float(frac), int(seed)))
    return models


def nested_subsets(n_train: int, fractions, seed: int) -> dict[float, np.ndarray]:
    """Fraction -> training rows: prefixes of one seeded permutation, so smaller subsets sit inside larger ones."""
    order = np.random.default_rng([seed, 11]).permutation(n_train)
    out = {}
    for f in sorted(set(float(f) for f in fractions)):
        n = max(2, int(round(f * n_train)))
        if n > n_train:
            raise ValueError(f"train fraction {f} asks for {n} rows; the corpus has {n_train}")
        out[f] = np.sort(order[:n])
    return out


def model_steps(n_rows: int, epochs: float, batch_size: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``n_rows`` rows."""
    return max(1, int(math.ceil(epochs * n_rows / batch_size)))


def shard_models(models: list[ZooModel], n_shards: int, n_train: int, epochs: float, batch_size: int) -> list[list[dict]]:
    """Split the models into ``n_shards`` lists of similar estimated cost (greedy, largest first)."""
    if n_shards < 1:
        raise ValueError(f"n_shards={n_shards} must be >= 1")
    cost = {m: model_steps(max(2, round(m.train_fraction * n_train)), epochs, batch_size)
            * m.n_layer * (m.n_embd ** 2 + 512 * m.n_embd) for m in models}
    shards: list[list[ZooModel]] = [[] for _ in range(min(n_shards, len(models)))]
    load = [0.0] * len(shards)
    for m in sorted(models, key=lambda m: (-cost[m], m.name)):
        i = int(np.argmin(load))
        shards[i].append(m)
        load[i] += cost[m]
    return [[dataclasses.asdict(m) for m in s] for s in shards]


def train_zoo_model(model_plan: ZooModel, *, train_tokens: np.ndarray, train_lengths: np.ndarray, rows: np.ndarray,
                    probe, epochs: float, n_checkpoints: int, batch_size: int, warmup_fraction: float,
                    vocab_size: int, seq_len: int, bos_token_id: int | None, eos_token_id: int | None,
                    key_prefix: str = "", n_probes: int = 2, progress: bool = False) -> tuple[list[dict], float]:
    """Train one zoo model on ``rows``; a gap-zoo row at each of ``n_checkpoints`` evenly spaced checkpoints.

    ``probe`` is the :class:`libs.gap_features.GapProbe` shared by the zoo (its
    ``unique_train_tokens`` is replaced by this model's own). Returns (rows, seconds).
    """
    from libs.gap_features import checkpoint_row
    from libs.models import ModelSpec, build_model
    from libs.training import TrainConfig, train_model

    t0 = time.perf_counter()
    spec = ModelSpec(name=model_plan.name, n_layer=model_plan.n_layer, n_embd=model_plan.n_embd,
                     n_head=model_plan.n_head)
    model = build_model(spec, vocab_size=vocab_size, n_positions=seq_len + 1, seed=model_plan.seed,
                        bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    init_state = {k: v.detach().clone() for k, v in model.named_parameters()}
    steps = model_steps(len(rows), epochs, batch_size)
    eval_every = max(1, steps // n_checkpoints)
    own_probe = dataclasses.replace(probe, unique_train_tokens=int((train_lengths[rows].astype(np.int64) - 1).sum()))
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=model_plan.lr,
                      warmup_steps=min(steps, max(1, int(warmup_fraction * steps))), eval_every=eval_every,
                      eval_batches=1)
    out: list[dict] = []

    def record(step: int, m, rec: dict) -> None:
        if step > 0:
            out.append(checkpoint_row(m, own_probe, model_name=model_plan.name, step=step, tokens_seen=rec["tokens"],
                                      lr=model_plan.lr, init_state=init_state, seed=model_plan.seed,
                                      key=f"{key_prefix}{model_plan.name}", n_probes=n_probes))
            m.train()

    train_model(model, train_tokens[rows], train_lengths[rows], probe.val_tokens[:batch_size],
                probe.val_lengths[:batch_size], cfg, seed=model_plan.seed, label=f"zoo[{model_plan.name}]",
                on_eval=record, progress=progress)
    for r in out:
        r["hparams"] = {"n_layer": model_plan.n_layer, "n_embd": model_plan.n_embd, "lr": model_plan.lr,
                        "train_fraction": model_plan.train_fraction, "seed": model_plan.seed}
    return out, time.perf_counter() - t0

"""Stage 1b: choose a small weighted subset of the training documents.

Sensitivity sampling (Axiotis et al., ICML 2024, Algorithm 1): k-means on the embeddings,
the reference model's loss at each center's nearest real point, proxy loss
ℓ̂(e) = ℓ(c) + Λ‖e − c‖², ``s`` rows drawn with replacement with p ∝ ℓ̂ and weighted
1/(s·p). The reference model is a tiny LM trained briefly on a uniform slice (its cost
reported), or a local model folder. The card checks the subset's weighted mean loss
against the true mean loss, beside uniform sampling at the same budget.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from libs.kmeans import fit_kmeans
from libs.models import ModelSpec, build_model, model_from_files, model_to_files
from libs.report import Figure, Markdown, Table
from libs.sampling import (CountingLoss, collapse, estimate_lambda, kcenter_sample, sensitivity_sample,
                           stratified_sample, uniform_sample)
from libs.schema import option
from libs.training import TrainConfig, per_example_loss, train_model

__all__ = ["METHODS", "SelectConfig", "SelectResult", "run", "report"]

METHODS = ("sensitivity", "sensitivity_distance", "uniform", "stratified", "kcenter")


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """Data selection settings."""

    method: str = option("sensitivity", "sensitivity (Alg. 1), sensitivity_distance (Λ → ∞), uniform, "
                         "stratified (by cluster), kcenter (greedy)", choices=METHODS)
    budget: float = option(0.3, "selected fraction of the training documents (also --budget)", min=0.0,
                           max=1.0, min_exclusive=True)
    budget_docs: int = option(0, "selected documents as a count; overrides budget when > 0", min=0)
    n_clusters: int = option(0, "k of k-means; 0 = center_fraction x the budget (the paper's ~20%)", min=0)
    center_fraction: float = option(0.2, "with n_clusters = 0: k = center_fraction x budget", min=0.0, max=1.0,
                                    min_exclusive=True)
    spherical: bool = option(True, "spherical k-means (unit-norm centers; cosine geometry)")
    kmeans_iters: int = option(20, "Lloyd iterations", min=1)
    kmeans_n_init: int = option(3, "k-means restarts from different initialisations (the best is kept)", min=1)
    max_points_per_centroid: int = option(0, "train k-means on at most this many points per center (0 = all)",
                                          min=0)
    lambda_value: float = option(-1.0, "Λ of the proxy loss; < 0 estimates it from extra loss queries")
    lambda_queries_per_cluster: int = option(3, "extra loss queries per cluster to estimate Λ", min=1)
    reference_model_path: str = option("", "a local save_pretrained folder used as the reference model; "
                                       "empty = train a tiny one on a uniform slice")
    reference_fraction: float = option(0.1, "uniform slice of the training documents the reference model "
                                       "trains on", min=0.0, max=1.0, min_exclusive=True)
    reference_model: ModelSpec = option(doc="shape of the tiny reference model",
                                        default_factory=lambda: ModelSpec(name="reference", n_layer=1, n_embd=32,
                                                                          n_head=2, n_inner=128))
    reference_train: TrainConfig = option(doc="training of the tiny reference model",
                                          default_factory=lambda: TrainConfig(steps=60, batch_size=16, lr=5e-3,
                                                                              warmup_steps=5, eval_every=60,
                                                                              eval_batches=2))
    diagnostic_seeds: int = option(20, "seeds over which the card compares the estimate with uniform", min=1)


@dataclasses.dataclass(frozen=True)
class SelectResult:
    indices: np.ndarray
    weights: np.ndarray
    raw_weights: np.ndarray
    probabilities: np.ndarray
    assignment: np.ndarray
    centers: np.ndarray
    center_indices: np.ndarray
    cluster_sizes: np.ndarray
    lambda_: float
    budget_docs: int
    n_loss_queries: int
    reference_seconds: float
    reference_model_files: dict
    losses: np.ndarray
    diagnostics: dict
    source_table: list
    seconds: float


def _budget(cfg: SelectConfig, n: int) -> int:
    s = cfg.budget_docs or int(round(cfg.budget * n))
    if s > n:
        raise ValueError(f"select.budget_docs={s} is larger than the {n} training documents; lower it or add data")
    return max(s, 1)


def _draw(cfg, method, km, center_loss, lam, s, embeddings, seed):
    if method == "sensitivity":
        return sensitivity_sample(km.assignment, km.sq_distance, center_loss, lam, s, random_state=seed)
    if method == "sensitivity_distance":
        return sensitivity_sample(km.assignment, km.sq_distance, center_loss, lam, s, distance_only=True,
                                  random_state=seed)
    if method == "uniform":
        return uniform_sample(len(km.assignment), s, random_state=seed)
    if method == "stratified":
        return stratified_sample(km.assignment, s, random_state=seed)
    return kcenter_sample(embeddings, s, random_state=seed)


def run(cfg: SelectConfig, *, embeddings: np.ndarray, train_tokens: np.ndarray, train_lengths: np.ndarray,
        val_tokens: np.ndarray, val_lengths: np.ndarray, train_sources: np.ndarray, vocab_size: int,
        seq_len: int, seed: int, progress: bool = True) -> SelectResult:
    """Select ``budget`` training rows and their importance weights."""
    t0 = time.perf_counter()
    n = len(train_tokens)
    for name, a in (("embeddings", embeddings), ("train_lengths", train_lengths), ("train_sources", train_sources)):
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows but there are {n} training documents; they must match")
    s = _budget(cfg, n)
    k = cfg.n_clusters or max(1, int(round(cfg.center_fraction * s)))
    if k > n:
        raise ValueError(f"select.n_clusters={k} is larger than the {n} training documents; lower it")

    # the reference model
    rng = np.random.default_rng(seed)
    tr = time.perf_counter()
    if cfg.reference_model_path:
        from transformers import AutoModelForCausalLM
        ref = AutoModelForCausalLM.from_pretrained(cfg.reference_model_path)
    else:
        slice_rows = rng.choice(n, max(1, int(cfg.reference_fraction * n)), replace=False)
        ref = build_model(cfg.reference_model, vocab_size=vocab_size, n_positions=seq_len + 1, seed=seed)
        train_model(ref, train_tokens[slice_rows], train_lengths[slice_rows], val_tokens, val_lengths,
                    cfg.reference_train, seed=seed, label="select:reference", progress=progress)
    reference_seconds = time.perf_counter() - tr

    def loss_fn(rows):
        return per_example_loss(ref, train_tokens[rows], train_lengths[rows])

    counting = CountingLoss(loss_fn)
    print(f"[select] k-means with k={k} on {n} x {embeddings.shape[1]}; budget {s} documents ({cfg.method})",
          file=sys.stderr, flush=True)
    km = fit_kmeans(embeddings, k, spherical=cfg.spherical, n_iter=cfg.kmeans_iters, n_init=cfg.kmeans_n_init,
                    max_points_per_centroid=cfg.max_points_per_centroid, random_state=seed)
    center_loss = np.zeros(k)
    lam = 0.0
    if cfg.method.startswith("sensitivity"):
        center_loss = counting(km.center_indices)
        lam = cfg.lambda_value if cfg.lambda_value >= 0 else estimate_lambda(
            center_loss, km.assignment, km.sq_distance, counting, per_cluster=cfg.lambda_queries_per_cluster,
            rng=rng)
    sample = _draw(cfg, cfg.method, km, center_loss, lam, s, embeddings, seed)
    indices, raw = collapse(sample)

    # diagnostics: every row's true loss (not counted as the method's cost: it is the check)
    losses = loss_fn(np.arange(n))
    true_mean = float(losses.mean())
    errors = {}
    for method in dict.fromkeys((cfg.method, "uniform")):
        errs = [abs(_draw(cfg, method, km, center_loss, lam, s, embeddings, seed + 1 + j).estimate(losses) / n
                    - true_mean) / true_mean for j in range(cfg.diagnostic_seeds)]
        errors[method] = float(np.median(errs))
    diagnostics = {"true_mean_loss": true_mean, "estimated_mean_loss": sample.estimate(losses) / n,
                   "relative_error": abs(sample.estimate(losses) / n - true_mean) / true_mean,
                   "median_relative_error": errors[cfg.method], "uniform_median_relative_error": errors["uniform"],
                   "error_ratio_vs_uniform": errors[cfg.method] / max(errors["uniform"], 1e-12),
                   "diagnostic_seeds": cfg.diagnostic_seeds, "lambda": lam}
    sources = np.asarray(train_sources)
    names = sorted(set(sources.tolist()))
    sel_weight = {name: float(raw[sources[indices] == name].sum()) for name in names}
    source_table = [[name, int((sources == name).sum()), round((sources == name).mean(), 4),
                     int((sources[indices] == name).sum()), round(sel_weight[name] / raw.sum(), 4)] for name in names]
    return SelectResult(indices=indices, weights=raw / raw.mean(), raw_weights=raw, probabilities=sample.probabilities,
                        assignment=km.assignment, centers=km.centers, center_indices=km.center_indices,
                        cluster_sizes=km.sizes, lambda_=lam, budget_docs=s, n_loss_queries=counting.n_queries,
                        reference_seconds=reference_seconds, reference_model_files=model_to_files(ref),
                        losses=losses, diagnostics=diagnostics, source_table=source_table,
                        seconds=time.perf_counter() - t0)


def report(result: SelectResult) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.diagnostics
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(np.arange(len(result.cluster_sizes)), np.sort(result.cluster_sizes)[::-1])
    axes[0].set_xlabel("cluster (by size)")
    axes[0].set_ylabel("documents")
    axes[0].set_title("Cluster sizes")
    axes[1].hist(result.weights, bins=30)
    axes[1].set_xlabel("importance weight (normalised to mean 1)")
    axes[1].set_ylabel("selected documents")
    axes[1].set_title("Weight distribution")
    fig.tight_layout()
    n = len(result.assignment)
    return [
        Markdown(f"## Selected {len(result.indices)} of {n} documents\n\n"
                 f"{result.budget_docs} draws with replacement ({len(result.indices)} distinct), "
                 f"k = {len(result.cluster_sizes)} clusters, Λ = {result.lambda_:.3g}, "
                 f"{result.n_loss_queries} loss queries of the reference model "
                 f"(trained in {result.reference_seconds:.1f} s).\n\n"
                 f"**Estimate check**: the weighted mean loss of the subset is {d['estimated_mean_loss']:.4f} against "
                 f"the true mean {d['true_mean_loss']:.4f}; median relative error over {d['diagnostic_seeds']} seeds "
                 f"{d['median_relative_error']:.4f} vs uniform sampling's {d['uniform_median_relative_error']:.4f} "
                 f"(ratio {d['error_ratio_vs_uniform']:.2f})."),
        Table(["source", "corpus docs", "corpus share", "selected docs", "selected weight share"],
              result.source_table, title="Composition by source"),
        Figure(fig, title="Clusters and weights"),
    ]

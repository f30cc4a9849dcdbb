"""Stage: choose a small weighted subset of the training documents.

Sensitivity sampling (Axiotis et al., ICML 2024, Algorithm 1; see ``libs/sampling.py``): k-means on
the document embeddings, the reference model's loss at each cluster's nearest real document and at
a few probes per cluster, the proxy loss ℓ̂(e) = level(c) + Λ‖e − c‖² (the level uses every loss
queried in the cluster, shrunk toward the corpus mean), and ``budget - k`` draws with replacement
with the defensive mixture p = a/n + (1 − a)·ℓ̂/Σℓ̂, weighted 1/(s·p); the k center documents join
the subset with weight 1. The baselines (uniform without replacement, stratified by cluster,
k-center greedy) share the API and the card.

Embeddings: the embed step's matrix, or (``embeddings=None`` or an empty matrix, which the embed
step returns for ``embed.method = "reference"``) the reference model's own mean-pooled hidden
states, computed here because the reference model lives here.

Equal cost: the card compares the estimate's exact standard deviation (from the sampling
probabilities) with uniform sampling at equal documents (the budget) and at equal loss queries
(the budget plus the probes' queries as extra uniform rows).

The reference model is a tiny LM trained briefly on a uniform slice of the training documents
(its cost is reported), or a local ``save_pretrained`` folder. The card checks the subset: its
weighted mean reference loss against the true mean over every training document, beside
uniform sampling at the same budget, the composition by source, the clusters and the weights.

The weights leave this stage normalised to mean 1: the training loop applies them once, as
per-example loss weights, over uniformly drawn batches.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from libs.embedders import HiddenStateEmbedder
from libs.kmeans import INITS, assign_to_centers, check_embeddings, summarize_clustering, train_centers
from libs.models import ModelSpec, build_model, model_to_files
from libs.report import Figure, Markdown, Table
from libs.sampling import (DEFAULT_MIXTURE, LEVELS, CountingLoss, Sample, holder_ratios, kcenter_sample,
                           proxy_losses, sensitivity_sampling, sensitivity_sampling_sharded, stratified_sample,
                           uniform_sample, without_replacement_std)
from libs.schema import option
from libs.token_data import TokenData
from libs.training import TrainConfig, per_example_loss, resolve_device, train_model

__all__ = ["METHODS", "SelectConfig", "SelectResult", "run", "report"]

METHODS = ("sensitivity", "sensitivity_distance", "uniform", "stratified", "kcenter")


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """Data selection: the method, its budget, k-means, Λ, the reference model, the card's checks."""

    method: str = option("sensitivity", "sensitivity (Algorithm 1), sensitivity_distance (its Λ → ∞ limit, "
                         "p ∝ ‖e − c‖²), uniform, stratified (uniform within k-means clusters), kcenter (greedy "
                         "k-center, Sener & Savarese)", choices=METHODS)
    budget: float = option(0.3, "selected fraction of the training documents (also the flow's --budget)", min=0.0,
                           max=1.0, min_exclusive=True)
    budget_docs: int = option(0, "budget as a number of documents; overrides budget when > 0", min=0)
    n_clusters: int = option(0, "k of k-means; 0 = center_fraction x the budget (the paper spends ~20% of "
                             "the budget on the centers)", min=0)
    center_fraction: float = option(0.2, "with n_clusters = 0: k = center_fraction x the budget in documents",
                                    min=0.0, max=1.0, min_exclusive=True)
    spherical: bool = option(True, "spherical k-means: unit-norm rows and centers (cosine geometry)")
    kmeans_iters: int = option(20, "Lloyd iterations", min=1)
    kmeans_n_init: int = option(3, "k-means runs from different initialisations (the lowest cost is kept)", min=1)
    kmeans_init: str = option("kmeans++", "k-means initialisation", choices=INITS)
    max_points_per_centroid: int = option(0, "train k-means on at most this many documents per center, drawn at "
                                          "random (0 = all; faiss would silently use 256 x k)", min=0)
    lambda_value: float = option(-1.0, "Λ of the proxy loss ℓ(c) + Λ‖e − c‖²; < 0 = estimate it from "
                                 "lambda_queries_per_cluster extra loss queries per cluster")
    lambda_queries_per_cluster: int = option(2, "probes: extra loss queries per cluster (uniform within it, never "
                                             "the center) that estimate Λ and, with the center, the cluster's loss "
                                             "level; reported as cost, not part of the budget", min=1)
    proxy_level: str = option("shrunk", "each cluster's proxy level: 'shrunk' (mean of the center's and probes' "
                              "losses, shrunk toward the corpus mean by the empirical-Bayes factor "
                              "τ²/(τ² + σ²_within/m)), 'mean' (that mean unshrunk), 'center' (the center's loss "
                              "alone: literal Algorithm 1, fragile)", choices=LEVELS)
    mixture: float = option(DEFAULT_MIXTURE, "a of the defensive mixture p = a/n + (1 - a) p_proxy: every "
                            "document keeps at least a/n of a draw, so the second moment of the weighted loss is "
                            "at most 1/a times uniform's and the self-normalised estimate's variance at most "
                            "1/a times uniform's; 0 = the proxy alone. 0.3 was chosen by measurement "
                            "(bench/bench_selection.py, README)", min=0.0, max=0.99)
    include_centers: bool = option(True, "the k center documents join the subset with weight 1 and the draws "
                                   "cover the rest (unbiased); false = Algorithm 1 literally (draws over all)")
    n_shards: int = option(1, "assign and sample in this many row shards with the two-pass algorithm "
                           "(per-shard sums only); gives the same selection as 1 for the same seed", min=1)
    reference_model_path: str = option("", "a local save_pretrained folder used as the reference model; "
                                       "empty = train a tiny one on a uniform slice")
    reference_fraction: float = option(0.1, "uniform slice of the training documents the tiny reference model "
                                       "trains on", min=0.0, max=1.0, min_exclusive=True)
    reference_model: ModelSpec = option(doc="shape of the tiny reference model",
                                        default_factory=lambda: ModelSpec(name="reference", n_layer=1, n_embd=32,
                                                                          n_head=2, n_inner=128))
    reference_train: TrainConfig = option(doc="training of the tiny reference model (steps, batch_size, lr, ...)",
                                          default_factory=lambda: TrainConfig(steps=60, batch_size=16, lr=5e-3,
                                                                              warmup_steps=5, eval_every=60,
                                                                              eval_batches=2))
    loss_batch_size: int = option(64, "documents per forward pass when the reference model computes losses", min=1)
    diagnostics: bool = option(True, "compute every training document's reference loss for the card's estimate "
                               "check (one forward pass over the training set)")
    diagnostic_seeds: int = option(20, "seeds over which the card measures the estimate's spread for methods "
                                   "without an exact standard deviation (kcenter); the others use the exact one",
                                   min=1)

    def __post_init__(self) -> None:
        if self.center_fraction >= 1.0 and self.n_clusters == 0 and self.method.startswith("sensitivity"):
            raise ValueError(f"center_fraction={self.center_fraction} leaves no budget for the draws; use a value "
                             "below 1 (the paper's is 0.2)")


@dataclasses.dataclass(frozen=True)
class SelectResult:
    """The selected subset and everything the card shows.

    indices : int64 (m,) distinct selected training rows, sorted.
    weights : float64 (m,) their training loss weights (raw weights normalised to mean 1).
    raw_weights : float64 (m,) unbiased weights: Σ over a row's draws of 1/(s·p), 1 for a center row;
        Σ raw_weights · loss estimates the training set's total loss.
    probabilities : float64 (n,) each row's probability per draw (0 for center rows).
    assignment : int64 (n,); centers : float32 (k, d); center_indices : int64 (k,);
    cluster_sizes : int64 (k,); cluster_costs : float64 (k,); center_losses : float64 (k,) (NaN if not queried).
    lambda_ : Λ used (inf for sensitivity_distance, NaN for the baselines).
    budget_docs : the budget in documents; n_draws : draws with replacement (budget - k for sensitivity).
    n_loss_queries : distinct rows whose reference loss the method needed (its cost).
    reference_seconds : time to train (or load) the reference model; reference_model_files : HF files
        ({} when no reference model was needed: a baseline with diagnostics off).
    losses : float64 (n,) every row's reference loss (empty when diagnostics is off).
    embeddings : float32 (n, d) the reference model's hidden-state embeddings when this step computed them
        (no embeddings passed in), else (0, 0); embedder_name : what the clustering used.
    levels : float64 (k,) each cluster's proxy level (NaN for the baselines).
    diagnostics : dict, the estimate check and costs; source_table, cluster_table : rows for the card.
    """

    indices: np.ndarray
    weights: np.ndarray
    raw_weights: np.ndarray
    probabilities: np.ndarray
    assignment: np.ndarray
    centers: np.ndarray
    center_indices: np.ndarray
    cluster_sizes: np.ndarray
    cluster_costs: np.ndarray
    center_losses: np.ndarray
    lambda_: float
    method: str
    budget_docs: int
    n_draws: int
    n_loss_queries: int
    reference_seconds: float
    reference_model_files: dict
    losses: np.ndarray
    diagnostics: dict
    source_table: list
    cluster_table: list
    seconds: float
    embeddings: np.ndarray
    embedder_name: str
    levels: np.ndarray


# ----------------------------------------------------------------------------------------------

def _budget(cfg: SelectConfig, n: int) -> int:
    if cfg.budget_docs:
        budget = cfg.budget_docs
        if budget > n:
            raise ValueError(f"select.budget_docs={budget} is larger than the {n} training documents; "
                             "lower it or add data")
        return budget
    return min(n, max(1, int(round(cfg.budget * n))))


def _n_clusters(cfg: SelectConfig, budget: int, n: int) -> int:
    k = cfg.n_clusters or max(1, int(round(cfg.center_fraction * budget)))
    if k > n:
        raise ValueError(f"select.n_clusters={k} is larger than the {n} training documents; lower it")
    if cfg.method.startswith("sensitivity") and k >= budget:
        source = f"select.n_clusters={k}" if cfg.n_clusters else f"center_fraction x budget = {k}"
        raise ValueError(f"{source} leaves none of the budget of {budget} documents for the draws; "
                         "lower n_clusters / center_fraction or raise the budget")
    if cfg.method == "stratified" and k > budget:
        raise ValueError(f"select.n_clusters={k} exceeds the budget of {budget} documents; stratified sampling "
                         "needs one document per cluster at least")
    return k


def _check_inputs(embeddings, data: TokenData) -> int:
    if not isinstance(data, TokenData):
        raise TypeError(f"data must be a libs.token_data.TokenData, got {type(data).__name__}; build one with "
                        "TokenData.from_attrs(prepare_result)")
    n = data.n_train
    if n == 0:
        raise ValueError("there are no training documents to select from")
    if embeddings is not None and np.asarray(embeddings).size and len(embeddings) != n:
        raise ValueError(f"embeddings has {len(embeddings)} rows but there are {n} training documents; they must match")
    return n


def _reference_model(cfg: SelectConfig, data: TokenData, seed, progress):
    """The reference model and its cost (seconds, training tokens, slice size)."""
    t0 = time.perf_counter()
    if cfg.reference_model_path:
        from pathlib import Path

        from transformers import AutoModelForCausalLM

        path = Path(cfg.reference_model_path).expanduser()
        if not path.is_dir():
            raise ValueError(f"select.reference_model_path={cfg.reference_model_path!r} is not a folder; give a "
                             "local save_pretrained folder, or leave it empty to train a tiny reference model")
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        if model.config.vocab_size < data.vocab_size:
            raise ValueError(f"the reference model at {path} has vocab_size {model.config.vocab_size} but the "
                             f"tokenizer has {data.vocab_size}; use a model trained with this run's tokenizer")
        model.eval()
        return model, {"seconds": time.perf_counter() - t0, "train_tokens": 0, "slice_docs": 0, "source": str(path)}
    n = data.n_train
    n_slice = min(n, max(cfg.reference_train.batch_size, int(round(cfg.reference_fraction * n))))
    rows = np.sort(np.random.default_rng([seed, 1]).choice(n, n_slice, replace=False))
    model = build_model(cfg.reference_model, vocab_size=data.vocab_size, n_positions=data.seq_len + 1, seed=seed)
    trained = train_model(model, data.train_tokens[rows], data.train_lengths[rows], data.val_tokens, data.val_lengths,
                          cfg.reference_train, seed=seed, label="select:reference", progress=progress)
    return model, {"seconds": time.perf_counter() - t0, "train_tokens": int(trained.n_tokens), "slice_docs": n_slice,
                   "source": f"tiny {cfg.reference_model.family} trained {cfg.reference_train.steps} steps on "
                             f"{n_slice} documents", "val_loss": float(trained.final_val_loss)}


def _cluster(cfg: SelectConfig, x: np.ndarray, k: int, seed: int):
    """k-means centers, then the assignment fanned out over ``n_shards`` row blocks."""
    centers, n_train = train_centers(x, k, spherical=cfg.spherical, n_iter=cfg.kmeans_iters,
                                     n_init=cfg.kmeans_n_init, max_points_per_centroid=cfg.max_points_per_centroid,
                                     init=cfg.kmeans_init, random_state=seed)
    bounds = np.linspace(0, len(x), min(cfg.n_shards, len(x)) + 1).astype(int)
    shards = [assign_to_centers(x[a:b], centers) for a, b in zip(bounds[:-1], bounds[1:])]    # the fan-out
    km = summarize_clustering(centers, np.concatenate([a for a, _ in shards]),
                              np.concatenate([d for _, d in shards]), n_train_points=n_train,
                              spherical=cfg.spherical, x=x)
    return km, shards


def _draw(cfg: SelectConfig, method: str, km, shards, x, loss_fn, budget: int, seed: int):
    """One selection by ``method``: (Sample, Λ, center losses, cluster proxy levels, probe rows)."""
    k = km.n_clusters
    if method.startswith("sensitivity"):
        kwargs = dict(n_clusters=k, lambda_=cfg.lambda_value if cfg.lambda_value >= 0 else None,
                      probes_per_cluster=cfg.lambda_queries_per_cluster, include_queried=cfg.include_centers,
                      distance_only=method == "sensitivity_distance", level=cfg.proxy_level, mixture=cfg.mixture,
                      random_state=seed)
        if len(shards) > 1:
            result = sensitivity_sampling_sharded(shards, loss_fn, budget, **kwargs)
        else:
            result = sensitivity_sampling(km.assignment, km.sq_distance, loss_fn, budget, **kwargs)
        return result.sample, result.lambda_, result.center_loss, result.levels, result.probe_rows
    if method == "uniform":
        sample = uniform_sample(len(x), budget, replace=False, random_state=seed)
    elif method == "stratified":
        sample = stratified_sample(km.assignment, budget, n_clusters=k, random_state=seed)
    else:
        sample = kcenter_sample(x, budget, random_state=seed)
    return sample, float("nan"), np.full(k, np.nan), np.full(k, np.nan), np.zeros(0, dtype=np.int64)


def _relative_error(sample: Sample, losses: np.ndarray) -> float:
    true = losses.mean()
    return abs(sample.estimate_mean(losses) - true) / abs(true)


def run(cfg: SelectConfig, *, data: TokenData, embeddings: np.ndarray | None = None, seed: int,
        progress: bool = True) -> SelectResult:
    """Select a weighted subset of the training rows.

    Parameters
    ----------
    cfg : SelectConfig
    data : TokenData, the tokenized training and validation documents (the reference model trains on
        a slice of the training rows and is evaluated on the validation rows; ``train_sources`` feeds
        the card's composition table).
    embeddings : float (n, d), row i embeds training document i; None or an empty matrix (what the
        embed step returns for ``embed.method = "reference"``): embed with the reference model's
        mean-pooled hidden states, returned as ``result.embeddings``.
    seed : seeds the reference model, k-means, the probes and the draws

    Returns
    -------
    SelectResult
    """
    t0 = time.perf_counter()
    n = _check_inputs(embeddings, data)
    own_embeddings = embeddings is None or np.asarray(embeddings).size == 0
    budget = _budget(cfg, n)
    k = _n_clusters(cfg, budget, n)
    say = (lambda m: print(f"[select] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)

    reference, reference_cost = None, {"seconds": 0.0, "train_tokens": 0, "slice_docs": 0,
                                       "source": "not needed (no loss query, diagnostics off)"}
    if cfg.diagnostics or cfg.method == "sensitivity" or own_embeddings:
        reference, reference_cost = _reference_model(cfg, data, seed, progress)
    device = resolve_device(cfg.reference_train.device)
    embed_seconds = 0.0
    losses = np.zeros(0)
    if own_embeddings:
        say(f"embedding the {n} training documents with the reference model's mean-pooled hidden states"
            + (" (and their losses, same pass)" if cfg.diagnostics else ""))
        te = time.perf_counter()
        embedder = HiddenStateEmbedder(reference, batch_size=cfg.loss_batch_size, device=str(device),
                                       progress=progress)
        if cfg.diagnostics:
            embeddings, losses = embedder.embed_tokens(data.train_tokens, data.train_lengths, with_losses=True)
        else:
            embeddings = embedder.embed_tokens(data.train_tokens, data.train_lengths)
        embed_seconds = time.perf_counter() - te
        embedder_name = f"{embedder.name}: {embedder.version}"
    else:
        embedder_name = "the embed step's embeddings"
    x = check_embeddings(embeddings, normalize=cfg.spherical)

    def model_loss(rows: np.ndarray) -> np.ndarray:
        if reference is None:
            raise RuntimeError(f"method {cfg.method!r} asked for a loss without a reference model")
        return per_example_loss(reference, data.train_tokens[rows], data.train_lengths[rows],
                                batch_size=cfg.loss_batch_size, device=device)

    td = time.perf_counter()
    if cfg.diagnostics:
        if not len(losses):
            say(f"reference losses of all {n} training documents (the card's estimate check)")
            losses = model_loss(np.arange(n))
        loss_fn = lambda rows: losses[rows]                                   # noqa: E731 (same values, no rerun)
    else:
        loss_fn = model_loss
    loss_seconds = time.perf_counter() - td

    say(f"k-means, k={k}, on {n} x {x.shape[1]}; budget {budget} documents ({cfg.method})")
    tk = time.perf_counter()
    km, shards = _cluster(cfg, x, k, seed)
    kmeans_seconds = time.perf_counter() - tk
    counting = CountingLoss(loss_fn, n)
    sample, lam, center_losses, levels, probe_rows = _draw(cfg, cfg.method, km, shards, x, counting, budget, seed)
    indices, raw = sample.selected()

    diagnostics = {"method": cfg.method, "budget_docs": budget, "n_clusters": k, "n_draws": sample.n_draws,
                   "n_selected": len(indices), "lambda": lam, "n_loss_queries": counting.n_queries,
                   "n_center_queries": k if cfg.method in ("sensitivity",) else 0,
                   "n_probe_queries": len(probe_rows), "uniform_rows_at_equal_queries": budget + len(probe_rows),
                   "reference": reference_cost, "embedder": embedder_name, "embed_seconds": embed_seconds,
                   "kmeans_seconds": kmeans_seconds, "kmeans_train_points": km.n_train_points,
                   "kmeans_cost": km.objective, "reference_loss_seconds": loss_seconds,
                   "proxy_level": cfg.proxy_level, "mixture": cfg.mixture if cfg.method == "sensitivity" else None,
                   "weight_effective_size": float(raw.sum() ** 2 / (raw ** 2).sum())}
    if cfg.diagnostics:
        diagnostics.update(_estimate_check(cfg, km, shards, x, losses, budget, seed, sample, lam, levels,
                                           len(probe_rows)))
    sources = np.asarray(data.train_sources).astype(str)
    result = SelectResult(
        indices=indices, weights=raw / raw.mean(), raw_weights=raw, probabilities=sample.probabilities,
        assignment=km.assignment, centers=km.centers, center_indices=km.center_indices, cluster_sizes=km.sizes,
        cluster_costs=km.costs, center_losses=center_losses, lambda_=lam, method=cfg.method, budget_docs=budget,
        n_draws=sample.n_draws, n_loss_queries=counting.n_queries, reference_seconds=reference_cost["seconds"],
        reference_model_files=model_to_files(reference.cpu()) if reference is not None else {}, losses=losses,
        diagnostics=diagnostics,
        source_table=_source_table(sources, indices, raw, losses),
        cluster_table=_cluster_table(km, sample, indices, raw, center_losses, levels), seconds=time.perf_counter() - t0,
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32) if own_embeddings
        else np.zeros((0, 0), dtype=np.float32),
        embedder_name=embedder_name, levels=levels)
    say(f"selected {len(indices)} distinct documents of {n} in {result.seconds:.1f} s")
    return result


def _estimate_check(cfg, km, shards, x, losses, budget, seed, sample, lam, levels, n_probes) -> dict:
    """This draw's estimate, and its exact standard deviation against the baselines at equal cost.

    Equal documents: uniform without replacement and stratified (the same clusters) with ``budget``
    rows. Equal loss queries: the same with ``budget + n_probes`` rows (the probes' queries as extra
    rows). k-center has no sampling distribution: its spread over ``diagnostic_seeds`` seeds.
    """
    n = len(losses)
    total = abs(losses.sum())
    true_mean = float(losses.mean())
    out = {"true_mean_loss": true_mean, "estimated_mean_loss": sample.estimate_mean(losses),
           "relative_error": _relative_error(sample, losses), "diagnostic_seeds": cfg.diagnostic_seeds}
    equal_queries = min(n, budget + n_probes)
    out["uniform_relative_std_equal_docs"] = without_replacement_std(losses, budget) / total
    out["uniform_relative_std_equal_queries"] = without_replacement_std(losses, equal_queries) / total
    if km.n_clusters <= budget:
        strat = stratified_sample(km.assignment, budget, n_clusters=km.n_clusters, random_state=seed)
        out["stratified_relative_std_equal_docs"] = strat.exact_std(losses) / total
        strat = stratified_sample(km.assignment, equal_queries, n_clusters=km.n_clusters, random_state=seed)
        out["stratified_relative_std_equal_queries"] = strat.exact_std(losses) / total
    if sample.design == "deterministic":
        lookup = lambda rows: losses[rows]                                    # noqa: E731
        n_seeds = min(cfg.diagnostic_seeds, 5)
        estimates = [_draw(cfg, cfg.method, km, shards, x, lookup, budget, seed + 1 + j)[0].estimate(losses)
                     for j in range(n_seeds)]
        out["relative_std"] = float(np.sqrt(np.mean((np.asarray(estimates) - losses.sum()) ** 2)) / total)
        out["relative_std_kind"] = f"root mean squared error over {n_seeds} seeds"
    else:
        out["relative_std"] = sample.exact_std(losses) / total
        out["relative_std_kind"] = "exact, from the sampling probabilities"
    for cost in ("equal_docs", "equal_queries"):                  # NaN where uniform takes every row (std 0)
        uniform = out[f"uniform_relative_std_{cost}"]
        out[f"std_ratio_{cost}"] = out["relative_std"] / uniform if uniform > 0 else float("nan")
    if cfg.method.startswith("sensitivity"):
        ratios = holder_ratios(losses, km.assignment, km.sq_distance, km.center_indices)
        out["holder_ratio_percentiles"] = {f"p{q}": float(np.percentile(ratios, q)) for q in (10, 25, 50, 75, 90, 99)}
        if cfg.method == "sensitivity":
            proxy = proxy_losses(levels, km.assignment, km.sq_distance, lam)
            out["proxy_correlation"] = float(np.corrcoef(losses, proxy)[0, 1]) if proxy.std() > 0 else 0.0
    return out


def _source_table(sources, indices, raw, losses) -> list:
    rows = []
    total_weight = raw.sum()
    for name in sorted(set(sources.tolist())):
        in_corpus = sources == name
        in_subset = sources[indices] == name
        row = [name, int(in_corpus.sum()), round(float(in_corpus.mean()), 4), int(in_subset.sum()),
               round(float(in_subset.mean()), 4), round(float(raw[in_subset].sum() / total_weight), 4)]
        row.append(round(float(losses[in_corpus].mean()), 4) if len(losses) else None)
        rows.append(row)
    return rows


def _cluster_table(km, sample: Sample, indices, raw, center_losses, levels) -> list:
    mass = np.bincount(km.assignment, weights=sample.probabilities, minlength=km.n_clusters)
    picked = np.bincount(km.assignment[indices], minlength=km.n_clusters)
    weight = np.bincount(km.assignment[indices], weights=raw, minlength=km.n_clusters)
    rows = []
    for c in np.argsort(-km.sizes, kind="stable"):
        rows.append([int(c), int(km.sizes[c]), round(float(km.costs[c]), 4),
                     round(float(km.costs[c] / km.sizes[c]), 4), int(km.center_indices[c]),
                     None if np.isnan(center_losses[c]) else round(float(center_losses[c]), 4),
                     None if np.isnan(levels[c]) else round(float(levels[c]), 4), round(float(mass[c]), 4), int(picked[c]), round(float(weight[c] / raw.sum()), 4)])
    return rows


# ----------------------------------------------------------------------------------------------

def report(result: SelectResult) -> list:
    """The select card: the estimate check, composition by source, clusters and their costs, the weights."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.diagnostics
    n = len(result.assignment)
    k = len(result.cluster_sizes)
    ref = d["reference"]
    lam_text = ("∞ (distance only)" if result.lambda_ == float("inf") else
                "not used" if np.isnan(result.lambda_) else f"{result.lambda_:.3g}")
    head = (f"## Selected {len(result.indices)} of {n} training documents ({result.method})\n\n"
            f"Budget {result.budget_docs} documents: "
            + (f"{k} k-means center documents (weight 1) + {result.n_draws} draws with replacement"
               if result.method.startswith("sensitivity") else f"{result.n_draws} rows"
               + (" without replacement" if result.method in ("uniform", "stratified") else ""))
            + f" ({len(result.indices)} distinct). k = {k}, Λ = {lam_text}"
            + (f", proxy level {d['proxy_level']}, mixture a = {d['mixture']:g}" if d.get("mixture") is not None
               else "") + ". "
            f"**Cost: {result.n_loss_queries} reference-model loss queries** ({d['n_probe_queries']} of them probes "
            f"for Λ and the cluster levels); embeddings: {d['embedder']}; reference model: {ref['source']}, "
            f"{ref['seconds']:.1f} s"
            + (f", {ref['train_tokens']:,} training tokens" if ref.get("train_tokens") else "") + ".")
    items = [Markdown(head)]
    if "true_mean_loss" in d:
        q = d["uniform_rows_at_equal_queries"]
        items.append(Markdown(
            f"**Estimate check.** Weighted mean reference loss of the subset {d['estimated_mean_loss']:.4f} vs the "
            f"true mean over all {n} documents {d['true_mean_loss']:.4f} (relative error {d['relative_error']:.2%}). "
            f"Relative standard deviation of the estimate ({d['relative_std_kind']}): **{d['relative_std']:.3%}** "
            f"against uniform sampling without replacement: {d['uniform_relative_std_equal_docs']:.3%} at equal "
            f"documents ({result.budget_docs}), {d['uniform_relative_std_equal_queries']:.3%} at equal loss queries "
            f"({q} rows: the budget plus the {d['n_probe_queries']} probe queries). Ratio "
            f"**{d['std_ratio_equal_docs']:.2f}** at equal documents, **{d['std_ratio_equal_queries']:.2f}** at "
            "equal loss queries (below 1 is better than uniform"
            + ("; NaN: at this budget uniform sampling without replacement takes every document and is exact"
               if not np.isfinite(d["std_ratio_equal_queries"]) else "") + ")."))
        rows = [[result.method, result.budget_docs, f"{d['relative_std']:.4%}", d["relative_std_kind"]],
                ["uniform without replacement (equal documents)", result.budget_docs,
                 f"{d['uniform_relative_std_equal_docs']:.4%}", "exact"],
                ["uniform without replacement (equal loss queries)", q,
                 f"{d['uniform_relative_std_equal_queries']:.4%}", "exact"]]
        if "stratified_relative_std_equal_docs" in d:
            rows += [["stratified by the same clusters (equal documents)", result.budget_docs,
                      f"{d['stratified_relative_std_equal_docs']:.4%}", "exact"],
                     ["stratified by the same clusters (equal loss queries)", q,
                      f"{d['stratified_relative_std_equal_queries']:.4%}", "exact"]]
        items.append(Table(["method", "rows", "relative std of the estimated mean loss", "how"], rows,
                           title="Estimate check at equal cost: standard deviation of the weighted mean loss"))
        if "holder_ratio_percentiles" in d:
            hp = d["holder_ratio_percentiles"]
            text = ("Hölder ratios |ℓ(e) − ℓ(c)| / ‖e − c‖² over all documents: "
                    + ", ".join(f"{q} {v:.3g}" for q, v in hp.items()) + ".")
            if "proxy_correlation" in d:
                rho = d["proxy_correlation"]
                text += (f" The proxy ℓ̂ correlates with the true loss at ρ = {rho:.2f}: with a loss that varies "
                         f"little in relative terms, p ∝ ℓ̂ cuts the error of uniform sampling to about "
                         f"√(1 − ρ²) = {np.sqrt(max(1 - rho ** 2, 0)):.2f} at best, before the cost of the center "
                         "rows and the probes.")
            items.append(Markdown(text))
    items.append(Table(["source", "corpus docs", "corpus share", "selected docs", "selected share",
                        "weight share (estimated corpus share)", "mean reference loss"], result.source_table,
                       title="Composition by source: the subset against the corpus"))
    items.append(Table(["cluster", "size", "k-means cost", "mean sq. distance", "center row", "center loss",
                        "proxy level", "sampling mass", "selected docs", "weight share"], result.cluster_table[:20],
                       title=f"Clusters (the {min(20, k)} largest of {k})"))
    ref_lines = [["reference model", ref["source"]], ["reference training seconds", round(ref["seconds"], 2)],
                 ["reference training tokens", ref.get("train_tokens", 0)],
                 ["loss queries (method cost)", result.n_loss_queries],
                 ["reference losses of every document (card check) seconds", round(d["reference_loss_seconds"], 2)],
                 ["k-means seconds", round(d["kmeans_seconds"], 2)], ["k-means trained on", d["kmeans_train_points"]],
                 ["weights' effective sample size (Kish)", round(d["weight_effective_size"], 1)],
                 ["select seconds", round(result.seconds, 2)]]
    items.append(Table(["cost", "value"], ref_lines, title="Costs"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    order = np.argsort(-result.cluster_sizes)
    axes[0].bar(np.arange(k), result.cluster_sizes[order], label="documents")
    axes[0].set_xlabel("cluster (largest first)")
    axes[0].set_ylabel("documents")
    twin = axes[0].twinx()
    twin.plot(np.arange(k), result.cluster_costs[order] / result.cluster_sizes[order], color="C1", lw=1,
              label="mean squared distance")
    twin.set_ylabel("mean squared distance to center")
    axes[0].set_title("Cluster sizes and costs")
    axes[1].hist(result.weights, bins=40)
    axes[1].set_xlabel("training weight (mean 1)")
    axes[1].set_ylabel("selected documents")
    axes[1].set_title("Weight distribution")
    if len(result.losses):
        bins = np.histogram_bin_edges(result.losses, bins=40)
        axes[2].hist(result.losses, bins=bins, density=True, alpha=0.5, label=f"all {n} documents")
        axes[2].hist(result.losses[result.indices], bins=bins, density=True, weights=result.raw_weights,
                     histtype="step", lw=1.5, label="subset, weighted")
        axes[2].set_xlabel("reference loss (nats/token)")
        axes[2].set_ylabel("density")
        axes[2].set_title("Loss distribution: corpus vs weighted subset")
        axes[2].legend()
    else:
        axes[2].axis("off")
    fig.tight_layout()
    items.append(Figure(fig, title="Clusters, weights and losses"))
    return items

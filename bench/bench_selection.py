"""Data selection benchmark at equal cost: estimate error per embedder, robustness, scale, downstream; JSON.

    python bench/bench_selection.py --cache-dir /tmp/gf-bench --out bench/results/selection_estimate.json
    python bench/bench_selection.py --skip-estimate --out bench/results/selection_scale.json     # (c) only
    python bench/bench_selection.py --downstream --skip-estimate --skip-scale \\
        --out bench/results/selection_downstream.json

Every comparison is at equal cost, with exact standard deviations computed from the sampling
probabilities (no medians over a few seeds), and uniform sampling WITHOUT replacement as the
uniform baseline.

(a) Estimate error on the default corpus (config/default.toml's prepare and select sections; a
    seeded subsample of ``--max-docs`` training documents when the corpus is larger, recorded in the
    JSON). The select step's reference model gives every document's true loss. For each embedder
    (TF-IDF + SVD, MiniLM, the reference model's own mean-pooled hidden states) and each budget (1%,
    5%), over ``--seeds`` seeds (k-means and probes re-seeded), the exact relative standard deviation
    of the weighted mean loss of: literal Algorithm 1 (one center's loss per cluster, no mixture), the
    robust proxy (every queried loss, shrunk, defensive mixture) over a grid of mixtures a, stratified
    sampling over the same clusters, and uniform without replacement at equal documents (the budget)
    and at equal loss queries (the budget plus the probes' queries as extra rows). The variance over
    seeds is the mean of each seed's exact conditional variance (the estimate is unbiased given
    the clustering). Smoothness: the paper's Table 1 Hölder ratios |ℓ(e) − ℓ(c)| / ‖e − c‖^z and the
    share of the loss variance between clusters.
(b) Robustness: k = 50 clusters at the 5% budget, the center rows of 1 and 3 clusters given a
    near-zero loss (a memorised document); the exact std of Algorithm 1 and of the robust proxy
    against uniform's, on that loss.
(c) Scale: 1,000,000 x 384 float32 synthetic embeddings, k = 1,000, pinned to 2 CPU cores in a fresh
    process: k-means, chunked assignment, Algorithm 1 with the two-pass sharded sampler; seconds,
    peak RSS, the CPU model, its vector extensions and the load average.
(d) Downstream (``--downstream``): the default small LM (shortened training) trained on full data,
    uniform, stratified, sensitivity weighted and sensitivity unweighted subsets at two budgets, over
    paired seeds; validation loss on every validation row, paired t-tests against uniform.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

GOAL_RATIO = 0.75
ROBUST_GOAL = 1.5
SCALE_TARGET_SECONDS = 60.0
MIXTURES = (0.0, 0.1, 0.2, 0.3, 0.5)


def _log(message: str) -> None:
    print(f"[bench_selection] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    """CPU model, vector extensions, cores and load: what the figures were measured on."""
    model, flags = platform.processor(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "sse", "fma", "amx", "f16c")))
    return {"cpu_model": model, "vector_extensions": vector, "cpu_count": os.cpu_count(),
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}


# ----------------------------------------------------------------------------------------------
# the default corpus, the reference model's true losses and the embeddings

def load_default(cache_dir: str | None, seed: int, max_docs: int, embedders: list[str],
                 minilm_max_seq_length: int = 64) -> dict:
    from libs.token_data import TokenData
    from steps import embed, prepare, select_data
    from steps.config import load_config_file

    cfg = load_config_file(ROOT / "config" / "default.toml")
    t0 = time.perf_counter()
    prepared = prepare.run(cfg.prepare, seed=seed)
    data = TokenData.from_attrs(prepared)
    texts = list(prepared.train_texts)
    n_corpus = data.n_train
    rows = np.arange(n_corpus)
    if max_docs and n_corpus > max_docs:
        rows = np.sort(np.random.default_rng([seed, 13]).choice(n_corpus, max_docs, replace=False))
        data = dataclasses.replace(data, train_tokens=data.train_tokens[rows], train_lengths=data.train_lengths[rows],
                                   train_sources=data.train_sources[rows])
        texts = [texts[i] for i in rows]
        _log(f"subsampled {max_docs} of the {n_corpus} training documents (seeded)")
    select_cfg = dataclasses.replace(cfg.select, diagnostics=True)
    key = hashlib.sha256(repr((cfg.prepare, select_cfg.reference_model, select_cfg.reference_train,
                               select_cfg.reference_fraction, select_cfg.reference_model_path, seed, len(rows),
                               rows[:50].tolist())).encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"reference-{key}.pkl" if cache_dir else None
    if cached is not None and cached.exists():
        import pickle

        selection = pickle.loads(cached.read_bytes())
        _log(f"reference model, its embeddings and every loss from cache {cached}")
    else:
        _log("select step, embed.method='reference': trains the reference model, embeds with it, computes every loss")
        selection = select_data.run(select_cfg, data=data, embeddings=None, seed=seed)
        if cached is not None:
            import pickle

            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(pickle.dumps(selection))
    embeddings = {"reference": selection.embeddings}
    seconds = {"reference": selection.diagnostics["embed_seconds"]}
    for name in embedders:
        if name == "reference":
            continue
        ecfg = dataclasses.replace(cfg.embed, method=name)
        if name == "minilm":
            ecfg = dataclasses.replace(ecfg, max_seq_length=minilm_max_seq_length)
        key = hashlib.sha256(("\n".join(texts) + repr(ecfg)).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"embeddings-{name}-{key}.npy" if cache_dir else None
        if cache is not None and cache.exists():
            embeddings[name], seconds[name] = np.load(cache), float("nan")
            _log(f"{name} embeddings from cache {cache}")
            continue
        result = embed.run(ecfg, texts, seed=seed)
        embeddings[name], seconds[name] = result.embeddings, result.seconds
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, embeddings[name])
    corpus = {"config": "config/default.toml", "prepare": dataclasses.asdict(cfg.prepare), "n_train_corpus": n_corpus,
              "n_documents_used": int(len(rows)),
              "subsampled": bool(len(rows) < n_corpus),
              "subsample_note": (f"a seeded uniform subsample of {len(rows)} of the {n_corpus} training documents "
                                 "(MiniLM over the whole corpus does not fit the benchmark's time on 2 cores)"
                                 if len(rows) < n_corpus else "every training document"),
              "n_validation": data.n_val, "embed_seconds": seconds,
              "minilm_max_seq_length": minilm_max_seq_length if "minilm" in embedders else None,
              "reference_model": selection.diagnostics["reference"]}
    return {"cfg": cfg, "data": data, "embeddings": embeddings, "selection": selection, "losses": selection.losses,
            "corpus": corpus, "setup_seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# (a) estimate error at equal cost, per embedder

def _percentiles(values: np.ndarray) -> dict:
    qs = (10, 25, 50, 75, 90, 99)
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(values, qs))}


def _variants(select_cfg) -> dict:
    """The sensitivity variants compared: name -> keyword arguments of sensitivity_sampling."""
    lam = select_cfg.lambda_value if select_cfg.lambda_value >= 0 else None
    base = dict(probes_per_cluster=select_cfg.lambda_queries_per_cluster, lambda_=lam)
    out = {"algorithm1_center_only": dict(base, level="center", mixture=0.0),
           "mean_level_default_a": dict(base, level="mean", mixture=select_cfg.mixture),
           "shrunk_lambda0_default_a": dict(base, lambda_=0.0, level="shrunk", mixture=select_cfg.mixture)}
    for a in MIXTURES:
        out[f"shrunk_a{a:g}"] = dict(base, level="shrunk", mixture=a)
    out["robust_default"] = dict(base, level=select_cfg.proxy_level, mixture=select_cfg.mixture)
    return out


def estimate_error(x: np.ndarray, losses: np.ndarray, select_cfg, budgets: list[float], n_seeds: int) -> dict:
    from libs.kmeans import check_embeddings, fit_kmeans
    from libs.sampling import holder_ratios, sensitivity_sampling, stratified_sample, without_replacement_std

    x = check_embeddings(x, normalize=select_cfg.spherical)
    n = len(losses)
    total = losses.sum()
    lookup = lambda rows: losses[rows]                                          # noqa: E731
    out = {"dim": int(x.shape[1]), "budgets": {}}
    for fraction in budgets:
        budget = max(2, int(round(fraction * n)))
        k = max(1, int(round(select_cfg.center_fraction * budget)))
        t0 = time.perf_counter()
        var: dict[str, list[float]] = {}
        extra = {"probes": [], "proxy_correlation": [], "between_cluster_share": [], "lambda": []}
        holder = None
        for seed in range(n_seeds):
            km = fit_kmeans(x, k, spherical=select_cfg.spherical, n_iter=select_cfg.kmeans_iters,
                            n_init=select_cfg.kmeans_n_init, init=select_cfg.kmeans_init, random_state=seed)
            if holder is None:
                holder = {f"z{z}": _percentiles(holder_ratios(losses, km.assignment, km.sq_distance,
                                                              km.center_indices, z=z)) for z in (1, 2)}
                holder["mean_sq_distance_to_center"] = float(km.sq_distance.mean())
            n_probes = None
            for name, kwargs in _variants(select_cfg).items():
                r = sensitivity_sampling(km.assignment, km.sq_distance, lookup, budget, random_state=seed, **kwargs)
                var.setdefault(name, []).append(r.sample.exact_std(losses) ** 2)
                if name == "robust_default":
                    n_probes = len(r.probe_rows)
                    proxy = r.levels[km.assignment] + r.lambda_ * km.sq_distance
                    extra["proxy_correlation"].append(float(np.corrcoef(losses, proxy)[0, 1])
                                                      if proxy.std() > 0 else 0.0)
                    extra["lambda"].append(r.lambda_)
            extra["probes"].append(n_probes)
            cluster_mean = (np.bincount(km.assignment, weights=losses, minlength=k) / km.sizes)[km.assignment]
            extra["between_cluster_share"].append(float(((cluster_mean - losses.mean()) ** 2).sum()
                                                        / ((losses - losses.mean()) ** 2).sum()))
            queries = min(n, budget + n_probes)
            for name, rows in (("uniform_equal_docs", budget), ("uniform_equal_queries", queries)):
                var.setdefault(name, []).append(without_replacement_std(losses, rows) ** 2)
            for name, rows in (("stratified_equal_docs", budget), ("stratified_equal_queries", queries)):
                if k <= rows:
                    var.setdefault(name, []).append(
                        stratified_sample(km.assignment, rows, n_clusters=k, random_state=seed).exact_std(losses) ** 2)
        rel = {name: float(np.sqrt(np.mean(v)) / total) for name, v in var.items()}
        ue, uq = rel["uniform_equal_docs"], rel["uniform_equal_queries"]
        ratios = {name: {"equal_docs": value / ue, "equal_queries": value / uq} for name, value in rel.items()}
        out["budgets"][f"{fraction:g}"] = {
            "budget_docs": budget, "n_clusters": k, "n_draws": budget - k, "probe_queries": int(np.mean(extra["probes"])),
            "loss_queries_sensitivity": k + int(np.mean(extra["probes"])),
            "uniform_rows_at_equal_queries": budget + int(np.mean(extra["probes"])),
            "exact_relative_std": rel, "ratio_to_uniform": ratios,
            "smoothness": {"holder_ratios": holder,
                           "between_cluster_share_of_loss_variance": float(np.mean(extra["between_cluster_share"])),
                           "robust_proxy_correlation_with_loss": float(np.mean(extra["proxy_correlation"])),
                           "lambda_median": float(np.median(extra["lambda"]))},
            "seconds": round(time.perf_counter() - t0, 1)}
        _log(f"(a) dim {x.shape[1]} budget {fraction:g}: robust/uniform {ratios['robust_default']['equal_queries']:.3f} "
             f"(equal queries), algorithm 1 {ratios['algorithm1_center_only']['equal_queries']:.3f}, stratified "
             f"{ratios.get('stratified_equal_queries', {}).get('equal_queries', float('nan')):.3f}")
    return out


def compare_embedders(ctx: dict, budgets: list[float], n_seeds: int) -> dict:
    losses = ctx["losses"]
    select_cfg = ctx["cfg"].select
    out = {"loss_mean": float(losses.mean()), "loss_std": float(losses.std()),
           "loss_coefficient_of_variation": float(losses.std() / losses.mean()), "seeds": n_seeds,
           "select_config": {"center_fraction": select_cfg.center_fraction,
                             "probes_per_cluster": select_cfg.lambda_queries_per_cluster,
                             "proxy_level": select_cfg.proxy_level, "mixture": select_cfg.mixture,
                             "kmeans_n_init": select_cfg.kmeans_n_init},
           "embedders": {}}
    for name, x in ctx["embeddings"].items():
        _log(f"(a) embedder {name}")
        out["embedders"][name] = estimate_error(x, losses, select_cfg, budgets, n_seeds)
    # the headline: the best embedder at the 5% budget, at equal loss queries
    key = "0.05" if "0.05" in next(iter(out["embedders"].values()))["budgets"] else f"{budgets[-1]:g}"
    scores = {name: e["budgets"][key]["ratio_to_uniform"]["robust_default"]["equal_queries"]
              for name, e in out["embedders"].items()}
    best = min(scores, key=scores.get)
    smooth = {name: e["budgets"][key]["smoothness"]["between_cluster_share_of_loss_variance"]
              for name, e in out["embedders"].items()}
    best_mixture = {}
    for name, e in out["embedders"].items():
        grid = {a: e["budgets"][key]["ratio_to_uniform"][f"shrunk_a{a:g}"]["equal_queries"] for a in MIXTURES}
        best_mixture[name] = {"ratio_by_mixture": {f"{a:g}": v for a, v in grid.items()}}
    out["headline"] = {
        "budget": key, "robust_std_ratio_equal_queries_by_embedder": scores, "best_embedder": best,
        "best_ratio_equal_queries": scores[best],
        "best_ratio_equal_docs": out["embedders"][best]["budgets"][key]["ratio_to_uniform"]["robust_default"][
            "equal_docs"],
        "stratified_ratio_equal_queries_best_embedder": out["embedders"][best]["budgets"][key]["ratio_to_uniform"].get(
            "stratified_equal_queries", {}).get("equal_queries"),
        "goal_ratio": GOAL_RATIO, "goal_met": scores[best] <= GOAL_RATIO,
        "between_cluster_share_by_embedder": smooth, "smoothest_embedder": max(smooth, key=smooth.get),
        "mixture_grid_at_headline_budget": best_mixture}
    return out


# ----------------------------------------------------------------------------------------------
# (b) robustness: low-loss centers

def robustness(x: np.ndarray, losses: np.ndarray, select_cfg, fraction: float, n_seeds: int, k: int = 50,
               low_fraction: float = 0.01) -> dict:
    from libs.kmeans import check_embeddings, fit_kmeans
    from libs.sampling import sensitivity_sampling, without_replacement_std

    x = check_embeddings(x, normalize=select_cfg.spherical)
    n = len(losses)
    budget = max(k + 1, int(round(fraction * n)))
    low = low_fraction * float(losses.mean())
    out = {"n_clusters": k, "budget_docs": budget, "low_center_loss": low,
           "low_center_loss_note": f"{low_fraction:g} x the mean loss, at the center row of the largest clusters",
           "goal_std_at_most_x_uniform": ROBUST_GOAL, "cases": {}}
    lam = select_cfg.lambda_value if select_cfg.lambda_value >= 0 else None
    variants = {"algorithm1_center_only": dict(level="center", mixture=0.0),
                "robust_default": dict(level=select_cfg.proxy_level, mixture=select_cfg.mixture),
                "shrunk_no_mixture": dict(level="shrunk", mixture=0.0),
                "center_with_mixture": dict(level="center", mixture=select_cfg.mixture)}
    for n_low in (0, 1, 3):
        var: dict[str, list[float]] = {}
        for seed in range(n_seeds):
            km = fit_kmeans(x, k, spherical=select_cfg.spherical, n_iter=select_cfg.kmeans_iters,
                            n_init=select_cfg.kmeans_n_init, random_state=seed)
            bad = losses.copy()
            bad[km.center_indices[np.argsort(-km.sizes, kind="stable")[:n_low]]] = low
            probes = None
            for name, kwargs in variants.items():
                r = sensitivity_sampling(km.assignment, km.sq_distance, lambda rows: bad[rows], budget,
                                         probes_per_cluster=select_cfg.lambda_queries_per_cluster, lambda_=lam,
                                         random_state=seed, **kwargs)
                var.setdefault(name, []).append(r.sample.exact_std(bad) ** 2)
                probes = len(r.probe_rows)
            var.setdefault("uniform_equal_docs", []).append(without_replacement_std(bad, budget) ** 2)
            var.setdefault("uniform_equal_queries", []).append(without_replacement_std(bad, budget + probes) ** 2)
        std = {name: float(np.sqrt(np.mean(v))) for name, v in var.items()}
        case = {name: {"std_ratio_equal_docs": std[name] / std["uniform_equal_docs"],
                       "std_ratio_equal_queries": std[name] / std["uniform_equal_queries"]} for name in variants}
        case["robust_goal_met"] = case["robust_default"]["std_ratio_equal_docs"] <= ROBUST_GOAL
        out["cases"][f"{n_low}_low_centers"] = case
        _log(f"(b) {n_low} low-loss centers: algorithm 1 {case['algorithm1_center_only']['std_ratio_equal_docs']:.2f}x "
             f"uniform, robust {case['robust_default']['std_ratio_equal_docs']:.2f}x")
    return out


# ----------------------------------------------------------------------------------------------
# (c) scale: a fresh process pinned to 2 cores

def scale_worker(n: int, d: int, k: int, points_per_centroid: int, n_iter: int, budget: float, n_shards: int,
                 cores: int) -> dict:
    import resource

    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import faiss

    faiss.omp_set_num_threads(cores)
    from libs.kmeans import assign_to_centers, check_embeddings, summarize_clustering, train_centers
    from libs.sampling import sensitivity_sampling_sharded

    load_before = [round(v, 2) for v in os.getloadavg()]
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((k, d), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):                        # clustered unit rows, built in blocks
        m = min(65536, n - start)
        block = directions[rng.integers(0, k, m)] + 0.08 * rng.standard_normal((m, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:start + m] = block
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20

    def synthetic_loss(rows: np.ndarray) -> np.ndarray:    # a loss that depends on the row's own vector
        return 2.0 + x[rows, 0] + 0.5 * x[rows, 1] ** 2

    t0 = time.perf_counter()
    xs = check_embeddings(x, normalize=True)
    t1 = time.perf_counter()
    centers, n_train = train_centers(xs, k, spherical=True, n_iter=n_iter, n_init=1,
                                     max_points_per_centroid=points_per_centroid, init="kmeans++", random_state=0)
    t2 = time.perf_counter()
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    shards = [assign_to_centers(xs[a:b], centers) for a, b in zip(bounds[:-1], bounds[1:])]
    t3 = time.perf_counter()
    km = summarize_clustering(centers, np.concatenate([a for a, _ in shards]), np.concatenate([q for _, q in shards]),
                              n_train_points=n_train, spherical=True)
    result = sensitivity_sampling_sharded(shards, synthetic_loss, int(budget * n), n_clusters=k, random_state=0)
    t4 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"n": n, "d": d, "k": k, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "kmeans_train_points": n_train, "kmeans_iters": n_iter, "n_shards": n_shards,
            "budget_docs": int(budget * n), "loss_queries": result.n_loss_queries, "lambda": result.lambda_,
            "mixture": result.mixture, "empty_clusters": int((km.sizes == 0).sum()),
            "seconds": {"validate": round(t1 - t0, 2), "kmeans_train": round(t2 - t1, 2),
                        "assign_all_rows": round(t3 - t2, 2), "sample_two_pass": round(t4 - t3, 2),
                        "total": round(t4 - t0, 2)},
            "peak_rss_gib": round(peak, 3), "rss_after_generating_data_gib": round(rss_data, 3),
            "embeddings_gib": round(x.nbytes / 2 ** 30, 3), "n_x_k_float32_matrix_gib": round(n * k * 4 / 2 ** 30, 3),
            "memory_note": "peak RSS stays near the embeddings' size: assignment works in chunks, no n x k matrix",
            "target_seconds": SCALE_TARGET_SECONDS, "within_target": (t4 - t0) <= SCALE_TARGET_SECONDS,
            "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "machine": machine()}


def scale(args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--scale-worker", "--scale-n", str(args.scale_n),
               "--scale-k", str(args.scale_k), "--scale-points-per-centroid", str(args.scale_points_per_centroid),
               "--scale-iters", str(args.scale_iters), "--scale-shards", str(args.scale_shards)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if done.returncode != 0:
        return {"status": "failed", "stderr": done.stderr[-3000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# (d) downstream: small LMs trained on the subsets, paired over seeds

SUBSET_ARMS = ("uniform", "stratified", "sensitivity_weighted", "sensitivity_unweighted")


def _paired(a: list[float], b: list[float]) -> dict:
    from scipy import stats

    diff = np.asarray(a) - np.asarray(b)
    test = stats.ttest_rel(a, b)
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    return {"mean_difference": float(diff.mean()), "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "t": float(test.statistic), "p_value": float(test.pvalue), "wins": int((diff < 0).sum()),
            "n_pairs": len(diff)}


def downstream(ctx: dict, n_seeds: int, steps: int, budgets: list[float], batch_size: int,
               partial_path: str | None = None, val_rows: int = 0) -> dict:
    import tempfile

    from libs.models import build_model, model_from_files
    from libs.training import per_example_loss, train_model
    from steps import select_data

    cfg, data = ctx["cfg"], ctx["data"]
    x = ctx["embeddings"][ctx["downstream_embedder"]]
    spec = cfg.pretrain_small.models[0]
    # training's own evaluations are one batch (cheap); the verdict is one pass over the validation rows
    train_cfg = dataclasses.replace(cfg.pretrain_small.train, steps=steps, batch_size=batch_size, eval_batches=1,
                                    eval_every=steps, warmup_steps=min(cfg.pretrain_small.train.warmup_steps, steps),
                                    checkpoint_every=0)
    evaluated = np.arange(data.n_val)
    if val_rows and val_rows < data.n_val:
        evaluated = np.sort(np.random.default_rng(17).choice(data.n_val, val_rows, replace=False))
    val_tokens, val_lengths = data.val_tokens[evaluated], data.val_lengths[evaluated]
    val_loss: dict[str, list[float]] = {}
    t0 = time.perf_counter()

    def train(rows, weights, seed, label):
        model = build_model(spec, vocab_size=data.vocab_size, n_positions=data.seq_len + 1, seed=seed,
                            bos_token_id=data.bos_id, eos_token_id=data.eos_id)
        train_model(model, data.train_tokens[rows], data.train_lengths[rows], val_tokens[:batch_size],
                    val_lengths[:batch_size], train_cfg, seed=seed, weights=weights, label=label, progress=False)
        per_row = per_example_loss(model, val_tokens, val_lengths, batch_size=64)
        counted = val_lengths - 1                                   # token-weighted, as training reports it
        loss = float((per_row * counted).sum() / counted.sum())
        val_loss.setdefault(label, []).append(loss)
        _log(f"(d) {label} seed {seed}: validation loss {loss:.4f} ({time.perf_counter() - t0:.0f} s so far)")

    with tempfile.TemporaryDirectory() as folder:
        model_from_files(ctx["selection"].reference_model_files).save_pretrained(folder)
        for seed in range(n_seeds):
            train(np.arange(data.n_train), None, seed, "full")
            for fraction in budgets:
                for method in ("uniform", "stratified", "sensitivity"):
                    sel_cfg = dataclasses.replace(cfg.select, reference_model_path=folder, diagnostics=False,
                                                  method=method, budget=fraction, budget_docs=0, n_clusters=0)
                    s = select_data.run(sel_cfg, data=data, embeddings=x, seed=seed, progress=False)
                    if method == "sensitivity":
                        train(s.indices, s.weights, seed, f"sensitivity_weighted@{fraction:g}")
                        train(s.indices, None, seed, f"sensitivity_unweighted@{fraction:g}")
                    else:
                        train(s.indices, s.weights, seed, f"{method}@{fraction:g}")
            if partial_path:
                Path(partial_path).write_text(json.dumps({"partial_after_seed": seed, "val_loss": val_loss}) + "\n")
    out = {"model": dataclasses.asdict(spec), "steps": steps, "batch_size": batch_size,
           "documents_seen_per_run": steps * batch_size, "budgets": budgets,
           "budget_docs": {f"{b:g}": int(round(b * data.n_train)) for b in budgets},
           "training_documents": data.n_train, "validation_rows": int(len(evaluated)),
           "validation_rows_in_corpus": data.n_val,
           "validation_note": ("every validation row" if len(evaluated) == data.n_val else
                               f"a fixed seeded subset of {len(evaluated)} of the {data.n_val} validation rows, the "
                               "same rows for every arm and seed (paired); all rows did not fit the time on the "
                               "shared 2 cores"),
           "torch_threads": int(__import__("torch").get_num_threads()), "seeds": n_seeds,
           "embedder": ctx["downstream_embedder"], "selection_config": {
               "proxy_level": cfg.select.proxy_level, "mixture": cfg.select.mixture,
               "center_fraction": cfg.select.center_fraction},
           "val_loss": {m: {"values": v, "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))}
                        for m, v in val_loss.items()},
           "paired_vs_uniform": {}, "seconds": round(time.perf_counter() - t0, 1)}
    for fraction in budgets:
        ref = val_loss[f"uniform@{fraction:g}"]
        for arm in SUBSET_ARMS[1:] + ("full",):
            label = arm if arm == "full" else f"{arm}@{fraction:g}"
            out["paired_vs_uniform"][f"{label} - uniform@{fraction:g}"] = _paired(val_loss[label], ref)
    best = {}
    for fraction in budgets:
        arms = {a: float(np.mean(val_loss[f"{a}@{fraction:g}"])) for a in SUBSET_ARMS[1:]}
        name = min(arms, key=arms.get)
        best[f"{fraction:g}"] = {"best_selection_arm": name,
                                 "matches_or_beats_uniform": arms[name] <= float(np.mean(val_loss[f"uniform@{fraction:g}"])),
                                 "paired": out["paired_vs_uniform"][f"{name}@{fraction:g} - uniform@{fraction:g}"]}
    out["verdict"] = best
    return out


# ----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="k-means / probe seeds per budget in (a)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.05], help="budget fractions in (a)")
    parser.add_argument("--embedders", nargs="+", default=["tfidf", "minilm", "reference"],
                        choices=["tfidf", "minilm", "reference"])
    parser.add_argument("--max-docs", type=int, default=12000,
                        help="subsample the training documents to this many when the corpus is larger (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, embeddings and reference model")
    parser.add_argument("--minilm-max-seq-length", type=int, default=64,
                        help="MiniLM truncates documents to this many tokens (64: about half the CPU time of 128)")
    parser.add_argument("--cache-dir", default=None, help="cache the embeddings here")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--skip-estimate", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--skip-scale", action="store_true", help="skip (c)")
    parser.add_argument("--robust-seeds", type=int, default=5)
    parser.add_argument("--scale-n", type=int, default=1_000_000)
    parser.add_argument("--scale-k", type=int, default=1000)
    parser.add_argument("--scale-points-per-centroid", type=int, default=128,
                        help="k-means trains on this many rows per center (0 = all rows)")
    parser.add_argument("--scale-iters", type=int, default=20)
    parser.add_argument("--scale-shards", type=int, default=8, help="row shards of the two-pass sampler in (c)")
    parser.add_argument("--scale-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--downstream", action="store_true", help="run (d)")
    parser.add_argument("--downstream-seeds", type=int, default=5)
    parser.add_argument("--downstream-steps", type=int, default=150)
    parser.add_argument("--downstream-batch-size", type=int, default=16)
    parser.add_argument("--downstream-budgets", type=float, nargs="+", default=[0.02, 0.1])
    parser.add_argument("--downstream-embedder", default="tfidf", choices=["tfidf", "minilm", "reference"])
    parser.add_argument("--downstream-val-rows", type=int, default=0,
                        help="evaluate on a fixed seeded subset of this many validation rows (0 = all)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); 1 is much faster on oversubscribed cores")
    args = parser.parse_args()

    if args.scale_worker:
        print(json.dumps(scale_worker(args.scale_n, 384, args.scale_k, args.scale_points_per_centroid,
                                      args.scale_iters, 0.01, args.scale_shards, cores=2)))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report: dict = {"benchmark": "selection", "machine_at_start": machine(),
                    "command": " ".join(["python", "bench/bench_selection.py"] + sys.argv[1:])}
    t0 = time.perf_counter()
    if not args.skip_estimate or args.downstream:
        embedders = args.embedders if not args.skip_estimate else [args.downstream_embedder]
        ctx = load_default(args.cache_dir, args.seed, args.max_docs, embedders, args.minilm_max_seq_length)
        ctx["downstream_embedder"] = args.downstream_embedder
        report["corpus"] = ctx["corpus"]
        report["setup_seconds"] = round(ctx["setup_seconds"], 1)
        if not args.skip_estimate:
            report["estimate_error"] = compare_embedders(ctx, args.budgets, args.seeds)
            best = report["estimate_error"]["headline"]["best_embedder"]
            report["robustness"] = {"embedder": best, **robustness(ctx["embeddings"][best], ctx["losses"],
                                                                    ctx["cfg"].select, 0.05, args.robust_seeds)}
        if args.downstream:
            report["downstream"] = downstream(ctx, args.downstream_seeds, args.downstream_steps,
                                              args.downstream_budgets, args.downstream_batch_size,
                                              partial_path=(args.out + ".partial") if args.out else None,
                                              val_rows=args.downstream_val_rows)
    if not args.skip_scale:
        _log("(c) scale run in a fresh process on 2 cores")
        report["scale"] = scale(args)
    report["machine_at_end"] = machine()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

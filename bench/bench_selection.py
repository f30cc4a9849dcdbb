"""Data selection benchmark: estimate error, scale, and (optionally) downstream training; one JSON object.

    python bench/bench_selection.py                         # (a) + (b)
    python bench/bench_selection.py --downstream            # + (c): small LMs trained on the subsets
    python bench/bench_selection.py --skip-scale --seeds 200 --cache-dir /tmp/gf-bench

(a) Loss-estimate error on the default corpus (config/default.toml: prepare, embed, select). The
    select step's reference model gives every training document's true loss; at budgets of 1% and
    5% of the documents, over ``--seeds`` seeds (k-means, probes and draws all re-seeded), the
    relative error |estimated mean − true mean| / true mean of the weighted mean loss for
    sensitivity sampling (Algorithm 1, the select step's defaults), uniform, stratified (by the
    same k-means clusters) and k-center greedy, each spending the same budget of documents.
    Goal: sensitivity's median error <= 0.7x uniform's. The ``why`` block explains the outcome
    with the paper's Hölder ratios |ℓ(e) − ℓ(c)| / ‖e − c‖^z (percentiles, its Table 1), how much
    of the loss variance the proxy explains, and what an oracle cluster-level proxy would reach.
(b) Scale: 1,000,000 x 384 float32 synthetic embeddings, k = 1,000, pinned to 2 CPU cores in a
    fresh process: k-means (trained on ``--scale-points-per-centroid`` x k rows), chunked assignment
    of every row (no n x k matrix), Algorithm 1 with the two-pass sharded sampler. Seconds and
    peak RSS; target <= 60 s.
(c) Downstream (``--downstream``): the default small LM trained on the sensitivity subset (weighted)
    and on a uniform subset of the same budget, 3 seeds each; validation loss on the full split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

GOAL_RATIO = 0.7
SCALE_TARGET_SECONDS = 60.0


def _log(message: str) -> None:
    print(f"[bench_selection] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# the default corpus, its embeddings and the reference model's true losses

def load_default(cache_dir: str | None, seed: int) -> dict:
    from steps import embed, prepare, select_data
    from steps.config import load_config_file

    cfg = load_config_file(ROOT / "config" / "default.toml")
    t0 = time.perf_counter()
    prepared = prepare.run(cfg.prepare, seed=seed)
    key = hashlib.sha256(("\n".join(prepared.train_texts) + repr(cfg.embed)).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"embeddings-{key}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        embeddings, embed_seconds = np.load(cache), float("nan")
        _log(f"embeddings from cache {cache}")
    else:
        result = embed.run(cfg.embed, prepared.train_texts, seed=seed)
        embeddings, embed_seconds = result.embeddings, result.seconds
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, embeddings)
    _log("select step with the default config (trains the reference model, computes every loss)")
    selection = select_data.run(cfg.select, embeddings=embeddings, train_tokens=prepared.train_tokens,
                           train_lengths=prepared.train_lengths, val_tokens=prepared.val_tokens,
                           val_lengths=prepared.val_lengths, train_sources=prepared.train_sources,
                           vocab_size=prepared.vocab_size, seq_len=prepared.seq_len, seed=seed)
    return {"cfg": cfg, "prepared": prepared, "embeddings": embeddings, "selection": selection,
            "losses": selection.losses, "embed_seconds": embed_seconds, "setup_seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# (a) loss-estimate error

def _relative_error(sample, losses) -> float:
    return abs(sample.estimate_mean(losses) - losses.mean()) / losses.mean()


def estimate_error(ctx: dict, budgets: list[float], n_seeds: int) -> dict:
    from libs.kmeans import check_embeddings, fit_kmeans
    from libs.sampling import (holder_ratios, kcenter_sample, proxy_losses, sensitivity_sampling, stratified_sample,
                               uniform_sample, with_replacement_std)

    cfg = ctx["cfg"].select
    losses = ctx["losses"]
    x = check_embeddings(ctx["embeddings"], normalize=cfg.spherical)
    n = len(losses)
    lookup = lambda rows: losses[rows]                                          # noqa: E731
    embed_cfg = ctx["cfg"].embed
    out = {"n_documents": n, "embedder": f"{embed_cfg.method} (max_seq_length {embed_cfg.max_seq_length})",
           "reference_model": ctx["selection"].diagnostics["reference"], "seeds": n_seeds,
           "loss_mean": float(losses.mean()), "loss_std": float(losses.std()),
           "loss_coefficient_of_variation": float(losses.std() / losses.mean()), "budgets": {}}
    sensitivity_kwargs = dict(probes_per_cluster=cfg.lambda_queries_per_cluster,
                              lambda_=cfg.lambda_value if cfg.lambda_value >= 0 else None)
    for fraction in budgets:
        budget = max(2, int(round(fraction * n)))
        k = max(1, int(round(cfg.center_fraction * budget)))
        t0 = time.perf_counter()
        errors: dict[str, list[float]] = {}
        stds: dict[str, list[float]] = {}
        extra = {"lambda": [], "loss_queries": [], "proxy_correlation": [], "cluster_mean_r2": [], "oracle_std": []}

        def record(name, sample, exact=None):
            errors.setdefault(name, []).append(_relative_error(sample, losses))
            if exact is not None:
                stds.setdefault(name, []).append(exact / losses.sum())

        for seed in range(n_seeds):
            km = fit_kmeans(x, k, spherical=cfg.spherical, n_iter=cfg.kmeans_iters, n_init=cfg.kmeans_n_init,
                            init=cfg.kmeans_init, random_state=seed)
            sens = sensitivity_sampling(km.assignment, km.sq_distance, lookup, budget, random_state=seed,
                                        **sensitivity_kwargs)
            s = sens.sample
            record("sensitivity", s, with_replacement_std(losses, s.probabilities, s.n_draws, s.fixed_rows))
            extra["lambda"].append(sens.lambda_)
            extra["loss_queries"].append(sens.n_loss_queries)
            proxy = proxy_losses(sens.center_loss, km.assignment, km.sq_distance, sens.lambda_)
            total_ss = ((losses - losses.mean()) ** 2).sum()
            extra["proxy_correlation"].append(float(np.corrcoef(losses, proxy)[0, 1]) if proxy.std() > 0 else 0.0)
            cluster_mean = (np.bincount(km.assignment, weights=losses, minlength=k) / km.sizes)[km.assignment]
            extra["cluster_mean_r2"].append(1 - ((losses - cluster_mean) ** 2).sum() / total_ss)
            extra["oracle_std"].append(with_replacement_std(losses, cluster_mean / cluster_mean.sum(), budget)
                                       / losses.sum())
            for name, kwargs in (("sensitivity_lambda0", dict(lambda_=0.0)),
                                 ("sensitivity_literal", dict(sensitivity_kwargs, include_queried=False)),
                                 ("sensitivity_distance", dict(distance_only=True))):
                v = sensitivity_sampling(km.assignment, km.sq_distance, lookup, budget, random_state=seed,
                                         **kwargs).sample
                record(name, v, with_replacement_std(losses, v.probabilities, v.n_draws, v.fixed_rows))
            record("uniform", uniform_sample(n, budget, random_state=seed),
                   with_replacement_std(losses, np.full(n, 1 / n), budget))
            record("uniform_without_replacement", uniform_sample(n, budget, replace=False, random_state=seed))
            record("stratified", stratified_sample(km.assignment, budget, n_clusters=k, random_state=seed))
            record("kcenter", kcenter_sample(x, budget, random_state=seed))
        uniform_median = float(np.median(errors["uniform"]))
        methods = {}
        for name, values in errors.items():
            values = np.asarray(values)
            methods[name] = {"median_relative_error": float(np.median(values)),
                             "mean_relative_error": float(values.mean()),
                             "p90_relative_error": float(np.percentile(values, 90)),
                             "ratio_to_uniform_median": float(np.median(values) / uniform_median)}
            if name in stds:
                methods[name]["exact_relative_std"] = float(np.mean(stds[name]))
        headline = {m: methods[m]["ratio_to_uniform_median"] for m in ("sensitivity", "stratified", "kcenter")}
        km0 = fit_kmeans(x, k, spherical=cfg.spherical, n_iter=cfg.kmeans_iters, n_init=cfg.kmeans_n_init,
                         init=cfg.kmeans_init, random_state=0)
        why = {f"holder_ratio_z{z}_percentiles": {f"p{q}": float(v) for q, v in zip(
                   (10, 25, 50, 75, 90, 99), np.percentile(holder_ratios(losses, km0.assignment, km0.sq_distance,
                                                                          km0.center_indices, z=z),
                                                           (10, 25, 50, 75, 90, 99)))} for z in (1, 2)}
        lam = float(np.median(extra["lambda"]))
        why.update({
            "lambda_median": lam,
            "proxy_correlation_mean": float(np.mean(extra["proxy_correlation"])),
            "cluster_mean_r2_mean": float(np.mean(extra["cluster_mean_r2"])),
            "oracle_cluster_mean_proxy_std_ratio_to_uniform": float(
                np.mean(extra["oracle_std"]) / methods["uniform"]["exact_relative_std"]),
            "sensitivity_exact_std_ratio_to_uniform": float(
                methods["sensitivity"]["exact_relative_std"] / methods["uniform"]["exact_relative_std"]),
            "additive_term_lambda_phi_over_total_loss": float(lam * km0.objective / losses.sum()),
            "mean_sq_distance_to_center": float(km0.sq_distance.mean()),
        })
        rho = why["proxy_correlation_mean"]
        # with a small loss CV, p ∝ ℓ̂ (even rescaled optimally) cuts uniform's error to about √(1 − ρ²),
        # and the k center rows leave budget − k draws: √(budget / (budget − k))
        why["error_ratio_bound_from_proxy_correlation"] = float(np.sqrt(max(1 - rho ** 2, 0.0))
                                                                * np.sqrt(budget / (budget - k)))
        why["verdict"] = (
            f"the loss varies little (CV {out['loss_coefficient_of_variation']:.3f}) and "
            f"{1 - why['cluster_mean_r2_mean']:.0%} of its variance lies within clusters, where it is not smooth "
            "in the embedding "
            f"(median Hölder ratio {why['holder_ratio_z2_percentiles']['p50']:.2f} at a mean squared distance of "
            f"{why['mean_sq_distance_to_center']:.2f} to the center, i.e. |ℓ(e) − ℓ(c)| ~ "
            f"{why['holder_ratio_z2_percentiles']['p50'] * why['mean_sq_distance_to_center']:.2f} nats vs a loss std "
            f"of {out['loss_std']:.2f}); one center's loss is a noisy proxy (correlation {rho:.2f} with the loss), "
            f"which bounds the error ratio near {why['error_ratio_bound_from_proxy_correlation']:.2f}; even an oracle "
            f"proxy equal to each cluster's true mean loss would reach "
            f"{why['oracle_cluster_mean_proxy_std_ratio_to_uniform']:.2f}. Stratifying the same clusters removes the "
            "between-cluster variance exactly, without a proxy.")
        out["budgets"][f"{fraction:g}"] = {
            "budget_docs": budget, "n_clusters": k, "n_draws_sensitivity": budget - k,
            "sensitivity_loss_queries_mean": float(np.mean(extra["loss_queries"])),
            "methods": methods, "ratio_to_uniform": headline,
            "goal_sensitivity_at_most_0.7x_uniform": headline["sensitivity"] <= GOAL_RATIO, "why": why,
            "seconds": round(time.perf_counter() - t0, 1)}
        _log(f"(a) budget {fraction:g}: sensitivity/uniform median error ratio {headline['sensitivity']:.3f}")
    return out


# ----------------------------------------------------------------------------------------------
# (b) scale: a fresh process pinned to 2 cores

def scale_worker(n: int, d: int, k: int, points_per_centroid: int, n_iter: int, budget: float, n_shards: int,
                 cores: int) -> dict:
    import resource

    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import faiss

    faiss.omp_set_num_threads(cores)
    from libs.kmeans import assign_to_centers, check_embeddings, summarize_clustering, train_centers
    from libs.sampling import sensitivity_sampling_sharded

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
            "empty_clusters": int((km.sizes == 0).sum()),
            "seconds": {"validate": round(t1 - t0, 2), "kmeans_train": round(t2 - t1, 2),
                        "assign_all_rows": round(t3 - t2, 2), "sample_two_pass": round(t4 - t3, 2),
                        "total": round(t4 - t0, 2)},
            "peak_rss_gib": round(peak, 3), "rss_after_generating_data_gib": round(rss_data, 3),
            "embeddings_gib": round(x.nbytes / 2 ** 30, 3), "n_x_k_float32_matrix_gib": round(n * k * 4 / 2 ** 30, 3),
            "target_seconds": SCALE_TARGET_SECONDS, "within_target": (t4 - t0) <= SCALE_TARGET_SECONDS}


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
# (c) downstream: small LMs trained on the subsets

DOWNSTREAM_ARMS = {"sensitivity": dict(method="sensitivity"), "uniform": dict(method="uniform"),
                   "stratified": dict(method="stratified"),
                   "sensitivity_literal": dict(method="sensitivity", include_centers=False)}


def downstream(ctx: dict, n_seeds: int, steps: int | None, arms: list[str]) -> dict:
    import dataclasses
    import tempfile

    from libs.models import build_model, model_from_files
    from libs.training import train_model
    from steps import select_data

    cfg, p = ctx["cfg"], ctx["prepared"]
    spec = cfg.pretrain_small.models[0]
    train_cfg = cfg.pretrain_small.train
    train_cfg = dataclasses.replace(train_cfg, steps=steps or train_cfg.steps, eval_batches=0,
                                    eval_every=steps or train_cfg.steps,
                                    warmup_steps=min(train_cfg.warmup_steps, steps or train_cfg.steps))
    val_loss: dict[str, list[float]] = {}
    effective: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        model_from_files(ctx["selection"].reference_model_files).save_pretrained(folder)
        for seed in range(n_seeds):
            for method in arms:
                sel_cfg = dataclasses.replace(cfg.select, reference_model_path=folder, diagnostics=False,
                                              **DOWNSTREAM_ARMS[method])
                s = select_data.run(sel_cfg, embeddings=ctx["embeddings"], train_tokens=p.train_tokens,
                               train_lengths=p.train_lengths, val_tokens=p.val_tokens, val_lengths=p.val_lengths,
                               train_sources=p.train_sources, vocab_size=p.vocab_size, seq_len=p.seq_len, seed=seed,
                               progress=False)
                model = build_model(spec, vocab_size=p.vocab_size, n_positions=p.seq_len + 1, seed=seed,
                                    bos_token_id=p.bos_id, eos_token_id=p.eos_id)
                trained = train_model(model, p.train_tokens[s.indices], p.train_lengths[s.indices], p.val_tokens,
                                      p.val_lengths, train_cfg, seed=seed, weights=s.weights,
                                      label=f"bench:{method}:{seed}", progress=False)
                val_loss.setdefault(method, []).append(trained.final_val_loss)
                effective.setdefault(method, []).append(s.diagnostics["weight_effective_size"])
                _log(f"(c) {method} seed {seed}: validation loss {trained.final_val_loss:.4f}")
    out = {"model": dataclasses.asdict(spec), "steps": train_cfg.steps, "batch_size": train_cfg.batch_size,
           "budget": cfg.select.budget, "validation_rows": len(p.val_tokens), "seeds": n_seeds,
           "val_loss": {m: {"values": v, "mean": float(np.mean(v)), "std": float(np.std(v)),
                            "weights_effective_size": float(np.mean(effective[m]))} for m, v in val_loss.items()}}
    if "sensitivity" in val_loss and "uniform" in val_loss:
        out["sensitivity_minus_uniform"] = float(np.mean(val_loss["sensitivity"]) - np.mean(val_loss["uniform"]))
    return out


# ----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100, help="seeds per budget in (a)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.05], help="budget fractions in (a)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, embeddings and reference model")
    parser.add_argument("--cache-dir", default=None, help="cache the default corpus's embeddings here")
    parser.add_argument("--skip-estimate", action="store_true", help="skip (a)")
    parser.add_argument("--skip-scale", action="store_true", help="skip (b)")
    parser.add_argument("--scale-n", type=int, default=1_000_000)
    parser.add_argument("--scale-k", type=int, default=1000)
    parser.add_argument("--scale-points-per-centroid", type=int, default=128,
                        help="k-means trains on this many rows per center (0 = all rows)")
    parser.add_argument("--scale-iters", type=int, default=20)
    parser.add_argument("--scale-shards", type=int, default=8, help="row shards of the two-pass sampler in (b)")
    parser.add_argument("--scale-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--downstream", action="store_true", help="run (c)")
    parser.add_argument("--downstream-seeds", type=int, default=3)
    parser.add_argument("--downstream-steps", type=int, default=0, help="0 = the default config's steps")
    parser.add_argument("--downstream-arms", nargs="+", default=["sensitivity", "uniform"],
                        choices=sorted(DOWNSTREAM_ARMS), help="subsets trained on in (c)")
    args = parser.parse_args()

    if args.scale_worker:
        print(json.dumps(scale_worker(args.scale_n, 384, args.scale_k, args.scale_points_per_centroid,
                                      args.scale_iters, 0.01, args.scale_shards, cores=2)))
        return
    report: dict = {"benchmark": "selection", "cpu_count": os.cpu_count()}
    t0 = time.perf_counter()
    ctx = None
    if not args.skip_estimate or args.downstream:
        ctx = load_default(args.cache_dir, args.seed)
        report["setup"] = {"embed_seconds": ctx["embed_seconds"], "seconds": round(ctx["setup_seconds"], 1),
                           "select_step_seconds": round(ctx["selection"].seconds, 1)}
    if not args.skip_estimate:
        report["estimate_error"] = estimate_error(ctx, args.budgets, args.seeds)
    if not args.skip_scale:
        _log("(b) scale run in a fresh process on 2 cores")
        report["scale"] = scale(args)
    if args.downstream:
        report["downstream"] = downstream(ctx, args.downstream_seeds, args.downstream_steps or None,
                                          args.downstream_arms)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()

"""LM zoo benchmark: train the zoo of config/lm_zoo/default.toml, then score the gap predictors; one JSON object.

    nice -n 5 python bench/bench_lm_zoo.py                        # config/lm_zoo/bench.toml: 36 models
    nice -n 5 python bench/bench_lm_zoo.py --refit                # reuse the cached rows, refit only (seconds)
    python bench/bench_lm_zoo.py --config config/lm_zoo/tiny.toml --rows /tmp/tiny_rows.json.gz

What it runs: the LMZooFlow stages without Metaflow: ``steps.prepare.run``, then every zoo model
(``libs.lm_zoo.train_zoo_model``, the function ``train_zoo_shard`` calls) in a pool of
``--workers`` processes with ``--threads`` torch threads each, then ``steps.fit_zoo``'s scoring.
The rows are cached (``--rows``, gzipped JSON, keyed by the config) so a refit needs no training.

What it prints: the zoo's size and cost; per predictor the leave-one-model-out R² (with a 95%
bootstrap interval that resamples models, not rows) and Kendall τ; the feature ablation with the
same predictor (covariates only: the simple baseline a user has without looking at weights, also
with every predictor; +
training loss; margins and geometric complexity; weight norms; everything); the permutation
check (gaps shuffled); and the goals (R² >= 0.8, τ >= 0.7 on >= 30 models).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_STATE: dict = {}


def _init_worker(threads: int, cfg, data, seed: int, key_prefix: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from steps.train_zoo_shard import zoo_probe

    torch.set_num_threads(threads)
    probe, subsets, _ = zoo_probe(cfg.zoo, data, seed=seed)
    _STATE.update(cfg=cfg, data=data, probe=probe, subsets=subsets, key_prefix=key_prefix)


def _train_one(plan: dict):
    from libs.lm_zoo import ZooModel, train_zoo_model

    cfg, data = _STATE["cfg"], _STATE["data"]
    model = ZooModel(**plan)
    cpu = time.process_time()
    rows, seconds = train_zoo_model(
        model, train_tokens=data.train_tokens, train_lengths=data.train_lengths,
        rows=_STATE["subsets"][model.train_fraction], probe=_STATE["probe"], epochs=cfg.zoo.epochs,
        n_checkpoints=cfg.zoo.n_checkpoints, batch_size=cfg.zoo.batch_size, warmup_fraction=cfg.zoo.warmup_fraction,
        vocab_size=data.vocab_size, seq_len=data.seq_len, bos_token_id=data.bos_id, eos_token_id=data.eos_id,
        key_prefix=_STATE["key_prefix"], n_probes=cfg.zoo.gc_probes)
    return model.name, rows, seconds, time.process_time() - cpu


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    return _finite(obj)


def train_zoo(cfg, *, workers: int, threads: int) -> tuple[list[dict], dict]:
    from libs.fingerprint import data_fingerprint, settings_fingerprint
    from libs.lm_zoo import zoo_grid
    from libs.schema import to_dict
    from libs.token_data import TokenData
    from steps import prepare

    t0 = time.perf_counter()
    result = prepare.run(cfg.prepare, seed=cfg.seed, progress=False)
    data = TokenData.from_attrs(result)
    fp = data_fingerprint(result.tokenizer_json, result.train_tokens, result.train_lengths, result.val_tokens,
                          result.val_lengths)
    key_prefix = settings_fingerprint({"zoo": to_dict(cfg.zoo), "seed": cfg.seed, "data": fp}) + ":"
    models = zoo_grid(cfg.zoo.widths, cfg.zoo.depths, cfg.zoo.lrs, cfg.zoo.train_fractions,
                      [cfg.seed + s for s in cfg.zoo.seeds], head_width=cfg.zoo.head_dim)
    models.sort(key=lambda m: -(m.train_fraction * m.n_layer * m.n_embd ** 1.5))   # longest first: better packing
    prep_s = time.perf_counter() - t0
    rows, per_model, cpu_total = [], {}, 0.0
    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads, cfg, data, cfg.seed, key_prefix)) as pool:
        futures = [pool.submit(_train_one, {f: getattr(m, f) for f in ("n_layer", "n_embd", "n_head", "lr",
                                                                        "train_fraction", "seed")}) for m in models]
        for i, fut in enumerate(as_completed(futures), 1):
            name, model_rows, seconds, cpu = fut.result()
            rows.extend(model_rows)
            per_model[name] = seconds
            cpu_total += cpu
            print(f"[bench_lm_zoo] {i}/{len(models)} {name}: {seconds:.0f} s, final gap {model_rows[-1]['gap']:.3f}",
                  file=sys.stderr, flush=True)
    cost = {"n_models": len(models), "n_train_rows": data.n_train, "n_val_rows": data.n_val,
            "vocab_size": data.vocab_size, "data_fingerprint": fp, "prepare_seconds": prep_s,
            "train_wall_seconds": time.perf_counter() - t0 - prep_s, "train_cpu_seconds": cpu_total,
            "workers": workers, "threads_per_worker": threads, "seconds_per_model": per_model}
    return rows, cost


def _bootstrap_models(y, pred, groups, *, n_boot=1000, seed=0):
    from libs.gap_predictors import r2_score

    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in unique}
    values = []
    for _ in range(n_boot):
        pick = np.concatenate([index[g] for g in rng.choice(unique, len(unique), replace=True)])
        values.append(r2_score(y[pick], pred[pick]))
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def score(cfg, rows: list[dict]) -> dict:
    from libs.gap_predictors import fit_gap_predictors
    from steps.fit_zoo import COVARIATES, permutation_r2, score_subset

    t0 = time.perf_counter()
    grouped = [dict(r, group=r["key"]) for r in rows]
    fit = fit_gap_predictors(grouped, cfg.fit.predictors, min_models=cfg.fit.min_models, random_state=cfg.seed)
    table = []
    for r in fit.table:
        ci = _bootstrap_models(fit.y, fit.oof[r["predictor"]], fit.groups, seed=cfg.seed)
        table.append(dict(r, loo_model_r2_95ci=ci))
    names = fit.names
    margins = tuple(n for n in names if n.startswith("out_margin_")) + ("log_geometric_complexity",)
    norms = ("log_rms_weight", "log_rms_dist_from_init", "log_rel_dist_from_init")
    groups = {"covariates only (baseline)": COVARIATES,
              "covariates + training loss": COVARIATES + ("train_loss",),
              "margins + geometric complexity": margins,
              "weight norms": norms,
              "weights only (margins, GC, norms, no covariates)": margins + norms,
              "all features": tuple(names)}
    ablation = {}
    for predictor in dict.fromkeys([fit.chosen, "linear"]):
        ablation[predictor] = {label: {k: v for k, v in score_subset(rows, cols, predictor, seed=cfg.seed).items()
                                       if k in ("loo_model_r2", "kendall_tau")}
                               for label, cols in groups.items()}
    # the simple baseline at equal cost, with every predictor: what parameters, epochs, parameters per token and
    # learning rate alone give (a user knows them before training)
    baseline = {p: {k: v for k, v in score_subset(rows, COVARIATES, p, seed=cfg.seed).items()
                    if k in ("loo_model_r2", "kendall_tau")} for p in cfg.fit.predictors}
    best = fit.best or fit.chosen
    top = next(r for r in table if r["predictor"] == best)
    perm = {p: permutation_r2(rows, p, seed=cfg.seed) for p in dict.fromkeys([best, "linear"])}
    gaps = fit.y
    return {"n_models": fit.n_models, "n_rows": len(rows), "best_predictor": fit.best,
            "gap_range": [float(gaps.min()), float(gaps.max())],
            "epochs_range": [float(min(r["features"]["epochs"] for r in rows)),
                             float(max(r["features"]["epochs"] for r in rows))],
            "predictors": table, "covariates_only_baseline": baseline, "ablation": ablation, "permutation_r2": perm,
            "goals": {"models >= 30": fit.n_models >= 30, "R2 >= 0.8": top["loo_model_r2"] >= 0.8,
                      "tau >= 0.7": top["kendall_tau"] >= 0.7},
            "fit_seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    from libs.fingerprint import settings_fingerprint
    from libs.schema import load_toml, to_dict
    from steps.lm_zoo_config import LMZooConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config" / "lm_zoo" / "bench.toml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=str(ROOT / "bench" / "results" / "lm_zoo_rows.json.gz"),
                        help="cache of the trained zoo's rows (keyed by the config)")
    parser.add_argument("--refit", action="store_true", help="only refit on the cached rows (error if none)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lm_zoo.json"))
    args = parser.parse_args(argv)
    cfg = load_toml(LMZooConfig, Path(args.config).read_text(), source=args.config)
    key = settings_fingerprint({k: v for k, v in to_dict(cfg).items() if k != "fit"})
    cache = Path(args.rows)
    rows = cost = None
    if cache.exists():
        stored = json.loads(gzip.decompress(cache.read_bytes()))
        if stored.get("key") == key:
            rows, cost = stored["rows"], dict(stored["cost"], from_cache=str(cache))
    if rows is None:
        if args.refit:
            raise SystemExit(f"--refit: no cached rows for this config in {cache}; run without --refit first")
        rows, cost = train_zoo(cfg, workers=args.workers, threads=args.threads)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(gzip.compress(json.dumps(_plain({"key": key, "rows": rows, "cost": cost})).encode()))
    out = _plain({"benchmark": "lm_zoo", "config": args.config, "config_key": key, "zoo": cost,
                  "scores": score(cfg, rows)})
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()

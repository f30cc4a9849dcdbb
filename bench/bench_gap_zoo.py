"""Generalization-gap zoo benchmark (issue 4): train the spiral zoo, fit every predictor, one JSON object.

    OMP_NUM_THREADS=1 python bench/bench_gap_zoo.py                               # default zoo, 2 workers
    python bench/bench_gap_zoo.py --config config/gap_zoo/tiny.toml --workers 1     # smoke test, seconds
    python bench/bench_gap_zoo.py --max-shards 1 --workers 1 --no-fit               # throughput sample

What it runs: the same stage functions as GapZooFlow (``steps.gap_zoo.run_shard`` for every
shard of ``shard_plan``, ``merge_shards``, then ``fit``), without Metaflow: the shards run in a
pool of ``--workers`` processes with ``--threads`` torch threads each (default 2 x 1: one shard
per core), then the fit runs in this process.

What it prints: one JSON object with the zoo's size (networks trained, diverged, collapsed,
kept), the wall seconds of training and of fitting (and the CPU seconds summed over the
shards), the held-out R² table per split and predictor with its bootstrap interval, Kendall τ
and the CMI score, and the comparison with Yak, Gonzalvo & Mazzawi (2019): our ``task_family``
split against their task-independent DNN figure (R² = 0.965, goal >= 0.965) and our
``hparam_extremes`` split against their out-of-distribution RNN figure (R² = 0.584, goal
> 0.584), with a plain statement of which compares to which and whether the goals are met.
The JSON is also written to ``--out`` after every shard (progress) and at the end.

With ``--max-shards k`` only the first k shards train, and the JSON adds an extrapolation of
the whole zoo's training wall time on ``--workers`` workers (per-shard seconds x shards /
workers); the shards are equal in size, so the extrapolation is linear.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _train(zoo_cfg, task_indices, seed):
    import time as _time

    from steps.gap_zoo import run_shard

    cpu = _time.process_time()
    result = run_shard(zoo_cfg, task_indices, seed=seed)
    return task_indices, result, _time.process_time() - cpu


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _write(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(path)


def statement(comparison: dict) -> str:
    """Which of our splits compares to which of Yak et al.'s figures, and whether each goal is met."""
    parts = []
    names = {"task_family": "task-independent", "hparam_extremes": "out-of-distribution"}
    for split, c in comparison.items():
        same = (f"; our {c['same_kind_predictor']} (their kind of predictor) {c['same_kind_r2']:.3f}"
                if c["same_kind_r2"] is not None else "")
        parts.append(f"Our '{split}' split is compared with Yak et al.'s {names[split]} figure "
                     f"R² = {c['yak_r2']}: our best predictor ({c['best_predictor']}) reaches "
                     f"{c['best_r2']:.3f} [{c['best_r2_ci'][0]:.3f}, {c['best_r2_ci'][1]:.3f}]{same}; goal "
                     f"{c['goal']}: {'met' if c['goal_met'] else 'not met'}.")
    parts.append("The comparison is loose: their zoo had 13,500 networks on their own grid of spiral variations "
                 "and their held-out sets were chosen differently.")
    return " ".join(parts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config" / "gap_zoo" / "default.toml"))
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--workers", type=int, default=2, help="shards trained at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--max-shards", type=int, default=0, help="train only the first k shards (0: all)")
    parser.add_argument("--no-fit", action="store_true", help="train only (throughput)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gap_zoo.json"))
    args = parser.parse_args(argv)

    from steps.gap_zoo import compare_to_yak, fit, load_gap_zoo_config_file, merge_shards, shard_plan

    cfg = load_gap_zoo_config_file(args.config)
    seed = cfg.seed if args.seed is None else args.seed
    plan = shard_plan(cfg.zoo)
    todo = plan[:args.max_shards] if args.max_shards else plan
    out = Path(args.out) if args.out else None
    payload = {"config": str(args.config), "seed": seed, "workers": args.workers, "threads_per_worker": args.threads,
               "n_networks_planned": cfg.zoo.n_networks, "n_shards": len(plan), "n_shards_run": len(todo),
               "shards_done": []}
    start = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(args.threads,)) as pool:
        futures = [pool.submit(_train, cfg.zoo, shard, seed) for shard in todo]
        for future in as_completed(futures):
            shard, result, cpu = future.result()
            results.append((shard, result, cpu))
            payload["shards_done"].append({"tasks": shard, "networks": result.n_networks, "rows": len(result.rows),
                                           "seconds": round(result.seconds, 2), "cpu_seconds": round(cpu, 2)})
            payload["train_wall_seconds_so_far"] = round(time.perf_counter() - start, 2)
            _write(out, payload)
            print(f"shard {shard}: {result.n_networks} networks in {result.seconds:.1f} s", file=sys.stderr)
    train_wall = time.perf_counter() - start
    rows = merge_shards([r.rows for _, r, _ in sorted(results, key=lambda t: t[0][0])])
    payload.update({
        "n_trained": sum(r.n_networks for _, r, _ in results),
        "n_diverged": sum(r.n_diverged for _, r, _ in results),
        "n_collapsed": sum(r.n_collapsed for _, r, _ in results),
        "n_networks": len(rows),
        "train_wall_seconds": round(train_wall, 2),
        "train_cpu_seconds_summed": round(sum(c for _, _, c in results), 2),
        "networks_per_second": round(sum(r.n_networks for _, r, _ in results) / train_wall, 3),
    })
    if len(todo) < len(plan):
        per_shard = sum(r.seconds for _, r, _ in results) / len(results)
        payload["extrapolated_full_train_wall_seconds"] = round(per_shard * len(plan) / args.workers, 1)
        payload["extrapolation"] = (f"{per_shard:.1f} s per shard (mean of {len(results)}) x {len(plan)} shards / "
                                    f"{args.workers} workers")
    if not args.no_fit:
        fit_start = time.perf_counter()
        result = fit(cfg.fit, rows, seed=seed)
        payload["fit_wall_seconds"] = round(time.perf_counter() - fit_start, 2)
        payload["target"] = result.target
        payload["r2_table"] = [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()}
                               for r in result.r2_table]
        payload["best_per_split"] = result.best
        comparison = compare_to_yak(result.r2_table)
        payload["yak_comparison"] = comparison
        payload["goals_met"] = {split: c["goal_met"] for split, c in comparison.items()}
        payload["statement"] = statement(comparison)
        payload["top_features"] = result.importances[:10]
    payload["total_wall_seconds"] = round(time.perf_counter() - start, 2)
    _write(out, payload)
    print(json.dumps(payload, indent=2))
    return payload


if __name__ == "__main__":
    main()

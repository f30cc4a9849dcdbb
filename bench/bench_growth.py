"""Growth saving benchmark (issue 11): did growing pay? The flow's arms over seeds; one JSON object.

    nice -n 5 python bench/bench_growth.py --out bench/results/growth.json       # default config, 3 seeds
    python bench/bench_growth.py --quick --out /tmp/growth_quick.json              # smoke test, ~1-2 minutes
    python bench/bench_growth.py --arms scratch fuse self_fuse control --seeds 3
    python bench/bench_growth.py --arms scratch fuse fuse_carry --seeds 3   # fresh vs carried AdamW moments

Data. The config's corpus and selection, built once with the flow's own stages:
``steps.prepare.run``, then ``steps.embed.run`` + ``steps.select_data.run`` (``--selection config``,
the default: importance weights as per-example loss weights) or a uniform slice of the same
number of distinct documents (``--selection uniform``).

Per seed s = 0 .. ``--seeds`` - 1 (the flow's seed is the config's; here it is s):

1. The config's small models, trained in parallel processes by ``steps.pretrain_small.run``
   (model i seeded ``s + 1000 i``, as the flow does).
2. The grown initializations, by ``steps.grow.run``: ``fuse`` (Deep Fusion of all small models),
   and ``fuse_carry`` (the same fused model, its optimizer starting from the components' AdamW moments
   mapped through the operator: ``train_large.grown_optimizer = "carry"``, :mod:`libs.optimizer_state`)
   and, when asked, ``self_fuse`` (the first small model fused with itself with the config's
   ``grow`` options, e.g. HyperCloning's full tiling and ~10 dB noise).
3. The arms, in parallel processes, by ``steps.train_large.run`` on the same selected rows in the
   same order: ``scratch`` (random init of the grown shape), every grown arm, and ``control``
   (the first small model trained on for equal total FLOPs: ``train_large.control_plan``).
   A grown arm trains with the post-growth schedule (``--grown-schedule``): ``restart`` (the
   large arms' schedule) or ``continue`` (``libs.training.post_growth_config``: peak at most the
   learning rate the components ended at, ``--grown-warmup`` warmup steps, cosine decay over
   ``--grown-decay`` x the steps).
4. The verdict, ``libs.growth_saving.assess_growth`` (what ``join_large`` prints): the capacity
   check, and per grown arm steps and FLOPs to scratch's final validation loss (after growth,
   in total with its small models' pretraining, on the critical path), the gain over the
   loss-matching null, and "saving" / "no saving" / "not assessed: capacity check failed".

``--stop-at-target`` trains scratch first and stops every grown arm at the evaluation where it
reaches scratch's final loss (fewer CPU seconds; its final loss is then the stopping loss).

The JSON holds per seed every figure of the verdict, the shapes, FLOPs, seconds and curves; the
summary over seeds; the goal test (best grown arm <= 0.5x scratch's steps and <= 0.85x its total
FLOPs with a positive null gain, in every seed whose capacity check passed); the CPU model
(/proc/cpuinfo), the load average before and after, and the threads and processes used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

GOAL = {"step_ratio": 0.5, "flops_ratio_total": 0.85}
GROWN_ARMS = ("fuse", "fuse_carry", "self_fuse")
GROW_METHOD = {"fuse": "fuse", "fuse_carry": "fuse", "self_fuse": "self_fuse"}   # fuse_carry: + the moments
ALL_ARMS = ("scratch",) + GROWN_ARMS + ("control",)
QUICK = dict(small_steps=20, large_steps=40, eval_every=10, eval_batches=2, warmup_steps=3)


def _log(message: str) -> None:
    print(f"[bench_growth] {message}", file=sys.stderr, flush=True)


def _stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v), "values": [float(x) for x in v]}


def machine() -> dict:
    """The CPU model, core count and load average (the benchmark shares the machine)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "load_average_1_5_15min": [round(x, 2) for x in load]}


# ----------------------------------------------------------------------------------------------
# data


def load_data(cfg, selection: str) -> tuple:
    """The TokenData of the config's corpus, the selected rows and their loss weights, and a summary."""
    from libs.sampling import uniform_sample
    from libs.token_data import TokenData
    from steps import embed, prepare, select_data

    t0 = time.perf_counter()
    p = prepare.run(cfg.prepare, seed=cfg.seed)
    data = TokenData.from_attrs(p)
    t_prepare = time.perf_counter() - t0
    embeddings = embed.run(cfg.embed, p.train_texts, seed=cfg.seed).embeddings
    t_embed = time.perf_counter() - t0 - t_prepare
    chosen = select_data.run(dataclasses.replace(cfg.select, diagnostics=False), data=data, embeddings=embeddings,
                             seed=cfg.seed, progress=False)
    t_select = time.perf_counter() - t0 - t_prepare - t_embed
    indices, weights, assignment = chosen.indices, chosen.weights, chosen.assignment
    if selection == "uniform":        # the same number of distinct documents, uniformly, weight 1
        indices, _ = uniform_sample(data.n_train, len(indices), replace=False, random_state=cfg.seed).selected()
        weights = np.ones(len(indices))
    n_tokens = int((data.train_lengths[indices].astype(np.int64) - 1).sum())
    all_tokens = int((data.train_lengths.astype(np.int64) - 1).sum())
    summary = {"selection": selection if selection == "uniform" else
               f"the config's ({cfg.select.method}, embedder {cfg.embed.method})",
               "n_train_documents": data.n_train, "n_train_tokens": all_tokens, "n_val_documents": data.n_val,
               "n_selected_documents": int(len(indices)), "n_selected_tokens": n_tokens,
               "selected_fraction_of_tokens": n_tokens / all_tokens,
               "weights_effective_size": float(weights.sum() ** 2 / (weights ** 2).sum()),
               "seq_len": data.seq_len, "vocab_size": data.vocab_size,
               "seconds": {"prepare": round(t_prepare, 1), "embed": round(t_embed, 1), "select": round(t_select, 1)}}
    return data, np.asarray(indices), np.asarray(weights, dtype=np.float64), assignment, summary


# ----------------------------------------------------------------------------------------------
# work done in the worker processes


def _worker_init(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()


def _small_job(pcfg, i: int, data, indices, weights, assignment, seed: int):
    from steps import pretrain_small

    mine, w = pretrain_small.subset_for_model(pcfg, i, indices, weights, assignment)
    return pretrain_small.run(pcfg, pcfg.models[i], data=data, indices=mine, weights=w, seed=seed + 1000 * i,
                              progress=False)


class _TargetReached(Exception):
    pass


def _arm_job(lcfg, flow_arm: str, name: str, init_files: dict, data, indices, weights, seed: int,
             init_flops: float, target_loss: float | None, moment_files: dict | None = None):
    """Train one arm with ``steps.train_large.run``; stop at ``target_loss`` when given."""
    from libs.models import flops_per_token, model_from_files
    from steps import train_large

    if target_loss is None:
        result = train_large.run(lcfg, flow_arm, init_files=init_files, data=data, indices=indices, weights=weights,
                                 seed=seed, init_flops=init_flops, progress=False, moment_files=moment_files)
        return {"name": name, "curve": result.curve, "flops_per_step": result.flops_per_step,
                "final_val_loss": result.final_val_loss, "steps": result.steps, "n_tokens": result.n_tokens,
                "tokens_per_s": result.tokens_per_s, "seconds": result.seconds, "n_params": result.n_params,
                "stopped_at_target": False}
    curve: list[dict] = []

    def watch(step, model, record):
        curve.append(dict(record))
        if step > 0 and record["val_loss"] <= target_loss:
            raise _TargetReached

    t0 = time.perf_counter()
    try:
        train_large.run(lcfg, flow_arm, init_files=init_files, data=data, indices=indices, weights=weights,
                        seed=seed, init_flops=init_flops, on_eval=watch, progress=False, moment_files=moment_files)
    except _TargetReached:
        pass
    seconds = time.perf_counter() - t0
    steps, n_tokens = int(curve[-1]["step"]), int(curve[-1]["tokens"])
    fpt = flops_per_token(model_from_files(init_files), data.seq_len)
    return {"name": name, "curve": curve, "flops_per_step": fpt * n_tokens / max(steps, 1),
            "final_val_loss": float(curve[-1]["val_loss"]), "steps": steps, "n_tokens": n_tokens,
            "tokens_per_s": n_tokens / max(seconds, 1e-9), "seconds": seconds, "n_params": None,
            "stopped_at_target": curve[-1]["val_loss"] <= target_loss}


# ----------------------------------------------------------------------------------------------
# one seed


def grown_train_config(cfg, args):
    """The grown arm's TrainConfig: the flow's own (``steps.train_large.grown_train_config``), with the
    schedule, warmup and decay span of ``--grown-schedule``, ``--grown-warmup`` and ``--grown-decay``."""
    from steps.train_large import grown_train_config as flow_grown_train_config

    given = {"grown_schedule": args.grown_schedule, "grown_warmup_steps": args.grown_warmup,
             "grown_decay_fraction": args.grown_decay}
    large_cfg = dataclasses.replace(cfg.train_large, **{k: v for k, v in given.items() if v is not None})
    return flow_grown_train_config(large_cfg, cfg.pretrain_small.train)


def run_seed(seed: int, cfg, data, indices, weights, assignment, args, pool) -> dict:
    from libs.growth_saving import assess_growth
    from steps import grow, train_large

    t0 = time.perf_counter()
    pcfg = cfg.pretrain_small
    _log(f"seed {seed}: pretraining {len(pcfg.models)} small models in parallel")
    futures = [pool.submit(_small_job, pcfg, i, data, indices, weights, assignment, seed)
               for i in range(len(pcfg.models))]
    small = [f.result() for f in futures]
    small_files = {r.name: r.model_files for r in small}
    small_flops = {r.name: float(r.flops) for r in small}
    names = list(small_files)

    check = data.val_tokens[:cfg.grow.check_rows]
    inits, growth, moments, grown_by_method = {}, {}, {}, {}
    for arm in args.arms:
        if arm not in GROWN_ARMS:
            continue
        gcfg = dataclasses.replace(cfg.grow, method=GROW_METHOD[arm])
        if gcfg.method not in grown_by_method:      # fuse and fuse_carry share one grown model and its moments
            grown_by_method[gcfg.method] = grow.run(gcfg, small_models=small_files, check_tokens=check, seed=seed,
                                                    small_moments={r.name: r.moment_files for r in small})
        g = grown_by_method[gcfg.method]
        inits[arm] = g.model_files
        moments[arm] = g.moment_files if arm.endswith("_carry") else None
        growth[arm] = {"components": g.components, "max_abs_dlogit": g.preservation["max_abs_dlogit"],
                       "relative_deviation": g.preservation["relative_deviation"], "shape": g.shape_after,
                       "options": dataclasses.asdict(gcfg)}
    shape_files = next(iter(inits.values())) if inits else grow.run(
        dataclasses.replace(cfg.grow, method="fuse"), small_models=small_files, check_tokens=check,
        seed=seed).model_files

    large_cfg = cfg.train_large
    grown_cfg = dataclasses.replace(large_cfg, train=grown_train_config(cfg, args))
    plan = train_large.control_plan(large_cfg, grown_files=shape_files, control_files=small_files[names[0]],
                                    control_spent_flops=small_flops[names[0]], data=data, indices=indices)
    control_cfg = train_large.arm_config(large_cfg, "control", control_steps=plan["steps"],
                                         control_lr=pcfg.train.lr)
    jobs = {"scratch": (large_cfg, "scratch", shape_files, 0.0, None)}
    jobs |= {arm: (grown_cfg, "grown", files, 0.0, moments[arm]) for arm, files in inits.items()}
    if "control" in args.arms:
        jobs["control"] = (control_cfg, "control", small_files[names[0]], small_flops[names[0]], None)
    _log(f"seed {seed}: arms {', '.join(jobs)} in parallel (control: {plan['steps']} small-model steps)")
    runs = {}
    if args.stop_at_target:
        c, a, f, fl, _ = jobs["scratch"]
        runs["scratch"] = pool.submit(_arm_job, c, a, "scratch", f, data, indices, weights, seed, fl, None).result()
        target = runs["scratch"]["final_val_loss"]
        rest = {arm: pool.submit(_arm_job, c, a, arm, f, data, indices, weights, seed, fl,
                                 target if arm in GROWN_ARMS else None, mo)
                for arm, (c, a, f, fl, mo) in jobs.items() if arm != "scratch"}
    else:
        rest = {arm: pool.submit(_arm_job, c, a, arm, f, data, indices, weights, seed, fl, None, mo)
                for arm, (c, a, f, fl, mo) in jobs.items()}
    for arm, future in rest.items():
        runs[arm] = future.result()

    curves = {arm: r["curve"] for arm, r in runs.items()}
    fps = {arm: r["flops_per_step"] for arm, r in runs.items()}
    components = {arm: growth[arm]["components"] for arm in inits}
    verdict = assess_growth(curves, fps, small_flops, components=components, control_small_model=names[0])
    for arm in inits:                        # the flow's accounting too: every small model charged
        row = verdict["arms"][arm]
        figures = row if row["step_ratio"] is not None else row.get("measured_not_claimed", {})
        if figures.get("flops_after_growth") is not None:
            row["flops_ratio_total_every_small_model"] = (
                (figures["flops_after_growth"] + sum(small_flops.values())) / verdict["scratch_flops"])
    _log(f"seed {seed}: " + verdict["summary"].replace("\n", " | "))
    return {"seed": seed,
            "small_models": {r.name: {"final_val_loss": r.final_val_loss, "flops": r.flops, "n_params": r.n_params,
                                      "steps": cfg.pretrain_small.train.steps, "tokens_per_s": round(r.tokens_per_s),
                                      "seconds": round(r.seconds, 1),
                                      "curve": [[c["step"], round(c["val_loss"], 5)] for c in r.curve]}
                             for r in small},
            "growth_at_init": growth, "control_plan": plan,
            "arms": {arm: {k: v for k, v in r.items() if k not in ("curve", "name")}
                     | {"curve": [[c["step"], round(c["val_loss"], 5)] for c in r["curve"]]}
                     for arm, r in runs.items()},
            "verdict": verdict, "seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# summary over seeds


def summarize(seeds: list[dict]) -> dict:
    passed = [s for s in seeds if s["verdict"]["capacity_check"]["passed"] is True]
    out = {"capacity_check": {"passed_in": f"{len(passed)}/{len(seeds)} seeds",
                              "margin_nats": _stats([s["verdict"]["capacity_check"]["margin"] for s in seeds])},
           "final_val_loss": {}, "grown_arms": {}}
    arms = sorted({a for s in seeds for a in s["arms"]})
    for arm in arms:
        out["final_val_loss"][arm] = _stats([s["arms"][arm]["final_val_loss"] for s in seeds if arm in s["arms"]])
    keys = ("step_ratio", "flops_ratio_after_growth", "flops_ratio_total", "flops_ratio_critical_path",
            "flops_ratio_total_every_small_model", "null_gain_steps", "null_gain_fraction")
    for arm in sorted({a for s in seeds for a in s["verdict"]["arms"]}):
        rows = [s["verdict"]["arms"][arm] for s in seeds if arm in s["verdict"]["arms"]]
        entry = {"verdicts": [r["verdict"] for r in rows]}
        assessed = [r for r in rows if r["step_ratio"] is not None]
        entry["over_seeds_that_passed_the_capacity_check"] = {k: _stats([r.get(k) for r in assessed]) for k in keys}
        measured = [r if r["step_ratio"] is not None else {**r, **r.get("measured_not_claimed", {})} for r in rows]
        entry["measured_in_every_seed_not_a_claim"] = {k: _stats([r.get(k) for r in measured]) for k in keys}
        out["grown_arms"][arm] = entry
    out["goal"] = goal(seeds)
    return out


def goal(seeds: list[dict]) -> dict:
    """Best grown arm: <= 0.5x scratch's steps, <= 0.85x total FLOPs, null gain > 0, in every passing seed."""
    test = (f"the best grown arm reaches scratch's final validation loss in <= {GOAL['step_ratio']}x scratch's "
            f"steps and <= {GOAL['flops_ratio_total']}x its total FLOPs (small models' pretraining charged), with "
            "a positive gain over the loss-matching null, in every seed where the capacity check passed; and the "
            "capacity check passes in at least 2 of 3 seeds")
    passed = [s for s in seeds if s["verdict"]["capacity_check"]["passed"] is True]
    out = {"test": test, "capacity_passes": len(passed), "of_seeds": len(seeds), "met": False, "best_grown_arm": None}
    if len(passed) * 3 < 2 * len(seeds):
        out["verdict"] = (f"capacity check passed in {len(passed)}/{len(seeds)} seeds (needs 2 of 3): the goal is "
                          "not assessed")
        return out
    per_arm = {}
    for arm in {a for s in passed for a in s["verdict"]["arms"]}:
        rows = [s["verdict"]["arms"][arm] for s in passed if arm in s["verdict"]["arms"]]
        ok = [r["step_ratio"] is not None and r["step_ratio"] <= GOAL["step_ratio"]
              and r["flops_ratio_total"] <= GOAL["flops_ratio_total"] and r["null_gain_steps"] > 0 for r in rows]
        mean_ratio = np.mean([r["step_ratio"] if r["step_ratio"] is not None else np.inf for r in rows])
        per_arm[arm] = {"met_in": f"{sum(ok)}/{len(rows)} passing seeds", "met": all(ok), "mean_step_ratio": mean_ratio}
    if not per_arm:
        out["verdict"] = (f"capacity check passed in {len(passed)}/{len(seeds)} seeds; no grown arm was trained "
                          "(--arms has none), so the goal is not assessed")
        return out
    best = min(per_arm, key=lambda a: (not per_arm[a]["met"], per_arm[a]["mean_step_ratio"]))
    out.update(best_grown_arm=best, per_arm={a: {k: v for k, v in e.items() if k != "mean_step_ratio"}
                                                | {"mean_step_ratio": float(e["mean_step_ratio"])}
                                                for a, e in per_arm.items()},
               met=per_arm[best]["met"])
    out["verdict"] = f"{best}: goal {'met' if out['met'] else 'not met'} ({per_arm[best]['met_in']})"
    return out


# ----------------------------------------------------------------------------------------------


def _display_path(path: str) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def apply_overrides(cfg, args):
    """The config after the command line's step and evaluation overrides (and --quick)."""
    def train(t, steps):
        changes = {"checkpoint_every": 0}
        if steps:
            changes.update(steps=steps, warmup_steps=min(t.warmup_steps, steps))
        if args.quick:
            changes.update(warmup_steps=min(t.warmup_steps, QUICK["warmup_steps"], changes.get("steps", t.steps)),
                           eval_batches=QUICK["eval_batches"])
        if args.eval_every:
            changes["eval_every"] = args.eval_every
        return dataclasses.replace(t, **changes)

    pcfg = dataclasses.replace(cfg.pretrain_small, train=train(cfg.pretrain_small.train, args.small_steps))
    lcfg = dataclasses.replace(cfg.train_large, train=train(cfg.train_large.train, args.large_steps), nproc_per_node=1)
    return dataclasses.replace(cfg, pretrain_small=pcfg, train_large=lcfg)


def main() -> None:
    from steps.config import load_config_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config" / "default.toml"), help="the TOML config to use")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--arms", nargs="+", choices=ALL_ARMS, default=["scratch", "fuse", "control"],
                        help="arms to train (scratch is always trained)")
    parser.add_argument("--selection", choices=("config", "uniform"), default="config",
                        help="the config's embed + select (default), or a uniform slice of as many documents")
    parser.add_argument("--small-steps", type=int, default=0, help="small-model steps (0: the config's)")
    parser.add_argument("--large-steps", type=int, default=0, help="large-arm steps (0: the config's)")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every this many steps (0: the config's)")
    parser.add_argument("--grown-schedule", choices=("restart", "continue"), default=None,
                        help="grown arms: the large arms' schedule (restart), or post_growth_config (continue: "
                             "peak at most the components' final lr, short warmup, faster decay)")
    parser.add_argument("--grown-warmup", type=int, default=None,
                        help="continue: warmup steps after growth (default: train_large.grown_warmup_steps)")
    parser.add_argument("--grown-decay", type=float, default=None,
                        help="continue: the cosine decay spans this fraction of the steps after the warmup "
                             "(default: train_large.grown_decay_fraction)")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="train scratch first, stop grown arms at its final validation loss")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--jobs", type=int, default=0, help="parallel processes (0: one per arm)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny steps, 1 seed")
    parser.add_argument("--out", default=None, help="also write the JSON to this path (after every seed)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--parallel-seeds", action="store_true",
                        help="train the seeds at the same time (one process per arm and seed)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="no training: merge the seeds of these reports (same config and arms) into one, "
                             "with the summary recomputed")
    args = parser.parse_args()
    if args.combine:
        text = json.dumps(combine_reports(args.combine), indent=1, default=float)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
        return

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cfg = load_config_file(args.config)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.quick:
        args.small_steps = args.small_steps or QUICK["small_steps"]
        args.large_steps = args.large_steps or QUICK["large_steps"]
        args.eval_every = args.eval_every or QUICK["eval_every"]
    if "scratch" not in args.arms:
        args.arms = ["scratch"] + args.arms
    args.arms = [a for a in ALL_ARMS if a in args.arms]
    if args.seeds < 1 or args.threads < 1:
        parser.error("--seeds and --threads must be at least 1")
    if "fuse" in args.arms and len(cfg.pretrain_small.models) < 2:
        parser.error(f"{args.config} lists {len(cfg.pretrain_small.models)} small model(s); Deep Fusion needs two")
    cfg = apply_overrides(cfg, args)
    _worker_init(args.threads)
    start_machine = machine()
    t0 = time.perf_counter()
    data, indices, weights, assignment, data_summary = load_data(cfg, args.selection)
    _log(f"{data_summary['n_selected_documents']} selected documents ({data_summary['n_selected_tokens']:,} "
         f"tokens); {args.seeds} seed(s); arms {', '.join(args.arms)}")
    jobs = args.jobs or max(len(args.arms), len(cfg.pretrain_small.models))
    seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.parallel_seeds:
        jobs *= len(seed_list)
    seeds: list[dict] = []

    def finished(result: dict) -> str:
        seeds.append(result)
        seeds.sort(key=lambda r: r["seed"])
        text = json.dumps(_report(seeds, args, cfg, data_summary, start_machine, t0), indent=1, default=float)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        return text

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(args.threads,)) as pool:
        if args.parallel_seeds:
            from concurrent.futures import ThreadPoolExecutor, as_completed

            with ThreadPoolExecutor(max_workers=len(seed_list)) as threads:
                futures = [threads.submit(run_seed, seed, cfg, data, indices, weights, assignment, args, pool)
                           for seed in seed_list]
                for future in as_completed(futures):
                    text = finished(future.result())
        else:
            for seed in seed_list:
                text = finished(run_seed(seed, cfg, data, indices, weights, assignment, args, pool))
    print(text)


def combine_reports(paths: list[str]) -> dict:
    """One report from several runs of the same config (e.g. seeds run as separate jobs). The arms may
    differ between runs (a later run adding an arm): ``arms`` is their union, each seed lists its own,
    and the summary takes every arm over the seeds that trained it. The runs must agree in their
    effective settings (``train``: every arm's training config, the growth options and small models;
    ``data``: the selection), not in the config file's path: a copy of the config with the same
    settings combines, and each run's path is kept in ``combined_from``."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    first = reports[0]
    for path, r in zip(paths[1:], reports[1:]):
        for key in ("train", "data"):
            a, b = first[key], r[key]
            if key == "data":
                a, b = {k: v for k, v in a.items() if k != "seconds"}, {k: v for k, v in b.items() if k != "seconds"}
            if a != b:
                raise SystemExit(f"cannot combine {paths[0]} and {path}: they differ in {key!r}")
    seeds = sorted((s for r in reports for s in r["seeds"]), key=lambda s: s["seed"])
    if len({s["seed"] for s in seeds}) != len(seeds):
        raise SystemExit(f"the reports {paths} share a seed: combine runs of different seeds only")
    out = dict(first)
    arms = {a for r in reports for a in r["arms"]}
    configs = sorted({r["config"] for r in reports})
    out.update(config=configs[0] if len(configs) == 1 else configs, arms=[a for a in ALL_ARMS if a in arms],
               arms_per_seed={str(s["seed"]): sorted(s["arms"], key=ALL_ARMS.index) for s in seeds},
               seeds=seeds, summary=summarize(seeds), complete=[s["seed"] for s in seeds] == list(range(len(seeds))),
               seeds_done=f"{len(seeds)} seeds: {[s['seed'] for s in seeds]}",
               combined_from=[{"path": p, "config": r["config"], "command": r["command"],
                               "machine_at_start": r["machine_at_start"], "machine_now": r["machine_now"],
                               "processes": r["processes"], "seconds": r["seconds"]} for p, r in zip(paths, reports)],
               seconds=sum(r["seconds"] for r in reports))
    return out


def _report(seeds, args, cfg, data_summary, start_machine, t0) -> dict:
    from libs.training import lr_at_step

    grown_train = grown_train_config(cfg, args)
    return {
        "benchmark": "growth_saving", "complete": len(seeds) == args.seeds, "seeds_done": f"{len(seeds)}/{args.seeds}",
        "command": " ".join(sys.argv),
        "config": _display_path(args.config), "quick": args.quick, "arms": args.arms,
        "machine_at_start": start_machine, "machine_now": machine(), "threads_per_process": args.threads,
        "processes": (args.jobs or max(len(args.arms), len(cfg.pretrain_small.models)))
                     * (args.seeds if args.parallel_seeds else 1),
        "data": data_summary,
        "train": {"small": dataclasses.asdict(cfg.pretrain_small.train),
                  "large": dataclasses.asdict(cfg.train_large.train),
                  "grown": dataclasses.asdict(grown_train) | {"schedule": args.grown_schedule or cfg.train_large.grown_schedule,
                                                              "peak_lr_used": max(lr_at_step(grown_train, s)
                                                                                  for s in range(grown_train.steps))},
                  "grow": dataclasses.asdict(cfg.grow), "stop_at_target": args.stop_at_target,
                  "small_models": [dataclasses.asdict(m) for m in cfg.pretrain_small.models]},
        "accounting": "flops per step = libs.models.flops_per_token (6N + attention) x the tokens of a step; "
                      "flops_ratio_total charges the pretraining of the small models an arm was grown from (fuse: "
                      "all, self_fuse: the first); flops_ratio_critical_path the largest of them; "
                      "flops_ratio_total_every_small_model every small model trained; the control continues the "
                      "first small model for scratch's FLOPs minus that model's pretraining",
        "seeds": seeds,
        "summary": summarize(seeds),
        "seconds": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    main()

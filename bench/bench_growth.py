"""Growth saving benchmark (issue 6): what growing a large model from small ones saves; one JSON object.

    python bench/bench_growth.py                          # the default config, 3 seeds
    python bench/bench_growth.py --quick --threads 1      # smoke test: tiny steps, 1 seed, ~1-2 minutes
    python bench/bench_growth.py --seeds 5 --noise-std 0.05 --out /tmp/growth.json

Data. The default corpus (``--config``, default config/default.toml) is built once with the
project's own stages and the config's seed: ``steps.prepare.run`` (documents, split, tokenizer,
token arrays), then the selected subset at the config's budget: a uniform slice by default
(``--selection uniform``, weights 1), or the config's own selection (``--selection config``:
``steps.embed.run`` + ``steps.select_data.run``, importance weights as per-example loss weights). Every
model below trains on that subset and is evaluated on the same validation rows.

Per seed s = 0 .. ``--seeds`` - 1, one run side by side, with the one training loop
(``libs.training.train_model``):

1. The config's two small models (``pretrain_small.models``, e.g. GPT-2 2 layers x 64 wide),
   seeded ``s + 1000 * i`` as the flow does, trained ``--small-steps`` steps with
   ``pretrain_small.train``.
2. Large-model arms, each trained ``--large-steps`` steps with the same ``train_large.train``
   (a fresh optimizer and a restarted warmup for every arm, grown ones included) on the same
   batches in the same order (data-order seed s):

   ``scratch``          random init of the fused shape (width = sum of the small widths, same
                        depth; seeded ``s + 7919`` as ``steps.train_large`` does): the target.
   ``fuse``             Deep Fusion of the two small models (``libs.growth.fuse_models``).
   ``self_fuse``        small_a fused with itself, no noise (an exact clone).
   ``self_fuse_noise``  the same with symmetry-breaking noise that cancels in the function
                        (``self_fuse(noise_std=--noise-std)``).
   ``stack``            small_a with its depth doubled at the small width (``stack_layers``,
                        ``--stack-mode``): a *different* large shape. It is still compared with the
                        scratch arm of the fused shape (the JSON notes the shapes); ``--arms``
                        can add ``scratch_stack``, a scratch model of the stacked shape, which
                        then also gets its own row in ``stack_vs_own_shape``.
   ``control``          small_a trained on for the same extra FLOPs as one large arm:
                        ``large_steps x flops_per_token(large) / flops_per_token(small)`` steps,
                        with the large arms' TrainConfig otherwise.

Figures per seed and arm: final validation loss; steps and FLOPs to reach the scratch arm's
final validation loss (``libs.growth_saving.saving_table``; linear interpolation between
evaluations), FLOPs counted after growth only and in total, where the total adds the
pretraining of every small model the arm was grown from (fuse: both; self_fuse, stack and
control: small_a; scratch: none; ``flops_total_every_small_model`` charges both small models to
every grown arm, as ``join_large`` does); the function-preservation error of each growth
operator at init (``preservation_error``, float64, on a few validation rows) and, for the
self-fused arms, how far the two copies drifted apart in training (``copy_asymmetry``: 0 = still
identical).

Capacity check, per seed: the scratch large model must end below the control arm's final
validation loss. Where it does not, that seed says "capacity check failed: the larger shape is
not worth growing into at this budget" and reports no speedup (final losses only).

Summary over the seeds whose capacity check passed: per arm mean and min/max of the step
speedup (scratch steps / the arm's steps to scratch's final loss), of the step ratio (its
inverse, as ``saving_table`` reports it), of the total-FLOPs ratio (arm / scratch), and of the
final loss (over every seed). Goal: the best grown arm reaches scratch's final loss in at most
0.5x the scratch steps and in fewer total FLOPs than scratch, in every seed (``goal.met``; the
same test on the means is ``goal.met_on_mean``).

Everything is seeded; no network is used (HF_HUB_OFFLINE=1 is fine); torch uses ``--threads``
CPU threads in each of ``--jobs`` processes (seeds run in parallel when ``--jobs`` > 1: on 2 cores,
``--jobs 3 --threads 1`` runs the three seeds at once). Progress goes to stderr; the one JSON object
goes to stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

GOAL_STEP_RATIO = 0.5
CAPACITY_FAILED = "capacity check failed: the larger shape is not worth growing into at this budget"
GROWN_ARMS = ("fuse", "self_fuse", "self_fuse_noise", "stack")
DEFAULT_ARMS = ("scratch",) + GROWN_ARMS + ("control",)
ALL_ARMS = DEFAULT_ARMS + ("scratch_stack",)
PRESERVATION_ROWS = 4           # validation rows on which each operator's function preservation is measured
ASYMMETRY_ROWS = 16             # validation rows on which the self-fused copies' drift is measured
QUICK = dict(small_steps=20, large_steps=30, eval_every=10, eval_batches=2, warmup_steps=3)


def _log(message: str) -> None:
    print(f"[bench_growth] {message}", file=sys.stderr, flush=True)


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": len(v)}


# ----------------------------------------------------------------------------------------------
# the data: the default corpus and its selected subset, built once


@dataclasses.dataclass(frozen=True)
class BenchData:
    """The selected training rows and the validation split, as the training loop takes them."""

    train_tokens: np.ndarray        # int32 (m, seq_len + 1), the selected rows
    train_lengths: np.ndarray       # int32 (m,)
    weights: np.ndarray             # float64 (m,) per-example loss weights (1 for a uniform slice)
    val_tokens: np.ndarray          # int32 (n_val, seq_len + 1)
    val_lengths: np.ndarray         # int32 (n_val,)
    assignment: np.ndarray | None   # int64 (m,) cluster of each selected row (config selection only)
    vocab_size: int
    seq_len: int
    bos_id: int
    eos_id: int
    summary: dict


def load_data(cfg, selection: str) -> BenchData:
    """Prepare the config's corpus and select its budget: a uniform slice, or the config's own selection."""
    from libs.sampling import uniform_sample
    from steps import prepare

    t0 = time.perf_counter()
    p = prepare.run(cfg.prepare, seed=cfg.seed)
    n = len(p.train_tokens)
    if selection == "uniform":
        budget = cfg.select.budget_docs or max(1, int(round(cfg.select.budget * n)))
        indices, _ = uniform_sample(n, min(budget, n), replace=False, random_state=cfg.seed).selected()
        weights, assignment, method = np.ones(len(indices)), None, "uniform slice (without replacement)"
    else:
        from steps import embed, select_data

        embeddings = embed.run(cfg.embed, p.train_texts, seed=cfg.seed).embeddings
        chosen = select_data.run(dataclasses.replace(cfg.select, diagnostics=False), embeddings=embeddings,
                            train_tokens=p.train_tokens, train_lengths=p.train_lengths, val_tokens=p.val_tokens,
                            val_lengths=p.val_lengths, train_sources=p.train_sources, vocab_size=p.vocab_size,
                            seq_len=p.seq_len, seed=cfg.seed)
        indices, weights, assignment = chosen.indices, chosen.weights, chosen.assignment[chosen.indices]
        method = f"the config's selection ({cfg.select.method}, embedder {cfg.embed.method})"
    tokens, lengths = p.train_tokens[indices], p.train_lengths[indices]
    summary = {"selection": method, "budget": cfg.select.budget, "n_train_documents": n,
               "n_selected_rows": len(indices), "n_selected_tokens": int((lengths.astype(np.int64) - 1).sum()),
               "n_val_rows": len(p.val_tokens), "seq_len": p.seq_len, "vocab_size": p.vocab_size,
               "weights_effective_size": float(weights.sum() ** 2 / (weights ** 2).sum()),
               "seed": cfg.seed, "seconds": round(time.perf_counter() - t0, 1)}
    return BenchData(train_tokens=tokens, train_lengths=lengths, weights=weights, val_tokens=p.val_tokens,
                     val_lengths=p.val_lengths, assignment=assignment, vocab_size=p.vocab_size, seq_len=p.seq_len,
                     bos_id=p.bos_id, eos_id=p.eos_id, summary=summary)


# ----------------------------------------------------------------------------------------------
# training configs


def _with_steps(train_cfg, steps: int, *, eval_every: int = 0, eval_batches: int | None = None):
    """``train_cfg`` for ``steps`` steps (warmup capped at the steps), without checkpoints."""
    changes = dict(steps=steps, warmup_steps=min(train_cfg.warmup_steps, steps), checkpoint_every=0)
    if eval_every:
        changes["eval_every"] = eval_every
    if eval_batches is not None:
        changes["eval_batches"] = eval_batches
    return dataclasses.replace(train_cfg, **changes)


def training_configs(cfg, args) -> tuple:
    """The small models' and the large arms' TrainConfig after the command line's overrides."""
    small, large = cfg.pretrain_small.train, cfg.train_large.train
    eval_batches = None
    if args.quick:
        small = dataclasses.replace(small, warmup_steps=min(small.warmup_steps, QUICK["warmup_steps"]))
        large = dataclasses.replace(large, warmup_steps=min(large.warmup_steps, QUICK["warmup_steps"]))
        eval_batches = QUICK["eval_batches"]
    return (_with_steps(small, args.small_steps, eval_every=args.eval_every, eval_batches=eval_batches),
            _with_steps(large, args.large_steps, eval_every=args.eval_every, eval_batches=eval_batches))


# ----------------------------------------------------------------------------------------------
# one seed: small models, growth, arms, saving


def _train(model, data: BenchData, train_cfg, *, seed: int, label: str) -> dict:
    """Train ``model`` in place on the selected rows; its curve, FLOPs per step and throughput."""
    from libs.models import flops_per_token
    from libs.training import train_model

    result = train_model(model, data.train_tokens, data.train_lengths, data.val_tokens, data.val_lengths, train_cfg,
                         seed=seed, weights=data.weights, label=label, progress=False)
    per_token = flops_per_token(model, data.seq_len)
    return {"shape": _shape(model), "final_val_loss": result.final_val_loss,
            "final_train_loss": result.final_train_loss, "steps": result.steps_done, "n_tokens": result.n_tokens,
            "flops_per_token": per_token,
            "flops_per_step": per_token * result.n_tokens / max(result.steps_done, 1),
            "flops": per_token * result.n_tokens, "tokens_per_s": round(result.tokens_per_s),
            "seconds": round(result.seconds, 1), "curve": result.curve}


def _preservation(grown, references: list, data: BenchData) -> dict:
    from libs.growth import preservation_error

    rows = slice(0, PRESERVATION_ROWS)
    p = preservation_error(grown, references, data.val_tokens[rows], lengths=data.val_lengths[rows])
    return {k: p[k] for k in ("max_abs_dlogit", "relative_deviation", "nll_grown", "nll_reference")}


def _shape(model) -> dict:
    from libs.models import count_parameters, model_shape

    shape = model_shape(model)
    return {k: shape[k] for k in ("family", "n_layer", "n_embd", "n_head", "n_inner")} | {
        "n_params": count_parameters(model)}


def grow_initializations(small: dict, arms: tuple[str, ...], *, seed: int, noise_std: float,
                         stack_mode: str) -> dict:
    """The initial model of every large arm but the control (small: name -> trained model)."""
    from libs.growth import fuse_models, self_fuse, stack_layers
    from libs.models import model_to_files
    from steps.train_large import scratch_model_like

    a, b = list(small.values())[:2]
    fused = fuse_models([a, b])
    inits = {"fuse": (fused, [a, b]),
             "self_fuse": (self_fuse(a, noise_std=0.0), [a]),
             "self_fuse_noise": (self_fuse(a, noise_std=noise_std, random_state=seed), [a]),
             "stack": (stack_layers(a, mode=stack_mode), [a])}
    inits["scratch"] = (scratch_model_like(model_to_files(fused), seed + 7919), [])
    if "scratch_stack" in arms:
        inits["scratch_stack"] = (scratch_model_like(model_to_files(inits["stack"][0]), seed + 7919), [])
    return {arm: inits[arm] for arm in arms if arm in inits}


def _components(arm: str, small_names: list[str]) -> list[str]:
    """The small models an arm was grown from: their pretraining counts in its total FLOPs."""
    if arm.startswith("scratch"):
        return []
    return small_names[:2] if arm == "fuse" else small_names[:1]


def run_seed(seed: int, cfg, data: BenchData, small_cfg, large_cfg, args) -> dict:
    """Everything for one seed: the small models, every arm, the saving table and the capacity check."""
    from libs.growth import copy_asymmetry
    from libs.growth_saving import saving_table, steps_to_reach
    from libs.models import build_model, flops_per_token
    from steps.pretrain_small import subset_for_model

    t0 = time.perf_counter()
    specs = cfg.pretrain_small.models[:2]
    small, small_report = {}, {}
    for i, spec in enumerate(specs):
        model = build_model(spec, vocab_size=data.vocab_size, n_positions=data.seq_len + 1, seed=seed + 1000 * i,
                            bos_token_id=data.bos_id, eos_token_id=data.eos_id)
        mine = np.arange(len(data.train_tokens))
        if cfg.pretrain_small.data == "by_cluster":
            mine, _ = subset_for_model(cfg.pretrain_small, i, mine, data.weights, data.assignment)
        part = dataclasses.replace(data, train_tokens=data.train_tokens[mine], train_lengths=data.train_lengths[mine],
                                   weights=data.weights[mine])
        _log(f"seed {seed}: pretraining {spec.name} ({spec.n_layer} x {spec.n_embd}) for {small_cfg.steps} steps")
        small[spec.name] = model
        small_report[spec.name] = _train(model, part, small_cfg, seed=seed + 1000 * i,
                                         label=f"seed{seed}:{spec.name}")
    names = list(small)
    pre_flops_of = {name: small_report[name]["flops"] for name in names}

    inits = grow_initializations(small, tuple(args.arms), seed=seed, noise_std=args.noise_std,
                                 stack_mode=args.stack_mode)
    growth = {arm: _preservation(model, refs, data) for arm, (model, refs) in inits.items() if refs}
    runs = {}
    for arm, (model, _) in inits.items():
        shape = _shape(model)
        _log(f"seed {seed}: arm {arm} ({shape['n_layer']} x {shape['n_embd']}) for {large_cfg.steps} steps")
        runs[arm] = _train(model, data, large_cfg, seed=seed, label=f"seed{seed}:{arm}")
        if arm.startswith("self_fuse"):
            growth[arm]["copy_asymmetry_after_training"] = copy_asymmetry(
                model, data.val_tokens[:ASYMMETRY_ROWS], lengths=data.val_lengths[:ASYMMETRY_ROWS])

    control_steps = None
    if "control" in args.arms:
        base = small[names[0]]
        large_fpt = flops_per_token(inits["scratch"][0], data.seq_len)
        control_steps = max(1, int(round(large_cfg.steps * large_fpt / flops_per_token(base, data.seq_len))))
        _log(f"seed {seed}: arm control ({names[0]} trained on) for {control_steps} steps")
        runs["control"] = _train(copy.deepcopy(base), data, _with_steps(large_cfg, control_steps),
                                 seed=seed, label=f"seed{seed}:control")

    curves = {arm: r["curve"] for arm, r in runs.items()}
    pre = {arm: sum(pre_flops_of[n] for n in _components(arm, names)) for arm in runs}
    saving = saving_table(curves, {arm: r["flops_per_step"] for arm, r in runs.items()}, pre, target_arm="scratch")
    every_small = sum(pre_flops_of.values())
    scratch_total = next(row for row in saving if row["arm"] == "scratch")["flops_total"]
    for row in saving:
        row["pretraining_flops"] = pre[row["arm"]]
        if row["flops_total"] is not None and not row["arm"].startswith("scratch"):
            # the flow's accounting (join_large): every small model trained, used by the arm or not
            total = row["flops_after_growth"] + every_small
            row["flops_total_every_small_model"] = total
            row["flops_ratio_total_every_small_model"] = total / scratch_total
        row["step_speedup"] = (None if row["step_ratio"] in (None, 0) else 1.0 / row["step_ratio"])
        if row["arm"] == "control":        # its steps are small-model steps: only FLOPs compare
            row.update(step_ratio=None, step_speedup=None, steps_unit="small-model steps")
    capacity = {"scratch_final_val_loss": runs["scratch"]["final_val_loss"]}
    if "control" in runs:
        capacity["control_final_val_loss"] = runs["control"]["final_val_loss"]
        capacity["passed"] = bool(capacity["scratch_final_val_loss"] < capacity["control_final_val_loss"])
        if not capacity["passed"]:
            capacity["message"] = CAPACITY_FAILED
            keep = ("arm", "final_val_loss", "target_loss")
            saving = [{k: row[k] for k in keep} | {"speedup": "not reported: " + CAPACITY_FAILED}
                      for row in saving]
    else:
        capacity["passed"] = None
        capacity["message"] = "no control arm: capacity not checked"

    report = {"seed": seed, "small_models": {n: _public(r) for n, r in small_report.items()},
              "growth_at_init": growth, "arms": {arm: _public(r) for arm, r in runs.items()},
              "control_steps": control_steps, "capacity_check": capacity, "saving": saving}
    if "scratch_stack" in runs and "stack" in runs:
        target = runs["scratch_stack"]["final_val_loss"]
        steps = steps_to_reach(runs["stack"]["curve"], target)
        report["stack_vs_own_shape"] = {"scratch_stack_final_val_loss": target,
                                        "stack_steps_to_reach_it": steps,
                                        "step_ratio": None if steps is None else steps / large_cfg.steps}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _public(run: dict) -> dict:
    """An arm's figures for the JSON, its curve cut to (step, validation loss) pairs."""
    out = {k: v for k, v in run.items() if k != "curve"}
    out["curve"] = [[r["step"], round(r["val_loss"], 5)] for r in run["curve"]]
    return out


# ----------------------------------------------------------------------------------------------
# summary over seeds


def summarize(seeds: list[dict], arms: list[str]) -> dict:
    """Per arm statistics over seeds, the capacity verdict, and whether the goal was met."""
    passed = [s for s in seeds if s["capacity_check"]["passed"] is not False]      # None: not checked
    checked = [s for s in seeds if s["capacity_check"]["passed"] is not None]
    out = {"capacity_check": {"passed_in": f"{sum(s['capacity_check']['passed'] for s in checked)}/{len(checked)} "
                                           "seeds"}, "arms": {}}
    if not checked:
        out["capacity_check"]["message"] = "not checked: no control arm was trained (add it to --arms)"
    elif len(passed) < len(seeds):
        out["capacity_check"]["message"] = CAPACITY_FAILED + (" (in every seed)" if not passed else
                                                              " (in some seeds; speedups below use the others)")
    for arm in arms:
        entry = {"final_val_loss": _stats([s["arms"][arm]["final_val_loss"] for s in seeds if arm in s["arms"]])}
        rows = [r for s in passed for r in s["saving"] if r["arm"] == arm]
        if rows:
            reached = [r for r in rows if r.get("steps_to_target") is not None]
            entry["reached_scratch_final_loss_in"] = f"{len(reached)}/{len(rows)} seeds"
            for key in ("step_speedup", "step_ratio", "flops_ratio_after_growth", "flops_ratio_total",
                        "flops_ratio_total_every_small_model"):
                values = [r[key] for r in reached if r.get(key) is not None]
                if values:
                    entry[key] = _stats(values)
        out["arms"][arm] = entry
    out["goal"] = _goal(seeds, passed, arms)
    return out


def _goal(seeds: list[dict], passed: list[dict], arms: list[str]) -> dict:
    goal = {"test": f"the best grown arm reaches scratch's final validation loss in <= {GOAL_STEP_RATIO}x the "
                    "scratch steps and in fewer total FLOPs (small models' pretraining included) than scratch",
            "met": False, "met_on_mean": False, "best_grown_arm": None}
    if len(passed) < len(seeds) or not passed:
        goal["verdict"] = "not assessed: " + CAPACITY_FAILED
        return goal
    candidates = {}
    for arm in (a for a in arms if a in GROWN_ARMS):
        rows = [r for s in passed for r in s["saving"] if r["arm"] == arm]
        if rows and all(r.get("step_ratio") is not None for r in rows):
            candidates[arm] = rows
    if not candidates:
        goal["verdict"] = "no grown arm reached scratch's final validation loss in every seed"
        return goal
    best = min(candidates, key=lambda a: np.mean([r["step_ratio"] for r in candidates[a]]))
    rows = candidates[best]
    step_ratios = [r["step_ratio"] for r in rows]
    flops_ratios = [r["flops_ratio_total"] for r in rows]
    goal.update(best_grown_arm=best, step_ratio_max=max(step_ratios), flops_ratio_total_max=max(flops_ratios),
                met=max(step_ratios) <= GOAL_STEP_RATIO and max(flops_ratios) < 1.0,
                met_on_mean=bool(np.mean(step_ratios) <= GOAL_STEP_RATIO and np.mean(flops_ratios) < 1.0))
    mean_step, mean_flops = float(np.mean(step_ratios)), float(np.mean(flops_ratios))
    goal["verdict"] = (f"{best}: {mean_step:.2f}x the scratch steps ({1 / max(mean_step, 1e-9):.2f}x fewer), "
                       f"{mean_flops:.2f}x the total FLOPs (mean over {len(rows)} seeds): "
                       f"goal {'met' if goal['met'] else 'not met'}")
    return goal


# ----------------------------------------------------------------------------------------------


def _display_path(path: str) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def main() -> None:
    from steps.config import load_config_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config" / "default.toml"), help="the TOML config to use")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--small-steps", type=int, default=None,
                        help="small-model steps (default: the config's pretrain_small.train.steps)")
    parser.add_argument("--large-steps", type=int, default=None,
                        help="steps of every large arm (default: the config's train_large.train.steps)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="evaluate every this many steps (0: the config's eval_every)")
    parser.add_argument("--noise-std", type=float, default=None,
                        help="symmetry-breaking noise of self_fuse_noise, relative to each weight's std "
                             "(default: the config's grow.noise_std, or 0.01 if that is 0)")
    parser.add_argument("--stack-mode", choices=("copy", "zero"), default="copy",
                        help="stack_layers mode: copy (G_stack) or zero (exact, zero-output new layers)")
    parser.add_argument("--selection", choices=("uniform", "config"), default="uniform",
                        help="uniform slice at the config's budget, or the config's own embed + select")
    parser.add_argument("--arms", nargs="+", choices=ALL_ARMS, default=list(DEFAULT_ARMS),
                        help="large arms to train (scratch is always trained)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (per process with --jobs)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained in parallel processes (each with --threads threads); 1: one after another")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['small_steps']} small and {QUICK['large_steps']} large steps, "
                             "1 seed, small evaluations")
    parser.add_argument("--out", default=None, help="also write the JSON to this path")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()        # the scratch arms' save/load round trip would draw bars on stderr
    torch.manual_seed(0)
    cfg = load_config_file(args.config)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.small_steps is None:
        args.small_steps = QUICK["small_steps"] if args.quick else cfg.pretrain_small.train.steps
    if args.large_steps is None:
        args.large_steps = QUICK["large_steps"] if args.quick else cfg.train_large.train.steps
    if args.quick and not args.eval_every:
        args.eval_every = QUICK["eval_every"]
    if args.noise_std is None:
        args.noise_std = cfg.grow.noise_std or 0.01
    if "scratch" not in args.arms:
        args.arms = ["scratch"] + args.arms
    args.arms = [a for a in ALL_ARMS if a in args.arms]               # fixed order, no repeats
    for name in ("seeds", "small_steps", "large_steps", "threads", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.eval_every < 0:
        parser.error("--eval-every must be 0 (the config's) or positive")
    if args.noise_std <= 0:
        parser.error("--noise-std must be positive (the self_fuse arm is the noise-free one)")
    if len(cfg.pretrain_small.models) < 2:
        parser.error(f"{args.config} lists {len(cfg.pretrain_small.models)} small model(s); Deep Fusion needs two")
    if cfg.pretrain_small.data == "by_cluster" and args.selection == "uniform":
        parser.error("pretrain_small.data = 'by_cluster' needs clusters: use --selection config")

    t0 = time.perf_counter()
    data = load_data(cfg, args.selection)
    small_cfg, large_cfg = training_configs(cfg, args)
    _log(f"{data.summary['n_selected_rows']} selected rows; {args.seeds} seed(s), small {small_cfg.steps} steps, "
         f"large {large_cfg.steps} steps, arms {', '.join(args.arms)}")
    seeds = []

    def finished(result: dict) -> None:
        seeds.append(result)
        seeds.sort(key=lambda r: r["seed"])
        if args.out and len(seeds) < args.seeds:    # a long run killed midway still leaves its finished seeds
            _write(args.out, _report(seeds, args, data, small_cfg, large_cfg, t0, complete=False))
            _log(f"seed {result['seed']} done; partial report ({len(seeds)}/{args.seeds} seeds) in {args.out}")

    if args.jobs == 1:
        for seed in range(args.seeds):
            finished(run_seed(seed, cfg, data, small_cfg, large_cfg, args))
    else:                                            # fresh interpreters: no OpenMP state forked from this one
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(args.jobs, args.seeds),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(args.threads,)) as pool:
            futures = [pool.submit(run_seed, seed, cfg, data, small_cfg, large_cfg, args)
                       for seed in range(args.seeds)]
            for future in as_completed(futures):
                finished(future.result())
    text = _write(args.out, _report(seeds, args, data, small_cfg, large_cfg, t0, complete=True))
    print(text)


def _worker_init(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    torch.manual_seed(0)                     # as main() does for the one-process path
    hf_logging.disable_progress_bar()


def _write(out: str | None, report: dict) -> str:
    text = json.dumps(report, indent=2, default=float)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return text


def _report(seeds: list[dict], args: argparse.Namespace, data, small_cfg, large_cfg, t0: float,
            complete: bool) -> dict:
    first = seeds[0]
    return {
        "complete": complete, "seeds_done": f"{len(seeds)}/{args.seeds}",
        "benchmark": "growth_saving", "config": _display_path(args.config), "quick": args.quick,
        "threads": args.threads, "jobs": args.jobs, "cpu_count": os.cpu_count(), "data": data.summary,
        "train": {"small": dataclasses.asdict(small_cfg), "large": dataclasses.asdict(large_cfg),
                  "control_steps": first["control_steps"], "noise_std": args.noise_std,
                  "stack_mode": args.stack_mode,
                  "warmup": "restarted for every arm (a fresh optimizer per train_model call)"},
        "shapes": {**{name: r["shape"] for name, r in first["small_models"].items()},
                   **{arm: r["shape"] for arm, r in first["arms"].items()}},
        "flops_per_token": {**{name: r["flops_per_token"] for name, r in first["small_models"].items()},
                            **{arm: r["flops_per_token"] for arm, r in first["arms"].items()}},
        "shapes_note": ("scratch, fuse and self_fuse arms share the fused shape (width = sum of the small "
                        "widths, same depth); stack has the small width and twice the depth, yet its target is "
                        "the fused-shape scratch arm's final loss; control is small_a itself"),
        "flops_counting": "flops_after_growth = steps to target x the arm's FLOPs per step (6N + attention, "
                          "libs.models.flops_per_token, times the tokens per step); flops_total adds the "
                          "pretraining FLOPs of the small models the arm was grown from (fuse: both; self_fuse, "
                          "stack, control: small_a; scratch: none); flops_total_every_small_model charges every "
                          "small model trained, as join_large does",
        "ratios": "step_ratio = arm steps / scratch steps to scratch's final validation loss (<= 0.5 is the goal; "
                  "null: never reached); step_speedup = its inverse (null also when reached at step 0, i.e. at "
                  "init); flops ratios are arm / scratch (< 1 is a saving); summaries of ratios are over the "
                  "seeds that passed the capacity check and reached the target",
        "seeds": seeds,
        "summary": summarize(seeds, args.arms),
        "seconds": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    main()

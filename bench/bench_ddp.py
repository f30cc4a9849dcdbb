"""Data-parallel training vs one process, side by side: throughput and loss agreement, one JSON object.

    python bench/bench_ddp.py                      # GPT-2 2 x 128 on random tokens, 20 steps, global batch 16
    python bench/bench_ddp.py --steps 40 --n-layer 4

``libs.training.train_model`` trains the same seeded model on the same random tokens (a
random Markov chain, so there is something to learn) twice:
once in one process with the global batch, once under DistributedDataParallel over
``--world-size`` CPU processes (gloo) with ``global batch / world size`` rows each. The
sampler gives every rank its slice of the same global batch, so after ``--steps`` steps the
losses must agree up to floating-point reduction order (goal: relative difference <= 1e-4).
Throughput is timed from an ``on_step`` clock over the steps after ``--warmup-steps``, so
start-up and evaluation are not counted; ``--repeats`` alternates the two setups and keeps
each one's best throughput. On a machine with C cores the single process uses C threads and
each rank C / world-size, so both use the whole CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOSS_AGREEMENT_GOAL = 1e-4


def _data(args, seed: int, n: int):
    """Random tokens with something to learn, every row full length: (n, seq_len + 1) int32, lengths (n,).

    Each row walks a random Markov chain in which every token has ``--successors`` possible
    next tokens (drawn once, from ``--seed``), so the loss falls from ln(vocab) towards
    ln(successors) and the comparison is made on a model that really moved.
    """
    import numpy as np

    table = np.random.default_rng(args.seed).integers(0, args.vocab_size, (args.vocab_size, args.successors))
    rng = np.random.default_rng(seed)
    tokens = np.empty((n, args.seq_len + 1), dtype=np.int32)
    tokens[:, 0] = rng.integers(0, args.vocab_size, n)
    choice = rng.integers(0, args.successors, (n, args.seq_len))
    for t in range(args.seq_len):
        tokens[:, t + 1] = table[tokens[:, t], choice[:, t]]
    return tokens, np.full(n, args.seq_len + 1, dtype=np.int32)


def _train(args, batch_size: int, threads: int) -> dict:
    """One training run in this process (a DDP rank when a process group is up)."""
    import torch

    from libs.models import ModelSpec, build_model, count_parameters
    from libs.training import TrainConfig, train_model

    torch.set_num_threads(threads)
    train_tokens, train_lengths = _data(args, args.seed, args.n_train)
    val_tokens, val_lengths = _data(args, args.seed + 1, args.n_val)
    spec = ModelSpec(family="gpt2", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head)
    model = build_model(spec, vocab_size=args.vocab_size, n_positions=args.seq_len + 1, seed=args.seed)
    cfg = TrainConfig(steps=args.steps, batch_size=batch_size, lr=3e-3, warmup_steps=2, eval_every=args.steps,
                      eval_batches=0, device="cpu")
    clock: dict[int, float] = {}
    result = train_model(model, train_tokens, train_lengths, val_tokens, val_lengths, cfg, seed=args.seed,
                         on_step=lambda step: clock.__setitem__(step, time.perf_counter()), progress=False)
    timed_steps = args.steps - args.warmup_steps
    seconds = clock[args.steps] - clock[args.warmup_steps]
    tokens_per_step = args.global_batch * args.seq_len                  # every row is full length
    return {"tokens_per_s": timed_steps * tokens_per_step / seconds, "seconds_per_step": seconds / timed_steps,
            "initial_val_loss": result.curve[0]["val_loss"],
            "final_val_loss": result.final_val_loss, "final_train_loss": result.final_train_loss,
            "n_tokens": result.n_tokens, "n_params": count_parameters(model), "threads": threads}


def _rank(rank: int, args, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.world_size)
    try:
        result = _train(args, args.global_batch // args.world_size, max(1, args.cpus // args.world_size))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (losses compared after these)")
    parser.add_argument("--warmup-steps", type=int, default=4, help="steps left out of the throughput clock")
    parser.add_argument("--global-batch", type=int, default=16, help="rows per optimizer step, over all ranks")
    parser.add_argument("--world-size", type=int, default=2, help="DDP processes")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--successors", type=int, default=4, help="next-token choices per token in the data")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each setup, alternated (throughput: the best; losses: the first)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.global_batch % args.world_size:
        parser.error(f"--global-batch {args.global_batch} is not divisible by --world-size {args.world_size}")
    if args.successors < 1 or args.repeats < 1:
        parser.error("--successors and --repeats must be at least 1")
    if not 1 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} must lie in [1, --steps {args.steps}): "
                     "the clock starts at the end of a step")

    import torch
    import torch.multiprocessing as mp

    singles, ddps, one_thread = [], [], []
    for _ in range(args.repeats):                # alternated, so a busy moment does not favour one side
        singles.append(_train(args, args.global_batch, args.cpus))
        one_thread.append(_train(args, args.global_batch, 1))
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_rank, args=(args, os.path.join(tmp, "init"), tmp), nprocs=args.world_size, join=True)
            ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.world_size)]
        ddps.append(dict(ranks[0], world_size=args.world_size, per_rank_batch=args.global_batch // args.world_size,
                         ranks_agree=all(r["final_val_loss"] == ranks[0]["final_val_loss"] for r in ranks)))
    single, ddp, single_1 = dict(singles[0]), dict(ddps[0]), dict(one_thread[0])
    for best, runs in ((single, singles), (ddp, ddps), (single_1, one_thread)):
        best["tokens_per_s_each_repeat"] = [r["tokens_per_s"] for r in runs]
        best["tokens_per_s"] = max(best["tokens_per_s_each_repeat"])
        best["seconds_per_step"] = min(r["seconds_per_step"] for r in runs)
        best["deterministic_over_repeats"] = len({r["final_val_loss"] for r in runs}) == 1
    agreement = {"val": _relative(ddp["final_val_loss"], single["final_val_loss"]),
                 "train": _relative(ddp["final_train_loss"], single["final_train_loss"])}
    print(json.dumps({
        "benchmark": "ddp_vs_single_process",
        "model": {"family": "gpt2", "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head,
                  "vocab_size": args.vocab_size, "seq_len": args.seq_len, "n_params": single["n_params"]},
        "steps": args.steps, "global_batch": args.global_batch, "data": f"random Markov-chain tokens, {args.successors} successors per token, full-length rows",
        "single": single, "ddp": ddp,
        "loss_relative_difference": agreement, "loss_agreement_goal": LOSS_AGREEMENT_GOAL,
        "loss_agreement_ok": max(agreement.values()) <= LOSS_AGREEMENT_GOAL,
        "throughput_ratio_ddp_over_single": ddp["tokens_per_s"] / single["tokens_per_s"],
        "single_one_thread": {k: single_1[k] for k in ("tokens_per_s", "tokens_per_s_each_repeat",
                                                       "seconds_per_step", "final_val_loss")},
        "throughput_ratio_ddp_over_single_one_thread": ddp["tokens_per_s"] / single_1["tokens_per_s"],
        "note": ("the single process uses --cpus threads; its one-thread run shows how much of the ratio is "
                 "thread scaling inside one process (ideal DDP ratio over one thread: --world-size)"),
        "same_tokens_seen": ddp["n_tokens"] == single["n_tokens"],
        "machine": {"cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
                    "torch": torch.__version__, "python": platform.python_version()},
    }, indent=2))


if __name__ == "__main__":
    main()

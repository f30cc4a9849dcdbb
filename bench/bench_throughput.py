"""Training throughput and MFU of the large model, precision and compilation side by side; one JSON object.

    python bench/bench_throughput.py                                  # config/default.toml on this machine
    python bench/bench_throughput.py --config config/gpu.toml         # on a GPU: fp32, bf16, bf16 + compile
    python bench/bench_throughput.py --steps 6 --warmup-steps 2       # a quick look

What is timed. The large model of the config, built exactly as the pipeline builds it: the
config's small models (``pretrain_small.models``, random init) grown with the config's operator
(``steps.grow.run``, e.g. Deep Fusion of two 6 x 512 GPT-2 models into one 6 x 1024 model for
config/gpu.toml), the vocabulary and context of ``prepare``. It trains with the one training
loop (``libs.training.train_model``) and the config's ``train_large.train`` batch shape (micro-batch
``batch_size`` x ``grad_accum``, ``seq_len`` tokens per row), on random full-length token rows (the
data does not change the arithmetic). An ``on_step`` clock times the steps after ``--warmup-steps``,
so start-up, ``torch.compile``'s compilation and evaluation are not counted.

Variants, in one run: on CUDA ``fp32`` (no autocast), ``bf16`` (autocast) and ``bf16+compile``
(``torch.compile``), each with the attention implementation the pipeline uses (``eager``) and with
PyTorch's fused ``sdpa`` kernel; on CPU only fp32 (the loop uses bf16 and compile on CUDA only), eager
and sdpa.

MFU (model FLOPs utilization, PaLM's definition) = tokens/s x training FLOPs per token
(``libs.models.flops_per_token``: 6 N plus attention) / the device's peak dense bf16 FLOP/s. The peak
comes from ``--peak-tflops`` or, for GPUs we know, from the table below (vendor figures, dense, no
sparsity); on a CPU there is no agreed peak, so MFU is null unless ``--peak-tflops`` is given.
Goal (issue 5): MFU >= 40% for the large model's bf16 training step on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MFU_GOAL = 0.40
# dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


def _log(message: str) -> None:
    print(f"[bench_throughput] {message}", file=sys.stderr, flush=True)


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """The peak dense bf16 TFLOP/s to divide by, and where the number came from."""
    if override:
        return override, "--peak-tflops"
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):   # the most specific name first
        if key in device_name:
            return PEAK_BF16_TFLOPS[key], f"data-sheet dense bf16 peak of {key}"
    return None, f"unknown peak for {device_name!r}: pass --peak-tflops"


def grown_model(cfg, seed: int):
    """The config's large model at initialization: its small models grown by its operator."""
    import numpy as np

    from libs.models import build_model, model_from_files, model_to_files
    from steps import grow

    p = cfg.prepare
    small = {spec.name: model_to_files(build_model(spec, vocab_size=p.vocab_size, n_positions=p.seq_len + 1,
                                                   seed=seed + 1000 * i))
             for i, spec in enumerate(cfg.pretrain_small.models)}
    rows = np.random.default_rng(seed).integers(0, p.vocab_size, (2, p.seq_len + 1)).astype(np.int32)
    result = grow.run(cfg.grow, small_models=small, check_tokens=rows, seed=seed)
    return model_from_files(result.model_files), result.shape_after


def time_variant(cfg, model_files: dict, *, device: str, bf16: bool, compile_: bool, attn: str, steps: int,
                 warmup_steps: int, seed: int) -> dict:
    """Train a copy of the model for ``steps`` steps; tokens/s over the steps after ``warmup_steps``."""
    import dataclasses

    import numpy as np
    import torch

    from libs.models import flops_per_token, model_from_files
    from libs.training import train_model

    p, t = cfg.prepare, cfg.train_large.train
    model = model_from_files(model_files)
    model.config._attn_implementation = attn          # read by the attention layers at every forward
    rows_per_step = t.batch_size * t.grad_accum
    rng = np.random.default_rng(seed)
    n_rows = max(rows_per_step * 4, 64)
    tokens = rng.integers(0, p.vocab_size, (n_rows, p.seq_len + 1)).astype(np.int32)
    lengths = np.full(n_rows, p.seq_len + 1, dtype=np.int32)
    train_cfg = dataclasses.replace(t, steps=steps, warmup_steps=min(t.warmup_steps, steps), eval_every=steps,
                                    eval_batches=1, checkpoint_every=0, device=device, bf16=bf16, compile=compile_)
    clock: dict[int, float] = {}

    def tick(step: int) -> None:
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        clock[step] = time.perf_counter()

    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    result = train_model(model, tokens, lengths, tokens[:8], lengths[:8], train_cfg, seed=seed, on_step=tick,
                         progress=False, label=f"throughput[{'bf16' if bf16 else 'fp32'}{'+compile' if compile_ else ''},{attn}]")
    timed = steps - warmup_steps
    seconds = clock[steps] - clock[warmup_steps]
    tokens_per_step = rows_per_step * p.seq_len
    out = {"precision": "bf16" if bf16 else "fp32", "compile": compile_, "attention": attn,
           "tokens_per_s": timed * tokens_per_step / seconds, "seconds_per_step": seconds / timed,
           "timed_steps": timed, "tokens_per_step": tokens_per_step,
           "flops_per_token": flops_per_token(model, p.seq_len), "final_train_loss": result.final_train_loss,
           "device": result.device}
    if torch.cuda.is_available() and device != "cpu":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config" / "default.toml"), help="the TOML config")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=10,
                        help="steps left out of the clock (compilation and allocator warm-up)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--attention", nargs="+", default=["eager", "sdpa"], choices=("eager", "sdpa"))
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON to this path")
    args = parser.parse_args()
    if not 1 <= args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} must lie in [1, --steps {args.steps})")

    import torch

    from libs.models import count_parameters, model_to_files
    from steps.config import load_config_file

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda but torch sees no CUDA device")
    device = "cuda" if cuda else "cpu"
    device_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    peak, peak_source = peak_tflops(device_name, args.peak_tflops) if cuda or args.peak_tflops else (
        None, "a CPU has no agreed peak: pass --peak-tflops")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True   # what fp32 training on an H100 would use
        torch.backends.cudnn.allow_tf32 = True

    cfg = load_config_file(args.config)
    model, shape = grown_model(cfg, args.seed)
    files = model_to_files(model)
    precisions = [(False, False), (True, False), (True, True)] if cuda else [(False, False)]
    variants = []
    for bf16, compile_ in precisions:
        for attn in args.attention:
            _log(f"{'bf16' if bf16 else 'fp32'}{' + compile' if compile_ else ''}, {attn} attention on {device} ...")
            v = time_variant(cfg, files, device=device, bf16=bf16, compile_=compile_, attn=attn, steps=args.steps,
                             warmup_steps=args.warmup_steps, seed=args.seed)
            v["achieved_tflops"] = v["tokens_per_s"] * v["flops_per_token"] / 1e12
            v["mfu"] = v["achieved_tflops"] / peak if peak else None
            _log(f"  {v['tokens_per_s']:,.0f} tokens/s, {v['achieved_tflops']:.2f} TFLOP/s"
                 + (f", MFU {v['mfu']:.1%}" if v["mfu"] is not None else ""))
            variants.append(v)
    base = variants[0]["tokens_per_s"]
    for v in variants:
        v["speedup_over_first"] = v["tokens_per_s"] / base
    best = max(variants, key=lambda v: v["tokens_per_s"])
    t = cfg.train_large.train
    report = {
        "benchmark": "large_model_training_throughput",
        "config": str(Path(args.config).resolve().relative_to(ROOT)) if Path(args.config).resolve().is_relative_to(ROOT)
        else args.config,
        "model": dict(shape, n_params=count_parameters(model), grow_method=cfg.grow.method),
        "batch": {"micro_batch": t.batch_size, "grad_accum": t.grad_accum, "seq_len": cfg.prepare.seq_len},
        "device": device_name, "peak_bf16_tflops": peak, "peak_source": peak_source,
        "variants": variants,
        "best": {k: best[k] for k in ("precision", "compile", "attention", "tokens_per_s", "achieved_tflops", "mfu")},
        "mfu_goal": MFU_GOAL,
        "mfu_goal_met": (best["mfu"] >= MFU_GOAL) if best["mfu"] is not None else None,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1m": os.getloadavg()[0], "torch": torch.__version__,
                    "cuda": torch.version.cuda, "python": platform.python_version()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

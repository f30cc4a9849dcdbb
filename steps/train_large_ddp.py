"""Data-parallel ``train_large`` on one node: the step's side and the entry script every rank runs.

``train_large.nproc_per_node > 1`` sends an arm here. The step's process
(:func:`run_data_parallel`) writes the inputs into a temporary folder as plain files:

    inputs.json    the TrainLargeConfig (as TOML-shaped dict), arm, seed, seq_len,
                   checkpoint folder, backend, CPU threads per rank
    data.npz       train/val token arrays and lengths, selected indices, importance weights
    grown/         the grown model's Hugging Face files (config.json, model.safetensors, ...)

then calls ``launch`` (the flow passes metaflow-torchrun's
``TorchrunSingleNodeMultiGPU().run``), which starts ``nproc_per_node`` copies of this
file under ``torch.distributed.run --standalone``. Each rank (:func:`main`) joins the
process group and runs the same :func:`steps.train_large.train_arm` as the one-process
path: ``libs.training.train_model`` sees the process group and trains under
DistributedDataParallel (each rank its slice of the same global batch, per-example
weights as in one process, checkpoints written by rank 0 and loaded by every rank).
Rank 0 writes ``result/result.json`` and ``result/model/`` (the trained model's HF files);
the step loads them into the :class:`~steps.train_large.TrainLargeResult` the one-process
path returns. Nothing is pickled: a rank never unpickles objects from the step.

Run by hand (after a step left its inputs in DIR):
``python -m torch.distributed.run --standalone --nproc_per_node 2 steps/train_large_ddp.py --work-dir DIR``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a script, sys.path[0] is steps/ itself, whose modules (select.py, ...) would shadow the
    # standard library's: put the repository root there instead, so `libs` and `steps` import as in the flow.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["ENTRYPOINT", "TORCHRUN_ARGS", "resolve_backend", "run_data_parallel", "write_inputs", "read_result",
           "main"]

ENTRYPOINT = os.path.abspath(__file__)
# --standalone: a rendezvous on a free local port, so the two arms' launches (parallel foreach
# branches on one machine) never collide on torchrun's fixed default port.
TORCHRUN_ARGS = {"standalone": ""}
_DATA_KEYS = ("train_tokens", "train_lengths", "val_tokens", "val_lengths", "indices", "weights")


def resolve_backend(cfg) -> tuple[str, str, int]:
    """(backend, device type, GPUs visible) for ``cfg`` (a TrainLargeConfig); raises ConfigError on a mismatch.

    'auto' is nccl when the training device is CUDA and gloo otherwise. On CUDA each rank
    needs its own GPU: more processes than visible GPUs is an error naming the key.
    """
    import torch

    from libs.schema import ConfigError
    from libs.training import resolve_device

    n = cfg.nproc_per_node
    device = resolve_device(cfg.train.device)
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = cfg.ddp_backend if cfg.ddp_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and n > n_gpus:
        raise ConfigError(f"train_large.nproc_per_node={n} asks for {n} processes, one per GPU, but this machine "
                          f"has {n_gpus} CUDA GPU(s); set train_large.nproc_per_node to at most {n_gpus} "
                          "(and resources.train_large.gpu to the same number on remote compute)")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"train_large.ddp_backend='nccl' needs CUDA GPUs, but training runs on {device} "
                          f"(train_large.train.device={cfg.train.device!r}); use 'gloo' or 'auto'")
    return backend, device.type, n_gpus


def write_inputs(work_dir: str | Path, cfg, arm: str, *, grown_files: dict[str, bytes], train_tokens: np.ndarray,
                 train_lengths: np.ndarray, val_tokens: np.ndarray, val_lengths: np.ndarray, indices: np.ndarray,
                 weights: np.ndarray, seq_len: int, seed: int, checkpoint_dir: str | None, backend: str,
                 threads_per_rank: int | None, progress: bool) -> None:
    """Write everything a rank needs into ``work_dir`` (JSON, npz, the model's safetensors files)."""
    from libs.schema import to_dict

    work_dir = Path(work_dir)
    (work_dir / "grown").mkdir(parents=True, exist_ok=True)
    for name, data in grown_files.items():
        (work_dir / "grown" / name).write_bytes(data)
    arrays = dict(train_tokens=train_tokens, train_lengths=train_lengths, val_tokens=val_tokens,
                  val_lengths=val_lengths, indices=indices, weights=weights)
    np.savez(work_dir / "data.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    inputs = {"config": to_dict(cfg), "arm": arm, "seq_len": int(seq_len), "seed": int(seed),
              "checkpoint_dir": None if checkpoint_dir is None else os.path.abspath(checkpoint_dir),
              "backend": backend, "threads_per_rank": threads_per_rank, "progress": bool(progress)}
    (work_dir / "inputs.json").write_text(json.dumps(inputs, indent=1))


def _read_inputs(work_dir: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:
    from libs.schema import parse
    from steps.train_large import TrainLargeConfig

    inputs = json.loads((work_dir / "inputs.json").read_text())
    inputs["config"] = parse(TrainLargeConfig, inputs["config"], source=str(work_dir / "inputs.json"),
                             prefix="train_large.")
    with np.load(work_dir / "data.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in _DATA_KEYS}
    grown = {p.name: p.read_bytes() for p in sorted((work_dir / "grown").iterdir()) if p.is_file()}
    return inputs, arrays, grown


def _write_result(work_dir: Path, result) -> None:
    import dataclasses

    out = work_dir / "result"
    (out / "model").mkdir(parents=True, exist_ok=True)
    for name, data in result.model_files.items():
        (out / "model" / name).write_bytes(data)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "model_files"}
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, out / "result.json")       # written last: its presence means the result is whole


def read_result(work_dir: str | Path):
    """The TrainLargeResult rank 0 wrote into ``work_dir`` (raises if it wrote none)."""
    from steps.train_large import TrainLargeResult

    out = Path(work_dir) / "result"
    if not (out / "result.json").is_file():
        raise RuntimeError(f"the data-parallel ranks finished but rank 0 wrote no result into {out}; "
                           "see the ranks' output above")
    fields = json.loads((out / "result.json").read_text())
    files = {p.name: p.read_bytes() for p in sorted((out / "model").iterdir()) if p.is_file()}
    return TrainLargeResult(model_files=files, **fields)


def run_data_parallel(cfg, arm: str, *, grown_files: dict[str, bytes], train_tokens: np.ndarray,
                      train_lengths: np.ndarray, val_tokens: np.ndarray, val_lengths: np.ndarray,
                      indices: np.ndarray, weights: np.ndarray, seq_len: int, seed: int,
                      checkpoint_dir: str | None, launch: Callable[..., None] | None, progress: bool = True,
                      callbacks_dropped: list[str] = ()):
    """Train ``arm`` on ``cfg.nproc_per_node`` processes started by ``launch``; return its TrainLargeResult.

    ``launch(entrypoint=..., nproc_per_node=..., entrypoint_args=[...], torchrun_args={...})``
    must start the processes and return when they all succeeded (raise otherwise):
    metaflow-torchrun's ``TorchrunSingleNodeMultiGPU().run`` does exactly that.
    """
    import dataclasses

    import torch

    label = f"train_large[{arm}]"
    n = cfg.nproc_per_node
    if launch is None:
        raise ValueError(f"train_large.nproc_per_node={n} needs a launcher for its {n} processes: pass "
                         "launch=TorchrunSingleNodeMultiGPU().run (from metaflow-torchrun), as the flow does, "
                         "or set train_large.nproc_per_node = 1")
    backend, device_type, n_gpus = resolve_backend(cfg)
    threads = None
    if device_type == "cpu":
        threads = max(1, torch.get_num_threads() // n)
        print(f"[{label}] WARNING: train_large.nproc_per_node={n} on CPU: {n} gloo processes of {threads} "
              "thread(s) each. Data parallelism on CPU is for testing (it reproduces one process's losses); "
              "it is not faster than one process using every core.", file=sys.stderr, flush=True)
    print(f"[{label}] data-parallel over {n} processes ({backend}, {device_type}"
          + (f", {n_gpus} GPUs visible" if device_type == "cuda" else "")
          + ") through metaflow-torchrun's single-node launcher; global batch "
          f"{cfg.train.batch_size * cfg.train.grad_accum * n} rows per optimizer step", file=sys.stderr, flush=True)
    if callbacks_dropped:
        print(f"[{label}] {' and '.join(callbacks_dropped)} not called under DDP (training runs in torchrun's "
              "processes): the live loss card is skipped; the final card and artifacts are the same as with one "
              "process", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train_large_ddp_") as work_dir:
        write_inputs(work_dir, cfg, arm, grown_files=grown_files, train_tokens=train_tokens,
                     train_lengths=train_lengths, val_tokens=val_tokens, val_lengths=val_lengths, indices=indices,
                     weights=weights, seq_len=seq_len, seed=seed, checkpoint_dir=checkpoint_dir, backend=backend,
                     threads_per_rank=threads, progress=progress)
        launch(entrypoint=ENTRYPOINT, nproc_per_node=n, entrypoint_args=["--work-dir", work_dir],
               torchrun_args=dict(TORCHRUN_ARGS))
        result = read_result(work_dir)
    return dataclasses.replace(result, device=f"{result.device} x{n} (DDP, {backend})",
                               seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    """One rank: join the process group torchrun set up, train the arm, rank 0 writes the result."""
    parser = argparse.ArgumentParser(description="one rank of data-parallel train_large (started by torchrun)")
    parser.add_argument("--work-dir", required=True, help="the folder run_data_parallel wrote the inputs into")
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir)

    import torch
    import torch.distributed as dist

    from steps.train_large import failure_injector, train_arm

    inputs, arrays, grown = _read_inputs(work_dir)
    if inputs["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    elif inputs["threads_per_rank"]:
        torch.set_num_threads(inputs["threads_per_rank"])
    dist.init_process_group(inputs["backend"])             # env:// rendezvous: torchrun set RANK, WORLD_SIZE, ...
    try:
        rank = dist.get_rank()
        result = train_arm(inputs["config"], inputs["arm"], grown_files=grown, seq_len=inputs["seq_len"],
                           seed=inputs["seed"], checkpoint_dir=inputs["checkpoint_dir"],
                           on_step=failure_injector(inputs["arm"]), progress=inputs["progress"] and rank == 0,
                           **arrays)
        if rank == 0:
            _write_result(work_dir, result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

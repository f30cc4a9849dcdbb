"""One rank of data-parallel ``train_large`` (``train_large.nproc_per_node > 1``).

The step's process (:func:`steps.train_large.run`) writes the arm's inputs into a folder
as plain files (``inputs.json``, ``data.npz``, the initial model's safetensors files) and
starts ``nproc_per_node`` copies of this module under torchrun (``python -m
torch.distributed.run --standalone --module steps.train_large_ddp --work-dir DIR``),
through metaflow-torchrun's single-node launcher. Each rank joins the process group and
runs the same :func:`steps.train_large.train_arm` as the one-process path:
``libs.training.train_model`` sees the process group and trains under
DistributedDataParallel (each rank its slice of the same global batch, per-example
weights as in one process, checkpoints written by rank 0 and loaded by every rank).
Rank 0 writes ``result/result.json`` and ``result/model/``; the step reads them back.
Nothing is pickled: a rank never unpickles objects from the step.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """One rank: join the process group torchrun set up, train the arm, rank 0 writes the result."""
    parser = argparse.ArgumentParser(description="one rank of data-parallel train_large (started by torchrun)")
    parser.add_argument("--work-dir", required=True, help="the folder steps.train_large.run wrote the inputs into")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    from steps.train_large import failure_injector, read_inputs, train_arm, write_result

    inputs = read_inputs(args.work_dir)
    if inputs["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    elif inputs["threads_per_rank"]:
        torch.set_num_threads(inputs["threads_per_rank"])
    dist.init_process_group(inputs["backend"])             # env:// rendezvous: torchrun set RANK, WORLD_SIZE, ...
    try:
        rank = dist.get_rank()
        result = train_arm(inputs["config"], inputs["arm"], init_files=inputs["init_files"], data=inputs["data"],
                           indices=inputs["indices"], weights=inputs["weights"], seed=inputs["seed"],
                           init_flops=inputs["init_flops"], checkpoint_dir=inputs["checkpoint_dir"],
                           on_step=failure_injector(inputs["arm"]), progress=inputs["progress"] and rank == 0,
                           gap=inputs.get("gap"), moment_files=inputs.get("moment_files"))
        if rank == 0:
            write_result(args.work_dir, result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Data-parallel training (DistributedDataParallel, gloo, 2 CPU processes) matches one process.

Two ranks with micro-batch 4 see the same global batches as one process with batch 8, so
the loss curve after 20 steps must agree within 1e-4 relative (floating-point reduction order
is the only difference).
"""

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from libs.models import ModelSpec, build_model
from libs.training import TrainConfig, train_model

V, L = 48, 25


def _data(seed, n):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (n, L)).astype(np.int32)
    tokens[:, 1::2] = tokens[:, 0:-1:2]
    lengths = rng.integers(6, L + 1, n).astype(np.int32)
    return tokens, lengths


def _train(batch_size, weights=None, checkpoint_dir=None, steps=20):
    torch.set_num_threads(1)
    tt, tl = _data(0, 96)
    vt, vl = _data(1, 32)
    model = build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), vocab_size=V, n_positions=L, seed=0)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, warmup_steps=2, eval_every=10, eval_batches=0,
                      checkpoint_every=10 if checkpoint_dir else 0)
    result = train_model(model, tt, tl, vt, vl, cfg, seed=0, weights=weights, checkpoint_dir=checkpoint_dir,
                         progress=False)
    return result


def _worker(rank, world, init_file, out_dir, weighted):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        weights = np.linspace(0.5, 2.0, 96) if weighted else None
        result = _train(4, weights=weights, checkpoint_dir=os.path.join(out_dir, "ckpt"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"curve": result.curve, "n_tokens": result.n_tokens}, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("weighted", [False, True])
def test_two_gloo_ranks_match_one_process(tmp_path, weighted):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), weighted), nprocs=2, join=True)
    single = _train(8, weights=np.linspace(0.5, 2.0, 96) if weighted else None)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["curve"] == ranks[1]["curve"]                     # every rank holds the same model
    assert ranks[0]["n_tokens"] == single.n_tokens                     # tokens counted over all ranks
    got = [r["val_loss"] for r in ranks[0]["curve"]]
    want = [r["val_loss"] for r in single.curve]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert (tmp_path / "ckpt").is_dir() and not list((tmp_path / "ckpt").glob("step-*"))  # removed on success
